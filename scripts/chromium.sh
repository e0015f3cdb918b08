#!/usr/bin/env bash
# Finds a Chromium for the dashboard test (cli/tests/observability.rs), installing Debian's
# `chromium` package when there is none and this user may (root, or sudo without a password).
# Prints its path; exits non-zero, saying why, when there is none.
#
#   export ARBOR_CHROMIUM=$(scripts/chromium.sh)
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if path=$(command -v "$name"); then
    echo "$path"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no Chromium, and no apt-get to install one: install Chromium and set ARBOR_CHROMIUM" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "no Chromium, and installing one needs root: apt-get install chromium" >&2
  exit 1
fi
echo "installing Debian's chromium package for the dashboard test" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y --no-install-recommends chromium >&2; then
  "${as_root[@]}" apt-get update >&2 || true
  if ! "${as_root[@]}" apt-get install -y --no-install-recommends chromium >&2; then
    echo "apt-get install chromium failed (above)" >&2
    exit 1
  fi
fi
command -v chromium
