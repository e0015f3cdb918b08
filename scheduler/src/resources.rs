//! The resource model: what a node offers and what a replica asks for.
//!
//! Every quantity is an exact integer in its smallest unit (millicores, bytes, hundredths of a
//! GPU), so sums and comparisons never suffer from floating-point drift: placement must never
//! overcommit, and "0.1 + 0.2 > 0.3" must not decide that. Quantities are written and read in
//! human form ("500m", "2", "8GiB", "0.5"). Human-readable formats (TOML, JSON) carry them as
//! strings; binary formats such as bincode (which cannot ask "what comes next?") carry the raw
//! integer, so the same types work in config files and in the Raft log.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Why a quantity could not be parsed, or why an arithmetic step on resources failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResourceError {
    #[error("{resource} quantity {value:?} is not a number (write it like {examples})")]
    NotANumber {
        resource: &'static str,
        value: String,
        examples: &'static str,
    },
    #[error("{resource} quantity {value:?} is negative")]
    Negative {
        resource: &'static str,
        value: String,
    },
    #[error("{resource} quantity {value:?} is finer than the smallest unit, {smallest}")]
    TooPrecise {
        resource: &'static str,
        value: String,
        smallest: &'static str,
    },
    #[error("{resource} quantity {value:?} is too large")]
    TooLarge {
        resource: &'static str,
        value: String,
    },
    #[error(
        "{value} is ambiguous: write {suggestion} (binary units KiB, MiB, GiB, TiB, PiB) \
         or a plain byte count"
    )]
    AmbiguousUnit { value: String, suggestion: String },
    #[error(
        "{resource} quantity {value:?} has an unknown unit {unit:?} (use KiB, MiB, GiB, TiB, \
         PiB, EiB or none for bytes)"
    )]
    UnknownUnit {
        resource: &'static str,
        value: String,
        unit: String,
    },
    #[error("custom resource name must not be empty")]
    EmptyCustomName,
    #[error("not enough {resource}: {requested} requested, {available} available")]
    Insufficient {
        resource: ResourceKind,
        requested: String,
        available: String,
    },
    #[error("{resource} total overflows: {left} + {right}")]
    Overflow {
        resource: ResourceKind,
        left: String,
        right: String,
    },
}

/// One dimension of [`Resources`], used to say which one is short.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Cpu,
    Memory,
    Gpu,
    GpuMemory,
    Ipu,
    Custom(String),
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceKind::Cpu => f.write_str("cpu"),
            ResourceKind::Memory => f.write_str("memory"),
            ResourceKind::Gpu => f.write_str("gpu"),
            ResourceKind::GpuMemory => f.write_str("gpu_memory"),
            ResourceKind::Ipu => f.write_str("ipu"),
            ResourceKind::Custom(name) => f.write_str(name),
        }
    }
}

/// A non-negative decimal as `mantissa / 10^decimals`, parsed without floating point.
struct Decimal {
    mantissa: u128,
    decimals: u32,
}

enum DecimalError {
    NotANumber,
    Negative,
    TooLarge,
}

/// Parses "12", "0.5", ".5", "1.250". At most 30 digits, so the mantissa fits in a u128.
fn parse_decimal(text: &str) -> Result<Decimal, DecimalError> {
    if text.starts_with('-') {
        return Err(DecimalError::Negative);
    }
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty())
        || !all_digits(whole)
        || !all_digits(frac)
        || (text.contains('.') && frac.is_empty())
    {
        return Err(DecimalError::NotANumber);
    }
    // Trailing zeros in the fraction carry no precision: "1.50" is "1.5".
    let frac = frac.trim_end_matches('0');
    if whole.len() + frac.len() > 30 {
        return Err(DecimalError::TooLarge);
    }
    let mut mantissa: u128 = 0;
    for b in whole.bytes().chain(frac.bytes()) {
        mantissa = mantissa * 10 + u128::from(b - b'0');
    }
    Ok(Decimal {
        mantissa,
        decimals: frac.len() as u32,
    })
}

/// What a quantity type tells the shared parser about itself, for error messages.
struct QuantityInfo {
    resource: &'static str,
    examples: &'static str,
    smallest: &'static str,
}

