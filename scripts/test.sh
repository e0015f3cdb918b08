#!/usr/bin/env bash
# Runs the whole test suite: fetches the model files the kernel tests use (once), makes the
# Python environment the Python client and metrics tests use (once, scripts/python-env.sh),
# finds or installs the Chromium the dashboard test drives (scripts/chromium.sh), then every
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
  echo "warning: scripts/python-env.sh failed (above); the Python client and /metrics tests will fail" >&2
fi
# cli/tests/observability.rs drives the dashboard in $ARBOR_CHROMIUM (skipped, saying so,
# where there is none and none can be installed).
if chromium=$(scripts/chromium.sh); then
  export ARBOR_CHROMIUM="$chromium"
else
  echo "warning: scripts/chromium.sh found no Chromium (above); the dashboard test will be skipped" >&2
fi
exec cargo test --workspace --locked "$@"
