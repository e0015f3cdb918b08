#!/usr/bin/env python3
"""Greedy decoding speed of SmolLM2-135M-Instruct with Hugging Face transformers on the CPU,
side by side with kernels/benches/generate.rs (same GGUF file, same prompts) at batch 1 and
batch 8: the time of 32 decode steps, taken as generate(33 tokens) minus generate(1 token).

On a busy machine PyTorch's OpenMP threads spin and collapse at batch 1 (seen here: 3.4 tokens/s
with 2 threads, 20 with OMP_NUM_THREADS=1): compare on a quiet machine, or try both settings.

Usage: scripts/bench-generate-pytorch.py [MODELS_DIR]   (needs torch, transformers, gguf, accelerate)
"""
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STEPS = 32
TOPICS = [
    "the history of the printing press",
    "how volcanoes form",
    "the life cycle of stars",
    "why the sky is blue",
    "the rules of chess",
    "how bread is made",
    "the water cycle",
    "the invention of the telephone",
]


def run(model, tokenizer, batch):
    """Seconds for STEPS decode steps: generate(STEPS + 1) minus generate(1), the prefill."""
    prompts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Write a long, detailed essay about {t}."}],
        tokenize=False, add_generation_prompt=True) for t in TOPICS[:batch]]
    enc = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)

    def timed(new_tokens):
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, do_sample=False, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
        return time.perf_counter() - start

    return timed(STEPS + 1) - timed(1)


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "ARBOR_MODELS", os.path.expanduser("~/.cache/arbor/models"))
    folder = os.path.join(models, "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (1, 8):
        run(model, tokenizer, batch)  # warm-up
        times = [run(model, tokenizer, batch) for _ in range(5)]
        t = statistics.median(times)
        print(f"batch {batch}: {batch * STEPS / t:.1f} tokens/s "
              f"(median of 5 runs of {STEPS} steps, {t * 1000 / STEPS:.1f} ms per step)")


if __name__ == "__main__":
    main()
