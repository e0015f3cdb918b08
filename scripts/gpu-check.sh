#!/usr/bin/env bash
# The GPU paths, checked and measured on a machine with an NVIDIA GPU, in two halves:
#
#   scripts/gpu-check.sh pack [--models DIR]   here: builds, then packs what the GPU machine needs
#   scripts/gpu-check.sh run  [--out DIR]      there: unpacks, tests, measures (under 8 minutes)
#
# `pack` builds (release) the arbor binary and the test binaries that touch CUDA
# (kernels/tests/embeddings.rs, generation.rs, topk_gpu.rs), and packs them with the models
# they load (all-MiniLM-L6-v2, SmolLM2-135M-Instruct Q4_1, from scripts/fetch-models.sh) and
# the `gguf` wheel (transformers needs it to read the GGUF) into one tar, split into parts of
# at most 56 MiB under .gpu/1/, .gpu/2/, ... (.gpu/ is added to .git/info/exclude): a copy of
# the working tree to a GPU machine may carry about 64 MiB at a time, and the whole is about
# three times that. It prints the calls that take the parts there, one part each; what an
# earlier call left there stays while the machine is held.
#
# `run` needs every part (their checksums are checked), nvidia-smi, and a python3 with torch,
# transformers and sentence-transformers on CUDA (the GPU machines' image has them; nothing is
# fetched). It:
#   1. runs the CUDA tests, which compare the GPU with the CPU path or the references (the
#      encoder against sentence-transformers' vectors, the decoder against llama.cpp's greedy
#      token ids, the exact top-k against the CPU index) and fails if any of them skipped;
#   2. measures Arbor on the GPU: `arbor local embed --device cuda` at batch 512 (embeddings/s)
#      and `arbor local generate --device cuda` at batch 1, 8 and 32 (decode tokens/s in all);
#   3. measures PyTorch on the same GPU, inputs and files (scripts/gpu-peers.py);
#   4. writes the table to OUT/gpu-check.md (OUT: --out, else $OUT, else target/gpu-check) and
#      every command's output to OUT/gpu-check.log. Exit status 0 only if every test passed.
# GPU_CHECK_DEVICE=cpu runs `run` without a GPU, everything on the CPU, to check the script
# itself (its tests then report SKIPPED, and it fails).
set -euo pipefail
cd "$(dirname "$0")/.."

PART_BYTES=$((56 * 1024 * 1024))
GGUF_WHEEL=gguf==0.17.1
TESTS="embeddings generation topk_gpu"
GGUF=smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MINILM=all-MiniLM-L6-v2

usage() {
  sed -n '2,6p' "$0" >&2
  exit 2
}

pack() {
  local models=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --models) models="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  models="${models:-${ARBOR_MODELS:-$HOME/.cache/arbor/models}}"
  for f in "$MINILM/model.safetensors" "$GGUF"; do
    [ -f "$models/$f" ] || { echo "error: $models/$f is missing: run scripts/fetch-models.sh" >&2; exit 1; }
  done

  local stage=target/gpu-check-stage
  rm -rf "$stage" .gpu
  mkdir -p "$stage/bin" "$stage/models/smollm2" "$stage/wheels"

  echo "building the arbor binary and the CUDA test binaries (release)" >&2
  cargo build --release --locked --workspace --bins
  cp target/release/arbor "$stage/bin/"
  local tests=()
  for t in $TESTS; do tests+=(--test "$t"); done
  cargo test --release --locked --workspace --no-run "${tests[@]}" --message-format=json \
    | python3 -c '
import json, shutil, sys
wanted, stage = set(sys.argv[1].split()), sys.argv[2]
for line in sys.stdin:
    msg = json.loads(line)
    target = msg.get("target", {})
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and target.get("name") in wanted \
            and "test" in target.get("kind", []):
        shutil.copy(msg["executable"], f"{stage}/bin/{target['"'"'name'"'"']}")
        wanted.discard(target["name"])
if wanted:
    sys.exit(f"no test binary for {sorted(wanted)}")
