#!/usr/bin/env bash
# Installs (if missing) and starts a local PostgreSQL, and creates the `fabric_test` database
# used by the reconciler's store tests. Idempotent: safe to run on every CI job and on a dev box.
#
# It exports nothing (a child script cannot change its parent's environment); it prints the
# FABRIC_PG_URL to use on its last line, so a caller can do:
#   export FABRIC_PG_URL="$(.ci/postgres.sh | tail -n 1)"
# Progress goes to stderr so that stdout carries only the URL.
set -euo pipefail

DB="${FABRIC_PG_DB:-fabric_test}"
SOCKET_DIR=/var/run/postgresql

log() { echo "postgres.sh: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

as_postgres() {
    # `runuser` exists on every Debian; fall back to sudo for non-root callers.
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    log "installing postgresql (apt)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >&2
    as_root apt-get install -y -qq postgresql >&2
fi

# The cluster the Debian package created (15/main on Debian 12); pick whatever exists rather than
# hard-coding the major version so the script survives a distribution upgrade.
read -r VERSION CLUSTER < <(pg_lsclusters --no-header | awk 'NR==1 {print $1, $2}') || true
if [ -z "${VERSION:-}" ]; then
    VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
    CLUSTER=main
    log "no cluster found; creating $VERSION/$CLUSTER"
    as_root pg_createcluster "$VERSION" "$CLUSTER" >&2
fi

if ! pg_lsclusters --no-header | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
    log "starting cluster $VERSION/$CLUSTER"
    # pg_ctlcluster works in containers without systemd; `service` is the fallback.
    as_root pg_ctlcluster "$VERSION" "$CLUSTER" start >&2 || as_root service postgresql start >&2
fi

# Wait until the server accepts connections (startup recovery can take a moment).
for _ in $(seq 1 30); do
    if as_postgres psql -h "$SOCKET_DIR" -qAtc 'select 1' >/dev/null 2>&1; then break; fi
    sleep 1
done
as_postgres psql -h "$SOCKET_DIR" -qAtc 'select 1' >/dev/null

if ! as_postgres psql -h "$SOCKET_DIR" -qAtc "select 1 from pg_database where datname = '$DB'" | grep -q 1; then
    log "creating database $DB"
    as_postgres createdb -h "$SOCKET_DIR" "$DB" >&2
fi

# Tests run as root but connect as `user=postgres`; Debian's default peer authentication on the
# Unix socket only lets the OS user `postgres` do that, so trust local socket connections. This is a
# throwaway CI/dev cluster on a single-user machine; never run this script on a shared server.
HBA="$(as_postgres psql -h "$SOCKET_DIR" -qAtc 'show hba_file')"
if ! grep -q '^# fabric-ci' "$HBA"; then
    log "allowing local socket connections without peer check in $HBA (test cluster only)"
    tmp="$(mktemp)"
    { echo '# fabric-ci: local test cluster, trust Unix-socket connections'
      echo 'local all all trust'
      cat "$HBA"; } >"$tmp"
    as_root cp "$tmp" "$HBA"
    rm -f "$tmp"
    as_root chown postgres:postgres "$HBA"
    as_postgres psql -h "$SOCKET_DIR" -qAtc 'select pg_reload_conf()' >/dev/null
fi

log "ready: $VERSION/$CLUSTER, database $DB"
echo "host=$SOCKET_DIR user=postgres dbname=$DB"
