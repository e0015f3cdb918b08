#!/usr/bin/env python3
"""Makes the reference embeddings that kernels/tests/embeddings.rs compares against.

Embeds fixed sentences with sentence-transformers on PyTorch (CPU), from the same model files
the Rust encoder loads (scripts/fetch-models.sh puts them in the models dir), and writes them
with their token counts to kernels/tests/fixtures/embeddings.json, rounded to 6 decimals.

    /opt/arbor-py/bin/python scripts/embedding-reference.py [--models DIR] [--out FILE]

Needs torch and sentence-transformers.
"""

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Varied on purpose: short and long, punctuation, numbers, code, accents, CJK, emoji, Cyrillic,
# Arabic, whitespace oddities, a sentence with a [SEP]-like literal, and one text far beyond
# the model's 256 word pieces (it must be truncated the same way on both sides).
LONG = " ".join(
    f"Paragraph {i}: the distributed runtime schedules embedder shards, vector partitions and "
    f"model replicas across nodes, rebalancing them when a machine fails or joins the cluster."
    for i in range(1, 21)
)
SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A",
    "Rust is a systems programming language focused on safety, speed and concurrency.",
    "What is the capital of France? Paris, of course.",
    "Embeddings map text to vectors so that similar meanings end up close together.",
    "Café, naïve, façade, résumé: accents should be stripped or kept consistently.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "I love pizza 🍕 and sushi 🍣!!!",
    "fn main() { println!(\"{}\", 2 + 2); }",
    "The price rose 12.5% to $1,234.56 on 2024-03-15, at 09:30 UTC.",
    "   leading and trailing spaces,\ttabs\tand\nnew lines   ",
    "e-mail: someone@example.com, URL: https://example.org/a/b?c=d&e=f#g",
    "Don't stop believin' — hold on to that feelin'.",
    "[CLS] this text contains [SEP] special-looking tokens [MASK] [PAD]",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic.",
    "The mitochondria is the powerhouse of the cell; ATP synthesis happens there.",
    "Ünïcödé ẞtraße, Ångström, Œuvre, Ħ, ǅ — odd letters in a row.",
    "Short.",
    "GPU kernels compute top-k similarity over millions of vectors in under a millisecond.",
    LONG,
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_models = os.environ.get("ARBOR_MODELS") or str(pathlib.Path.home() / ".cache/arbor/models")
    parser.add_argument("--models", default=default_models, help="models dir (as fetch-models.sh)")
    parser.add_argument("--out", default=str(ROOT / "kernels/tests/fixtures/embeddings.json"))
    args = parser.parse_args()

    model_dir = pathlib.Path(args.models) / "all-MiniLM-L6-v2"
    if not (model_dir / "model.safetensors").is_file():
        print(f"{model_dir} has no model.safetensors: run scripts/fetch-models.sh", file=sys.stderr)
        return 1

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    vectors = model.encode(SENTENCES, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    # Word pieces the model saw, [CLS] and [SEP] included, after truncation.
    features = model.tokenize(SENTENCES)
    tokens = features["attention_mask"].sum(dim=1).tolist()

    fixture = {
        "model": "all-MiniLM-L6-v2",
        "made_by": (
            f"scripts/embedding-reference.py: sentence-transformers {sentence_transformers.__version__}, "
            f"torch {torch.__version__}, CPU, normalize_embeddings=True"
        ),
        "max_seq_length": model.max_seq_length,
        "dim": int(vectors.shape[1]),
        "cases": [
            {"text": text, "tokens": int(n), "embedding": [round(float(x), 6) for x in vec]}
            for text, n, vec in zip(SENTENCES, tokens, vectors)
        ],
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(SENTENCES)} reference embeddings to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