/// `decimal × factor`, which must come out a whole number that fits in a u64.
fn scale(
    info: &QuantityInfo,
    value: &str,
    decimal: Decimal,
    factor: u128,
) -> Result<u64, ResourceError> {
    let too_large = || ResourceError::TooLarge {
        resource: info.resource,
        value: value.to_owned(),
    };
    let scaled = decimal.mantissa.checked_mul(factor).ok_or_else(too_large)?;
    let divisor = 10u128.pow(decimal.decimals);
    if !scaled.is_multiple_of(divisor) {
        return Err(ResourceError::TooPrecise {
            resource: info.resource,
            value: value.to_owned(),
            smallest: info.smallest,
        });
    }
    u64::try_from(scaled / divisor).map_err(|_| too_large())
}

fn parse_number(info: &QuantityInfo, value: &str, number: &str) -> Result<Decimal, ResourceError> {
    parse_decimal(number).map_err(|e| match e {
        DecimalError::NotANumber => ResourceError::NotANumber {
            resource: info.resource,
            value: value.to_owned(),
            examples: info.examples,
        },
        DecimalError::Negative => ResourceError::Negative {
            resource: info.resource,
            value: value.to_owned(),
        },
        DecimalError::TooLarge => ResourceError::TooLarge {
            resource: info.resource,
            value: value.to_owned(),
        },
    })
}

/// CPU in thousandths of a core: "500m" is half a core, "2" is two cores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millicores(pub u64);

impl Millicores {
    const INFO: QuantityInfo = QuantityInfo {
        resource: "cpu",
        examples: "\"500m\", \"2\" or \"0.5\"",
        smallest: "1m",
    };

    /// Whole cores.
    pub const fn cores(n: u64) -> Self {
        Millicores(n * 1000)
    }
}

impl FromStr for Millicores {
    type Err = ResourceError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let text = value.trim();
        let (number, factor) = match text.strip_suffix('m') {
            Some(n) => (n.trim_end(), 1),
            None => (text, 1000),
        };
        let decimal = parse_number(&Self::INFO, value, number)?;
        scale(&Self::INFO, value, decimal, factor).map(Millicores)
    }
}

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// A byte count: "8GiB", "512MiB", "1024". Decimal units ("8GB") are refused as ambiguous,
/// since people and tools disagree on whether they mean 10^9 or 2^30.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

const BINARY_UNITS: [(&str, u32); 6] = [
    ("KiB", 10),
    ("MiB", 20),
    ("GiB", 30),
    ("TiB", 40),
    ("PiB", 50),
    ("EiB", 60),
];

impl Bytes {
    const INFO: QuantityInfo = QuantityInfo {
        resource: "byte",
        examples: "\"8GiB\", \"512MiB\" or \"1024\"",
        smallest: "1 byte",
    };

