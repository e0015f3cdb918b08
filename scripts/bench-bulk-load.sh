#!/usr/bin/env bash
# Times a bulk load into a 4 x 2 collection on the 3-node local cluster (scripts/local-cluster.sh),
# once per set of `arbor collection create` flags given (none: one exact f32 collection):
#   scripts/bench-bulk-load.sh VECTORS.npy ["--quantization int8" "--index hnsw" ...]
# VECTORS.npy: a 2-D float32 array, e.g. from numpy:
#   np.save("v.npy", np.random.default_rng(1).standard_normal((200000, 384), dtype=np.float32))
# IN_FLIGHT (default 4): import jobs in flight. The cluster's state (.arbor/data, logs) is
# removed first and the nodes stopped at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
vectors=$(realpath "${1:?usage: scripts/bench-bulk-load.sh VECTORS.npy [CREATE-FLAGS...]}")
shift
[ $# -gt 0 ] || set -- ""
dim=$(python3 -c "import ast,sys; f=open(sys.argv[1],'rb'); f.read(8); n=int.from_bytes(f.read(2),'little'); print(ast.literal_eval(f.read(n).decode())['shape'][1])" "$vectors")
bin=${ARBOR_BIN:-target/release/arbor}
[ -x "$bin" ] || cargo build --release -p arbor-cli --bin arbor
export ARBOR_BIN=$bin
scripts/local-cluster.sh stop >/dev/null 2>&1 || true
rm -rf .arbor/data .arbor/logs .arbor/pids
ARBOR_TOKEN=$("$bin" token create --role admin --label bulk-bench --config cluster.toml)
export ARBOR_TOKEN
scripts/local-cluster.sh start >/dev/null 2>&1 || true
trap 'scripts/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT
printf 'name = "idle"\nkind = "embedder"\nreplicas = 0\n' > .arbor/idle-embedder.toml
for i in $(seq 60); do "$bin" deploy -f .arbor/idle-embedder.toml --config cluster.toml >/dev/null 2>&1 && break; sleep 1; done
for flags in "$@"; do
  name=bulk$RANDOM
  # shellcheck disable=SC2086 # the flags are words to split
  "$bin" collection create "$name" --partitions 4 --replicas 2 --embedder idle --dim "$dim" \
    --memory 256MiB --cpu 50m --config cluster.toml $flags >/dev/null
  for i in $(seq 60); do
    "$bin" collections --config cluster.toml | grep "^$name " | grep -q "running 8/8" && break
    sleep 1
  done
  echo "== 4 x 2, ${flags:-exact f32}"
  "$bin" ingest "$name" "$vectors" --in-flight "${IN_FLIGHT:-4}" --config cluster.toml
  "$bin" collection delete "$name" --config cluster.toml >/dev/null
done
