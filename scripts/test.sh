#!/usr/bin/env bash
# Runs the whole test suite: fetches the model files the kernel tests use (once), then
# every crate's tests. Extra arguments go to cargo test (e.g. scripts/test.sh -p arbor-node).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/fetch-models.sh ]; then
  scripts/fetch-models.sh
fi
exec cargo test --workspace --locked "$@"
