#!/usr/bin/env python3
"""Arbor's HNSW index (arbor_kernels::hnsw) beside hnswlib, on the same vectors and settings.

One partition's worth of work, in one process each, one query per call on one thread: the
graph is built from the same rows with the same m and ef_construction on the same number of
threads, then searched at a sweep of ef; recall@k is against an exact search (numpy).
Prints, per build thread count and target recall (0.95, 0.99), the queries/s of each at the
smallest ef that reaches it and their ratio, and the build times:

    "$(benches/peers/setup.sh)" benches/peers/hnsw.py [--rows 100000] [--dim 384]
        [--queries 1000] [--k 10] [--m 16] [--ef-construction 128] [--threads 1[,2..]]
        [--quantization none|int8|none,int8]
        [--arbor $CARGO_TARGET_DIR/release/examples/hnsw_sweep] [--json OUT]

`--threads 1,2` builds each graph twice, once per thread count (hnswlib's num_threads,
arbor's HnswIndex::upsert_parallel on a pool of that many threads; 1 is arbor's
deterministic sequential build), and sweeps each graph: a parallel build must not cost recall.

`--quantization int8` measures arbor's graph on int8 codes (hnsw::QuantizedHnsw) instead of
the f32 graph (`none`, the default); `none,int8` measures both beside the same hnswlib run.
int8 is what a collection with `--index hnsw --quantization int8` does: a ScalarQuantizer
trained on up to 32,768 rows taken evenly (its time is part of the build), the graph built
on the codes, and per query the graph's quant::candidates(k) = max(4k, k + 16) hits (so its
ef is at least that: smaller ones are raised, and the sweep starts there) rescored on the f32
rows with quant::rescore. Here those f32 rows sit in memory beside the graph; a partition
reads them from disk instead, so its queries cost more than these (40 rows read per query
for k = 10). For each kind the summary also gives the index's memory (VectorIndex::memory,
host bytes: vectors, graph and id map) and, of it, the vectors alone (f32 rows, or int8
codes plus the quantizer's ranges); int8's f32 rows are in neither, as the partition does
not hold them in memory.

The data is clustered like real sentence embeddings (cluster centres plus a low-dimensional
latent offset plus a little noise; isotropic noise, where every neighbour is about as far as
every other, is the worst case of every graph index and not what a collection holds). The
arbor side is `cargo build --release -p arbor-kernels --example hnsw_sweep` (built when
missing). Run it on a quiet machine; compare nothing across runs.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
EFS = (10, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 384, 512)
TARGETS = (0.95, 0.99)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def clustered(n, dim, clusters, seed, centres=None, projection=None, latent=16):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(1234)
    if centres is None:
        centres = base.uniform(-0.5, 0.5, (clusters, dim)).astype(np.float32)
        projection = base.uniform(-0.5, 0.5, (latent, dim)).astype(np.float32)
    which = rng.integers(0, clusters, n)
    z = rng.uniform(-0.5, 0.5, (n, latent)).astype(np.float32)
    noise = rng.uniform(-0.5, 0.5, (n, dim)).astype(np.float32) * 0.02
    return (centres[which] + z @ projection + noise).astype(np.float32), centres, projection


def normalized(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_top(rows, queries, k):
    r, q = normalized(rows), normalized(queries)
    out = np.empty((len(q), k), dtype=np.int64)
    for i in range(0, len(q), 256):
        sims = q[i:i + 256] @ r.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[i:i + 256] = np.take_along_axis(top, order, axis=1)
    return out


def recall(found, truth):
    k = truth.shape[1]
    return sum(len(set(f[:k]) & set(t)) for f, t in zip(found, truth)) / truth.size


def timed_queries(search, queries, min_seconds=1.0):
    """Queries/s of `search(q)` one query at a time (whole passes until min_seconds), by the
    wall clock and by this process's CPU time (steadier when other work shares the cores)."""
    search(queries[0])
    passes, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        for q in queries:
            search(q)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            done = passes * len(queries)
            return done / elapsed, done / max(time.process_time() - cpu_start, 1e-9)


