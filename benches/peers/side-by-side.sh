#!/usr/bin/env bash
# Arbor and its peers in one run on this machine, with the same load: `arbor bench local` (a
# 3-node cluster of its own with the example embedder and model deployed) runs call,
# ingest-vectors, query-vector, embed and generate; benches/peers/run.py runs the same
# scenarios on Ray Serve, Ray actors, FAISS, hnswlib, ONNX Runtime and llama.cpp; then
# `arbor bench compare --html` puts each peer beside arbor, with ratios.
#
#   benches/peers/side-by-side.sh OUT [--duration 10s] [--warmup 2s] [--connections 4]
#       [--rows 10000] [--dimension 128]     # any other arbor bench option goes to both
#
# Writes OUT/arbor/report.{json,html}, OUT/peers/<peer>.json and OUT/side-by-side.html, and
# prints the comparison. Needs a release build of arbor (ARBOR=path to use another), the
# models of scripts/fetch-models.sh, and the venv of benches/peers/setup.sh (made when
# missing: PyPI, and about 10 minutes to compile llama.cpp the first time).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: $0 OUT [--duration 10s] [--warmup 2s] [--connections 4] [--rows N] [--dimension D]" >&2
  exit 2
fi
out="$1"
shift
duration=10s warmup=2s connections=4 rows=10000 dimension=128
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --rows) rows="$2"; shift 2 ;;
    --dimension) dimension="$2"; shift 2 ;;
    *) echo "unknown option $1 (the options: --duration --warmup --connections --rows --dimension)" >&2; exit 2 ;;
  esac
done

arbor="${ARBOR:-target/release/arbor}"
if [ ! -x "$arbor" ]; then
  echo "building arbor (release)" >&2
  cargo build --release -p arbor-cli --bin arbor
fi
python="$(benches/peers/setup.sh)"
if [ -e "$out/arbor" ]; then
  echo "error: $out/arbor exists: pick a new OUT (reports are never mixed)" >&2
  exit 1
fi
mkdir -p "$out"
load=(--duration "$duration" --warmup "$warmup" --connections "$connections")

echo "== arbor ==" >&2
"$arbor" bench local call ingest-vectors query-vector embed generate --nodes 3 \
  --deploy examples/embedder.toml --deploy examples/model.toml \
  --rows "$rows" --dimension "$dimension" "${load[@]}" --out "$out/arbor"

echo "== peers ==" >&2
"$python" benches/peers/run.py --out "$out/peers" --rows "$rows" --dimension "$dimension" \
  "${load[@]}"

"$arbor" bench compare "$out/arbor/report.json" "$out"/peers/*.json --html "$out/side-by-side.html"
