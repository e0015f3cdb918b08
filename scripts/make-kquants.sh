#!/usr/bin/env bash
# Makes the K-quant GGUFs of SmolLM2-135M-Instruct from the shipped Q4_1 file, once:
#   smollm2/SmolLM2-135M-Instruct.Q4_K_M.gguf and smollm2/SmolLM2-135M-Instruct.Q6_K.gguf
# in the models dir, with llama.cpp's quantizer (llama-cpp-python's llama_model_quantize,
# default params, allow_requantize). A file already there is left alone.
#
#   scripts/make-kquants.sh [--models DIR] [--python PATH]
#
# The models dir is --models DIR, else $ARBOR_MODELS, else ~/.cache/arbor/models. The python is
# --python PATH, else the venv of benches/peers/setup.sh (made with --no-onnx when absent:
# it compiles llama-cpp-python, several minutes, needs PyPI and a C/C++ compiler). The Q4_1 source
# comes from scripts/fetch-models.sh. Requantizing from Q4_1 is what llama.cpp warns about:
# the K-quants keep Q4_1's rounding error; they are test inputs, not quality models. SmolLM2's
# width (576) is no multiple of 256, so llama.cpp falls back to 32-wide types for many tensors.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 [--models DIR] [--python PATH]" >&2
  exit 2
}

models=""
python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --models)
      [ $# -ge 2 ] || usage
      models="$2"
      shift 2
      ;;
    --models=*)
      models="${1#--models=}"
      shift
      ;;
    --python)
      [ $# -ge 2 ] || usage
      python="$2"
      shift 2
      ;;
    --python=*)
      python="${1#--python=}"
      shift
      ;;
    -h | --help) usage ;;
    *)
      echo "unknown argument: $1" >&2
      usage
      ;;
  esac
done
if [ -z "$models" ]; then
  models="${ARBOR_MODELS:-${HOME:?HOME is not set; pass --models DIR}/.cache/arbor/models}"
fi

src="$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
q4km="$models/smollm2/SmolLM2-135M-Instruct.Q4_K_M.gguf"
q6k="$models/smollm2/SmolLM2-135M-Instruct.Q6_K.gguf"

if [ -f "$q4km" ] && [ -f "$q6k" ]; then
  echo "K-quants are in place in $models/smollm2"
  exit 0
fi
if [ ! -f "$src" ]; then
  echo "error: $src is missing: run scripts/fetch-models.sh first." >&2
  exit 1
fi
if [ -z "$python" ]; then
  if ! python="$(benches/peers/setup.sh --no-onnx --models "$models")"; then
    echo "error: no Python environment with llama-cpp-python (benches/peers/setup.sh failed, see above); fix that or pass --python PATH, then run $0 again." >&2
    exit 1
  fi
fi

"$python" - "$src" "$q4km" "$q6k" <<'PY'
import ctypes
import os
import sys

try:
    import llama_cpp
except ImportError:
    sys.exit(f"error: {sys.executable} has no llama_cpp: install llama-cpp-python there "
             "(benches/peers/setup.sh does), then run scripts/make-kquants.sh again.")

src, q4km, q6k = sys.argv[1:]
llama_cpp.llama_backend_init()
for dest, ftype in ((q4km, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M), (q6k, llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K)):
    if os.path.isfile(dest):
        continue
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = 2
    part = dest + ".part"
    rc = llama_cpp.llama_model_quantize(src.encode(), part.encode(), ctypes.byref(params))
    if rc != 0 or not os.path.isfile(part):
        sys.exit(f"error: llama_model_quantize({src} -> {dest}) returned {rc}")
    os.replace(part, dest)
    print(dest, file=sys.stderr)
PY
echo "K-quants are in place in $models/smollm2"
