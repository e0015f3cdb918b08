//! Exact top-k over two partitions, merged into the answer one scan over all rows gives.
//!
//! ```sh
//! cargo run -p arbor-kernels --example topk
//! ```
//!
//! This is what a retrieval coordinator does with its partitions' answers: each partition
//! scans its own rows, and [`merge`] keeps the best `k` of the lists (equal scores ordered by
//! id, so the merge is deterministic).

use arbor_kernels::Device;
use arbor_kernels::topk::{ExactIndex, Metric, VectorIndex, merge};

const DIM: usize = 8;

/// A vector that points mostly along axis `i % DIM`.
fn row(i: u64) -> Vec<f32> {
    (0..DIM)
        .map(|d| {
            if d == (i as usize) % DIM {
                1.0
            } else {
                0.01 * i as f32
            }
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two partitions, scanned on the CPU (`Device::Cuda(0)` with `new_or_cpu` scans on the
    // first GPU, and falls back to the CPU where none is usable).
    let mut partitions = Vec::new();
    for p in 0..2u64 {
        let mut index = ExactIndex::new_or_cpu(DIM, Metric::Cosine, Device::Cpu)?;
        let ids: Vec<u64> = (0..100).filter(|i| i % 2 == p).collect();
        let rows: Vec<f32> = ids.iter().flat_map(|&i| row(i)).collect();
        index.upsert(&ids, &rows)?;
        partitions.push(index);
    }

    let query = row(3);
    let k = 5;
    let lists: Vec<_> = partitions
        .iter()
        .map(|index| {
            index
                .search(&query, k)
                .map(|mut per_query| per_query.remove(0))
        })
        .collect::<Result<_, _>>()?;
    let best = merge(Metric::Cosine, k, lists.iter().map(Vec::as_slice));

    println!("the {k} rows nearest to row 3 (cosine), from 2 partitions:");
    for hit in &best {
        println!("  id {:>3}  score {:.4}", hit.id, hit.score);
    }
    assert_eq!(best[0].id, 3, "a row is its own nearest neighbour");
    Ok(())
}
