//! Vectors as little-endian `f32` bytes: the form they take in binary payloads (packed rows,
//! rows between nodes). One cast for a whole vector or batch instead of one call per
//! component: a bulk load moves every row through four hops, and component by component its
//! vectors were a tenth of the load's CPU.

use std::borrow::Cow;

/// `values` as little-endian bytes; borrowed where the machine is little-endian.
pub fn to_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        Cow::Owned(values.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// The values little-endian `bytes` hold; `None` if they are not whole 4-byte components.
pub fn from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    // The bytes may sit at any alignment, so they are copied rather than cast in place.
    let mut values = vec![0f32; bytes.len() / 4];
    bytemuck::cast_slice_mut::<f32, u8>(&mut values).copy_from_slice(bytes);
    if cfg!(target_endian = "big") {
        for x in &mut values {
            *x = f32::from_bits(x.to_bits().swap_bytes());
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_ragged_bytes_are_refused() {
        let values = [0.0f32, -1.5, f32::MAX, f32::MIN_POSITIVE, 3.25e-7];
        let bytes = to_bytes(&values);
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[4..8], (-1.5f32).to_le_bytes().as_slice());
        assert_eq!(from_bytes(&bytes).unwrap(), values);
        // At an odd offset: the copy does not need the bytes aligned.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(from_bytes(&shifted[1..]).unwrap(), values);
        assert_eq!(from_bytes(&bytes[..7]), None);
        assert_eq!(from_bytes(&[]).unwrap(), Vec::<f32>::new());
    }
}
