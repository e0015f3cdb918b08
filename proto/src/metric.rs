//! How a collection compares vectors: one word for the control plane that records it, the
//! gateway that reads it from a client and the kernels that score with it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a query and a row are compared. The variants' order is their encoding in the Raft log
/// and on the wire: new ones go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; higher is better. Rows and queries are L2-normalized when they enter
    /// the index, so the scan is an inner product. A zero vector scores 0 against everything.
    Cosine,
    /// Inner product; higher is better.
    Dot,
    /// Squared Euclidean distance; smaller is better.
    L2,
}

impl Metric {
    /// The name on the command line, in files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2 => "l2",
        }
    }

    /// True when a smaller score is the better one.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Metric::L2)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A metric name that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?}: expected cosine, dot or l2")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "dot" => Ok(Metric::Dot),
            "l2" => Ok(Metric::L2),
            _ => Err(UnknownMetric(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for m in [Metric::Cosine, Metric::Dot, Metric::L2] {
            assert_eq!(m.as_str().parse::<Metric>(), Ok(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        let err = "manhattan".parse::<Metric>().unwrap_err();
        assert!(err.to_string().contains("\"manhattan\""), "{err}");
        assert!(Metric::L2.lower_is_better() && !Metric::Cosine.lower_is_better());
    }
}
