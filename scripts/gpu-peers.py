#!/usr/bin/env python3
"""PyTorch on a CUDA GPU, on the inputs scripts/gpu-check.sh gives Arbor: prints one JSON
object with embeddings/s and decode tokens/s, for gpu-check.sh's table.

  embed_fp32, embed_fp16: all-MiniLM-L6-v2 (sentence-transformers) over the texts file, batch
      512, texts/s; the best of 3 timed passes after a warm-up pass.
  generate_1, generate_8, generate_32: SmolLM2-135M-Instruct from the same Q4_1 GGUF file
      (transformers dequantizes it; run in bf16), greedy, the same raw prompts as Arbor's,
      decode tokens/s in all: (generate(129 tokens) - generate(1 token)) / 128 steps × batch,
      with every sequence made to run its 128 tokens (min_new_tokens).

    python3 scripts/gpu-peers.py --models DIR --texts FILE [--device cuda|cpu]

(--device cpu only checks the script itself, slowly.)

Needs torch with CUDA, sentence-transformers, transformers and gguf (the GPU machines' image
has all but gguf, which gpu-check.sh carries as a wheel). Progress goes to stderr.
"""

import argparse
import json
import pathlib
import sys
import time

GGUF_DIR, GGUF_FILE = "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 128


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sync_of(torch, device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def timed(fn, sync):
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def embed(models, texts, torch, device):
    from sentence_transformers import SentenceTransformer

    out = {}
    for name, dtype in (("embed_fp32", torch.float32), ("embed_fp16", torch.float16)):
        model = SentenceTransformer(str(models / "all-MiniLM-L6-v2"), device=device)
        model = model.to(dtype)

        def run():
            model.encode(texts, batch_size=512, convert_to_tensor=True, normalize_embeddings=True)

        run()
        best = min(timed(run, sync_of(torch, device)) for _ in range(3))
        out[name] = round(len(texts) / best)
        log(f"PyTorch {name}: {out[name]} texts/s")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def generate(models, torch, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models / GGUF_DIR
    tokenizer = AutoTokenizer.from_pretrained(str(path), gguf_file=GGUF_FILE)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=GGUF_FILE, torch_dtype=torch.bfloat16)
    model = model.to(device).eval()
    out = {}
    for batch in (1, 8, 32):
        # The prompts gpu-check.sh gives `arbor local generate --raw`.
        prompts = [f"Write a long, detailed essay about topic number {i} of distributed computing."
                   for i in range(1, batch + 1)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)

        def run(n):
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)

        run(4)
        sync = sync_of(torch, device)
        prefill = min(timed(lambda: run(1), sync) for _ in range(3))
        whole = min(timed(lambda: run(NEW_TOKENS + 1), sync) for _ in range(2))
        out[f"generate_{batch}"] = round(NEW_TOKENS * batch / (whole - prefill))
        log(f"PyTorch generate batch {batch}: {out[f'generate_{batch}']} tokens/s")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, type=pathlib.Path)
    parser.add_argument("--texts", required=True, type=pathlib.Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    import torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("torch sees no CUDA device")
        log(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    texts = [line for line in args.texts.read_text().splitlines() if line.strip()]
    result = {}
    for part in (lambda: embed(args.models, texts, torch, args.device),
                 lambda: generate(args.models, torch, args.device)):
        try:
            result.update(part())
        except Exception as e:  # one half failing still reports the other
            log(f"error: {type(e).__name__}: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
