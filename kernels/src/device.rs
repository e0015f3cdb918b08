//! Where kernels run, and what GPUs this machine has.
//!
//! cudarc loads libcuda at run time and panics when it is missing, so every CUDA path goes
//! through [`cuda_driver`] first: it answers with the reason the GPU cannot be used instead.

use std::fmt;
use std::str::FromStr;

/// The device a kernel or model runs on, chosen when it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// A CUDA GPU, by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    /// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

/// One GPU found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: usize,
    pub model: String,
    pub memory_bytes: u64,
}

/// Why no GPU can be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NoGpu {
    #[error("the CUDA driver library (libcuda) is not present on this machine")]
    NoDriver,
    #[error("the CUDA driver failed: {0}")]
    Driver(String),
}

/// Checks that the CUDA driver library can be loaded. Call before any other cudarc function.
pub fn cuda_driver() -> Result<(), NoGpu> {
    // SAFETY: is_culib_present only tries to dlopen the library; it has no preconditions.
    // dlopen itself may still panic inside cudarc on exotic failures, so catch that too.
    let present = std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() })
        .unwrap_or(false);
    if present {
        Ok(())
    } else {
        Err(NoGpu::NoDriver)
    }
}

/// Lists the GPUs this machine has, with their model and memory.
pub fn detect_gpus() -> Result<Vec<GpuInfo>, NoGpu> {
    cuda_driver()?;
    let driver = |e: cudarc::driver::DriverError| NoGpu::Driver(format!("{e:?}"));
    let count = cudarc::driver::CudaContext::device_count().map_err(driver)?;
    (0..usize::try_from(count).unwrap_or(0))
        .map(|index| {
            let ctx = cudarc::driver::CudaContext::new(index).map_err(driver)?;
            Ok(GpuInfo {
                index,
                model: ctx.name().map_err(driver)?,
                memory_bytes: ctx.total_mem().map_err(driver)? as u64,
            })
        })
        .collect()
}

/// The GPU driver of this machine, as a benchmark report records it: the kernel module's
/// version (from `/proc/driver/nvidia/version` on Linux) and the CUDA version the driver
/// supports (`cuDriverGetVersion`), e.g. "NVIDIA 580.82.07, CUDA 13.0". `None` without one.
pub fn driver_version() -> Option<String> {
    let module = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|text| nvidia_module_version(&text));
    let cuda = cuda_driver().ok().and_then(|()| {
        let mut version: std::ffi::c_int = 0;
        // SAFETY: the library is present (checked above); the call writes one int.
        let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
        (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS && version > 0)
            .then(|| format!("CUDA {}.{}", version / 1000, version % 1000 / 10))
    });
    match (module, cuda) {
        (Some(m), Some(c)) => Some(format!("NVIDIA {m}, {c}")),
        (Some(m), None) => Some(format!("NVIDIA {m}")),
        (None, c) => c,
    }
}

/// The version in `/proc/driver/nvidia/version`'s first line ("NVRM version: NVIDIA UNIX
/// x86_64 Kernel Module  580.82.07  Sun Aug 17 ..."): the first word made of digits and dots.
fn nvidia_module_version(text: &str) -> Option<String> {
    text.lines()
        .next()?
        .split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert!("gpu".parse::<Device>().unwrap_err().contains("gpu"));
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn reads_the_nvidia_module_version() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.82.07  Sun Aug 17 \
                    04:32:08 UTC 2025\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(nvidia_module_version(text).as_deref(), Some("580.82.07"));
        assert_eq!(nvidia_module_version("garbage"), None);
        // Whatever this machine has, asking never panics.
        let _ = driver_version();
    }

    #[test]
    fn detection_never_panics() {
        // On a machine without a driver this is an error with a reason; with one, a list.
        match detect_gpus() {
            Ok(gpus) => assert!(gpus.iter().all(|g| g.memory_bytes > 0)),
            Err(reason) => assert!(!reason.to_string().is_empty()),
        }
    }
}
