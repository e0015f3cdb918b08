#!/usr/bin/env python3
"""Arbor against its peers, on the same inputs, in one run: ONNX Runtime and llama.cpp.

Two threads each (ONNX Runtime intra_op_num_threads=2, llama.cpp n_threads=2, Arbor
RAYON_NUM_THREADS=2). Prints a markdown table (each figure, and Arbor/peer) and a met / not met
line per target:
  embeddings (all-MiniLM-L6-v2; 128 questions of 12 words, 64 paragraphs of ~100 words; batch
    1, 32, 128, i.e. min(batch, texts)): texts/s, best of 3 after a warm-up. ONNX Runtime runs
    the model exported by setup.sh; its tokenizing (tokenizers, truncation 256, padding to the
    batch's longest), mean pooling and L2 normalizing are part of what is timed. Arbor:
    `arbor local embed --batch-size B --texts-file F --timings`, texts/s from its embed_ms.
    Targets: >= 1.2x ONNX Runtime at batch 32 and 128, >= 1x at batch 1.
  generation (SmolLM2-135M-Instruct Q4_1 GGUF, the same file for both; greedy, raw prompts,
    128 new tokens): decode tokens/s at batch 1 = (generated - 1) / (time after the first token),
    target >= 1x llama.cpp; 8 prompts at once in Arbor (one continuous batch), total tokens/s,
    target >= 2x llama.cpp's batch-1 rate; time to first token of a ~600-token prompt, target <=
    llama.cpp's; Arbor's peak RSS in the batch-1 decode, target <= 1.5x the GGUF file + KV cache.

    "$(benches/peers/setup.sh)" benches/peers/kernels.py [--arbor target/release/arbor]
        [--models DIR] [--only embed|generate] [--quick] [--peers-only]

Needs the venv of benches/peers/setup.sh (onnxruntime, tokenizers, numpy,
llama-cpp-python; it also exports the ONNX model), the models of scripts/fetch-models.sh, and
for the Arbor half a release build (cargo build --release -p arbor-cli, or --arbor PATH).
On a small or shared machine the figures are noisy: run it twice, compare nothing across runs.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
THREADS = 2
os.environ.setdefault("RAYON_NUM_THREADS", str(THREADS))  # tokenizers' own thread pool
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

MINILM = "all-MiniLM-L6-v2"
GGUF = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
NEW_TOKENS = 128
BATCHES = (1, 32, 128)

# Same words and rule as scripts/bench-embed-pytorch.py and kernels/benches/embed.rs.
WORDS = (
    "the a cluster node model vector query shard runs fast small large every new old data "
    "store reads writes text answer token batch memory disk network leader follower replica "
    "search index score rank close far similar meaning language system user request time "
    "second minute result error retry during after before while since with"
).split()
assert len(WORDS) == 53


def sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 5 + j * j) % len(WORDS)] for j in range(12)) + "."


def question(i: int) -> str:
    return sentence(i)[:-1].capitalize() + "?"


def paragraph(i: int) -> str:
    # 8 sentences of 12 words: 96 words, ~120 word pieces.
    return " ".join(sentence(1000 + i * 8 + k).capitalize() for k in range(8))


QUESTIONS = [question(i) for i in range(128)]
PARAGRAPHS = [paragraph(i) for i in range(64)]

GEN_PROMPT = "The history of distributed computing began"
CONCURRENT_PROMPTS = [
    "The history of distributed computing began",
    "Once upon a time, in a small village by the sea,",
    "The three most important ideas in physics are",
    "Here is a recipe for a simple tomato soup:",
    "A vector database stores embeddings so that",
    "The capital cities of Europe include",
    "To write a fast program, first",
    "In the morning the market square was",
]


def long_prompt() -> str:
    # Deterministic prose of ~600 SmolLM2 tokens (checked against llama.cpp's tokenizer below).
    return " ".join(sentence(5000 + i).capitalize() for i in range(46))


# ---------------------------------------------------------------------------------------------
# Peers


class OrtEmbedder:
    def __init__(self, model_dir: pathlib.Path):
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.np = np
        onnx_file = model_dir / "onnx/model.onnx"
        if not onnx_file.is_file():
            sys.exit(f"error: {onnx_file} is missing: run benches/peers/setup.sh (it exports it)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.enable_truncation(max_length=MAX_TOKENS)
        self.tok.enable_padding(pad_id=self.tok.token_to_id("[PAD]"), pad_token="[PAD]")
        self.version = f"onnxruntime {ort.__version__}"

    def embed(self, texts):
        np = self.np
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feed)[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def best_rate(fn, n, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def ort_embed_rates(models, repeats):
    ort = OrtEmbedder(models / MINILM)
    rates, vectors = {}, {}
    for name, texts in (("questions", QUESTIONS), ("paragraphs", PARAGRAPHS)):
        vectors[name] = ort.embed(texts[:8])
        for batch in BATCHES:
            b = min(batch, len(texts))

            def run(texts=texts, b=b):
                for i in range(0, len(texts), b):
                    ort.embed(texts[i : i + b])

            rates[(name, batch)] = best_rate(run, len(texts), repeats)
            log(f"onnxruntime {name} batch {batch}: {rates[(name, batch)]:.1f} texts/s")
    return ort.version, rates, vectors


class LlamaCpp:
    def __init__(self, path):
        import numpy as np
        import llama_cpp

        self.np = np
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS,
            logits_all=False, verbose=False,
        )
        self.version = f"llama-cpp-python {llama_cpp.__version__}"
        self.n_vocab = self.llm.n_vocab()

    def last_logits(self):
        # Llama.scores stays empty without logits_all: read the context's last row.
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def tokenize(self, text):
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def generate(self, prompt_ids, n):
        """Greedy; returns (ids, seconds to the first token, seconds from it to the last)."""
        llm, np = self.llm, self.np
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt_ids)
        ids = [int(np.argmax(self.last_logits()))]
        first = time.perf_counter()
        while len(ids) < n:
            llm.eval([ids[-1]])
            ids.append(int(np.argmax(self.last_logits())))
        return ids, first - start, time.perf_counter() - first


def llama_rates(models, repeats):
    llm = LlamaCpp(models / GGUF)
    short = llm.tokenize(GEN_PROMPT)
    long = llm.tokenize(long_prompt())
    llm.generate(short, 8)  # warm-up
    decode, ttft = 0.0, float("inf")
    for _ in range(repeats):
        ids, _, after = llm.generate(short, NEW_TOKENS)
        decode = max(decode, (len(ids) - 1) / after)
        _, first, _ = llm.generate(long, 1)
        ttft = min(ttft, first)
    log(f"llama.cpp decode {decode:.1f} tokens/s, TTFT {ttft * 1e3:.1f} ms ({len(long)} prompt tokens)")
    return llm.version, decode, ttft, len(long)


# ---------------------------------------------------------------------------------------------
# Arbor


def arbor_env():
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(THREADS)
    return env


def run_arbor(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=arbor_env())
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def arbor_embed_rates(arbor, models, repeats, ort_vectors):
    import numpy as np

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, texts in (("questions", QUESTIONS), ("paragraphs", PARAGRAPHS)):
            path = pathlib.Path(tmp) / f"{name}.txt"
            path.write_text("\n".join(texts) + "\n")
            for batch in BATCHES:
                best = 0.0
                for k in range(repeats):
                    out = json.loads(run_arbor([
                        str(arbor), "local", "embed", "--models", str(models), "--model", MINILM,
                        "--batch-size", str(batch), "--texts-file", str(path), "--timings",
                    ]))
                    if len(out["embeddings"]) != len(texts):
                        sys.exit(f"error: arbor embedded {len(out['embeddings'])} of {len(texts)} texts")
                    if k == 0 and batch == BATCHES[0]:
                        got = np.array(out["embeddings"][:8], dtype=np.float32)
                        cos = float((got * ort_vectors[name]).sum(axis=1).min()) if ort_vectors else 1.0
                        if cos < 0.999:
                            log(f"warning: Arbor and ONNX Runtime embeddings differ: cosine {cos:.5f}")
                    best = max(best, len(texts) / out["timings"]["embed_ms"] * 1e3)
                rates[(name, batch)] = best
                log(f"arbor {name} batch {batch}: {best:.1f} texts/s")
    return rates


def arbor_generate(arbor, models, prompts, max_tokens=NEW_TOKENS, rss=False):
    cmd = [str(arbor), "local", "generate", "--models", str(models), "--model", GGUF, "--raw",
           "--max-tokens", str(max_tokens), "--json", "--timings", *prompts]
    if not rss:
        lines = run_arbor(cmd)
        peak = None
    else:
        # A fresh python parent, so that RUSAGE_CHILDREN's peak is this arbor process alone.
        wrapper = ("import json,resource,subprocess,sys;"
                   "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
                   "sys.stderr.write(p.stderr);"
                   "print(json.dumps({'rc':p.returncode,'out':p.stdout,"
                   "'maxrss_kb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
        res = json.loads(run_arbor([sys.executable, "-c", wrapper, *cmd]))
        if res["rc"] != 0:
            sys.exit(f"error: arbor local generate exited {res['rc']}")
        lines, peak = res["out"], res["maxrss_kb"] * 1024
    results = [json.loads(line) for line in lines.splitlines() if line.strip()]
    if len(results) != len(prompts):
        sys.exit(f"error: arbor printed {len(results)} results for {len(prompts)} prompts")
    return results, peak


def kv_bytes_per_token(path):
    try:
        from gguf import GGUFReader

        r = GGUFReader(str(path))

        def field(key):
            f = r.fields[key]
            return int(f.parts[f.data[0]][0])

        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        layers = field(f"{arch}.block_count")
        kv_heads = field(f"{arch}.attention.head_count_kv")
        head_dim = field(f"{arch}.embedding_length") // field(f"{arch}.attention.head_count")
    except Exception:  # noqa: BLE001 - SmolLM2-135M's shape when gguf is not there
        layers, kv_heads, head_dim = 30, 3, 64
    return 2 * layers * kv_heads * head_dim * 4  # K and V, f32


def arbor_generation(arbor, models, repeats, long_text):
    decode, rate8, ttft, peak, used = 0.0, 0.0, float("inf"), 0, 0
    arbor_generate(arbor, models, [GEN_PROMPT], max_tokens=4)  # warm-up (page cache)
    for k in range(repeats):
        (one,), rss = arbor_generate(arbor, models, [GEN_PROMPT], rss=(k == 0))
        t = one["timings"]
        if len(one["token_ids"]) > 1:
            decode = max(decode, (len(one["token_ids"]) - 1) / (t["total_ms"] - t["first_token_ms"]) * 1e3)
        if rss is not None:
            peak, used = rss, t["prompt_tokens"] + len(one["token_ids"])
        many, _ = arbor_generate(arbor, models, CONCURRENT_PROMPTS)
        total = sum(len(r["token_ids"]) for r in many)
        rate8 = max(rate8, total / max(r["timings"]["total_ms"] for r in many) * 1e3)
        (lp,), _ = arbor_generate(arbor, models, [long_text], max_tokens=1)
        ttft = min(ttft, lp["timings"]["first_token_ms"] / 1e3)
        long_tokens = lp["timings"]["prompt_tokens"]
    log(f"arbor decode {decode:.1f} tokens/s, 8 at once {rate8:.1f} tokens/s, TTFT {ttft * 1e3:.1f} ms "
        f"({long_tokens} prompt tokens), peak RSS {peak / 2**20:.1f} MiB")
    return decode, rate8, ttft, peak, used, long_tokens


# ---------------------------------------------------------------------------------------------


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_models = os.environ.get("ARBOR_MODELS") or str(pathlib.Path.home() / ".cache/arbor/models")
    parser.add_argument("--models", default=default_models, help="models dir (as fetch-models.sh)")
    parser.add_argument("--arbor", default=str(ROOT / "target/release/arbor"), help="arbor binary")
    parser.add_argument("--only", choices=["embed", "generate"], help="one half of the benchmark")
    parser.add_argument("--quick", action="store_true", help="1 repeat instead of 3")
    parser.add_argument("--peers-only", action="store_true", help="measure the peers, not Arbor")
    args = parser.parse_args()
    models = pathlib.Path(args.models)
    arbor = pathlib.Path(args.arbor)
    repeats = 1 if args.quick else 3
    if not args.peers_only and not (arbor.is_file() and os.access(arbor, os.X_OK)):
        log(f"error: no arbor binary at {arbor}: run `cargo build --release -p arbor-cli`, "
            "pass --arbor PATH, or --peers-only")
        return 1
    try:
        import llama_cpp  # noqa: F401
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as e:
        log(f"error: {e}: run this with the python that benches/peers/setup.sh prints")
        return 1

    rows, targets, versions = [], [], []

    def row(workload, peer_name, unit, peer, ours, target):
        ratio = ours / peer if (ours is not None and peer) else None
        if target is not None and ratio is not None:
            op, want = target
            ok = ratio >= want if op == ">=" else ratio <= want
            targets.append(f"- {workload}: Arbor/{peer_name} {ratio:.2f} {op} {want}: {'met' if ok else 'NOT met'}")
        fmt = (lambda v: "-" if v is None else f"{v:.1f}")
        rows.append(f"| {workload} | {unit} | {fmt(peer)} | {fmt(ours)} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}'} | "
                    f"{'-' if target is None else ' '.join(map(str, target))} |")

    if args.only in (None, "embed"):
        ort_version, ort_rates, ort_vectors = ort_embed_rates(models, repeats)
        versions.append(ort_version)
        ours = {} if args.peers_only else arbor_embed_rates(arbor, models, repeats, ort_vectors)
        for name in ("questions", "paragraphs"):
            for batch in BATCHES:
                want = (">=", 1.0) if batch == 1 else (">=", 1.2)
                row(f"embed {name} batch {batch}", "onnxruntime", "texts/s",
                    ort_rates[(name, batch)], ours.get((name, batch)), want)

    if args.only in (None, "generate"):
        gguf = models / GGUF
        if not gguf.is_file():
            log(f"error: {gguf} is missing: run scripts/fetch-models.sh")
            return 1
        llama_version, decode, ttft, long_n = llama_rates(models, repeats)
        versions.append(llama_version)
        if args.peers_only:
            a_decode = a_rate8 = a_ttft = a_peak = None
        else:
            a_decode, a_rate8, a_ttft, a_peak, used, a_long = arbor_generation(
                arbor, models, repeats, long_prompt())
            if a_long != long_n:
                log(f"note: the long prompt is {a_long} tokens for Arbor, {long_n} for llama.cpp")
        row("decode batch 1", "llama.cpp", "tokens/s", decode, a_decode, (">=", 1.0))
        row("8 prompts at once vs llama.cpp batch 1", "llama.cpp", "tokens/s", decode, a_rate8, (">=", 2.0))
        row(f"time to first token, {long_n}-token prompt", "llama.cpp", "ms", ttft * 1e3,
            None if a_ttft is None else a_ttft * 1e3, ("<=", 1.0))
        if a_peak is not None:
            budget = 1.5 * gguf.stat().st_size + kv_bytes_per_token(gguf) * used
            rows.append(f"| peak RSS, decode batch 1 | MiB | budget {budget / 2**20:.1f} | "
                        f"{a_peak / 2**20:.1f} | {a_peak / budget:.2f} | <= 1.0 of 1.5x file + KV |")
            targets.append(f"- peak RSS {a_peak / 2**20:.1f} MiB <= 1.5x GGUF + KV cache "
                           f"{budget / 2**20:.1f} MiB: {'met' if a_peak <= budget else 'NOT met'}")

    print(f"\n{', '.join(versions)}; {THREADS} threads each; best of {repeats}; {os.cpu_count()} CPUs\n")
    print("| workload | unit | peer | Arbor | Arbor/peer | target |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    print("\n".join(rows))
    if targets:
        print("\n" + "\n".join(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
