#!/usr/bin/env python3
"""Makes the reference embeddings that kernels/tests/embeddings.rs compares against.

Embeds fixed sentences with sentence-transformers on PyTorch (CPU), from the same model files
the Rust encoder loads (scripts/fetch-models.sh puts them in the models dir), and writes them
as the model returns them (normalized only when the model's modules say so), with their token
counts, rounded to 6 decimals, to the model's fixture:
  --model all-MiniLM-L6-v2 (the default)  kernels/tests/fixtures/embeddings.json
  --model paraphrase-MiniLM-L3-v2         kernels/tests/fixtures/embeddings-paraphrase-MiniLM-L3-v2.json
  --model paraphrase-MiniLM-L3-v2 --pooling cls
                                          kernels/tests/fixtures/embeddings-paraphrase-MiniLM-L3-v2-cls.json
The pooling and the sequence limit come from the model dir's sentence-transformers files
(modules.json, 1_Pooling/config.json, sentence_bert_config.json); --pooling cls embeds from a
copy of the folder whose pooling takes the [CLS] token's state instead, which no shipped model
here uses, so that the encoder's CLS pooling is checked against sentence-transformers too.
--check-onnx FILE also runs a whole-model ONNX export (the one scripts/bert-from-onnx.py made
the folder from) in onnxruntime on the same texts and fails unless it agrees with the folder.

    python scripts/embedding-reference.py [--model NAME] [--pooling cls] [--models DIR]
                                          [--out FILE] [--check-onnx FILE]

Needs torch and sentence-transformers, and onnxruntime for --check-onnx (e.g. in a throwaway
venv: `pip install torch==2.15.0 sentence-transformers==6.2.0 onnxruntime==1.23.2`).
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Model dir under the models dir -> fixture it writes.
FIXTURES = {
    "all-MiniLM-L6-v2": "kernels/tests/fixtures/embeddings.json",
    "paraphrase-MiniLM-L3-v2": "kernels/tests/fixtures/embeddings-paraphrase-MiniLM-L3-v2.json",
}

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


def cls_copy(model_dir: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """A copy of the model folder (its files linked) whose pooling takes the [CLS] state."""
    copy = into / model_dir.name
    shutil.copytree(model_dir, copy, copy_function=os.symlink,
                    ignore=shutil.ignore_patterns("onnx", "1_Pooling"))
    pooling = json.loads((model_dir / "1_Pooling/config.json").read_text())
    for key in list(pooling):
        if key.startswith("pooling_mode_"):
            pooling[key] = key == "pooling_mode_cls_token"
    (copy / "1_Pooling").mkdir()
    (copy / "1_Pooling/config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    return copy


def check_onnx(path: str, model, vectors) -> None:
    """Runs the ONNX export on the same word pieces; exits unless it gives the same vectors."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    features = model.tokenize(SENTENCES)
    feeds = {k: v.numpy().astype(np.int64) for k, v in features.items() if k in names}
    # The sentence embedding is the output of the [batch, hidden] shape.
    outputs = session.run(None, feeds)
    pooled = next(o for o in outputs if o.ndim == 2 and o.shape[1] == vectors.shape[1]
                  and o.dtype == np.float32)
    worst = float(np.abs(pooled - vectors).max())
    print(f"onnxruntime on {path}: largest difference {worst:.2e}")
    if worst > 1e-4:
        sys.exit(f"the folder does not reproduce {path} (largest difference {worst})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_models = os.environ.get("ARBOR_MODELS") or str(pathlib.Path.home() / ".cache/arbor/models")
    parser.add_argument("--models", default=default_models, help="models dir (as fetch-models.sh)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", choices=sorted(FIXTURES))
    parser.add_argument("--pooling", choices=["model", "cls"], default="model",
                        help="the model's own pooling, or the [CLS] state (see above)")
    parser.add_argument("--out", help="fixture to write (default: the model's, see above)")
    parser.add_argument("--check-onnx", metavar="FILE", help="whole-model ONNX export to agree with")
    args = parser.parse_args()
    default_out = FIXTURES[args.model]
    if args.pooling == "cls":
        default_out = default_out.replace(".json", "-cls.json")
    out = pathlib.Path(args.out) if args.out else ROOT / default_out

    model_dir = pathlib.Path(args.models) / args.model
    if not (model_dir / "model.safetensors").is_file():
        print(f"{model_dir} has no model.safetensors: run scripts/fetch-models.sh, or copy the "
              f"model's sentence-transformers folder there (--models DIR for another models dir)",
              file=sys.stderr)
        return 1

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        load_dir = cls_copy(model_dir, pathlib.Path(tmp)) if args.pooling == "cls" else model_dir
        model = SentenceTransformer(str(load_dir), device="cpu")
        model.eval()
        # As the model returns them: normalized only if its modules end in Normalize.
        vectors = model.encode(SENTENCES, batch_size=8, normalize_embeddings=False, convert_to_numpy=True)
    if args.check_onnx:
        if args.pooling == "cls":
            sys.exit("--check-onnx compares the model's own pooling: leave out --pooling cls")
        check_onnx(args.check_onnx, model, vectors)
    # Word pieces the model saw, [CLS] and [SEP] included, after truncation.
    features = model.tokenize(SENTENCES)
    tokens = features["attention_mask"].sum(dim=1).tolist()

    fixture = {
        "model": args.model,
        "pooling": "cls" if args.pooling == "cls" else "the model's",
        "made_by": (
            f"scripts/embedding-reference.py: sentence-transformers {sentence_transformers.__version__}, "
            f"torch {torch.__version__}, CPU, normalize_embeddings=False"
        ),
        "max_seq_length": model.max_seq_length,
        "dim": int(vectors.shape[1]),
        "cases": [
            {"text": text, "tokens": int(n), "embedding": [round(float(x), 6) for x in vec]}
            for text, n, vec in zip(SENTENCES, tokens, vectors)
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(SENTENCES)} reference embeddings to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
