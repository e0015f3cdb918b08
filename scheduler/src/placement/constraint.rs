//! Conditions on node labels, and their two encodings.
//!
//! People write a constraint as `{ op = "equal", key = "zone", value = "a" }` (TOML, JSON):
//! an internally tagged form. bincode, which carries deployments through the Raft log,
//! cannot decode internally tagged enums (they need `deserialize_any`), so a binary
//! serializer gets the externally tagged form instead. Which one is used follows the
//! serializer's `is_human_readable()`; both decode back to the same value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A condition on a node's labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelConstraint {
    /// The label is present with this value.
    Equal { key: String, value: String },
    /// The label is absent or has another value.
    NotEqual { key: String, value: String },
    /// The label is present with one of these values.
    In {
        key: String,
        values: BTreeSet<String>,
    },
    /// The label is present, whatever its value.
    Exists { key: String },
}

impl LabelConstraint {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelConstraint::Equal { key, value } => labels.get(key) == Some(value),
            LabelConstraint::NotEqual { key, value } => labels.get(key) != Some(value),
            LabelConstraint::In { key, values } => {
                labels.get(key).is_some_and(|v| values.contains(v))
            }
            LabelConstraint::Exists { key } => labels.contains_key(key),
        }
    }
}

impl fmt::Display for LabelConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelConstraint::Equal { key, value } => write!(f, "{key}={value}"),
            LabelConstraint::NotEqual { key, value } => write!(f, "{key}!={value}"),
            LabelConstraint::In { key, values } => {
                let list: Vec<&str> = values.iter().map(String::as_str).collect();
                write!(f, "{key} in ({})", list.join(", "))
            }
            LabelConstraint::Exists { key } => write!(f, "label {key}"),
        }
    }
}

/// The form people write: tagged by `op`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Written {
    Equal {
        key: String,
        value: String,
    },
    NotEqual {
        key: String,
        value: String,
    },
    In {
        key: String,
        values: BTreeSet<String>,
    },
    Exists {
        key: String,
    },
}

/// The form binary encodings carry: externally tagged.
#[derive(Serialize, Deserialize)]
enum Binary {
    Equal {
        key: String,
        value: String,
    },
    NotEqual {
        key: String,
        value: String,
    },
    In {
        key: String,
        values: BTreeSet<String>,
    },
    Exists {
        key: String,
    },
}

impl Serialize for LabelConstraint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.clone();
        if serializer.is_human_readable() {
            match c {
                LabelConstraint::Equal { key, value } => Written::Equal { key, value },
                LabelConstraint::NotEqual { key, value } => Written::NotEqual { key, value },
                LabelConstraint::In { key, values } => Written::In { key, values },
                LabelConstraint::Exists { key } => Written::Exists { key },
            }
            .serialize(serializer)
        } else {
            match c {
                LabelConstraint::Equal { key, value } => Binary::Equal { key, value },
                LabelConstraint::NotEqual { key, value } => Binary::NotEqual { key, value },
                LabelConstraint::In { key, values } => Binary::In { key, values },
                LabelConstraint::Exists { key } => Binary::Exists { key },
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for LabelConstraint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(if deserializer.is_human_readable() {
            match Written::deserialize(deserializer)? {
                Written::Equal { key, value } => LabelConstraint::Equal { key, value },
                Written::NotEqual { key, value } => LabelConstraint::NotEqual { key, value },
                Written::In { key, values } => LabelConstraint::In { key, values },
                Written::Exists { key } => LabelConstraint::Exists { key },
            }
        } else {
            match Binary::deserialize(deserializer)? {
                Binary::Equal { key, value } => LabelConstraint::Equal { key, value },
                Binary::NotEqual { key, value } => LabelConstraint::NotEqual { key, value },
                Binary::In { key, values } => LabelConstraint::In { key, values },
                Binary::Exists { key } => LabelConstraint::Exists { key },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<LabelConstraint> {
        vec![
            LabelConstraint::Equal {
                key: "zone".into(),
                value: "a".into(),
            },
            LabelConstraint::NotEqual {
                key: "zone".into(),
                value: "b".into(),
            },
            LabelConstraint::In {
                key: "rack".into(),
                values: ["r1".to_string(), "r2".to_string()].into(),
            },
            LabelConstraint::Exists { key: "ssd".into() },
        ]
    }

    #[test]
    fn people_write_the_op_form_and_binary_round_trips() {
        let json = serde_json::to_string(&all()[0]).unwrap();
        assert_eq!(json, r#"{"op":"equal","key":"zone","value":"a"}"#);
        let parsed: LabelConstraint =
            toml::from_str("op = \"in\"\nkey = \"rack\"\nvalues = [\"r1\", \"r2\"]").unwrap();
        assert_eq!(parsed, all()[2]);
        for c in all() {
            let bytes = crate::codec::encode("constraint", &c).unwrap();
            let back: LabelConstraint =
                crate::codec::decode::<_, 4096>("constraint", &bytes).unwrap();
            assert_eq!(back, c);
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<LabelConstraint>(&text).unwrap(), c);
        }
        let err = serde_json::from_str::<LabelConstraint>(
            r#"{"op":"equal","key":"k","value":"v","x":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
