//! Payloads of messages that cross nodes.
//!
//! ractor_cluster hands a remote message's bytes to `BytesConvertable::from_bytes`, which
//! cannot fail. A peer (or anything that reached the port) may send bytes that do not decode,
//! and a node must never panic on input from the network. So every payload travels as a
//! [`Wire<T>`]: bincode 2 with a decode limit, whose decoding result is kept, and the handler
//! sees a [`WireError`] instead of a panic.

use std::fmt;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use ractor::BytesConvertable;
use serde::{Serialize, de::DeserializeOwned};

/// The largest payload a node decodes, in bytes. ractor_cluster's own frame limit is 16 MiB;
/// bulk data is chunked well below it.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_PAYLOAD_BYTES>>;

fn config() -> WireConfig {
    bincode::config::standard().with_limit::<MAX_PAYLOAD_BYTES>()
}

/// Why a payload could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("payload of {len} bytes does not decode as {ty}: {reason}")]
    Decode {
        ty: &'static str,
        len: usize,
        reason: String,
    },
    #[error("payload of type {ty} could not be encoded: {reason}")]
    Encode { ty: &'static str, reason: String },
}

/// A payload that crossed (or will cross) the network: the decoded value or why it is not.
#[derive(Clone, PartialEq)]
pub struct Wire<T>(Result<T, WireError>);

impl<T> Wire<T> {
    pub fn new(value: T) -> Self {
        Wire(Ok(value))
    }

    /// The value, or why the bytes that carried it were unusable.
    pub fn into_inner(self) -> Result<T, WireError> {
        self.0
    }

    pub fn as_ref(&self) -> Result<&T, &WireError> {
        self.0.as_ref()
    }
}

impl<T: fmt::Debug> fmt::Debug for Wire<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> From<T> for Wire<T> {
    fn from(value: T) -> Self {
        Wire::new(value)
    }
}

/// Encodes a value with the wire configuration.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| WireError::Encode {
        ty: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Decodes a value with the wire configuration: never allocates past [`MAX_PAYLOAD_BYTES`],
/// and rejects trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let fail = |reason: String| WireError::Decode {
        ty: std::any::type_name::<T>(),
        len: bytes.len(),
        reason,
    };
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(fail(format!("over the {MAX_PAYLOAD_BYTES}-byte limit")));
    }
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| fail(e.to_string()))?;
    if read != bytes.len() {
        return Err(fail(format!("{} trailing bytes", bytes.len() - read)));
    }
    Ok(value)
}

impl<T: Serialize + DeserializeOwned> BytesConvertable for Wire<T> {
    fn into_bytes(self) -> Vec<u8> {
        // An encoding failure (or an undecodable value being forwarded) travels as an empty
        // payload, which the receiver reports as a decode error: nothing panics.
        match self.0 {
            Ok(value) => encode(&value).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Wire(decode(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Beat {
        from: u64,
        labels: Vec<String>,
    }

    #[test]
    fn round_trips() {
        let beat = Beat {
            from: 7,
            labels: vec!["zone=a".into()],
        };
        let bytes = Wire::new(beat.clone()).into_bytes();
        assert_eq!(Wire::<Beat>::from_bytes(bytes).into_inner(), Ok(beat));
    }

    #[test]
    fn hostile_lengths_are_errors_not_aborts() {
        // A vector that claims 2^60 elements: without a limit, bincode would try to allocate.
        let mut bytes = vec![7u8];
        bytes.extend_from_slice(&[0xFF, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        let err = Wire::<Beat>::from_bytes(bytes).into_inner().unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn empty_and_trailing_bytes_are_errors() {
        assert!(Wire::<Beat>::from_bytes(Vec::new()).into_inner().is_err());
        let mut bytes = encode(&Beat {
            from: 1,
            labels: vec![],
        })
        .unwrap();
        bytes.push(0);
        let err = decode::<Beat>(&bytes).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }
}
