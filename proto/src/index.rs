//! How a collection's partitions search: an exact scan or an HNSW graph, over f32 rows or
//! int8 codes. One type for the gateway that reads it from a client, the control plane that
//! records it (bincode, in the Raft log) and the partition that builds it (JSON, in its
//! deployment's config).

use serde::{Deserialize, Serialize};

/// A collection's index. The variants' order is their encoding in the Raft log: new ones go
/// at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexSpec {
    /// Every row scored for every query: exact, and linear in the rows.
    #[default]
    Exact,
    /// A hierarchical navigable small-world graph: approximate, sublinear.
    Hnsw(HnswSpec),
}

/// An HNSW graph's settings (see `arbor_kernels::hnsw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswSpec {
    /// Links per node on the upper layers (twice this on layer 0).
    #[serde(default = "default_m")]
    pub m: u32,
    /// Candidates kept while inserting: higher builds a better graph, slower.
    #[serde(default = "default_ef_construction")]
    pub ef_construction: u32,
    /// Candidates kept while searching (at least `k`): higher is more accurate, slower. A
    /// query may ask for its own (`ef`).
    #[serde(default = "default_ef_search")]
    pub ef_search: u32,
}

impl Default for HnswSpec {
    fn default() -> Self {
        HnswSpec {
            m: default_m(),
            ef_construction: default_ef_construction(),
            ef_search: default_ef_search(),
        }
    }
}

fn default_m() -> u32 {
    16
}
fn default_ef_construction() -> u32 {
    128
}
fn default_ef_search() -> u32 {
    64
}

/// How a collection's partitions hold vectors in memory. The variants' order is their encoding
/// in the Raft log: new ones go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Every component as f32: exact scores, 4 bytes per component.
    #[default]
    None,
    /// One byte per component through a per-dimension range trained on the partition's rows
    /// (`arbor_kernels::quant`): a quarter of the memory. Searches score the codes and rescore
    /// the best candidates with the f32 rows read from disk, so the scores returned are exact.
    Int8,
}

impl Quantization {
    /// "none" or "int8", as flags and listings write it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = BadIndex;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Quantization::None),
            "int8" => Ok(Quantization::Int8),
            other => Err(BadIndex(format!(
                "quantization {other:?} is not known: use none or int8"
            ))),
        }
    }
}

/// The bounds of an HNSW setting.
pub const M_RANGE: std::ops::RangeInclusive<u32> = 2..=128;
/// The bounds of `ef_construction`, `ef_search` and a query's `ef`.
pub const EF_RANGE: std::ops::RangeInclusive<u32> = 1..=4096;

/// Why an index spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadIndex(pub String);

impl IndexSpec {
    /// "exact" or "hnsw", as listings show it.
    pub fn kind(&self) -> &'static str {
        match self {
            IndexSpec::Exact => "exact",
            IndexSpec::Hnsw(_) => "hnsw",
        }
    }

    /// Checks the settings are within their bounds.
    pub fn validate(&self) -> Result<(), BadIndex> {
        let IndexSpec::Hnsw(h) = self else {
            return Ok(());
        };
        if !M_RANGE.contains(&h.m) {
            return Err(BadIndex(format!(
                "hnsw m {} is not in {}..={}",
                h.m,
                M_RANGE.start(),
                M_RANGE.end()
            )));
        }
        for (name, v) in [
            ("ef_construction", h.ef_construction),
            ("ef_search", h.ef_search),
        ] {
            if !EF_RANGE.contains(&v) {
                return Err(BadIndex(format!(
                    "hnsw {name} {v} is not in {}..={}",
                    EF_RANGE.start(),
                    EF_RANGE.end()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let exact: IndexSpec = serde_json::from_str(r#""exact""#).unwrap();
        assert_eq!(exact, IndexSpec::Exact);
        let hnsw: IndexSpec = serde_json::from_str(r#"{"hnsw": {"m": 32}}"#).unwrap();
        assert_eq!(
            hnsw,
            IndexSpec::Hnsw(HnswSpec {
                m: 32,
                ..HnswSpec::default()
            })
        );
        let back: IndexSpec = serde_json::from_str(&serde_json::to_string(&hnsw).unwrap()).unwrap();
        assert_eq!(back, hnsw);
        assert!(serde_json::from_str::<IndexSpec>(r#""ivf""#).is_err());
        assert!(serde_json::from_str::<IndexSpec>(r#"{"hnsw": {"mm": 3}}"#).is_err());
    }

    #[test]
    fn quantization_forms() {
        for q in [Quantization::None, Quantization::Int8] {
            assert_eq!(q.as_str().parse::<Quantization>().unwrap(), q);
            let json = serde_json::to_string(&q).unwrap();
            assert_eq!(json, format!("\"{}\"", q.as_str()));
            assert_eq!(serde_json::from_str::<Quantization>(&json).unwrap(), q);
        }
        let err = "int4".parse::<Quantization>().unwrap_err();
        assert!(
            err.0.contains("int4") && err.0.contains("none or int8"),
            "{err}"
        );
        assert_eq!(Quantization::default(), Quantization::None);
    }

    #[test]
    fn bounds() {
        assert!(IndexSpec::Exact.validate().is_ok());
        assert!(IndexSpec::Hnsw(HnswSpec::default()).validate().is_ok());
        let bad = IndexSpec::Hnsw(HnswSpec {
            m: 1,
            ..HnswSpec::default()
        });
        assert!(bad.validate().unwrap_err().0.contains("m 1"));
        let bad = IndexSpec::Hnsw(HnswSpec {
            ef_search: 0,
            ..HnswSpec::default()
        });
        assert!(bad.validate().unwrap_err().0.contains("ef_search 0"));
    }
}