def hnswlib_sweep(a, rows, queries, truth, threads):
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=a.dim)
    index.init_index(max_elements=len(rows), M=a.m, ef_construction=a.ef_construction,
                     random_seed=1)
    index.set_num_threads(threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    index.add_items(rows, np.arange(len(rows)), num_threads=threads)
    build = time.perf_counter() - start
    build_cpu = time.process_time() - cpu_start
    index.set_num_threads(1)
    log(f"hnswlib: built in {build:.1f} s on {threads} thread(s)")
    points = []
    for ef in EFS:
        if ef < a.k:
            continue
        index.set_ef(ef)
        found = [index.knn_query(q[None, :], k=a.k, num_threads=1)[0][0] for q in queries]
        r = recall(found, truth)
        qps, cpu_qps = timed_queries(
            lambda q: index.knn_query(q[None, :], k=a.k, num_threads=1), queries)
        points.append({"ef": ef, "qps": qps, "cpu_qps": cpu_qps, "recall": r})
        log(f"hnswlib: ef {ef}: recall@{a.k} {r:.4f}, {qps:,.0f} queries/s")
    return {"version": getattr(hnswlib, "__version__", "0.8.0"), "build_s": build,
            "build_cpu_s": build_cpu, "points": points}


def label(kind):
    return "arbor" if kind == "none" else f"arbor {kind}"


def arbor_sweep(a, files, threads, kind):
    exe = pathlib.Path(a.arbor)
    if not exe.is_file():
        log("building the arbor side (cargo build --release -p arbor-kernels --example hnsw_sweep)")
        subprocess.run(["cargo", "build", "--release", "-p", "arbor-kernels", "--example",
                        "hnsw_sweep"], cwd=ROOT, check=True)
    efs = ",".join(str(ef) for ef in EFS if ef >= a.k)
    out = subprocess.run(
        [str(exe), "--rows", files["rows"], "--queries", files["queries"], "--truth",
         files["truth"], "--dim", str(a.dim), "--k", str(a.k), "--m", str(a.m),
         "--ef-construction", str(a.ef_construction), "--ef", efs,
         "--threads", str(threads), "--quantization", kind],
        capture_output=True, text=True, env={"RAYON_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if out.returncode != 0:
        sys.exit(f"error: {exe} failed:\n{out.stderr}")
    result = json.loads(out.stdout)
    name = label(kind)
    log(f"{name}: built in {result['build_s']:.1f} s on {threads} thread(s)")
    for p in result["points"]:
        log(f"{name}: ef {p['ef']}: recall@{a.k} {p['recall']:.4f}, {p['qps']:,.0f} queries/s")
    return result


def at_target(points, target):
    """The first point (smallest ef) that reaches `target`, or None."""
    return next((p for p in points if p["recall"] >= target), None)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--threads", default="1",
                   help="build threads, or a comma-separated list of them (e.g. 1,2)")
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    p.add_argument("--quantization", default="none",
                   help="arbor's vectors: none (f32), int8, or both (none,int8)")
    p.add_argument("--arbor", default=str(target / "release/examples/hnsw_sweep"))
    p.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    a = p.parse_args()

    log(f"data: {a.rows} rows and {a.queries} queries of {a.dim} dimensions, "
        f"{a.clusters} clusters")
    rows, centres, projection = clustered(a.rows, a.dim, a.clusters, seed=1)
    queries, _, _ = clustered(a.queries, a.dim, a.clusters, seed=2, centres=centres,
                              projection=projection)
    truth = exact_top(rows, queries, a.k)
    thread_counts = [int(t) for t in a.threads.split(",")]
    kinds = a.quantization.split(",")
    if not kinds or any(k not in ("none", "int8") for k in kinds) or len(set(kinds)) < len(kinds):
        sys.exit(f"error: --quantization {a.quantization}: none, int8 or none,int8")
    arbors = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"rows": f"{tmp}/rows.f32", "queries": f"{tmp}/queries.f32",
                 "truth": f"{tmp}/truth.u64"}
        rows.tofile(files["rows"])
        queries.tofile(files["queries"])
        truth.astype("<u8").tofile(files["truth"])
        for t in thread_counts:
            for kind in kinds:
                arbors[t, kind] = arbor_sweep(a, files, t, kind)
    peers = {t: hnswlib_sweep(a, rows, queries, truth, t) for t in thread_counts}

    runs = []
    for t in thread_counts:
        peer = peers[t]
        print(f"\n{a.rows:,} x {a.dim}, m {a.m}, ef_construction {a.ef_construction}, k {a.k}, "
              f"built on {t} thread(s), queried one per call on one thread")
        for kind in kinds:
            arbor, name = arbors[t, kind], label(kind)
            trained = (f" (quantizer trained in {arbor['train_s']:.1f} s of it)"
                       if "train_s" in arbor else "")
            print(f"build: {name} {arbor['build_s']:.1f} s{trained}, hnswlib "
                  f"{peer['build_s']:.1f} s ({name}/hnswlib time "
                  f"{arbor['build_s'] / peer['build_s']:.2f}); CPU time: {name} "
                  f"{arbor['build_cpu_s']:.1f} s, hnswlib {peer['build_cpu_s']:.1f} s "
                  f"({arbor['build_cpu_s'] / peer['build_cpu_s']:.2f})")
        for kind in kinds:
            arbor, name = arbors[t, kind], label(kind)
            per_row = arbor["vector_bytes"] / arbor["rows"]
            what = "f32 rows" if kind == "none" else "int8 codes and the quantizer's ranges"
            line = (f"memory: {name} index {arbor['index_bytes'] / 1e6:,.1f} MB, of which "
                    f"vectors ({what}) {arbor['vector_bytes'] / 1e6:,.1f} MB "
                    f"({per_row:,.0f} B/row)")
            if kind == "int8":
                line += (f"; rescoring reads {arbor['candidates']} of the f32 rows "
                         f"({arbor['rows'] * a.dim * 4 / 1e6:,.1f} MB, not counted) per query, "
                         "from memory here, from disk in a partition")
            print(line)
        rows_out = []
        for target in TARGETS:
            for kind in kinds:
                arbor, name = arbors[t, kind], label(kind)
                x, y = at_target(arbor["points"], target), at_target(peer["points"], target)
                if x is None or y is None:
                    print(f"recall >= {target}: "
                          + (f"{name} never reaches it" if x is None else "")
                          + (" hnswlib never reaches it" if y is None else ""))
                    continue
                ratio = x["qps"] / y["qps"]
                rows_out.append({"target": target, "quantization": kind, "arbor": x,
                                 "hnswlib": y, "ratio": ratio})
                print(f"recall >= {target}: {name} {x['qps']:,.0f} q/s (ef {x['ef']}, "
                      f"{x['recall']:.3f}), hnswlib {y['qps']:,.0f} q/s (ef {y['ef']}, "
                      f"{y['recall']:.3f}): {name}/hnswlib {ratio:.2f}; by CPU time "
                      f"{x['cpu_qps']:,.0f} vs {y['cpu_qps']:,.0f}: "
                      f"{x['cpu_qps'] / y['cpu_qps']:.2f}")
        # One column group per arbor kind, then hnswlib's; an ef one of them did not run
        # (int8 starts at candidates(k)) is left blank.
        groups = [(label(kind), {p["ef"]: p for p in arbors[t, kind]["points"]})
                  for kind in kinds]
        groups.append(("hnswlib", {p["ef"]: p for p in peer["points"]}))
        heads = [f"{name}: recall     q/s  cpu q/s" for name, _ in groups]
        print("ef    " + "".join((" " if i == 0 else "   ") + h for i, h in enumerate(heads)))
        efs = sorted(set().union(*(set(points) for _, points in groups)))
        for ef in efs:
            if not any(ef in points for _, points in groups[:-1]):
                continue
            cells = []
            for i, ((_, points), head) in enumerate(zip(groups, heads)):
                p = points.get(ef)
                cell = (f"{p['recall']:.4f} {p['qps']:>7,.0f} {p['cpu_qps']:>8,.0f}"
                        if p is not None else "")
                cells.append((" " if i == 0 else "   ") + cell.rjust(len(head)))
            print((f"{ef:<6}" + "".join(cells)).rstrip())
        run = {"threads": t, "hnswlib": peer, "at": rows_out}
        for kind in kinds:
            run["arbor" if kind == "none" else f"arbor_{kind}"] = arbors[t, kind]
        runs.append(run)
    if a.json:
        a.json.write_text(json.dumps({"rows": a.rows, "dim": a.dim, "m": a.m,
                                      "ef_construction": a.ef_construction, "k": a.k,
                                      "quantization": kinds, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
