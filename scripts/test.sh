#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests of `rill run` and of
# coordinator + daemons with real processes, the 100,000-message leak test,
# then the README's commands exactly as written (benchmarks in --quick mode
# included). Arguments are passed to `cargo test`, and then the README step
# is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# The node binaries the end-to-end tests spawn (cargo test builds only test harnesses of bin targets).
cargo build --workspace --locked
cargo test --workspace --locked "$@"
if [ $# -eq 0 ]; then
    ./scripts/readme.sh
fi
