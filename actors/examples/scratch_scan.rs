use arbor_actors::partition::VectorRecord;
use arbor_actors::partition::store::{CheckedBatch, Store};
use arbor_kernels::topk::Metric;
use std::time::Instant;
fn main() {
    let dir = std::path::PathBuf::from("/tmp/scratch_scan");
    let path = dir.join("p.redb");
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let fresh = !path.exists();
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = Store::open(&path, 384, Metric::Dot).unwrap();
    if fresh {
        let t = Instant::now();
        let mut x: u64 = 12345;
        for b in 0..(n / 1024) {
            let recs: Vec<VectorRecord> = (0..1024)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    VectorRecord {
                        id: x >> 1,
                        vector: vec![(b * 1024 + i) as f32; 384],
                        metadata: format!(
                            "{{\"n\":{},\"source\":\"synthetic\",\"doc\":\"d-{}\"}}",
                            b * 1024 + i,
                            x
                        ),
                    }
                })
                .collect();
            s.upsert(&CheckedBatch::new(384, &recs).unwrap(), 1)
                .unwrap();
        }
        eprintln!("loaded in {:?}", t.elapsed());
    }
    let t = Instant::now();
    let mut after = 0u64;
    let mut rows = 0;
    loop {
        let (page, more) = s.scan(after..=u64::MAX, 2048, 8 << 20).unwrap();
        rows += page.len();
        if !more {
            break;
        }
        after = page.last().unwrap().id + 1;
    }
    eprintln!("scanned {rows} in {:?}", t.elapsed());
}
