#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests of `rill run` and of
# coordinator + daemons with real processes, `rill cluster` on real SSH
# hosts (as root), Python nodes (the `rill` package built into a virtualenv),
# the 100,000-message leak test,
# then the README's commands exactly as written (benchmarks in --quick mode
# included). Arguments are passed to `cargo test`, and then the README step
# is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# The multi-host tests (crates/rill-cli/tests/cluster-e2e) boot hosts in
# network namespaces, each with its own sshd (some booting systemd with
# systemd-nspawn on a Debian rootfs that debootstrap fetches once): as root,
# install what they need when it is missing (as CI does on a fresh machine).
if [ "$(id -u)" = 0 ] && { [ ! -x /usr/sbin/sshd ] || ! command -v nft >/dev/null || ! command -v ssh >/dev/null \
    || ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; }; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        openssh-server openssh-client sudo iproute2 nftables util-linux procps systemd-container debootstrap
fi
# The Python node tests need python3 with venv (Debian splits venv out).
if [ "$(id -u)" = 0 ] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
fi
# Nodes with a `git` source are cloned with git (the tests use local repositories).
if [ "$(id -u)" = 0 ] && ! command -v git >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git
fi
# The node binaries the end-to-end tests spawn (cargo test builds only test harnesses of bin targets).
cargo build --workspace --locked
# The `rill` Python package (apis/python), built into a virtualenv with numpy
# and pyarrow from PyPI, for the Python node tests.
RILL_TEST_PYTHON="$(./scripts/python-env.sh)"
export RILL_TEST_PYTHON
cargo test --workspace --locked "$@"
if [ $# -eq 0 ]; then
    ./scripts/readme.sh
fi
