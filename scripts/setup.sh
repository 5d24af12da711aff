#!/usr/bin/env bash
# One-time set-up for a fresh machine: virtual environment, packages (CPU torch pinned), Fashion-MNIST.
# Idempotent: re-running only redoes what changed (pyproject.toml / constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.singledir-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
    echo "$want" > "$stamp"
fi
# Fashion-MNIST from Debian's package, where we can install it (root + apt). Otherwise the code says how.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
        || echo "setup: could not install dataset-fashion-mnist with apt; use --data-dir or --dataset digits" >&2
fi