' "$TESTS" "$stage"
  # Line tables are most of a release binary's size.
  for b in "$stage"/bin/*; do objcopy --strip-debug "$b"; done

  cp -r "$models/$MINILM" "$stage/models/"
  rm -rf "$stage/models/$MINILM/onnx"
  cp "$models/$GGUF" "$stage/models/smollm2/"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$stage/wheels" "$GGUF_WHEEL"

  mkdir -p .gpu
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
  tar -C "$stage" -czf - . | split -b "$PART_BYTES" -d -a 2 - .gpu/part-
  local n=0
  for p in .gpu/part-*; do
    n=$((n + 1))
    mkdir -p ".gpu/$n"
    mv "$p" ".gpu/$n/part"
  done
  (for k in $(seq 1 "$n"); do cat ".gpu/$k/part"; done | sha256sum | cut -d' ' -f1; echo "$n") >".gpu/$n/manifest"
  rm -rf "$stage"
  echo "packed $(du -sh .gpu | cut -f1) in $n parts under .gpu/. On the GPU machine, one call each:" >&2
  for k in $(seq 1 "$n"); do
    if [ "$k" -lt "$n" ]; then
      echo "  carry [\".gpu/$k\"]  command: ls -l .gpu/$k" >&2
    else
      echo "  carry [\".gpu/$k\"]  command: scripts/gpu-check.sh run   (timeout about 540 s)" >&2
    fi
  done
}

# Seconds since the epoch, with fractions.
now() { date +%s.%N; }

run() {
  local out="${OUT:-target/gpu-check}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  mkdir -p "$out"
  local log="$out/gpu-check.log" md="$out/gpu-check.md"
  : >"$log"
  exec > >(tee -a "$log") 2>&1

  local manifest
  manifest="$(ls .gpu/*/manifest 2>/dev/null | head -1)"
  [ -n "$manifest" ] || { echo "error: no .gpu/N/manifest: carry the last part of scripts/gpu-check.sh pack" >&2; exit 1; }
  local sum count
  { read -r sum; read -r count; } <"$manifest"
  for k in $(seq 1 "$count"); do
    [ -f ".gpu/$k/part" ] || { echo "error: part $k of $count is not here: carry .gpu/$k in a call first" >&2; exit 1; }
  done
  if [ "$(for k in $(seq 1 "$count"); do cat ".gpu/$k/part"; done | sha256sum | cut -d' ' -f1)" != "$sum" ]; then
    echo "error: the parts' checksum differs from the manifest's: pack again and carry every part" >&2
    exit 1
  fi
  local root=/tmp/gpu-check
  rm -rf "$root" && mkdir -p "$root"
  for k in $(seq 1 "$count"); do cat ".gpu/$k/part"; done | tar -C "$root" -xzf -
  export ARBOR_MODELS="$root/models" RUST_BACKTRACE=1
  local arbor="$root/bin/arbor" python="${PYTHON:-python3}"
  python3 -m pip install -q --no-index --no-deps --target "$root/site" "$root"/wheels/*.whl
  export PYTHONPATH="$root/site${PYTHONPATH:+:$PYTHONPATH}"

  local device="${GPU_CHECK_DEVICE:-cuda}" gpu="none (GPU_CHECK_DEVICE=cpu)"
  if [ "$device" = cuda ]; then
    echo "== the GPU"
    nvidia-smi -L || { echo "error: nvidia-smi failed: this is not a GPU machine" >&2; exit 1; }
    gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
  fi

  echo "== CUDA tests (the GPU against the CPU path and the references)"
  local failed=0 results=()
  for t in $TESTS; do
    local filter=()
    case "$t" in
      embeddings) filter=(cuda_matches_cpu) ;;
      generation) filter=(cuda_generates) ;;
    esac
    local started status=ok
    started="$(now)"
    if ! "$root/bin/$t" --test-threads 1 --nocapture "${filter[@]}" >"$root/$t.out" 2>&1; then
      status=FAILED
      failed=1
    elif grep -qi "skip" "$root/$t.out"; then
      status="SKIPPED (no usable GPU?)"
      failed=1
    fi
    cat "$root/$t.out"
    results+=("| \`$t\` ${filter[*]} | $status | $(python3 -c "print(f'{$(now) - $started:.1f}')") s |")
  done

  echo "== Arbor on the GPU"
  python3 - "$root/texts.txt" <<'EOF'
import sys
words = ("the a cluster node model vector query shard runs fast small large every new old data "
         "store reads writes text answer token batch memory disk network leader follower replica "
         "search index score rank close far similar meaning language system user request time "
         "second minute result error retry during after before while since with").split()
with open(sys.argv[1], "w") as f:
    for i in range(2048):
        f.write(" ".join(words[(i * 7 + j * 5 + j * j) % len(words)] for j in range(12)) + ".\n")
EOF
  # Each figure is the second of two runs: the first compiles and tunes the GPU kernels.
  local embed_json
  "$arbor" local embed --device "$device" --batch-size 512 --texts-file "$root/texts.txt" >/dev/null || failed=1
  embed_json="$("$arbor" local embed --device "$device" --batch-size 512 --texts-file "$root/texts.txt" --timings)" || failed=1
  local arbor_embed
  arbor_embed="$(printf '%s' "$embed_json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
rate = len(d["embeddings"]) / (d["timings"]["embed_ms"] / 1e3)
print(f"{rate:.0f}")' 2>/dev/null || echo "n/a")"
  declare -A arbor_gen
  for b in 1 8 32; do
    local prompts=()
    for i in $(seq 1 "$b"); do prompts+=("Write a long, detailed essay about topic number $i of distributed computing."); done
    "$arbor" local generate --device "$device" --raw --max-tokens 4 "${prompts[@]}" >/dev/null || failed=1
    arbor_gen[$b]="$("$arbor" local generate --device "$device" --raw --json --timings --max-tokens 128 "${prompts[@]}" \
      | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
tokens = sum(len(r["token_ids"]) - 1 for r in rows)
span = max(r["timings"]["total_ms"] for r in rows) - max(r["timings"]["first_token_ms"] for r in rows)
rate = tokens / (span / 1e3)
print(f"{rate:.0f}")' 2>/dev/null || echo "n/a")"
    echo "arbor generate batch $b: ${arbor_gen[$b]} tokens/s"
  done
  echo "arbor embed batch 512: $arbor_embed texts/s"

  echo "== PyTorch on the same GPU"
  local peers
  peers="$("$python" scripts/gpu-peers.py --device "$device" --models "$ARBOR_MODELS" --texts "$root/texts.txt")" || peers="{}"
  echo "$peers"
  peer() { printf '%s' "$peers" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', 'n/a'))"; }

  {
    echo "# scripts/gpu-check.sh run, $(date -u +%Y-%m-%d)"
    echo
    echo "GPU: $gpu"
    echo
    echo "| CUDA test | result | time |"
    echo "| --- | --- | ---: |"
    printf '%s\n' "${results[@]}"
    echo
    echo "| workload | Arbor | PyTorch | Arbor/PyTorch |"
    echo "| --- | ---: | ---: | ---: |"
    ratio() { python3 -c "import sys; a, b = sys.argv[1:]; print(f'{float(a) / float(b):.2f}')" "$1" "$2" 2>/dev/null || echo "n/a"; }
    echo "| all-MiniLM-L6-v2, 2048 sentences, batch 512 (texts/s; PyTorch fp32) | $arbor_embed | $(peer embed_fp32) | $(ratio "$arbor_embed" "$(peer embed_fp32)") |"
    echo "| the same, PyTorch fp16 | $arbor_embed | $(peer embed_fp16) | $(ratio "$arbor_embed" "$(peer embed_fp16)") |"
    for b in 1 8 32; do
      echo "| SmolLM2-135M Q4_1, greedy decode, batch $b (tokens/s in all; PyTorch bf16) | ${arbor_gen[$b]} | $(peer "generate_$b") | $(ratio "${arbor_gen[$b]}" "$(peer "generate_$b")") |"
    done
  } >"$md"
  cat "$md"
  if [ "$failed" -ne 0 ]; then
    echo "error: a CUDA test failed or skipped (above)" >&2
    exit 1
  fi
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) usage ;;
esac
