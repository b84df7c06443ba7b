#!/usr/bin/env bash
# Runs the whole test suite (setting the machine up first if needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source scripts/env.sh
cargo test --release --locked -j "${CARGO_BUILD_JOBS}" --workspace "$@"
