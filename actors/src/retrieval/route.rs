//! Where a chunk lives: its vector id and its partition, both derived from the document id and
//! the chunk's position, so ingesting a document again writes the same ids (idempotent) to the
//! same partitions, on any coordinator.

/// FNV-1a, 64 bits: stable across processes, versions and platforms (unlike `std`'s hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The vector id of chunk `chunk` of document `doc_id`.
pub fn chunk_id(doc_id: &str, chunk: u32) -> u64 {
    fnv1a(&[doc_id.as_bytes(), &chunk.to_le_bytes()])
}

/// The partition (of `partitions`) that holds a vector id. Ids are hashes already; the
/// multiply-shift spreads them evenly for any partition count.
pub fn partition_of(id: u64, partitions: u32) -> u32 {
    ((u128::from(id) * u128::from(partitions.max(1))) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(chunk_id("doc", 0), chunk_id("doc", 0));
        assert_ne!(chunk_id("doc", 0), chunk_id("doc", 1));
        assert_ne!(chunk_id("ab", 0), chunk_id("a", 0));
        // Pinned: a change here would move every stored chunk.
        assert_eq!(chunk_id("", 0), fnv1a(&[b"", &0u32.to_le_bytes()]));
    }

    #[test]
    fn partitions_are_in_range_and_balanced() {
        let mut counts = [0u32; 4];
        for doc in 0..4000 {
            let p = partition_of(chunk_id(&format!("doc-{doc}"), 0), 4);
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(partition_of(u64::MAX, 1), 0);
        assert_eq!(partition_of(u64::MAX, 7), 6);
    }
}
