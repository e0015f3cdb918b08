//! `report.json`: what one `arbor bench run` measured, in a versioned schema that other tools
//! (and `arbor bench compare`) read.

use std::collections::BTreeMap;
use std::time::Duration;

use arbor_latency::Latencies;
use serde::{Deserialize, Serialize};

use super::load::{Sample, Shape};

/// The schema's name and version: a reader refuses any other. `docs/bench-report.schema.json`
/// is the same schema for other tools (the peers of `benches/peers/` write it too).
pub const SCHEMA: &str = "arbor-bench-report/2";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// What was measured: arbor, or one of its peers.
    pub system: System,
    /// When the run started, RFC 3339 in UTC.
    pub started: String,
    pub machine: Machine,
    /// The nodes of the cluster measured (from cluster.toml); 1 for a peer in one process.
    pub nodes: usize,
    /// The GPUs the cluster's nodes declared ("node N: model, memory"), as the gateway
    /// answering the run saw them.
    #[serde(default)]
    pub cluster_gpus: Vec<String>,
    pub scenarios: Vec<ScenarioReport>,
}

/// The system a report measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct System {
    /// "arbor", or a peer's name ("ray-serve", "faiss", "hnswlib", "onnxruntime", "llama.cpp").
    pub name: String,
    pub version: String,
    /// The commit it was built from, where known.
    #[serde(default)]
    pub commit: Option<String>,
    /// How it was set up, in a few words (a peer's index type, threads...).
    #[serde(default)]
    pub setup: Option<String>,
}

impl System {
    /// The `arbor` running this code.
    pub fn arbor() -> System {
        System {
            name: "arbor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            commit: Some(env!("ARBOR_COMMIT").into()),
            setup: None,
        }
    }

    /// "arbor 0.1.0 (abc123)", for the pages and tables that name it.
    pub fn label(&self) -> String {
        match &self.commit {
            Some(c) => format!("{} {} ({c})", self.name, self.version),
            None => format!("{} {}", self.name, self.version),
        }
    }
}

/// Where the client ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_bytes: u64,
    /// The client machine's GPUs ("model, memory"), counted through the CUDA driver.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// The GPU driver ("NVIDIA 580.82.07, CUDA 13.0"), where there is one.
    #[serde(default)]
    pub gpu_driver: Option<String>,
}

impl Machine {
    /// This machine, from `/proc` where there is one.
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(
                || std::env::consts::ARCH.to_owned(),
                |(_, v)| v.trim().to_owned(),
            );
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        let gpus = arbor_kernels::device::detect_gpus()
            .unwrap_or_default()
            .into_iter()
            .map(|g| format!("{}, {} MiB", g.model, g.memory_bytes >> 20))
            .collect();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            gpus,
            gpu_driver: arbor_kernels::device::driver_version(),
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub load: Shape,
    /// What the scenario ran with beyond its load (rows, dimension, k, filter, tokens...).
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Jobs that ended in the measured window, failed ones included.
    pub completed: u64,
    /// Failed jobs by error code.
    pub errors: BTreeMap<String, u64>,
    /// Jobs that succeeded per second of the window.
    pub throughput_per_s: f64,
    /// Of the jobs that succeeded.
    pub latency_us: Percentiles,
    /// Second by second.
    pub per_second: Vec<Second>,
    /// The latency distribution of the jobs that succeeded: (quantile, µs) from 0 to 1.
    #[serde(default)]
    pub cdf: Vec<(f64, f64)>,
    /// What a fault scenario did, and how long the cluster took to recover.
    #[serde(default)]
    pub fault: Option<Fault>,
}

/// A fault a scenario caused during its load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub what: String,
    /// When, in seconds into the measured window.
    pub at_s: f64,
    /// How long after it the cluster had recovered (see the scenario for what that means).
    pub recovered_after_s: f64,
    /// The jobs that ended around the fault, in [`SLICE`]s from [`AROUND`] before it to
    /// [`AROUND`] after the recovery: the gap the clients saw, finer than per second.
    #[serde(default)]
    pub around: Vec<Slice>,
}

