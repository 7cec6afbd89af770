#!/usr/bin/env bash
# Starts (idempotently) a local PostgreSQL 15 cluster for the demo, the integration tests
# and the benchmarks, owned by the `postgres` OS user (PostgreSQL refuses root).
#   scripts/pg.sh start       init if needed, start if not running
#   scripts/pg.sh stop
#   scripts/pg.sh install     build (release unless AMBA_PROFILE=debug) and install amba:
#                             amba-<version>.so for this tree's version and every earlier
#                             release (scripts/releases.sh), and the loader amba.so (loader/)
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
  # Settings the tests rely on (logical decoding, prepared transactions), in a file of their
  # own so that a cluster made by an earlier version of this script gets them too.
  # pg_cron runs amba_check_guardrails() on a schedule (SPEC §12): preloaded, its metadata in
  # database postgres, jobs run by background workers (no login needed).
  local settings="wal_level = logical
max_prepared_transactions = 10
max_replication_slots = 10
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 32"
  grep -qs "include_if_exists = 'amba.conf'" "$PGDATA/postgresql.conf" \
    || echo "include_if_exists = 'amba.conf'" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
  local changed=0
  if [ "$(cat "$PGDATA/amba.conf" 2>/dev/null)" != "$settings" ]; then
    echo "$settings" | as_pg tee "$PGDATA/amba.conf" >/dev/null
    changed=1
  fi
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start >/dev/null
  elif [ "$changed" = 1 ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 -m fast restart >/dev/null
  fi
}

# `install` builds a package into target/amba-package, then `place` moves each of its files
# into place with a rename (atomic on one filesystem), as package managers do: a backend
# that has the old amba.so mapped keeps it (the old inode lives on) instead of crashing when
# the file is rewritten in place. The frozen install scripts of earlier releases
# (sql/amba--X.sql) and their control files (sql/amba--X.control), which `cargo pgrx
# package` leaves out, are placed too, so `CREATE EXTENSION amba VERSION '0.1.0'` and
# upgrades from it work. The package holds a library per version, amba-<version>.so (this
# tree's from `cargo pgrx package`, earlier releases' from scripts/releases.sh), and the
# loader amba.so that databases installed at 0.1.0 or 0.2.0 call (README: Upgrades).
STAGE=$ROOT/target/amba-package
install() {
  local flags=(--pg-config "$PG_BIN/pg_config")
  [ "${AMBA_PROFILE:-release}" = release ] || flags+=(--debug)
  rm -rf "$STAGE"
  (cd "$ROOT" && cargo pgrx package "${flags[@]}" --out-dir "$STAGE" >/dev/null)
  # A released version's install script is frozen (sql/amba--<version>.sql) and is the one
  # installed: this tree may not generate another schema under that version number.
  local version
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
  if [ -f "$ROOT/sql/amba--$version.sql" ] && ! same_schema "$ROOT/sql/amba--$version.sql" \
      "$STAGE$("$PG_BIN/pg_config" --sharedir)/extension/amba--$version.sql" "$version"; then
    echo "$0: this tree's amba $version schema differs from the released one," \
         "sql/amba--$version.sql: a schema change needs a new version (Cargo.toml) and an" \
         "upgrade script sql/amba--$version--<new>.sql (README: Upgrades)" >&2
    exit 1
  fi
  local libdir
  libdir=$STAGE$("$PG_BIN/pg_config" --pkglibdir)
  PG_CONFIG="$PG_BIN/pg_config" bash "$ROOT/loader/build.sh" "$libdir"
  bash "$ROOT/scripts/releases.sh" "$libdir"
  place
}

# Two install scripts define the same objects, whatever their comments, order and the
# name they bind the version's C functions to (MODULE_PATHNAME or amba-<version>).
same_schema() {
  python3 - "$@" <<'PY'
import re, sys
def statements(path):
    s = open(path).read().replace("'amba-%s'" % sys.argv[3], "'MODULE_PATHNAME'")
    s = re.sub(r"--[^\n]*", "", re.sub(r"/\*.*?\*/", "", s, flags=re.S))
    return sorted(" ".join(x.split()) for x in s.split(";") if x.strip())
sys.exit(statements(sys.argv[1]) != statements(sys.argv[2]))
PY
}

place() {
  [ -d "$STAGE" ] || { echo "no package in $STAGE: run $0 install" >&2; exit 1; }
  local extdir
  extdir=$("$PG_BIN/pg_config" --sharedir)/extension
  cp "$ROOT"/sql/amba--[0-9]*.sql "$ROOT"/sql/amba--[0-9]*.control "$STAGE/$extdir/"
  # Libraries first: a script placed is never without the library it names.
  { find "$STAGE" -type f -name '*.so'; find "$STAGE" -type f ! -name '*.so'; } | while read -r f; do
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
