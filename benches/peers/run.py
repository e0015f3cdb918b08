#!/usr/bin/env python3
"""The peers of `arbor bench`, measured the way it measures arbor, into the same report schema.

Each peer runs the equivalent of one or more of `arbor bench`'s scenarios on this machine and
writes OUT/<peer>.json in `arbor-bench-report/2` (docs/bench-report.schema.json, checked before
it is written), so that `arbor bench compare` and its `--html` page put them beside arbor's
report with ratios:

  ray-serve    call            HTTP requests to a no-op Ray Serve deployment (--replicas
                               replicas), one keep-alive connection per client thread
  ray-actors   call            method calls to --replicas Ray actors that return what they get,
                               from the driver (ray.get on each call)
  faiss        ingest-vectors  jobs of 256 rows added to an IndexFlatIP (emptied every 1M rows)
               query-vector    one query (top --k) per job over --rows rows: exact search, as
                               arbor's partitions do
  hnswlib      ingest-vectors  jobs of 256 rows added to an HNSW index (M 16, ef_construction
                               200)
               query-vector    one query per job (ef 64); its recall@k against exact search is
                               in the report's parameters
  onnxruntime  embed           jobs of the same 8 texts through all-MiniLM-L6-v2 (tokenizing,
                               mean pooling and normalizing included)
  llama.cpp    generate        16 tokens, greedy, from the same prompt, with the GGUF that
                               arbor's model uses (one context in one thread, the jobs
                               queued for it: llama-cpp-python's server with one slot)

The rows and query vectors are arbor bench's own (the same xorshift generator and seeds), and so
is the filter (--filter: row i has `bucket` = i % 10 and `even`). The load is a closed loop of
--connections client threads with one job in flight each, --warmup not measured, then
--duration measured; every job's latency is kept and its percentiles, seconds and distribution
computed as arbor does.

    "$(benches/peers/setup.sh)" benches/peers/run.py --out DIR [--peers faiss,hnswlib,...]
        [--duration 10s] [--warmup 2s] [--connections 4] [--rows 10000] [--dimension 128]
        [--k 10] [--filter JSON] [--replicas 3] [--models DIR]
    target/release/arbor bench compare arbor/report.json DIR/*.json --html side-by-side.html

Needs the venv of benches/peers/setup.sh and, for onnxruntime and llama.cpp, the models of
scripts/fetch-models.sh (setup.sh exports the ONNX file). Run it on the machine, and with the
same load options, as the `arbor bench` it is compared with; compare nothing across machines.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCHEMA = "arbor-bench-report/2"
ROWS_PER_JOB = 256
# ingest-vectors empties its index at this many rows (a fast peer would fill the memory).
INGEST_CAP = 1_000_000
CDF_AT = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995,
          0.999, 0.9995, 0.9999, 1.0]
PEERS = ("ray-serve", "ray-actors", "faiss", "hnswlib", "onnxruntime", "llama.cpp")
# arbor bench's embed and generate jobs (cli/src/commands/bench/mod.rs).
EMBED_TEXTS = [f"A short text to embed, number {i}, about clusters." for i in range(8)]
GENERATE_PROMPT = "Write one sentence about distributed systems."
GENERATE_TOKENS = 16
M64 = (1 << 64) - 1


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# What arbor bench sends


def unit_vector(seed, dim):
    """arbor bench's `unit_vector`: xorshift from a seed, normalized (the same f32 values)."""
    import numpy as np

    x = ((seed * 0x9E3779B97F4A7C15) & M64) | 1
    out = np.empty(dim, dtype=np.float32)
    for j in range(dim):
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        out[j] = np.float32(x >> 40) / np.float32(1 << 24) - np.float32(0.5)
    norm = max(float(np.sqrt(np.sum(out * out, dtype=np.float32))), 1e-38)
    return out / np.float32(norm)


def rows(first, count, dim):
    import numpy as np

    return np.stack([unit_vector(i, dim) for i in range(first, first + count)])


def metadata(i):
    return {"bucket": i % 10, "even": i % 2 == 0}


def matches(filt, meta):
    """arbor's metadata filters (actors/src/partition/filter.rs), over a row's metadata."""
    op = filt.get("op")
    if op == "and":
        return all(matches(f, meta) for f in filt.get("filters", []))
    if filt.get("key") not in meta:
        return False
    value = meta[filt["key"]]
    if op == "equal":
        return value == filt["value"]
    if op == "in":
        return value in filt["values"]
    if op == "range":
        bounds = (("gte", lambda a, b: a >= b), ("gt", lambda a, b: a > b),
                  ("lte", lambda a, b: a <= b), ("lt", lambda a, b: a < b))
        return all(cmp(value, filt[k]) for k, cmp in bounds if k in filt)
    raise SystemExit(f"error: --filter has an unknown op {op!r} (equal, in, range or and)")


