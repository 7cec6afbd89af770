#!/usr/bin/env bash
# Instructions per call of hot-path statements, by callgrind: deterministic, unlike tps on a
# shared machine. Run by hand, after `bench/run.sh throughput` has set up its database
# (with BENCH_CASES naming new_layered for the layered experiments):
#
#   bash bench/instructions.sh            plain, layered and holdout_rows_sql new users
#
# The benchmark database is copied (pg_dump) into a scratch cluster of its own, pointed at
# the release build as bench/run.sh does (amba_bench.so), and each statement is run by a
# single-user backend (`postgres --single`) under callgrind, once SHORT and once LONG times
# with fresh user ids: (instructions(LONG) - instructions(SHORT)) / (LONG - SHORT) is the
# cost of one call, without start-up and cache warming. Functions' inclusive counts per call
# come the same way. Needs valgrind; about two minutes, and disk for a copy of the database
# (4 GB after a full throughput run), removed at the end.
#
# Settings: AMBA_BENCH_DB=amba_bench (the source), AMBA_PGPORT=28815, INSTR_SHORT=300,
# INSTR_LONG=1300, INSTR_OUT=/tmp/amba-instructions-<time>.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PORT=${AMBA_PGPORT:-28815}
SOURCE_DB=${AMBA_BENCH_DB:-amba_bench}
SHORT=${INSTR_SHORT:-300}
LONG=${INSTR_LONG:-1300}
OUT=${INSTR_OUT:-/tmp/amba-instructions-$(date +%Y%m%d-%H%M%S)}
SCRATCH=/var/tmp/amba-instructions-pg
SCRATCH_PORT=$((PORT + 2))
DB=amba_instructions
mkdir -p "$OUT"; chmod 777 "$OUT"
as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres "$@"; else "$@"; fi; }
command -v valgrind > /dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
[ -f "$("$PG_BIN/pg_config" --pkglibdir)/amba_bench.so" ] \
  || { echo "no amba_bench.so: run bench/run.sh throughput first" >&2; exit 2; }

HOLDOUT_ID=$("$PG_BIN/psql" -X -Atq -h localhost -p "$PORT" -U postgres -d "$SOURCE_DB" \
  -c "SELECT id FROM amba.experiments WHERE key = 'bench_lh'")
[ -n "$HOLDOUT_ID" ] || { echo "$SOURCE_DB has no layered experiments: run bench/run.sh with BENCH_CASES=new_layered" >&2; exit 2; }

echo "copying $SOURCE_DB into a scratch cluster ($SCRATCH)"
if [ -f "$SCRATCH/postmaster.pid" ]; then as_pg "$PG_BIN/pg_ctl" -D "$SCRATCH" -m fast stop > /dev/null || true; fi
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"; chown postgres "$SCRATCH"
as_pg "$PG_BIN/initdb" -D "$SCRATCH" -U postgres --no-sync > "$OUT/initdb.log"
as_pg "$PG_BIN/pg_ctl" -D "$SCRATCH" -l "$OUT/scratch.log" -w \
  -o "-p $SCRATCH_PORT -c shared_buffers=512MB -c max_wal_size=8GB -c fsync=off" start > /dev/null
psql_scratch() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h localhost -p "$SCRATCH_PORT" -U postgres "$@"; }
psql_scratch -d postgres -c "CREATE DATABASE $DB"
"$PG_BIN/pg_dump" -h localhost -p "$PORT" -U postgres -Fc "$SOURCE_DB" \
  | "$PG_BIN/pg_restore" -h localhost -p "$SCRATCH_PORT" -U postgres -d "$DB" --no-owner
psql_scratch -d "$DB" -c "UPDATE pg_catalog.pg_proc SET probin = '\$libdir/amba_bench' WHERE probin IN ('amba', '\$libdir/amba') OR probin ~ '^(\\\$libdir/)?amba-[0-9.]+\$'" \
  -c "VACUUM ANALYZE" -c "CHECKPOINT"
as_pg "$PG_BIN/pg_ctl" -D "$SCRATCH" -m fast -w stop > /dev/null

# statement_of CASE: the prepared statement of a case (one parameter: the user id).
statement_of() {
  case $1 in
    plain) echo "SELECT amba_assign('bench_l0', \$1)" ;;
    layered) echo "SELECT amba_assign('bench_l', \$1)" ;;
    holdout_rows_sql) echo "WITH h AS (INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) VALUES ($HOLDOUT_ID, \$1, 'general', 1) ON CONFLICT DO NOTHING RETURNING experiment_id, user_id), x AS (INSERT INTO amba.exposures (experiment_id, user_id) SELECT experiment_id, user_id FROM h) SELECT amba_assign('bench_l0', \$1)" ;;
  esac
}

# measure CASE N: a callgrind profile of N calls; prints its total instructions.
measure() {
  local case=$1 n=$2 input=$OUT/$1-$2.sql profile=$OUT/callgrind.$1-$2
  {
    echo "PREPARE p(text) AS $(statement_of "$case");"
    echo "EXECUTE p('warm-$case-$n');"
    for i in $(seq "$n"); do echo "EXECUTE p('i-$case-$n-$i');"; done
  } > "$input"
  chmod 644 "$input"
  as_pg valgrind --tool=callgrind --callgrind-out-file="$profile" \
    "$PG_BIN/postgres" --single -D "$SCRATCH" -c shared_buffers=512MB -c fsync=off \
    -c synchronous_commit=off "$DB" < "$input" > "$OUT/$case-$n.out" 2> "$OUT/$case-$n.err"
  grep -q ERROR "$OUT/$case-$n.out" && { echo "errors in $OUT/$case-$n.out" >&2; exit 1; }
  callgrind_annotate --inclusive=yes "$profile" > "$profile.txt" 2> /dev/null
  sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' "$profile.txt" | tr -d ,
}

# inclusive FUNCTION CASE N: the function's inclusive instructions in a profile.
inclusive() {
  awk -v f="$1" '$0 ~ ("[ :]" f " ") || $0 ~ ("[ :]" f "$") {gsub(",", "", $1); print $1; exit}' "$OUT/callgrind.$2-$3.txt"
}

FUNCTIONS="ExecInsertIndexTuples heap_insert RI_FKey_check_ins AfterTriggerEndQuery systable_getnext ExecCheckIndexConstraints LockAcquireExtended CommitTransactionCommand"
summary=$OUT/summary.txt
: > "$summary"
for c in plain layered holdout_rows_sql; do
  echo "callgrind: $c ($SHORT and $LONG calls)"
  short=$(measure "$c" "$SHORT"); long=$(measure "$c" "$LONG")
  per=$(( (long - short) / (LONG - SHORT) ))
  line="$(printf '%-18s %9d instructions per call' "$c" "$per")"
  for f in $FUNCTIONS; do
    a=$(inclusive "$f" "$c" "$SHORT"); b=$(inclusive "$f" "$c" "$LONG")
    line="$line; $f $(( (${b:-0} - ${a:-0}) / (LONG - SHORT) ))"
  done
  echo "$line" | tee -a "$summary"
done
rm -rf "$SCRATCH"
echo "summary in $summary"
