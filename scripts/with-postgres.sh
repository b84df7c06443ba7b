#!/usr/bin/env bash
# Usage: scripts/with-postgres.sh CMD [ARGS...]
#
# Starts a throwaway PostgreSQL server (the Debian package, installed if
# missing): `initdb` into a temporary folder, listening on 127.0.0.1 at a
# free port, trust authentication, fsync off (it is thrown away). Runs CMD
# with ARCHSEARCH_PG_URL set to the server's URL, then stops the server and
# deletes its folder when CMD ends, however it ends. Exits with CMD's status.
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
pg_bin() {
    # The newest Debian server binaries, else whatever is on the PATH.
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
    if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; fi
}
BIN=$(pg_bin)
if [ -z "$BIN" ]; then
    echo "with-postgres: installing the postgresql package" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    BIN=$(pg_bin)
fi
[ -n "$BIN" ] || { echo "with-postgres: no initdb found after installing postgresql" >&2; exit 1; }

# The server refuses to run as root: run it as the `postgres` user then.
AS=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    AS=(runuser -u postgres --)
fi

DIR=$(mktemp -d "${TMPDIR:-/tmp}/archsearch-pg.XXXXXX")
chmod 755 "$DIR"
[ ${#AS[@]} -eq 0 ] || chown postgres "$DIR"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
    "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${AS[@]}" "$BIN/initdb" -D "$DIR/data" -U archsearch --auth=trust --no-sync -E UTF8 >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$DIR/server.log" >&2; exit 1; }

export ARCHSEARCH_PG_URL="postgres://archsearch@127.0.0.1:$PORT/postgres"
echo "with-postgres: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') at $ARCHSEARCH_PG_URL" >&2
set +e
"$@"
status=$?
set -e
exit $status
