#!/usr/bin/env bash
# Loads the stand-in data sources (standins.sql) and the report (sql/report.sql) into a
# plain development database WITHOUT the amba extension, for the browser test:
#   bash tests/browser/load_standins.sh [DATABASE_URL]
# Default: postgresql://postgres@localhost:28815/report_dev (created if missing; the
# cluster from scripts/pg.sh). Refuses a database where the extension is installed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
URL=${1:-${DATABASE_URL:-postgresql://postgres@localhost:28815/report_dev}}
DB=${URL##*/}; DB=${DB%%\?*}
ADMIN_URL=${URL%/*}/postgres
psql_() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

case "$DB" in amba_test|amba_demo|postgres|template0|template1)
  echo "refusing to load stand-ins into database $DB" >&2; exit 2 ;; esac
if [ "$(psql_ -At -d "$ADMIN_URL" -c "SELECT count(*) FROM pg_database WHERE datname = '$DB'")" = 0 ]; then
  psql_ -d "$ADMIN_URL" -c "CREATE DATABASE \"$DB\""
fi
if [ "$(psql_ -At -d "$URL" -c "SELECT count(*) FROM pg_extension WHERE extname = 'amba'")" != 0 ]; then
  echo "database $DB has the amba extension: not loading stand-ins there" >&2; exit 2
fi
psql_ -d "$URL" -f "$ROOT/tests/browser/standins.sql"
sed 's/@extschema@/public/g' "$ROOT/sql/report.sql" | psql_ -d "$URL" -f -
echo "stand-ins and sql/report.sql loaded into $DB" >&2
