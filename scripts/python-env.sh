#!/usr/bin/env bash
# Creates the Python environment the tests use, once: a venv at target/python-env with the
# pinned `websockets` (the Python client example and its test), `prometheus-client` (whose
# parser checks the nodes' /metrics pages) and `jsonschema` with its dependencies (which checks
# `arbor bench`'s reports against docs/bench-report.schema.json). Prints the venv's python.
#
#   scripts/python-env.sh            # then: export ARBOR_PYTHON=$(scripts/python-env.sh)
#
# Needs python3 (>= 3.10) with the venv module (Debian/Ubuntu: apt-get install python3-venv),
# and network access to PyPI the first time. Progress goes to stderr, the path to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

# websockets 16.0 is the newest release that still supports Python 3.10.
PACKAGES=(websockets==16.0 prometheus-client==0.21.1 jsonschema==4.26.0 attrs==26.1.0
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 typing_extensions==4.16.0)
venv=target/python-env
python="$PWD/$venv/bin/python"

if [ -x "$python" ] && "$python" - "${PACKAGES[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(0 if all(version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:]) else 1)
PY
  echo "$python"
  exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 is not installed; install Python 3.10 or newer, then run $0 again." >&2
  exit 1
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: $(python3 --version 2>&1) is too old; ${PACKAGES[0]} needs Python 3.10 or newer." >&2
  exit 1
fi
if [ ! -x "$python" ]; then
  echo "creating a Python environment in $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >&2; then
    rm -rf "$venv"
    echo "error: 'python3 -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv), then run $0 again." >&2
    exit 1
  fi
fi
echo "installing ${PACKAGES[*]} into $venv" >&2
if ! "$python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2; then
  echo "error: 'pip install ${PACKAGES[*]}' failed (see above); it needs network access to PyPI, or an index set by PIP_INDEX_URL." >&2
  exit 1
fi
echo "$python"