# ---------------------------------------------------------------------------------------------
# The load and the report


def parse_duration(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 500ms, 10s or 2m")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def humantime(seconds):
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def closed_loop(job, connections, warmup, duration):
    """Runs job(n) on `connections` threads, one in flight each: the (end, latency, error) of
    the jobs that ended in the window, `end` from its start."""
    start = time.perf_counter() + 0.2
    window = (start + warmup, start + warmup + duration)
    samples, lock = [], threading.Lock()

    def worker(c):
        mine, n = [], 0
        while time.perf_counter() < start:
            time.sleep(0.001)
        while True:
            t0 = time.perf_counter()
            if t0 >= window[1]:
                break
            error = None
            try:
                job((c << 32) | n)
            except Exception as e:  # a failed job is a sample with its error, as in arbor
                error = type(e).__name__
            end = time.perf_counter()
            n += 1
            if window[0] <= end <= window[1]:
                mine.append((end - window[0], end - t0, error))
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples.sort()
    return samples


def quantile(sorted_us, q):
    """The nearest-rank quantile: the smallest value with at least q of them at or below it."""
    if not sorted_us:
        return 0.0
    return sorted_us[min(len(sorted_us) - 1, max(0, math.ceil(q * len(sorted_us)) - 1))]


def scenario_report(name, connections, warmup, duration, samples, parameters):
    ok = sorted(lat * 1e6 for _, lat, err in samples if err is None)
    errors = {}
    for _, _, err in samples:
        if err is not None:
            errors[err] = errors.get(err, 0) + 1
    seconds = max(1, int(duration))
    per = [([], 0) for _ in range(seconds)]
    for at, lat, err in samples:
        i = min(int(at), seconds - 1)
        lats, errs = per[i]
        if err is None:
            lats.append(lat * 1e6)
        else:
            per[i] = (lats, errs + 1)
    per_second = []
    for i, (lats, errs) in enumerate(per):
        lats.sort()
        per_second.append({"second": i, "succeeded": len(lats), "errors": errs,
                           "p50_us": quantile(lats, 0.5), "p99_us": quantile(lats, 0.99)})
    return {
        "name": name,
        "load": {"connections": connections, "in_flight": 1, "rate": None, "ramp": "0s",
                 "warmup": humantime(warmup), "duration": humantime(duration)},
        "parameters": parameters,
        "completed": len(samples),
        "errors": errors,
        "throughput_per_s": len(ok) / max(duration, 1e-9),
        "latency_us": {"p50": quantile(ok, 0.5), "p90": quantile(ok, 0.9),
                       "p99": quantile(ok, 0.99), "p999": quantile(ok, 0.999),
                       "max": ok[-1] if ok else 0.0},
        "per_second": per_second,
        "cdf": [[q, quantile(ok, q)] for q in CDF_AT] if ok else [],
        "fault": None,
    }


def machine():
    cpu, memory = platform.machine(), 0
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    gpus, driver = [], None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()]
        first = open("/proc/driver/nvidia/version").readline()
        version = next((w for w in first.split() if re.fullmatch(r"[0-9]+(\.[0-9]+)+", w)), None)
        driver = f"NVIDIA {version}" if version else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "memory_bytes": memory, "gpus": gpus,
            "gpu_driver": driver}


def report(name, version, setup, scenarios):
    return {
        "schema": SCHEMA,
        "system": {"name": name, "version": version, "commit": None, "setup": setup},
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "nodes": 1,
        "cluster_gpus": [],
        "scenarios": scenarios,
    }


