//! What recording metrics costs per job and per call, without the noise of a cluster: the
//! metric calls a gateway job and a deployment call make, through the real code, with no
//! recorder (what a node without an HTTP port runs) and with the Prometheus recorder a node
//! with one installs, side by side in one run.
//!
//! `cargo bench -p arbor-benches --bench metrics_calls`; `cli/benches/metrics.rs` measures the
//! same end to end against `arbor node` processes.

use std::hint::black_box;
use std::time::Duration;

use arbor_actors::router::Router;
use criterion::Criterion;
use metrics_exporter_prometheus::PrometheusBuilder;

fn main() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.001, 0.01, 0.1, 1.0])
        .unwrap()
        .build_recorder();
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    let mut g = c.benchmark_group("metrics");
    // A gateway job's end: counted by kind and end, timed by kind.
    let job = || {
        arbor_node::http::metrics::job_finished(
            "call",
            "succeeded",
            black_box(Duration::from_micros(120)),
        )
    };
    g.bench_function("job_finished/off", |b| b.iter(job));
    g.bench_function("job_finished/on", |b| {
        b.iter(|| metrics::with_local_recorder(&recorder, job))
    });
    // A router to a deployment, as a gateway `call` job makes one: its latency histogram's
    // handle and the deployment's in-flight counter.
    let router = || black_box(Router::new("bench", "echo"));
    g.bench_function("router_new/off", |b| b.iter(router));
    g.bench_function("router_new/on", |b| {
        b.iter(|| metrics::with_local_recorder(&recorder, router))
    });
    g.finish();
    recorder.handle().run_upkeep();
    c.final_summary();
}
