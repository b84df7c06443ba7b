# Source this file: it points the tch build at the project's PyTorch venv
# (created by scripts/setup.sh).
ARCHSEARCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$ARCHSEARCH_ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