/// The width of a [`Slice`].
pub const SLICE: Duration = Duration::from_millis(100);
/// How far before a fault and after its recovery [`Fault::around`] reaches.
pub const AROUND: Duration = Duration::from_secs(2);

/// The jobs that ended within one [`SLICE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// Its start, in seconds into the measured window.
    pub from_s: f64,
    pub succeeded: u64,
    pub errors: u64,
    /// The longest latency among the jobs that succeeded (0 when none did).
    pub max_us: f64,
}

impl Fault {
    /// A fault at `at` into the window that took `recovered` to recover from, with the jobs
    /// of `samples` around it. Pure.
    pub fn new(what: String, at: Duration, recovered: Duration, samples: &[Sample]) -> Fault {
        let first = at.saturating_sub(AROUND);
        let last = at + recovered + AROUND;
        let count = ((last - first).as_nanos() / SLICE.as_nanos()).max(1) as usize + 1;
        let mut around: Vec<Slice> = (0..count)
            .map(|i| Slice {
                from_s: (first + SLICE * i as u32).as_secs_f64(),
                succeeded: 0,
                errors: 0,
                max_us: 0.0,
            })
            .collect();
        for s in samples.iter().filter(|s| s.at >= first) {
            let i = ((s.at - first).as_nanos() / SLICE.as_nanos()) as usize;
            let Some(slice) = around.get_mut(i) else {
                continue;
            };
            match s.error {
                None => {
                    slice.succeeded += 1;
                    slice.max_us = slice.max_us.max(s.latency.as_secs_f64() * 1e6);
                }
                Some(_) => slice.errors += 1,
            }
        }
        Fault {
            what,
            at_s: at.as_secs_f64(),
            recovered_after_s: recovered.as_secs_f64(),
            around,
        }
    }
}

/// The quantiles the distribution is kept at: dense at the tail, where it matters.
const CDF_AT: &[f64] = &[
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999,
    0.9995, 0.9999, 1.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(lat: &Latencies) -> Percentiles {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Percentiles {
            p50: us(lat.quantile(0.5)),
            p90: us(lat.quantile(0.9)),
            p99: us(lat.quantile(0.99)),
            p999: us(lat.quantile(0.999)),
            max: us(lat.max()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub second: u64,
    pub succeeded: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl ScenarioReport {
    /// The figures of `samples`, taken over `shape.duration`. Pure.
    pub fn of(name: &str, shape: Shape, samples: &[Sample]) -> ScenarioReport {
        let mut all = Latencies::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let seconds = shape.duration.as_secs().max(1);
        let mut per: Vec<(Latencies, u64)> = (0..seconds).map(|_| (Latencies::new(), 0)).collect();
        for s in samples {
            let i = (s.at.as_secs() as usize).min(per.len() - 1);
            match &s.error {
                None => {
                    all.record(s.latency);
                    per[i].0.record(s.latency);
                }
                Some(code) => {
                    *errors.entry(code.clone()).or_default() += 1;
                    per[i].1 += 1;
                }
            }
        }
        let window = shape.duration.as_secs_f64().max(1e-9);
        ScenarioReport {
            name: name.to_owned(),
            load: shape,
            parameters: serde_json::Map::new(),
            completed: samples.len() as u64,
            errors,
            throughput_per_s: all.len() as f64 / window,
            latency_us: Percentiles::of(&all),
            per_second: per
                .iter()
                .enumerate()
                .map(|(i, (lat, errors))| Second {
                    second: i as u64,
                    succeeded: lat.len(),
                    errors: *errors,
                    p50_us: lat.quantile(0.5).as_secs_f64() * 1e6,
                    p99_us: lat.quantile(0.99).as_secs_f64() * 1e6,
                })
                .collect(),
            fault: None,
            cdf: if all.is_empty() {
                Vec::new()
            } else {
                CDF_AT
                    .iter()
                    .map(|q| (*q, all.quantile(*q).as_secs_f64() * 1e6))
                    .collect()
            },
        }
    }
}

/// Why a report file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a bench report: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "{path} is a {found:?} report; this arbor reads {SCHEMA:?} (run the bench again with \
         this arbor, or compare it with the arbor that wrote it)"
    )]
    Schema { path: String, found: String },
}

