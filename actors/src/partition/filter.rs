//! Metadata filters: which rows may take part in a search.
//!
//! Pure functions over a row's metadata (a JSON object), so they are tested without a
//! partition. A filter travels as JSON text (bincode cannot carry `serde_json::Value`), tagged
//! by `"op"`:
//!
//! ```json
//! {"op": "and", "filters": [
//!     {"op": "equal", "key": "lang", "value": "en"},
//!     {"op": "in", "key": "source", "values": ["a", "b"]},
//!     {"op": "range", "key": "page", "gte": 3, "lt": 10}
//! ]}
//! ```
//!
//! Numbers compare by value (`3` equals `3.0`); a row that lacks the key never matches.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The longest filter text accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

/// A condition on a row's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetadataFilter {
    /// The value under `key` equals `value`.
    Equal { key: String, value: Value },
    /// The value under `key` equals one of `values`.
    In { key: String, values: Vec<Value> },
    /// The value under `key` is a number within every bound given (at least one is needed).
    Range {
        key: String,
        #[serde(default, deserialize_with = "number_bound")]
        gte: Option<f64>,
        #[serde(default, deserialize_with = "number_bound")]
        gt: Option<f64>,
        #[serde(default, deserialize_with = "number_bound")]
        lte: Option<f64>,
        #[serde(default, deserialize_with = "number_bound")]
        lt: Option<f64>,
    },
    /// Every one of `filters` matches (an empty list matches every row).
    And { filters: Vec<MetadataFilter> },
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter is not valid JSON for a metadata filter: {0}")]
    Json(String),
    #[error("filter text of {len} bytes is over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("a filter's key must not be empty")]
    EmptyKey,
    #[error("range filter on {key:?} has no bound: give at least one of gte, gt, lte, lt")]
    RangeWithoutBound { key: String },
    #[error("in filter on {key:?} lists no values, so it could match nothing")]
    InWithoutValues { key: String },
}

/// Range bounds must be JSON numbers; anything else is refused with a message that says so
/// (serde's own message would only say "expected f64").
fn number_bound<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("range bound {n} is not a number"))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "range bounds must be numbers, got {other}"
        ))),
    }
}

impl MetadataFilter {
    /// Parses and validates a filter from its JSON text.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong {
                len: text.len(),
                max: MAX_FILTER_BYTES,
            });
        }
        let filter: MetadataFilter =
            serde_json::from_str(text).map_err(|e| FilterError::Json(e.to_string()))?;
        filter.validate()?;
        Ok(filter)
    }

    /// The filter as JSON text, as it travels on the wire.
    pub fn to_json(&self) -> String {
        // A filter holds only strings, numbers and JSON values: encoding cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Refuses filters that are surely mistakes: an empty key, a range with no bound, an `in`
    /// with no values.
    pub fn validate(&self) -> Result<(), FilterError> {
        match self {
            MetadataFilter::Equal { key, .. } => check_key(key),
            MetadataFilter::In { key, values } => {
                check_key(key)?;
                if values.is_empty() {
                    return Err(FilterError::InWithoutValues { key: key.clone() });
                }
                Ok(())
            }
            MetadataFilter::Range {
                key,
                gte,
                gt,
                lte,
                lt,
            } => {
                check_key(key)?;
                if gte.is_none() && gt.is_none() && lte.is_none() && lt.is_none() {
                    return Err(FilterError::RangeWithoutBound { key: key.clone() });
                }
                Ok(())
            }
            MetadataFilter::And { filters } => filters.iter().try_for_each(Self::validate),
        }
    }

    /// True when `metadata` passes the filter. This is the definition; the partition's
    /// compact in-memory form (`partition::metadata`) is tested against it.
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        let get = |key: &str| metadata.get(key);
        match self {
            MetadataFilter::Equal { key, value } => get(key).is_some_and(|v| json_eq(v, value)),
            MetadataFilter::In { key, values } => {
                get(key).is_some_and(|v| values.iter().any(|w| json_eq(v, w)))
            }
            MetadataFilter::Range {
                key,
                gte,
                gt,
                lte,
                lt,
            } => {
                let Some(x) = get(key).and_then(Value::as_f64) else {
                    return false;
                };
                gte.is_none_or(|b| x >= b)
                    && gt.is_none_or(|b| x > b)
                    && lte.is_none_or(|b| x <= b)
                    && lt.is_none_or(|b| x < b)
            }
            MetadataFilter::And { filters } => filters.iter().all(|f| f.matches(metadata)),
        }
    }
}

