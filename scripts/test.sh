#!/usr/bin/env bash
# Runs the whole test suite: fetches the model files the kernel tests use (once), makes the
# Python environment the Python client test uses (once, scripts/python-env.sh), then every
# crate's tests. Extra arguments go to cargo test (e.g. scripts/test.sh -p arbor-cli).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/fetch-models.sh ]; then
  scripts/fetch-models.sh
fi
# cli/tests/python_client.rs runs examples/python/arbor_client.py with $ARBOR_PYTHON.
if python=$(scripts/python-env.sh); then
  export ARBOR_PYTHON="$python"
else
  echo "warning: scripts/python-env.sh failed (above); the Python client test will fail" >&2
fi
exec cargo test --workspace --locked "$@"