impl Report {
    pub fn read(path: &std::path::Path) -> Result<Report, ReadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
            path: shown.clone(),
            source,
        })?;
        let report: Report = serde_json::from_str(&text).map_err(|source| ReadError::Json {
            path: shown.clone(),
            source,
        })?;
        if report.schema != SCHEMA {
            return Err(ReadError::Schema {
                path: shown,
                found: report.schema,
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            connections: 1,
            in_flight: 1,
            rate: None,
            ramp: Duration::ZERO,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
        }
    }

    #[test]
    fn samples_become_percentiles_errors_and_seconds() {
        let ms = Duration::from_millis;
        let samples = vec![
            Sample {
                at: ms(100),
                latency: ms(1),
                error: None,
            },
            Sample {
                at: ms(900),
                latency: ms(3),
                error: None,
            },
            Sample {
                at: ms(1500),
                latency: ms(2),
                error: None,
            },
            Sample {
                at: ms(1600),
                latency: ms(9),
                error: Some("unavailable".into()),
            },
        ];
        let r = ScenarioReport::of("jobs", shape(), &samples);
        assert_eq!(r.completed, 4);
        assert_eq!(r.errors, BTreeMap::from([("unavailable".to_string(), 1)]));
        assert!((r.throughput_per_s - 1.5).abs() < 1e-9);
        assert!(
            (r.latency_us.max - 3000.0).abs() < 10.0,
            "{:?}",
            r.latency_us
        );
        assert_eq!(r.per_second.len(), 2);
        assert_eq!((r.per_second[0].succeeded, r.per_second[1].errors), (2, 1));
    }

    #[test]
    fn a_fault_keeps_the_jobs_around_it_in_slices() {
        let ms = Duration::from_millis;
        let sample = |at, latency, error: Option<&str>| Sample {
            at: ms(at),
            latency: ms(latency),
            error: error.map(str::to_owned),
        };
        let samples = vec![
            sample(500, 1, None),   // before the slices: left out
            sample(3_050, 2, None), // the first slice
            sample(5_010, 0, Some("unavailable")),
            sample(5_020, 0, Some("unavailable")),
            sample(5_490, 480, None), // waited through the gap
            sample(7_450, 1, None),   // 2 s after the recovery: the last slice
            sample(9_000, 1, None),   // after: left out
        ];
        let f = Fault::new("kill".into(), ms(5_000), ms(450), &samples);
        assert_eq!(f.around.first().map(|s| s.from_s), Some(3.0));
        assert!((f.around.last().unwrap().from_s - 7.4).abs() < 1e-9);
        let at = |t: f64| {
            f.around
                .iter()
                .find(|s| (s.from_s - t).abs() < 1e-9)
                .unwrap()
        };
        assert_eq!((at(3.0).succeeded, at(3.0).errors), (1, 0));
        assert_eq!((at(5.0).succeeded, at(5.0).errors), (0, 2));
        assert_eq!(at(5.4).succeeded, 1);
        assert!((at(5.4).max_us - 480_000.0).abs() < 1.0);
        assert_eq!(at(7.4).succeeded, 1);
        let total: u64 = f.around.iter().map(|s| s.succeeded + s.errors).sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn a_report_round_trips_and_another_schema_is_refused() {
        let report = Report {
            schema: SCHEMA.into(),
            system: System::arbor(),
            started: "2026-12-07T00:00:00Z".into(),
            machine: Machine::here(),
            nodes: 3,
            cluster_gpus: vec![],
            scenarios: vec![ScenarioReport::of("jobs", shape(), &[])],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        assert_eq!(Report::read(&path).unwrap(), report);
        let other = Report {
            schema: "arbor-bench-report/9".into(),
            ..report
        };
        std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
        let err = Report::read(&path).unwrap_err().to_string();
        assert!(err.contains("arbor-bench-report/9"), "{err}");
    }
}