    pub const fn kib(n: u64) -> Self {
        Bytes(n << 10)
    }
    pub const fn mib(n: u64) -> Self {
        Bytes(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        Bytes(n << 30)
    }
}

impl FromStr for Bytes {
    type Err = ResourceError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let text = value.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(text.len());
        let (number, unit) = (&text[..split], text[split..].trim());
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "ki" | "kib" => 10,
            "mi" | "mib" => 20,
            "gi" | "gib" => 30,
            "ti" | "tib" => 40,
            "pi" | "pib" => 50,
            "ei" | "eib" => 60,
            decimal @ ("k" | "kb" | "m" | "mb" | "g" | "gb" | "t" | "tb" | "p" | "pb" | "e"
            | "eb") => {
                let letter = decimal[..1].to_ascii_uppercase();
                return Err(ResourceError::AmbiguousUnit {
                    value: text.to_owned(),
                    suggestion: format!("{number}{letter}iB"),
                });
            }
            _ => {
                return Err(ResourceError::UnknownUnit {
                    resource: Self::INFO.resource,
                    value: value.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let decimal = parse_number(&Self::INFO, value, number)?;
        scale(&Self::INFO, value, decimal, 1u128 << shift).map(Bytes)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (unit, shift) in BINARY_UNITS.iter().rev() {
                if self.0.trailing_zeros() >= *shift {
                    return write!(f, "{}{unit}", self.0 >> shift);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

/// GPUs in hundredths, so one device can be shared by fractions down to 0.01.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuAmount(u64);

impl GpuAmount {
    /// Hundredths in one whole GPU.
    pub const PER_DEVICE: u64 = 100;
    pub const ZERO: GpuAmount = GpuAmount(0);
    pub const ONE: GpuAmount = GpuAmount(100);

    const INFO: QuantityInfo = QuantityInfo {
        resource: "gpu",
        examples: "\"1\", \"2\" or \"0.5\"",
        smallest: "0.01",
    };

    pub const fn whole(n: u64) -> Self {
        GpuAmount(n * Self::PER_DEVICE)
    }
    pub const fn from_hundredths(h: u64) -> Self {
        GpuAmount(h)
    }
    pub const fn hundredths(self) -> u64 {
        self.0
    }
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl FromStr for GpuAmount {
    type Err = ResourceError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let decimal = parse_number(&Self::INFO, value, value.trim())?;
        scale(&Self::INFO, value, decimal, u128::from(Self::PER_DEVICE)).map(GpuAmount)
    }
}

impl fmt::Display for GpuAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / Self::PER_DEVICE, self.0 % Self::PER_DEVICE);
        match frac {
            0 => write!(f, "{whole}"),
            f10 if f10.is_multiple_of(10) => write!(f, "{whole}.{}", f10 / 10),
            _ => write!(f, "{whole}.{frac:02}"),
        }
    }
}

/// Serde glue shared by the three quantity types: a string or number in human-readable
/// formats, the raw integer in binary ones.
macro_rules! quantity_serde {
    ($ty:ident) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    serializer.serialize_u64(self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct HumanVisitor;

                impl Visitor<'_> for HumanVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(
                            f,
                            "a {} quantity like {}",
                            $ty::INFO.resource,
                            $ty::INFO.examples
                        )
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        // An integer means whole units, as its string form would.
                        v.to_string().parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        if !v.is_finite() {
                            return Err(E::custom(format!(
                                "{} quantity {v} is not a finite number",
                                $ty::INFO.resource
                            )));
                        }
                        // f64's Display is the shortest exact decimal and never uses an
                        // exponent, so 0.5 parses as "0.5" and 0.005 is refused as too fine.
                        v.to_string().parse().map_err(E::custom)
                    }
                }

                if deserializer.is_human_readable() {
                    deserializer.deserialize_any(HumanVisitor)
                } else {
                    u64::deserialize(deserializer).map($ty)
                }
            }
        }
    };
}

quantity_serde!(Millicores);
quantity_serde!(Bytes);
quantity_serde!(GpuAmount);

/// What a node offers or a replica asks for. Absent fields are zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub cpu: Millicores,
    pub memory: Bytes,
    pub gpu: GpuAmount,
    pub gpu_memory: Bytes,
    pub ipu: u32,
    /// Named resources the scheduler knows nothing about ("fpga", "license"), counted in
    /// whole units.
    pub custom: BTreeMap<String, u64>,
}

impl Resources {
    /// The fixed dimensions as integers, in [`ResourceKind`] order.
    pub(crate) fn fixed(&self) -> [u64; 5] {
        [
            self.cpu.0,
            self.memory.0,
            self.gpu.0,
            self.gpu_memory.0,
            u64::from(self.ipu),
        ]
    }

    /// Human form of one dimension's amount: "500m" for cpu, "8GiB" for memory.
    pub fn amount_of(&self, kind: &ResourceKind) -> String {
        match kind {
            ResourceKind::Cpu => self.cpu.to_string(),
            ResourceKind::Memory => self.memory.to_string(),
            ResourceKind::Gpu => self.gpu.to_string(),
            ResourceKind::GpuMemory => self.gpu_memory.to_string(),
            ResourceKind::Ipu => self.ipu.to_string(),
            ResourceKind::Custom(name) => self.custom.get(name).copied().unwrap_or(0).to_string(),
        }
    }

