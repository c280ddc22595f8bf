#!/usr/bin/env bash
# Runs the README's shell blocks exactly as written, top to bottom, so a
# documented command that stops working fails CI. `./scripts/test.sh` itself
# is skipped (it is what runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
script=$(mktemp)
trap 'rm -f "$script"' EXIT
{
    echo 'set -euxo pipefail'
    echo 'shopt -s expand_aliases'
    awk '/^```/ { in_sh = ($0 == "```sh"); next }
         in_sh && $0 !~ /^\.\/scripts\/test\.sh/ { print }' README.md
} > "$script"
bash "$script"
