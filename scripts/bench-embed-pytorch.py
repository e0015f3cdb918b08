#!/usr/bin/env python3
"""Side-by-side with kernels/benches/embed.rs: sentence-transformers embeddings/s on the CPU.

Embeds batches of 1, 32 and 128 sentences of 12 words (the same sentences as the Rust bench)
with all-MiniLM-L6-v2 from the models dir, and prints sentences per second for each.

    /opt/arbor-py/bin/python scripts/bench-embed-pytorch.py [--models DIR] [--seconds S]
"""

import argparse
import os
import pathlib
import sys
import time

# Keep in step with kernels/benches/embed.rs (`sentence`).
WORDS = (
    "the a cluster node model vector query shard runs fast small large every new old data "
    "store reads writes text answer token batch memory disk network leader follower replica "
    "search index score rank close far similar meaning language system user request time "
    "second minute result error retry during after before while since with"
).split()
assert len(WORDS) == 53


def sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 5 + j * j) % len(WORDS)] for j in range(12)) + "."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_models = os.environ.get("ARBOR_MODELS") or str(pathlib.Path.home() / ".cache/arbor/models")
    parser.add_argument("--models", default=default_models)
    parser.add_argument("--seconds", type=float, default=5.0, help="time per batch size")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    model_dir = pathlib.Path(args.models) / "all-MiniLM-L6-v2"
    if not (model_dir / "model.safetensors").is_file():
        print(f"{model_dir} has no model.safetensors: run scripts/fetch-models.sh", file=sys.stderr)
        return 1
    model = SentenceTransformer(str(model_dir), device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (1, 32, 128):
        texts = [sentence(i) for i in range(batch)]
        with torch.inference_mode():
            model.encode(texts, batch_size=batch, normalize_embeddings=True)  # warm up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                model.encode(texts, batch_size=batch, normalize_embeddings=True)
                done += batch
            elapsed = time.perf_counter() - start
        print(f"batch {batch:4}: {done / elapsed:8.1f} sentences/s ({elapsed / done * batch * 1e3:.2f} ms per batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
