#!/usr/bin/env bash
# Runs the whole test suite (setting the machine up first if needed,
# installing Chromium for the browser tests), against a throwaway PostgreSQL
# server (scripts/with-postgres.sh, the Debian package) and a throwaway
# S3-compatible server (scripts/with-s3.sh, SeaweedFS from PyPI), so the
# PostgreSQL and S3 tests always run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
# The report and dashboard tests drive headless Chromium (Debian package).
if ! command -v chromium >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
source scripts/env.sh
scripts/with-postgres.sh scripts/with-s3.sh cargo test --release --locked -j "${CARGO_BUILD_JOBS}" --workspace "$@"
