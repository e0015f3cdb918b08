//! JSON values inside binary messages: `#[serde(with = "arbor_proto::json_text")]`.
//!
//! Metadata and filters are free-form JSON. Between the client and the gateway they are JSON
//! like the rest of the message; between nodes, messages are bincode, which cannot decode a
//! `serde_json::Value` (it needs `deserialize_any`, and bincode's format does not describe
//! itself). A field under this attribute is written as itself to a human-readable format
//! (JSON) and as its JSON text to any other (bincode), so one type serves both doors and no
//! wire copy of it is needed.

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes `value` as itself, or as its JSON text where the format is not human-readable.
pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        value.serialize(s)
    } else {
        serde_json::to_string(value)
            .map_err(S::Error::custom)?
            .serialize(s)
    }
}

/// Reads what [`serialize`] wrote; JSON text that is not a `T` is an error naming why.
pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    if d.is_human_readable() {
        T::deserialize(d)
    } else {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}
