#!/usr/bin/env python3
"""Reference greedy generations of SmolLM2-135M-Instruct, made by an independent implementation.

Hugging Face transformers loads the same GGUF file (it dequantizes the Q4_1/Q8_0 weights and
undoes llama.cpp's q/k permutation itself) and runs its PyTorch Llama in float32. For each
fixed prompt, wrapped in the model's chat template, this records the prompt text, its token
ids and the first 20 greedily generated token ids. kernels/tests/generation.rs checks that the
Rust decoder produces exactly these ids.

Usage: scripts/generation-reference.py [MODELS_DIR] > kernels/tests/fixtures/generation.json
(needs torch, transformers and gguf; MODELS_DIR defaults to $ARBOR_MODELS or ~/.cache/arbor/models)
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 20
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "List three prime numbers greater than 100."}],
    [{"role": "user", "content": "Explain what a hash map is, in one sentence."}],
    [{"role": "user", "content": "Traduis en français : « Le café est chaud. » Wie geht's? 你好!"}],
]


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "ARBOR_MODELS", os.path.expanduser("~/.cache/arbor/models"))
    folder = os.path.join(models, "smollm2")
    if not os.path.exists(os.path.join(folder, GGUF)):
        sys.exit(f"{folder}/{GGUF} is missing: run scripts/fetch-models.sh")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    cases = []
    for messages in PROMPTS:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        cases.append({
            "messages": messages,
            "prompt": prompt,
            "prompt_ids": ids[0].tolist(),
            "greedy_ids": new,
            "greedy_text": tokenizer.decode(new, skip_special_tokens=True),
        })
    json.dump({
        "model": GGUF,
        "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, greedy",
        "new_tokens": NEW_TOKENS,
        "cases": cases,
    }, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main()