def write(out, doc):
    import jsonschema

    schema = json.loads((ROOT / "docs" / "bench-report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    path = out / f"{doc['system']['name']}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    for s in doc["scenarios"]:
        lat = s["latency_us"]
        log(f"{doc['system']['name']:<12} {s['name']:<15} {s['throughput_per_s']:>10.1f} /s   "
            f"p50 {lat['p50']:>10.1f} µs   p99 {lat['p99']:>10.1f} µs   "
            f"errors {sum(s['errors'].values())}")
    log(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# The peers


def ray_peers(a, which):
    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    reports = []
    try:
        if "ray-actors" in which:
            @ray.remote(num_cpus=0)
            class Echo:
                def ping(self, payload):
                    return payload

            actors = [Echo.remote() for _ in range(a.replicas)]
            ray.get([x.ping.remote("ping") for x in actors])
            samples = closed_loop(lambda n: ray.get(actors[n % a.replicas].ping.remote("ping")),
                                  a.connections, a.warmup, a.duration)
            reports.append(report(
                "ray-actors", ray.__version__,
                f"{a.replicas} actors returning their argument, called from the driver "
                f"(ray.get per call) on {a.connections} threads",
                [scenario_report("call", a.connections, a.warmup, a.duration, samples,
                                 {"replicas": a.replicas, "payload": "ping"})]))
        if "ray-serve" in which:
            import http.client

            @serve.deployment(num_replicas=a.replicas, ray_actor_options={"num_cpus": 0})
            class Noop:
                async def __call__(self, request):
                    return "ping"

            serve.run(Noop.bind(), route_prefix="/", blocking=False)
            local = threading.local()

            def call(_n):
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=30)
                try:
                    conn.request("GET", "/")
                    r = conn.getresponse()
                    body = r.read()
                except (OSError, http.client.HTTPException):
                    local.conn = None
                    raise
                if r.status != 200 or body != b"ping":
                    raise RuntimeError(f"HTTP {r.status}")

            for _ in range(50):  # the proxy takes a moment to route
                try:
                    call(0)
                    break
                except Exception:
                    time.sleep(0.2)
            samples = closed_loop(call, a.connections, a.warmup, a.duration)
            reports.append(report(
                "ray-serve", ray.__version__,
                f"a no-op deployment of {a.replicas} replicas behind Serve's HTTP proxy, "
                f"{a.connections} keep-alive HTTP/1.1 connections (plain HTTP)",
                [scenario_report("call", a.connections, a.warmup, a.duration, samples,
                                 {"replicas": a.replicas, "payload": "ping"})]))
            serve.shutdown()
    finally:
        ray.shutdown()
    return reports


def vector_peer(a, name):
    import numpy as np

    dim, k = a.dimension, a.k
    count = -(-a.rows // ROWS_PER_JOB) * ROWS_PER_JOB
    log(f"{name}: making {count} rows of {dim} dimensions (arbor bench's)")
    data = rows(0, count, dim)
    queries = [unit_vector((n ^ 0x5EED), dim) for n in range(512)]
    query_of = lambda n: queries[(n & 0xFFFF) % len(queries)][None, :]  # noqa: E731
    batches = [data[i:i + ROWS_PER_JOB] for i in range(0, min(count, 64 * ROWS_PER_JOB),
                                                        ROWS_PER_JOB)]
    allowed = None
    if a.filter is not None:
        allowed = np.array([i for i in range(count) if matches(a.filter, metadata(i))],
                           dtype=np.int64)
    params = {"rows": count, "dimension": dim, "k": k, "filter": a.filter, "metric": "cosine"}
    if name == "faiss":
        import faiss

        faiss.omp_set_num_threads(1)
        make = lambda: faiss.IndexFlatIP(dim)  # noqa: E731

        def add(index, batch):
            index.add(batch)

        index = make()
        index.add(data)
        search_params = None
        if allowed is not None:
            search_params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))

        def search(q):
            return index.search(q, k, params=search_params)[1][0]

        def rows_in(index):
            return index.ntotal

        version = faiss.__version__
        setup = (f"IndexFlatIP (exact, inner product of unit vectors = cosine), one OpenMP "
                 f"thread per call, {a.connections} client threads")
        params["search"] = "exact"
    else:
        import hnswlib

        def make():
            index = hnswlib.Index(space="cosine", dim=dim)
            index.init_index(max_elements=16 * ROWS_PER_JOB, M=16, ef_construction=200)
            index.set_num_threads(1)
            return index

        def add(index, batch):
            first = index.get_current_count()
            if first + len(batch) > index.get_max_elements():
                index.resize_index(2 * index.get_max_elements())
            index.add_items(batch, np.arange(first, first + len(batch)))

        log("hnswlib: building the index")
        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(max_elements=count, M=16, ef_construction=200)
        index.add_items(data, np.arange(count))
        index.set_ef(max(64, k))
        index.set_num_threads(1)
        allowed_set = set(allowed.tolist()) if allowed is not None else None
        row_filter = (lambda i: i in allowed_set) if allowed_set is not None else None

        def search(q):
            return index.knn_query(q, k=k, filter=row_filter)[0][0]

        def rows_in(index):
            return index.get_current_count()

        # recall@k against exact search, over the first 200 queries
        exact_pool = data if allowed is None else data[allowed]
        ids = np.arange(count) if allowed is None else allowed
        hits = 0
        for q in queries[:200]:
            want = set(ids[np.argsort(-(exact_pool @ q))[:k]].tolist())
            hits += len(want & set(int(x) for x in search(q[None, :])))
        params["search"] = "hnsw"
        params["recall_at_k"] = round(hits / (200 * k), 4)
        version = getattr(hnswlib, "__version__", "0.8.0")
        setup = (f"HNSW, M 16, ef_construction 200, ef {max(64, k)} (recall@{k} "
                 f"{params['recall_at_k']:.3f}), one thread per call, {a.connections} client "
                 "threads")
    scenarios = []
    log(f"{name}: ingest-vectors")
    ingest_index = [make()]
    ingest_lock = threading.Lock()  # one index, writes one at a time (as one partition)

    def ingest(n):
        with ingest_lock:
            # Memory: a fast peer would add gigabytes in a run; emptied (outside the timing's
            # concern: a new empty index is cheap) every INGEST_CAP rows.
            if rows_in(ingest_index[0]) >= INGEST_CAP:
                ingest_index[0] = make()
            add(ingest_index[0], batches[n % len(batches)])

    samples = closed_loop(ingest, a.connections, a.warmup, a.duration)
    scenarios.append(scenario_report("ingest-vectors", a.connections, a.warmup, a.duration,
                                     samples, {"rows_per_job": ROWS_PER_JOB, "dimension": dim}))
    ingest_index.clear()
    log(f"{name}: query-vector over {count} rows")
    samples = closed_loop(lambda n: search(query_of(n)), a.connections, a.warmup, a.duration)
    scenarios.append(scenario_report("query-vector", a.connections, a.warmup, a.duration,
                                     samples, params))
    return report(name, version, setup, scenarios)


def onnx_peer(a):
    sys.path.insert(0, str(HERE))
    from kernels import MINILM, OrtEmbedder, THREADS

    ort = OrtEmbedder(a.models / MINILM)
    ort.embed(EMBED_TEXTS)
    samples = closed_loop(lambda n: ort.embed(EMBED_TEXTS), a.connections, a.warmup,
                          a.duration)
    return report(
        "onnxruntime", ort.version.split()[-1],
        f"all-MiniLM-L6-v2 exported to ONNX (fp32), CPUExecutionProvider, intra_op threads "
        f"{THREADS}, {a.connections} client threads on one session",
        [scenario_report("embed", a.connections, a.warmup, a.duration, samples,
                         {"texts_per_job": len(EMBED_TEXTS)})])


def llama_peer(a):
    sys.path.insert(0, str(HERE))
    from kernels import GGUF, THREADS, LlamaCpp

    # One thread runs the model, taking the jobs in the order they come (a server with one
    # slot). Not each client thread in turn: every thread that calls llama.cpp gets an OpenMP
    # team of its own, and an idle team spins on the cores the running one needs (2.7x slower
    # here).
    import queue

    jobs, ready = queue.Queue(), queue.Queue()

    def serve():
        llm = LlamaCpp(a.models / GGUF)
        prompt = llm.tokenize(GENERATE_PROMPT)
        ready.put(llm.version)
        while (job := jobs.get()) is not None:
            done, box = job
            try:
                box.append(llm.generate(prompt, GENERATE_TOKENS))
            except Exception as e:  # handed to the client thread that asked
                box.append(e)
            done.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    version = ready.get()

    def generate(_n):
        done, box = threading.Event(), []
        jobs.put((done, box))
        done.wait()
        if isinstance(box[0], Exception):
            raise box[0]

    generate(0)
    samples = closed_loop(generate, a.connections, a.warmup, a.duration)
    jobs.put(None)
    return report(
        "llama.cpp", version.split()[-1],
        f"{GGUF.split('/')[-1]}, greedy, n_threads {THREADS}; one context in one thread, "
        f"which the {a.connections} client threads' jobs queue for",
        [scenario_report("generate", a.connections, a.warmup, a.duration, samples,
                         {"max_tokens": GENERATE_TOKENS})])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated, of {', '.join(PEERS)}")
    p.add_argument("--duration", type=parse_duration, default=10.0)
    p.add_argument("--warmup", type=parse_duration, default=2.0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--dimension", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--filter", type=json.loads, default=None)
    p.add_argument("--replicas", type=int, default=3,
                   help="Ray replicas/actors (arbor bench's call: one per node)")
    p.add_argument("--models", type=pathlib.Path,
                   default=pathlib.Path(os.environ.get("ARBOR_MODELS",
                                                       pathlib.Path.home() / ".cache/arbor/models")))
    a = p.parse_args()
    which = [x.strip() for x in a.peers.split(",") if x.strip()]
    unknown = [x for x in which if x not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {', '.join(unknown)}: the peers are {', '.join(PEERS)}")
    if a.connections < 1 or a.duration <= 0:
        p.error("--connections must be at least 1 and --duration above 0")
    a.out.mkdir(parents=True, exist_ok=True)
    if any(x in which for x in ("ray-serve", "ray-actors")):
        for doc in ray_peers(a, which):
            write(a.out, doc)
    for name in ("faiss", "hnswlib"):
        if name in which:
            write(a.out, vector_peer(a, name))
    if "onnxruntime" in which:
        write(a.out, onnx_peer(a))
    if "llama.cpp" in which:
        write(a.out, llama_peer(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