    /// True when every dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.fixed().iter().all(|&v| v == 0) && self.custom.values().all(|&v| v == 0)
    }

    /// The first dimension (in [`ResourceKind`] order, custom names alphabetically) where
    /// `request` asks for more than `self` has, or `None` when it fits.
    pub fn shortfall(&self, request: &Resources) -> Option<ResourceKind> {
        const FIXED: [ResourceKind; 5] = [
            ResourceKind::Cpu,
            ResourceKind::Memory,
            ResourceKind::Gpu,
            ResourceKind::GpuMemory,
            ResourceKind::Ipu,
        ];
        let (have, want) = (self.fixed(), request.fixed());
        if let Some(i) = (0..FIXED.len()).find(|&i| want[i] > have[i]) {
            return Some(FIXED[i].clone());
        }
        request
            .custom
            .iter()
            .find(|(name, want)| **want > self.custom.get(*name).copied().unwrap_or(0))
            .map(|(name, _)| ResourceKind::Custom(name.clone()))
    }

    /// True when `request` fits in `self` (read `self` as the free capacity) in every
    /// dimension.
    pub fn fits(&self, request: &Resources) -> bool {
        self.shortfall(request).is_none()
    }

    /// The sum, or which dimension overflowed. Zero custom entries are dropped.
    pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let overflow = |kind: ResourceKind| ResourceError::Overflow {
            left: self.amount_of(&kind),
            right: other.amount_of(&kind),
            resource: kind,
        };
        let mut custom = self.custom.clone();
        for (name, amount) in &other.custom {
            let slot = custom.entry(name.clone()).or_insert(0);
            *slot = slot
                .checked_add(*amount)
                .ok_or_else(|| overflow(ResourceKind::Custom(name.clone())))?;
        }
        custom.retain(|_, v| *v != 0);
        Ok(Resources {
            cpu: Millicores(
                self.cpu
                    .0
                    .checked_add(other.cpu.0)
                    .ok_or_else(|| overflow(ResourceKind::Cpu))?,
            ),
            memory: Bytes(
                self.memory
                    .0
                    .checked_add(other.memory.0)
                    .ok_or_else(|| overflow(ResourceKind::Memory))?,
            ),
            gpu: GpuAmount(
                self.gpu
                    .0
                    .checked_add(other.gpu.0)
                    .ok_or_else(|| overflow(ResourceKind::Gpu))?,
            ),
            gpu_memory: Bytes(
                self.gpu_memory
                    .0
                    .checked_add(other.gpu_memory.0)
                    .ok_or_else(|| overflow(ResourceKind::GpuMemory))?,
            ),
            ipu: self
                .ipu
                .checked_add(other.ipu)
                .ok_or_else(|| overflow(ResourceKind::Ipu))?,
            custom,
        })
    }

    /// `self - request`, or [`ResourceError::Insufficient`] naming the first dimension that
    /// would go below zero. Zero custom entries are dropped.
    pub fn checked_sub(&self, request: &Resources) -> Result<Resources, ResourceError> {
        if let Some(kind) = self.shortfall(request) {
            return Err(ResourceError::Insufficient {
                requested: request.amount_of(&kind),
                available: self.amount_of(&kind),
                resource: kind,
            });
        }
        let mut custom = self.custom.clone();
        for (name, amount) in &request.custom {
            if let Some(slot) = custom.get_mut(name) {
                *slot -= *amount;
            }
        }
        custom.retain(|_, v| *v != 0);
        Ok(Resources {
            cpu: Millicores(self.cpu.0 - request.cpu.0),
            memory: Bytes(self.memory.0 - request.memory.0),
            gpu: GpuAmount(self.gpu.0 - request.gpu.0),
            gpu_memory: Bytes(self.gpu_memory.0 - request.gpu_memory.0),
            ipu: self.ipu - request.ipu,
            custom,
        })
    }

    /// `self - other`, clamped at zero in every dimension: the free part of a capacity whose
    /// recorded use may (through a bug or a stale report) exceed it.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut custom = self.custom.clone();
        for (name, amount) in &other.custom {
            if let Some(slot) = custom.get_mut(name) {
                *slot = slot.saturating_sub(*amount);
            }
        }
        custom.retain(|_, v| *v != 0);
        Resources {
            cpu: Millicores(self.cpu.0.saturating_sub(other.cpu.0)),
            memory: Bytes(self.memory.0.saturating_sub(other.memory.0)),
            gpu: GpuAmount(self.gpu.0.saturating_sub(other.gpu.0)),
            gpu_memory: Bytes(self.gpu_memory.0.saturating_sub(other.gpu_memory.0)),
            ipu: self.ipu.saturating_sub(other.ipu),
            custom,
        }
    }

    /// Checks custom resource names (they come from user files) and that every quantity is
    /// one a machine could have: a request of 1048576 TiB could never be placed, and sums of
    /// such values are where arithmetic overflows.
    pub fn validate(&self) -> Result<(), ResourceError> {
        if self.custom.keys().any(|k| k.trim().is_empty()) {
            return Err(ResourceError::EmptyCustomName);
        }
        let too_large = |resource: &'static str, value: String| {
            Err(ResourceError::TooLarge { resource, value })
        };
        if self.cpu > Resources::MAX_CPU {
            return too_large("cpu", self.cpu.to_string());
        }
        if self.memory > Resources::MAX_BYTES {
            return too_large("memory", self.memory.to_string());
        }
        if self.gpu_memory > Resources::MAX_BYTES {
            return too_large("gpu_memory", self.gpu_memory.to_string());
        }
        if self.gpu > Resources::MAX_GPU {
            return too_large("gpu", self.gpu.to_string());
        }
        if self.ipu > Resources::MAX_DEVICES {
            return too_large("ipu", self.ipu.to_string());
        }
        if let Some((_, n)) = self
            .custom
            .iter()
            .find(|(_, n)| **n > Resources::MAX_CUSTOM)
        {
            return too_large("custom", n.to_string());
        }
        Ok(())
    }

    /// The most of each resource one node has or one replica asks for.
    pub const MAX_CPU: Millicores = Millicores(1_000_000 * 1000);
    pub const MAX_BYTES: Bytes = Bytes(1 << 50);
    pub const MAX_GPU: GpuAmount = GpuAmount::whole(4096);
    pub const MAX_DEVICES: u32 = 4096;
    pub const MAX_CUSTOM: u64 = 1 << 40;
}

