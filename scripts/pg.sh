#!/usr/bin/env bash
# Starts (idempotently) a local PostgreSQL 15 cluster for the demo, the integration tests
# and the benchmarks, owned by the `postgres` OS user (PostgreSQL refuses root).
#   scripts/pg.sh start       init if needed, start if not running
#   scripts/pg.sh stop
#   scripts/pg.sh install     build (release unless AMBA_PROFILE=debug) and install amba
#   scripts/pg.sh place       install the package built last time again (atomically)
#   scripts/pg.sh fresh-db D  (re)create database D with the extension
# Settings: AMBA_PGDATA (default /var/tmp/amba-pg), AMBA_PGPORT (default 28815).
set -euo pipefail
PG_BIN=/usr/lib/postgresql/15/bin
PGDATA=${AMBA_PGDATA:-/var/tmp/amba-pg}
PGPORT=${AMBA_PGPORT:-28815}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

as_pg() { sudo -u postgres "$@"; }
psql_pg() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h localhost -p "$PGPORT" -U postgres "$@"; }

start() {
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"; chmod 700 "$PGDATA"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$PGDATA/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = 'localhost'
unix_socket_directories = '/tmp'
max_connections = 200
shared_buffers = 1GB
work_mem = 64MB
maintenance_work_mem = 512MB
max_wal_size = 8GB
checkpoint_timeout = 30min
CONF
  fi
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start >/dev/null
  fi
}

# `install` builds a package into target/amba-package, then `place` moves each of its files
# into place with a rename (atomic on one filesystem), as package managers do: a backend
# that has the old amba.so mapped keeps it (the old inode lives on) instead of crashing when
# the file is rewritten in place. The frozen install scripts of earlier releases
# (sql/amba--X.sql), which `cargo pgrx package` leaves out, are placed too, so
# `CREATE EXTENSION amba VERSION '0.1.0'` and upgrades from it work.
STAGE=$ROOT/target/amba-package
install() {
  local flags=(--pg-config "$PG_BIN/pg_config")
  [ "${AMBA_PROFILE:-release}" = release ] || flags+=(--debug)
  rm -rf "$STAGE"
  (cd "$ROOT" && cargo pgrx package "${flags[@]}" --out-dir "$STAGE" >/dev/null)
  place
}

place() {
  [ -d "$STAGE" ] || { echo "no package in $STAGE: run $0 install" >&2; exit 1; }
  local extdir
  extdir=$("$PG_BIN/pg_config" --sharedir)/extension
  cp "$ROOT"/sql/amba--[0-9]*.sql "$STAGE/$extdir/"
  find "$STAGE" -type f | while read -r f; do
    local dest=${f#"$STAGE"}
    mkdir -p "$(dirname "$dest")"
    cp "$f" "$dest.amba-new"
    mv -f "$dest.amba-new" "$dest"
  done
}

fresh_db() {
  local db=$1
  psql_pg -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
  psql_pg -d "$db" -c "CREATE EXTENSION amba"
}

case "${1:-start}" in
  start) start ;;
  stop) as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true ;;
  install) install ;;
  place) place ;;
  fresh-db) start; fresh_db "$2" ;;
  psql) shift; psql_pg "$@" ;;
  *) echo "usage: $0 start|stop|install|place|fresh-db DB|psql ARGS" >&2; exit 2 ;;
esac
