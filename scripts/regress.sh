#!/usr/bin/env bash
# SQL regression tests (tests/pg_regress/sql → expected), run with PostgreSQL's own
# pg_regress against the local cluster of scripts/pg.sh, as pgvector's installcheck does.
# (`cargo pgrx regress` 0.18 ignores --runas/--pgdata when starting its server, and
# PostgreSQL refuses to run as root.)  AMBA_REGRESS_ACCEPT=1 copies results to expected/.
#
# The expected files were accepted from the extension's own output, so after pg_regress
# scripts/fixtures/regress_reference.py recomputes every number in them independently
# (xxhash, statsmodels, scipy, gbstats) and fails on a disagreement; accepted results are
# checked the same way. AMBA_REGRESS_DB names the database (default amba_regress; it is
# dropped and re-created), AMBA_REGRESS_OUT the output directory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGPORT=${AMBA_PGPORT:-28815}
DB=${AMBA_REGRESS_DB:-amba_regress}
DIR=$ROOT/tests/pg_regress
OUT=${AMBA_REGRESS_OUT:-/tmp/amba-regress}
REFERENCE=$ROOT/scripts/fixtures/regress_reference.py

rm -rf "$OUT"; mkdir -p "$OUT"
tests=(setup $(cd "$DIR/sql" && ls [0-9]*.sql | sed 's/\.sql$//'))
status=0
/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
  --host=localhost --port="$PGPORT" --user=postgres --dbname="$DB" \
  --inputdir="$DIR" --outputdir="$OUT" "${tests[@]}" || status=$?
if [ "${AMBA_REGRESS_ACCEPT:-0}" = 1 ]; then
  # Accept only what the independent reference agrees with.
  python3 "$REFERENCE" "$OUT/results"
  cp "$OUT"/results/*.out "$DIR/expected/"
  echo "accepted results into $DIR/expected"
  exit 0
fi
[ $status = 0 ] || cat "$OUT/regression.diffs" >&2
# Every number in the expected files, recomputed independently.
python3 "$REFERENCE" "$DIR/expected" || status=1
exit $status
