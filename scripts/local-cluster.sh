#!/usr/bin/env bash
# Starts a 3-node Arbor cluster on this machine from cluster.toml and prints its status.
#   scripts/local-cluster.sh [start]   build, start nodes 1-3 in the background, wait, print status
#   scripts/local-cluster.sh status    print the membership table
#   scripts/local-cluster.sh stop      stop the nodes (SIGTERM)
# Logs go to .arbor/logs/node-N.log; state to .arbor/data/node-N.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
config=${ARBOR_CONFIG:-cluster.toml}
state=.arbor
# ARBOR_BIN: run this arbor binary instead of building one.
bin=${ARBOR_BIN:-target/release/arbor}
nodes=$(grep -E '^\s*id\s*=' "$config" | sed -E 's/[^0-9]//g')

build() {
  if ! command -v cargo >/dev/null; then
    echo "cargo is not installed: install Rust from https://rustup.rs, then run this again." >&2
    exit 1
  fi
  echo "building arbor (release)..."
  cargo build --release -p arbor-cli --bin arbor
}

ensure_secret() {
  mkdir -p "$state"
  if [ ! -s "$state/cluster.secret" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/cluster.secret")
    echo "created a random cluster secret in $state/cluster.secret"
  fi
  # The CA and the nodes' certificates ([tls] dir): made where missing, kept otherwise.
  "$bin" cert init --config "$config"
}

running() { [ -f "$state/pids/$1" ] && kill -0 "$(cat "$state/pids/$1")" 2>/dev/null; }

start() {
  [ -n "${ARBOR_BIN:-}" ] || build
  ensure_secret
  mkdir -p "$state/logs" "$state/pids"
  for n in $nodes; do
    if running "$n"; then
      echo "node $n is already running (pid $(cat "$state/pids/$n"))"
      continue
    fi
    "$bin" node --config "$config" --node "$n" >"$state/logs/node-$n.log" 2>&1 &
    echo $! >"$state/pids/$n"
    echo "started node $n (pid $!, log $state/logs/node-$n.log)"
  done
  # Wait until every node is up in the view of the first one that answers.
  for _ in $(seq 1 50); do
    if out=$("$bin" status --config "$config" --json 2>/dev/null) &&
       ! grep -q '"state":"down"' <<<"$out"; then
      break
    fi
    sleep 0.2
  done
  "$bin" status --config "$config"
  echo
  echo "The cluster runs in the background. Next:"
  echo "  $bin status --config $config        # membership"
  echo "  scripts/local-cluster.sh stop                  # stop it"
}

stop() {
  for n in $nodes; do
    if running "$n"; then
      kill -TERM "$(cat "$state/pids/$n")" && echo "stopped node $n"
    fi
    rm -f "$state/pids/$n"
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) "$bin" status --config "$config" ;;
  *) echo "usage: $0 [start|status|stop]" >&2; exit 2 ;;
esac