impl fmt::Display for Resources {
    /// "cpu=500m memory=8GiB gpu=0.5", listing only the non-zero dimensions; "nothing" when
    /// all are zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.cpu.0 != 0 {
            parts.push(format!("cpu={}", self.cpu));
        }
        if self.memory.0 != 0 {
            parts.push(format!("memory={}", self.memory));
        }
        if self.gpu.0 != 0 {
            parts.push(format!("gpu={}", self.gpu));
        }
        if self.gpu_memory.0 != 0 {
            parts.push(format!("gpu_memory={}", self.gpu_memory));
        }
        if self.ipu != 0 {
            parts.push(format!("ipu={}", self.ipu));
        }
        for (name, amount) in &self.custom {
            if *amount != 0 {
                parts.push(format!("{name}={amount}"));
            }
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: FromStr<Err = ResourceError> + fmt::Debug>(s: &str) -> String {
        s.parse::<T>().unwrap_err().to_string()
    }

    #[test]
    fn millicores_parse_every_form() {
        assert_eq!("500m".parse::<Millicores>().unwrap(), Millicores(500));
        assert_eq!("2".parse::<Millicores>().unwrap(), Millicores(2000));
        assert_eq!("0.5".parse::<Millicores>().unwrap(), Millicores(500));
        assert_eq!("1.25".parse::<Millicores>().unwrap(), Millicores(1250));
        assert_eq!(" 100m ".parse::<Millicores>().unwrap(), Millicores(100));
        assert_eq!("0".parse::<Millicores>().unwrap(), Millicores(0));
        assert_eq!("1.500".parse::<Millicores>().unwrap(), Millicores(1500));
    }

    #[test]
    fn millicores_reject_bad_input_naming_the_value() {
        let e = err::<Millicores>("0.0005");
        assert!(
            e.contains("\"0.0005\"") && e.contains("finer") && e.contains("1m"),
            "{e}"
        );
        let e = err::<Millicores>("-1");
        assert!(e.contains("\"-1\"") && e.contains("negative"), "{e}");
        let e = err::<Millicores>("two");
        assert!(e.contains("\"two\"") && e.contains("not a number"), "{e}");
        let e = err::<Millicores>("1.5m");
        assert!(e.contains("finer"), "{e}");
        for bad in ["", "m", ".", "1.", "1..2", "1e3", "99999999999999999999999"] {
            assert!(bad.parse::<Millicores>().is_err(), "{bad:?} parsed");
        }
        let e = err::<Millicores>("18446744073709552");
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn millicores_display() {
        assert_eq!(Millicores(500).to_string(), "500m");
        assert_eq!(Millicores(2000).to_string(), "2");
        assert_eq!(Millicores(1500).to_string(), "1500m");
        assert_eq!(Millicores(0).to_string(), "0");
        assert_eq!(Millicores::cores(3), Millicores(3000));
    }

    #[test]
    fn bytes_parse_binary_units_and_plain_counts() {
        assert_eq!("8GiB".parse::<Bytes>().unwrap(), Bytes(8 << 30));
        assert_eq!("512MiB".parse::<Bytes>().unwrap(), Bytes(512 << 20));
        assert_eq!("64KiB".parse::<Bytes>().unwrap(), Bytes(64 << 10));
        assert_eq!("1TiB".parse::<Bytes>().unwrap(), Bytes(1 << 40));
        assert_eq!("1024".parse::<Bytes>().unwrap(), Bytes(1024));
        assert_eq!("1024B".parse::<Bytes>().unwrap(), Bytes(1024));
        assert_eq!("8 GiB".parse::<Bytes>().unwrap(), Bytes(8 << 30));
        assert_eq!("8Gi".parse::<Bytes>().unwrap(), Bytes(8 << 30));
        assert_eq!("1.5GiB".parse::<Bytes>().unwrap(), Bytes(3 << 29));
        assert_eq!("0.5KiB".parse::<Bytes>().unwrap(), Bytes(512));
    }

    #[test]
    fn bytes_refuse_decimal_units_suggesting_the_binary_form() {
        for (input, suggestion) in [
            ("8GB", "8GiB"),
            ("8G", "8GiB"),
            ("8gb", "8GiB"),
            ("512MB", "512MiB"),
            ("64k", "64KiB"),
            ("2TB", "2TiB"),
        ] {
            let e = err::<Bytes>(input);
            assert!(
                e.starts_with(&format!("{input} is ambiguous: write {suggestion}")),
                "{e}"
            );
        }
        assert_eq!(
            err::<Bytes>("8GB"),
            "8GB is ambiguous: write 8GiB (binary units KiB, MiB, GiB, TiB, PiB) or a plain \
             byte count"
        );
    }

    #[test]
    fn bytes_reject_bad_input() {
        let e = err::<Bytes>("8 furlongs");
        assert!(
            e.contains("unknown unit") && e.contains("\"furlongs\""),
            "{e}"
        );
        let e = err::<Bytes>("0.3KiB");
        assert!(e.contains("finer") && e.contains("\"0.3KiB\""), "{e}");
        let e = err::<Bytes>("-1GiB");
        assert!(e.contains("negative"), "{e}");
        let e = err::<Bytes>("16EiB");
        assert!(e.contains("too large"), "{e}");
        assert!("GiB".parse::<Bytes>().is_err());
        assert!("".parse::<Bytes>().is_err());
    }

    #[test]
    fn bytes_display_uses_the_largest_exact_unit() {
        assert_eq!(Bytes(8 << 30).to_string(), "8GiB");
        assert_eq!(Bytes(512 << 20).to_string(), "512MiB");
        assert_eq!(Bytes(1536 << 20).to_string(), "1536MiB");
        assert_eq!(Bytes(1 << 40).to_string(), "1TiB");
        assert_eq!(Bytes(1000).to_string(), "1000");
        assert_eq!(Bytes(0).to_string(), "0");
        assert_eq!(Bytes::gib(2), Bytes(2 << 30));
        assert_eq!(Bytes::mib(3), Bytes(3 << 20));
        assert_eq!(Bytes::kib(4), Bytes(4 << 10));
    }

    #[test]
    fn gpu_amounts_in_hundredths() {
        assert_eq!("0.5".parse::<GpuAmount>().unwrap(), GpuAmount(50));
        assert_eq!("1".parse::<GpuAmount>().unwrap(), GpuAmount::ONE);
        assert_eq!("2".parse::<GpuAmount>().unwrap(), GpuAmount::whole(2));
        assert_eq!("0.01".parse::<GpuAmount>().unwrap(), GpuAmount(1));
        assert_eq!("1.05".parse::<GpuAmount>().unwrap(), GpuAmount(105));
        let e = err::<GpuAmount>("0.005");
        assert!(
            e.contains("\"0.005\"") && e.contains("finer") && e.contains("0.01"),
            "{e}"
        );
        let e = err::<GpuAmount>("-0.5");
        assert!(e.contains("negative"), "{e}");
        assert!(err::<GpuAmount>("half").contains("not a number"));
    }

    #[test]
    fn gpu_display() {
        assert_eq!(GpuAmount(50).to_string(), "0.5");
        assert_eq!(GpuAmount(25).to_string(), "0.25");
        assert_eq!(GpuAmount(105).to_string(), "1.05");
        assert_eq!(GpuAmount(200).to_string(), "2");
        assert_eq!(GpuAmount(0).to_string(), "0");
        assert_eq!(GpuAmount(1).to_string(), "0.01");
    }

    #[test]
    fn display_round_trips_through_parse() {
        for v in [0u64, 1, 7, 999, 1000, 1001, 123_456] {
            assert_eq!(
                Millicores(v).to_string().parse::<Millicores>().unwrap(),
                Millicores(v)
            );
            assert_eq!(
                GpuAmount(v).to_string().parse::<GpuAmount>().unwrap(),
                GpuAmount(v)
            );
        }
        for v in [0u64, 1, 1023, 1024, 3 << 20, (5 << 30) + 1, u64::MAX] {
            assert_eq!(Bytes(v).to_string().parse::<Bytes>().unwrap(), Bytes(v));
        }
    }

    #[test]
    fn resources_from_toml_accept_strings_and_integers() {
        let r: Resources = toml::from_str(
            r#"
            cpu = "500m"
            memory = "8GiB"
            gpu = 0.5
            gpu_memory = "16GiB"
            ipu = 2
            [custom]
            fpga = 1
            "#,
        )
        .unwrap();
        assert_eq!(r.cpu, Millicores(500));
        assert_eq!(r.memory, Bytes::gib(8));
        assert_eq!(r.gpu, GpuAmount(50));
        assert_eq!(r.gpu_memory, Bytes::gib(16));
        assert_eq!(r.ipu, 2);
        assert_eq!(r.custom.get("fpga"), Some(&1));
        assert_eq!(
            r.to_string(),
            "cpu=500m memory=8GiB gpu=0.5 gpu_memory=16GiB ipu=2 fpga=1"
        );

        let r: Resources = toml::from_str("cpu = 2\nmemory = 1024\ngpu = 1").unwrap();
        assert_eq!(r.cpu, Millicores::cores(2));
        assert_eq!(r.memory, Bytes(1024));
        assert_eq!(r.gpu, GpuAmount::ONE);
        assert_eq!(r.gpu_memory, Bytes(0));
    }

    #[test]
    fn resources_from_toml_reject_bad_fields_with_clear_errors() {
        let e = toml::from_str::<Resources>("cpu = \"1\"\nmemroy = \"1GiB\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memroy"), "{e}");
        let e = toml::from_str::<Resources>("memory = \"8GB\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("8GB is ambiguous: write 8GiB"), "{e}");
        let e = toml::from_str::<Resources>("gpu = 0.005")
            .unwrap_err()
            .to_string();
        assert!(e.contains("finer"), "{e}");
        let e = toml::from_str::<Resources>("cpu = -2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        let e = toml::from_str::<Resources>("cpu = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu quantity"), "{e}");
    }

    #[test]
    fn resources_json_round_trip_in_human_form() {
        let r = Resources {
            cpu: Millicores(250),
            memory: Bytes::mib(512),
            gpu: GpuAmount(25),
            gpu_memory: Bytes::gib(4),
            ipu: 1,
            custom: BTreeMap::from([("fpga".to_owned(), 3)]),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"cpu\":\"250m\"") && json.contains("\"memory\":\"512MiB\""));
        assert!(json.contains("\"gpu\":\"0.25\""), "{json}");
        assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), r);
        let toml_text = toml::to_string(&r).unwrap();
        assert_eq!(toml::from_str::<Resources>(&toml_text).unwrap(), r);
    }

    #[test]
    fn resources_bincode_round_trip_as_integers() {
        let r = Resources {
            cpu: Millicores(1500),
            memory: Bytes(12345),
            gpu: GpuAmount(150),
            gpu_memory: Bytes::gib(1),
            ipu: 4,
            custom: BTreeMap::from([("license".to_owned(), 2)]),
        };
        let config = bincode::config::standard().with_limit::<4096>();
        let bytes = bincode::serde::encode_to_vec(&r, config).unwrap();
        let (back, _): (Resources, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, r);
    }

    fn res(cpu: u64, mem: u64, gpu: u64) -> Resources {
        Resources {
            cpu: Millicores(cpu),
            memory: Bytes(mem),
            gpu: GpuAmount(gpu),
            ..Resources::default()
        }
    }

    #[test]
    fn fits_and_shortfall() {
        let free = res(1000, 100, 50);
        assert!(free.fits(&res(1000, 100, 50)));
        assert!(free.fits(&Resources::default()));
        assert_eq!(free.shortfall(&res(1001, 0, 0)), Some(ResourceKind::Cpu));
        assert_eq!(free.shortfall(&res(0, 101, 0)), Some(ResourceKind::Memory));
        assert_eq!(free.shortfall(&res(0, 0, 100)), Some(ResourceKind::Gpu));
        let mut want = Resources::default();
        want.custom.insert("fpga".into(), 1);
        assert_eq!(
            free.shortfall(&want),
            Some(ResourceKind::Custom("fpga".into()))
        );
        let mut have = free.clone();
        have.custom.insert("fpga".into(), 1);
        assert!(have.fits(&want));
        want.ipu = 1;
        assert_eq!(have.shortfall(&want), Some(ResourceKind::Ipu));
    }

    #[test]
    fn checked_arithmetic() {
        let a = res(500, 100, 50);
        let b = res(250, 50, 25);
        let sum = a.checked_add(&b).unwrap();
        assert_eq!(sum, res(750, 150, 75));
        assert_eq!(sum.checked_sub(&b).unwrap(), a);
        let e = b.checked_sub(&a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not enough cpu: 500m requested, 250m available"
        );
        let e = res(u64::MAX, 0, 0).checked_add(&res(1, 0, 0)).unwrap_err();
        assert!(matches!(
            e,
            ResourceError::Overflow {
                resource: ResourceKind::Cpu,
                ..
            }
        ));

        let mut with_custom = a.clone();
        with_custom.custom.insert("fpga".into(), 2);
        let mut two = Resources::default();
        two.custom.insert("fpga".into(), 2);
        // Used-up custom resources vanish, so equality does not depend on zero entries.
        assert_eq!(with_custom.checked_sub(&two).unwrap(), a);
        assert_eq!(a.checked_add(&two).unwrap(), with_custom);
        assert_eq!(
            a.saturating_sub(&res(1000, 1000, 1000)),
            Resources::default()
        );
    }

    #[test]
    fn display_and_validation() {
        assert_eq!(Resources::default().to_string(), "nothing");
        assert!(Resources::default().is_empty());
        assert_eq!(res(0, 0, 100).to_string(), "gpu=1");
        assert!(!res(0, 0, 100).is_empty());
        let mut r = Resources::default();
        r.custom.insert(" ".into(), 1);
        assert_eq!(r.validate(), Err(ResourceError::EmptyCustomName));
        assert!(res(1, 1, 1).validate().is_ok());
    }
}