fn check_key(key: &str) -> Result<(), FilterError> {
    if key.is_empty() {
        Err(FilterError::EmptyKey)
    } else {
        Ok(())
    }
}

/// JSON equality where numbers compare by value: integers exactly, otherwise as f64.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn equal_in_range_and() {
        let r = row(json!({"lang": "en", "page": 4, "score": 0.5, "tags": ["a"]}));
        let f = |t: &str| MetadataFilter::parse(t).unwrap();
        assert!(f(r#"{"op":"equal","key":"lang","value":"en"}"#).matches(&r));
        assert!(!f(r#"{"op":"equal","key":"lang","value":"fr"}"#).matches(&r));
        assert!(f(r#"{"op":"equal","key":"page","value":4.0}"#).matches(&r));
        assert!(f(r#"{"op":"equal","key":"tags","value":["a"]}"#).matches(&r));
        assert!(!f(r#"{"op":"equal","key":"missing","value":null}"#).matches(&r));
        assert!(f(r#"{"op":"in","key":"lang","values":["fr","en"]}"#).matches(&r));
        assert!(!f(r#"{"op":"in","key":"lang","values":["fr"]}"#).matches(&r));
        assert!(f(r#"{"op":"range","key":"page","gte":4,"lt":5}"#).matches(&r));
        assert!(!f(r#"{"op":"range","key":"page","gt":4}"#).matches(&r));
        assert!(f(r#"{"op":"range","key":"score","lte":0.5}"#).matches(&r));
        assert!(!f(r#"{"op":"range","key":"lang","lte":10}"#).matches(&r));
        assert!(!f(r#"{"op":"range","key":"missing","lte":10}"#).matches(&r));
        let both = f(r#"{"op":"and","filters":[
            {"op":"equal","key":"lang","value":"en"},
            {"op":"range","key":"page","gt":3}]}"#);
        assert!(both.matches(&r));
        assert!(f(r#"{"op":"and","filters":[]}"#).matches(&r));
        let not_both = f(r#"{"op":"and","filters":[
            {"op":"equal","key":"lang","value":"en"},
            {"op":"range","key":"page","gt":4}]}"#);
        assert!(!not_both.matches(&r));
    }

    #[test]
    fn round_trips_as_json_text() {
        let filter = MetadataFilter::And {
            filters: vec![
                MetadataFilter::In {
                    key: "k".into(),
                    values: vec![json!(1), json!("x")],
                },
                MetadataFilter::Range {
                    key: "n".into(),
                    gte: Some(1.5),
                    gt: None,
                    lte: None,
                    lt: Some(9.0),
                },
            ],
        };
        assert_eq!(MetadataFilter::parse(&filter.to_json()), Ok(filter));
    }

    #[test]
    fn mistakes_are_refused_with_reasons() {
        let err = |t: &str| MetadataFilter::parse(t).unwrap_err().to_string();
        assert!(err(r#"{"op":"range","key":"page"}"#).contains("no bound"));
        assert!(err(r#"{"op":"range","key":"page","gte":"3"}"#).contains("must be numbers"));
        assert!(err(r#"{"op":"in","key":"k","values":[]}"#).contains("no values"));
        assert!(err(r#"{"op":"equal","key":"","value":1}"#).contains("key must not be empty"));
        assert!(err(r#"{"op":"like","key":"k"}"#).contains("not valid JSON"));
        assert!(err(r#"{"op":"equal","key":"k","value":1,"x":2}"#).contains("unknown field"));
        assert!(err("[1,2]").contains("not valid JSON"));
        let nested = r#"{"op":"and","filters":[{"op":"range","key":"p"}]}"#;
        assert!(err(nested).contains("no bound"));
        let long = format!(
            r#"{{"op":"equal","key":"k","value":"{}"}}"#,
            "x".repeat(70_000)
        );
        assert!(err(&long).contains("over the"));
    }
}
