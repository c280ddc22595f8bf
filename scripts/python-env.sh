#!/usr/bin/env bash
# Builds the `rill` Python package (apis/python) into a virtualenv for the
# tests and benchmarks: target/python-venv, with maturin, numpy and pyarrow
# from PyPI. Idempotent: an existing venv is reused and the package rebuilt
# (Cargo rebuilds only what changed). Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${RILL_PYTHON_VENV:-target/python-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.9,<2' numpy pyarrow >&2
PATH="$(cd "$venv" && pwd)/bin:$PATH" "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./apis/python >&2
echo "$(cd "$venv" && pwd)/bin/python"
