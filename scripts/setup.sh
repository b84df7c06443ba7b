#!/usr/bin/env bash
# Sets up a fresh Debian machine for archsearch and builds it (idempotent):
#   - the Fashion-MNIST data package (dataset-fashion-mnist),
#   - a Python venv at .venv with torch==2.11.0, whose libtorch tch links,
#   - a release build of the `archsearch` binary (target/release/archsearch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null; then
    echo "setup: installing torch==2.11.0 into .venv (about 4.6 GB, a few minutes)" >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check torch==2.11.0
fi

# safetensors: the tests check that PyTorch's loader reads our checkpoints.
.venv/bin/python -c 'import safetensors' 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check safetensors

source scripts/env.sh
cargo build --release --locked -j "${CARGO_BUILD_JOBS}" --bin archsearch
