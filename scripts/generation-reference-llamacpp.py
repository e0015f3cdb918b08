#!/usr/bin/env python3
"""Makes llama.cpp's greedy token ids for SmolLM2's GGUF files (Q4_1, Q4_K_M, Q6_K).

For each file, takes the cases of kernels/tests/fixtures/generation.json (their "prompt_ids" as
they are, no re-tokenizing), evaluates them with llama-cpp-python (n_ctx 2048, 2 threads), then
takes the argmax of the last logits 20 times, feeding each token back (EOS does not stop it),
and writes kernels/tests/fixtures/generation-kquants.json:
  {"made_by", "new_tokens", "models": {"<file name>": [{"prompt_ids", "ids"}, ...], ...}}
It also says whether llama.cpp's Q4_1 ids agree with the transformers fixture (up to its EOS).

    "$(benches/peers/setup.sh --no-onnx)" scripts/generation-reference-llamacpp.py [--models DIR] [--out FILE]

Needs llama-cpp-python and numpy (benches/peers/setup.sh makes a venv with them), the Q4_1
file (scripts/fetch-models.sh) and the K-quants (scripts/make-kquants.sh).
"""

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "SmolLM2-135M-Instruct.Q4_K_M.gguf",
    "SmolLM2-135M-Instruct.Q6_K.gguf",
]
NEW_TOKENS = 20


def last_logits(llm):
    """The logits of the last evaluated token (Llama.scores is left empty without logits_all)."""
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def greedy(llm, prompt_ids, n):
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids)
    ids = []
    for _ in range(n):
        tok = int(np.argmax(last_logits(llm)))
        ids.append(tok)
        llm.eval([tok])
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_models = os.environ.get("ARBOR_MODELS") or str(pathlib.Path.home() / ".cache/arbor/models")
    parser.add_argument("--models", default=default_models, help="models dir (as fetch-models.sh)")
    parser.add_argument("--out", default=str(ROOT / "kernels/tests/fixtures/generation-kquants.json"))
    args = parser.parse_args()

    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        print(f"{sys.executable} has no llama_cpp: run this with the python that "
              "benches/peers/setup.sh prints", file=sys.stderr)
        return 1

    reference = json.loads((ROOT / "kernels/tests/fixtures/generation.json").read_text())
    cases = reference["cases"]
    missing = [f for f in FILES if not (pathlib.Path(args.models) / "smollm2" / f).is_file()]
    if missing:
        print(f"missing in {args.models}/smollm2: {', '.join(missing)}: run scripts/fetch-models.sh "
              "and scripts/make-kquants.sh", file=sys.stderr)
        return 1

    models = {}
    for name in FILES:
        llm = Llama(
            model_path=str(pathlib.Path(args.models) / "smollm2" / name),
            n_ctx=2048, n_threads=2, n_threads_batch=2, logits_all=False, verbose=False,
        )
        models[name] = [{"prompt_ids": c["prompt_ids"], "ids": greedy(llm, c["prompt_ids"], NEW_TOKENS)}
                        for c in cases]
        del llm
        print(f"{name}: {[len(r['ids']) for r in models[name]]} tokens", file=sys.stderr)

    fixture = {
        "made_by": (
            f"scripts/generation-reference-llamacpp.py: llama-cpp-python {llama_cpp.__version__} "
            f"(its vendored llama.cpp, GGML_NATIVE), CPU, 2 threads, greedy argmax, prompt_ids of generation.json"
        ),
        "new_tokens": NEW_TOKENS,
        "models": models,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out}")

    # The transformers fixture stops at EOS; compare that prefix.
    for case, got in zip(cases, models[FILES[0]]):
        want = case["greedy_ids"]
        same = got["ids"][: len(want)] == want
        print(f"Q4_1 vs transformers {'same' if same else 'DIFFERENT'}: {case['greedy_text'][:40]!r}"
              + ("" if same else f"\n  transformers {want}\n  llama.cpp    {got['ids'][:len(want)]}"))
    for name in FILES[1:]:
        agree = sum(a["ids"] == b["ids"] for a, b in zip(models[FILES[0]], models[name]))
        print(f"{name}: {agree}/{len(cases)} cases give the same 20 ids as Q4_1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
