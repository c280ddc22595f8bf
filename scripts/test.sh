#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests of `rill run` with real
# node processes, and the 100,000-message leak test.
set -euo pipefail
cd "$(dirname "$0")/.."
# The node binaries the end-to-end tests spawn (cargo test builds only test harnesses of bin targets).
cargo build --workspace --locked
cargo test --workspace --locked "$@"
