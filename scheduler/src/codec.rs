//! bincode 2 encoding for everything the control plane stores or replicates, always decoded
//! with a size limit (ARCHITECTURE.md, Decisions: a hostile length prefix must not abort the
//! process).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest encoded [`crate::Command`] proposal accepted (a batch of placements fits easily).
pub const MAX_PROPOSAL_BYTES: usize = 32 * 1024 * 1024;
/// Largest encoded state-machine snapshot accepted (as the transport's default
/// `max_message_bytes`).
pub const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;

/// Why bytes could not be turned into a value.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: bincode::error::EncodeError,
    },
    #[error("cannot decode {what} ({len} bytes): {source}")]
    Decode {
        what: &'static str,
        len: usize,
        #[source]
        source: bincode::error::DecodeError,
    },
    #[error("{what}: {trailing} trailing bytes after the value")]
    Trailing { what: &'static str, trailing: usize },
}

/// Encodes `value` with bincode's standard configuration.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|source| CodecError::Encode { what, source })
}

/// Decodes a `T` from exactly `bytes`, refusing to allocate more than `LIMIT` bytes.
pub fn decode<T: DeserializeOwned, const LIMIT: usize>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|source| CodecError::Decode {
            what,
            len: bytes.len(),
            source,
        })?;
    if read != bytes.len() {
        return Err(CodecError::Trailing {
            what,
            trailing: bytes.len() - read,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_length_prefix_is_an_error_not_an_abort() {
        // A Vec<u8> claiming 2^62 elements.
        let bytes = [0xff, 0, 0, 0, 0, 0, 0, 0, 0x40, 1, 2, 3];
        let err = decode::<Vec<u8>, 1024>("test vec", &bytes).unwrap_err();
        assert!(err.to_string().contains("test vec"), "{err}");
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let mut bytes = encode("v", &vec![1u32, 2, 3]).unwrap();
        assert_eq!(
            decode::<Vec<u32>, 1024>("v", &bytes).unwrap(),
            vec![1, 2, 3]
        );
        bytes.push(7);
        assert!(matches!(
            decode::<Vec<u32>, 1024>("v", &bytes),
            Err(CodecError::Trailing { trailing: 1, .. })
        ));
    }
}
