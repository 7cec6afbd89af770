#!/usr/bin/env bash
# Amba benchmarks: the hot path against the raw-SQL floor, and amba_results at scale.
#
#   bash bench/run.sh              build + install the release build, then everything
#   bash bench/run.sh throughput   only the pgbench cases (new, returning, expose, track;
#                                  new_targeted, returning_targeted, new_layered,
#                                  returning_layered when BENCH_CASES names them)
#   bash bench/run.sh results      only amba_results at scale
#   bash bench/run.sh guardrails   only amba_check_guardrails at scale (not part of `all`)
#
# Each pgbench case runs alternately with its baseline (the same table work in one
# hand-written statement), ROUNDS times, in one go; the summary gives the median tps of
# each side and their ratio. Not part of the test suite.
#
# Settings (environment):
#   BENCH_SECONDS=15        seconds per pgbench run
#   BENCH_ROUNDS=3          alternated rounds per case (use an odd number)
#   BENCH_CLIENTS="4 16 64" BENCH_JOBS=2   client counts (each case runs at each)
#   BENCH_IDENTITIES="100000 1000"   aliases in the database and overrides on the benchmark
#                           experiment while it runs (CONTRACT 3d: the hot path must not
#                           slow down for them); "0 0" for none
#   BENCH_CASES="new returning expose track"   also available, not in the default list:
#                           new_targeted, returning_targeted (CONTRACT 10: amba_assign on an
#                           experiment with a five-clause targeting condition the attributes
#                           satisfy, against the same call on an identical experiment without
#                           one — there the "raw" side is that untargeted amba_assign, target
#                           >= 0.80); e.g. BENCH_CASES="new_targeted returning_targeted"
#                           BENCH_CLIENTS="4 16" bash bench/run.sh throughput;
#                           new_layered, returning_layered (CONTRACT 11: amba_assign on an
#                           experiment with a layer (share 1) and a holdout holding 5% out,
#                           against amba_assign on a plain experiment; targets >= 0.70 for
#                           new users, >= 0.85 for returning ones); holdout_rows_sql (what
#                           PostgreSQL's executor needs for the rows new_layered adds: a plain
#                           amba_assign plus the holdout's assignment and exposure by INSERT in
#                           the same statement, against the plain amba_assign; held to
#                           new_layered's 0.70: what those rows alone cost through the
#                           executor, beside the target)
#   BENCH_COMMIT="off"      synchronous_commit of the benchmark sessions: `off` measures
#                           CPU cost (the strict comparison), `on` the durable default
#                           (each transaction waits for its WAL flush)
#   BENCH_SCALES="100000 250000 500000 1000000"   assigned users for amba_results
#   BENCH_10M=1             add the 10,000,000-user case (about 4 minutes to generate,
#                           10 GB of disk; issue 18's scale)
#   BENCH_RESULTS_REPS=5    timed runs of each results function and of the hand query per scale
#   BENCH_DAYS=90           days the generated events span (amba_results_daily's rows)
#   BENCH_ROLE=amba_admin   run both sides of every pgbench case as this role (default: the
#                           connecting superuser, to whom row-level security does not apply)
#   BENCH_SKIP_INSTALL=1    use the amba already installed
#   AMBA_BENCH_DB=amba_bench   (recreated); AMBA_PGPORT=28815
#   CARGO_TARGET_DIR        honoured by the build, as usual for cargo
#   BENCH_OUT=/tmp/amba-bench-<time>   logs, plans and the summary
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PG_BIN=/usr/lib/postgresql/15/bin
PORT=${AMBA_PGPORT:-28815}
DB=${AMBA_BENCH_DB:-amba_bench}
T=${BENCH_SECONDS:-15}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENT_COUNTS=${BENCH_CLIENTS:-4 16 64}
CLIENTS=4
IDENTITIES=${BENCH_IDENTITIES:-100000 1000}
JOBS=${BENCH_JOBS:-2}
CASES=${BENCH_CASES:-new returning expose track}
COMMIT_MODES=${BENCH_COMMIT:-off}
ROLE=${BENCH_ROLE:-}
SCALES=${BENCH_SCALES:-100000 250000 500000 1000000}
[ -z "${BENCH_10M:-}" ] || SCALES="$SCALES 10000000"
REPS=${BENCH_RESULTS_REPS:-5}
DAYS=${BENCH_DAYS:-90}
OUT=${BENCH_OUT:-/tmp/amba-bench-$(date +%Y%m%d-%H%M%S)}
WHAT=${1:-all}
RETURNING=200000
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$OUT"; chmod 755 "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
psql_db() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h localhost -p "$PORT" -U postgres -d "$DB" "$@"; }

# --- build and install ----------------------------------------------------------------
LIBDIR=$("$PG_BIN/pg_config" --pkglibdir)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET = /* ]] || TARGET=$ROOT/$TARGET
bash "$ROOT/scripts/pg.sh" start
if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
  echo "building and installing the release build (target dir $TARGET)"
  bash "$ROOT/scripts/pg.sh" install
fi
BUILD=$TARGET/release/libamba.so
if [ ! -f "$BUILD" ]; then
  echo "warning: no release build in $BUILD; benchmarking the installed $LIBDIR/amba.so" >&2
  BUILD=$LIBDIR/amba.so
fi
# The cluster may be shared, and a test run elsewhere may install another (debug) build of
# amba at any moment. So the benchmark database loads a private copy of this release build,
# $libdir/amba_bench.so: its functions are pointed at it (pin_build), nothing else changes.
cp "$BUILD" "$LIBDIR/.amba_bench.so.tmp" && mv -f "$LIBDIR/.amba_bench.so.tmp" "$LIBDIR/amba_bench.so"
SO_MD5=$(md5sum < "$LIBDIR/amba_bench.so")
pin_build() {
  psql_db -c "UPDATE pg_catalog.pg_proc SET probin = '\$libdir/amba_bench' WHERE probin IN ('amba', '\$libdir/amba') OR probin ~ '^(\\\$libdir/)?amba-[0-9.]+\$'"
}
fresh_db() { bash "$ROOT/scripts/pg.sh" fresh-db "$DB" > /dev/null; pin_build; }

say "Amba benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), logs in $OUT"
say "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
say "server: $("$PG_BIN/psql" -X -Atq -h localhost -p "$PORT" -U postgres -d postgres -c 'SHOW server_version')," \
    "shared_buffers=$("$PG_BIN/psql" -X -Atq -h localhost -p "$PORT" -U postgres -d postgres -c 'SHOW shared_buffers')," \
    "work_mem=$("$PG_BIN/psql" -X -Atq -h localhost -p "$PORT" -U postgres -d postgres -c 'SHOW work_mem')," \
    "build $BUILD (md5 ${SO_MD5%% *})"

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

# --- throughput -------------------------------------------------------------------------
RUN=0
# backend_rss: the largest RssAnon (kB) among the pgbench backends connected to $DB
backend_rss() {
  local pid r max=0
  for pid in $("$PG_BIN/psql" -X -Atq -h localhost -p "$PORT" -U postgres -d postgres -c \
      "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' AND application_name = 'pgbench'"); do
    r=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$r" ] && [ "$r" -gt "$max" ] && max=$r
  done
  echo "$max"
}

# next_multixact: the cluster's next MultiXactId as of a checkpoint taken now.
next_multixact() {
  "$PG_BIN/psql" -X -Atq -h localhost -p "$PORT" -U postgres -d postgres \
    -c "CHECKPOINT" -c "SELECT next_multixact_id::text::bigint FROM pg_control_checkpoint()"
}

# pgbench_run MODE SCRIPT LOG [-D ...]: prints "tps rss_early rss_late multixacts_per_tx"
pgbench_run() {
  local mode=$1 script=$2 log=$3; shift 3
  local mx_before; mx_before=$(next_multixact)
  PGOPTIONS="-c synchronous_commit=$mode${ROLE:+ -c role=$ROLE}" "$PG_BIN/pgbench" -h localhost -p "$PORT" -U postgres \
    -n -M prepared -c "$CLIENTS" -j "$JOBS" -T "$T" -D eid="$EID" "$@" \
    -f "$BENCH/pgbench/$script.sql" "$DB" > "$log" 2>&1 &
  local job=$! early late
  # Private memory of the benchmark's backends early in the run and near its end: it
  # must not grow with the number of users served.
  sleep 2; early=$(backend_rss)
  sleep $((T > 4 ? T - 3 : 1)); late=$(backend_rss)
  wait "$job" || { cat "$log" >&2; exit 1; }
  if ! grep -q '^number of failed transactions: 0 ' "$log" || grep -q 'aborted' "$log"; then
    cat "$log" >&2; echo "pgbench run failed: $log" >&2; exit 1
  fi
  if [ "$script" = expose ] || [ "$script" = expose_raw ]; then
    local done_tx; done_tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
    if [ "$done_tx" -gt $((CLIENTS * EXPOSE_POOL * 9 / 10)) ]; then
      echo "  !! $log: $done_tx exposures for a pool of $((CLIENTS * EXPOSE_POOL)): some clients may have wrapped around" >&2
    fi
  fi
  echo "backend RssAnon kB (max over clients): $early after 2 s, $late near the end" >> "$log"
  local mx_after tx
  mx_after=$(next_multixact)
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
  echo "MultiXacts created: $((mx_after - mx_before)) for $tx transactions" >> "$log"
  echo "$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$log") $early $late $(awk -v m=$((mx_after - mx_before)) -v t="$tx" 'BEGIN {printf "%.4f", m / t}')"
}

# case_args CASE: sets ARGS, the -D variables a run of CASE needs (fresh users for new
# and expose: every run gets its own prefix, every exposure run its own pool)
case_args() {
  RUN=$((RUN + 1))
  case $1 in
    new) ARGS="-D p=n${RUN}_" ;;
    returning) ARGS="-D returning=$RETURNING" ;;
    expose)
      # Room for 40,000 tps (a client that ran out would wrap around and re-expose its
      # users; pgbench_run checks it did not).
      EXPOSE_SLOT=$((EXPOSE_SLOT + 1))
      EXPOSE_POOL=$(( T * 40000 / CLIENTS + 1000 ))
      psql_db -v slot=$EXPOSE_SLOT -v clients="$CLIENTS" -v pool=$EXPOSE_POOL -f "$BENCH/expose_pool.sql" > /dev/null
      ARGS="-D p=x${EXPOSE_SLOT}_ -D n=0 -D expose_pool=$EXPOSE_POOL" ;;
    track) ARGS="" ;;
    new_targeted) ARGS="-D p=t${RUN}_" ;;
    returning_targeted) ARGS="-D returning=$RETURNING" ;;
    new_layered) ARGS="-D p=l${RUN}_" ;;
    returning_layered) ARGS="-D returning=$RETURNING" ;;
    holdout_rows_sql) ARGS="-D p=h${RUN}_ -D holdout_id=$HOLDOUT_ID" ;;
    *) echo "unknown case $1 in BENCH_CASES" >&2; exit 2 ;;
  esac
}
script_of() {
  case $1 in
    new) echo assign_new ;; returning) echo assign_returning ;; expose) echo expose ;; track) echo track ;;
    new_targeted) echo assign_new_targeted ;; returning_targeted) echo assign_returning_targeted ;;
    new_layered) echo assign_new_layered ;; returning_layered) echo assign_returning_layered ;;
    holdout_rows_sql) echo assign_holdout_rows_sql ;;
  esac
}
# The baseline of holdout_rows_sql is new_layered's (a plain amba_assign).
raw_script_of() {
  case $1 in
    holdout_rows_sql) echo assign_new_layered_raw ;;
    *) echo "$(script_of "$1")_raw" ;;
  esac
}
target_of() {
  case $1 in
    new) echo 0.85 ;; returning) echo 0.85 ;; expose) echo 0.90 ;; track) echo 0.90 ;;
    new_targeted) echo 0.80 ;; returning_targeted) echo 0.80 ;;
    new_layered) echo 0.70 ;; returning_layered) echo 0.85 ;;
    holdout_rows_sql) echo 0.70 ;;
  esac
}
label_of() {
  case $1 in
    new) echo "new user: amba_assign vs insert on conflict + read back" ;;
    returning) echo "returning user: amba_assign vs primary-key select" ;;
    expose) echo "exposure: amba_expose vs lookup + insert on conflict" ;;
    track) echo "event: amba_track vs insert" ;;
    new_targeted) echo "new user: amba_assign, 5-clause targeting vs none" ;;
    returning_targeted) echo "returning user: amba_assign, 5-clause targeting vs none" ;;
    new_layered) echo "new user: amba_assign, layer + 5% holdout vs plain" ;;
    returning_layered) echo "returning user: amba_assign, layer + 5% holdout vs plain" ;;
    holdout_rows_sql) echo "new user: plain amba_assign + holdout rows by INSERT vs plain" ;;
  esac
}

# setup_targeted OVERRIDES: the experiments of the *_targeted cases (CONTRACT 10), alike
# but for targeting: `bench_t5` with a condition of five clauses (the attributes in
# bench/pgbench/*targeted*.sql satisfy it), `bench_t0` with none. Each gets the returning
# users r1 .. r$RETURNING (with the variant amba_assign would pick) and the same overrides
# as `bench` (bench/identities.sql).
setup_targeted() {
  psql_db -v returning=$RETURNING -v overrides="$1" > /dev/null <<'SQL'
\set ON_ERROR_STOP 1
SELECT amba_create_experiment(k,
    '[{"key": "control", "weight": 50}, {"key": "treatment", "weight": 50}]',
    targeting => CASE WHEN k = 'bench_t5' THEN
        '{"country": "DE", "platform": {"$in": ["ios", "android"]}, "version": {"$vgte": "17.0.0"},
          "logged_in": true, "age": {"$gte": 18}}'::jsonb END) IS NOT NULL AS created
  FROM unnest(ARRAY['bench_t5', 'bench_t0']) AS k;
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version)
SELECT e.id, s.u, CASE WHEN amba_bucket(e.key, s.u) < 0.5 THEN 'control' ELSE 'treatment' END, 1
  FROM amba.experiments e, (SELECT 'r' || g AS u FROM generate_series(1, :returning) g) s
 WHERE e.key IN ('bench_t5', 'bench_t0');
INSERT INTO amba.overrides (experiment_id, user_id, variant)
SELECT e.id, 'qa' || g, 'treatment' FROM amba.experiments e, generate_series(1, :overrides) g
 WHERE e.key IN ('bench_t5', 'bench_t0');
UPDATE amba.experiments SET revision = revision + 1 WHERE key IN ('bench_t5', 'bench_t0');
-- The condition must hold for the benchmark's attributes, or the targeted side would
-- measure a NULL answer instead of an enrolment (false: division by zero, psql stops).
SELECT 1 / amba_eval_condition(targeting,
    '{"country": "DE", "platform": "ios", "version": "17.2.0", "logged_in": true, "age": 30}')::int
    AS attributes_match
  FROM amba.experiments WHERE key = 'bench_t5' AND targeting IS NOT NULL;
SELECT 1 / count(*)::int AS targeted FROM amba.experiments WHERE key = 'bench_t5' AND targeting IS NOT NULL;
VACUUM ANALYZE amba.experiments;
VACUUM ANALYZE amba.assignments;
VACUUM ANALYZE amba.overrides;
CHECKPOINT;
SQL
}

# setup_layered OVERRIDES: the experiments of the *_layered cases (CONTRACT 11): the holdout
# `bench_lh` (control "holdout" 5%, "general" 95%), `bench_l` owning all of layer
# `bench_layer` (share 1) and naming `bench_lh`, and `bench_l0`, the same experiment plain
# (no layer, no holdout). Both get the same overrides as `bench` (bench/identities.sql),
# then the returning users r1 .. r$RETURNING through amba_assign itself, so the rows are
# exactly what amba writes: on bench_l each is assigned and exposed in the holdout, and
# assigned in bench_l unless held out.
setup_layered() {
  psql_db -v returning=$RETURNING -v overrides="$1" > /dev/null <<'SQL'
\set ON_ERROR_STOP 1
SELECT amba_create_experiment('bench_lh',
    '[{"key": "holdout", "weight": 5}, {"key": "general", "weight": 95}]') IS NOT NULL AS created;
SELECT amba_create_experiment(k,
    '[{"key": "control", "weight": 50}, {"key": "treatment", "weight": 50}]',
    layer => CASE WHEN k = 'bench_l' THEN 'bench_layer' END,
    layer_share => CASE WHEN k = 'bench_l' THEN 1 END,
    holdout => CASE WHEN k = 'bench_l' THEN 'bench_lh' END) IS NOT NULL AS created
  FROM unnest(ARRAY['bench_l', 'bench_l0']) AS k;
INSERT INTO amba.overrides (experiment_id, user_id, variant)
SELECT e.id, 'qa' || g, 'treatment' FROM amba.experiments e, generate_series(1, :overrides) g
 WHERE e.key IN ('bench_l', 'bench_l0');
UPDATE amba.experiments SET revision = revision + 1 WHERE key IN ('bench_l', 'bench_l0');
SELECT count(amba_assign(k, 'r' || g)) AS assigned
  FROM unnest(ARRAY['bench_l', 'bench_l0']) AS k, generate_series(1, :returning) g;
-- The layered side must measure what it claims (a failed check divides by zero, psql
-- stops): bench_l owns the whole layer and names the holdout, everyone passed through
-- the holdout, about 5% were held out, and bench_l0 is plain with everyone assigned.
SELECT 1 / (layer_start = 0 AND layer_share = 1 AND holdout_id IS NOT NULL)::int AS layered
  FROM amba.experiments WHERE key = 'bench_l';
SELECT 1 / (layer IS NULL AND holdout_id IS NULL)::int AS plain
  FROM amba.experiments WHERE key = 'bench_l0';
SELECT 1 / (count(*) = :returning)::int AS through_the_holdout,
       1 / (count(*) FILTER (WHERE a.variant = 'holdout') BETWEEN :returning * 0.04 AND :returning * 0.06)::int
           AS five_percent_held_out
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = 'bench_lh';
SELECT 1 / (count(*) = :returning)::int AS exposed_in_the_holdout
  FROM amba.exposures x JOIN amba.experiments e ON e.id = x.experiment_id WHERE e.key = 'bench_lh';
SELECT 1 / (count(*) = :returning)::int AS baseline_assigned
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = 'bench_l0';
VACUUM ANALYZE amba.experiments;
VACUUM ANALYZE amba.assignments;
VACUUM ANALYZE amba.exposures;
VACUUM ANALYZE amba.overrides;
CHECKPOINT;
SQL
}

throughput() {
  echo "setting up $DB: $RETURNING returning users"
  fresh_db
  psql_db -v returning=$RETURNING -f "$BENCH/setup.sql" > /dev/null
  read -r n_aliases n_overrides <<< "$IDENTITIES"
  psql_db -v aliases="$n_aliases" -v overrides="$n_overrides" -f "$BENCH/identities.sql" > /dev/null
  case " $CASES " in
    *" new_targeted "*|*" returning_targeted "*)
      echo "setting up the targeted experiments: $RETURNING returning users each"
      setup_targeted "$n_overrides" ;;
  esac
  case " $CASES " in
    *" new_layered "*|*" returning_layered "*|*" holdout_rows_sql "*)
      echo "setting up the layered experiments: $RETURNING returning users each, through amba_assign"
      setup_layered "$n_overrides" ;;
  esac
  EID=$(psql_db -Atc "SELECT id FROM amba.experiments WHERE key = 'bench'")
  HOLDOUT_ID=$(psql_db -Atc "SELECT id FROM amba.experiments WHERE key = 'bench_lh'")
  EXPOSE_SLOT=0
  local results=$OUT/throughput.tsv
  : > "$results"
  for mode in $COMMIT_MODES; do
   for CLIENTS in $CLIENT_COUNTS; do
    for round in $(seq "$ROUNDS"); do
      for c in $CASES; do
        local sides="amba raw"
        [ $((round % 2)) -eq 0 ] && sides="raw amba"   # alternate who goes first
        for side in $sides; do
          local script; script=$(script_of "$c"); [ "$side" = raw ] && script=$(raw_script_of "$c")
          case_args "$c"
          local out tps early late mx
          # shellcheck disable=SC2086
          out=$(pgbench_run "$mode" "$script" "$OUT/pgbench-$mode-c$CLIENTS-$c-$side-$round.log" $ARGS)
          read -r tps early late mx <<< "$out"
          printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$c" "$side" "$round" "$tps" "$early" "$late" "$CLIENTS" "$mx" >> "$results"
          printf '  synchronous_commit=%-3s clients %-3s round %s  %-9s %-4s %10.0f tps   RssAnon %s -> %s kB   MultiXacts/tx %s\n' \
            "$mode" "$CLIENTS" "$round" "$c" "$side" "$tps" "$early" "$late" "$mx"
        done
      done
    done
   done
  done

  say ""
  say "Throughput: pgbench -M prepared -j $JOBS -T $T, $ROUNDS alternated rounds, median tps;"
  say "identities present: $IDENTITIES (aliases, overrides on the benchmark experiment); role: ${ROLE:-the superuser}"
  for mode in $COMMIT_MODES; do
    say ""
    say "synchronous_commit=$mode"
    say "$(printf '%-58s %7s %8s %8s %6s %6s %13s  %-6s %12s %s' case clients amba raw ratio target per-round verdict MultiXact/tx 'amba backend RssAnon kB')"
    for c in $CASES; do
      for n in $CLIENT_COUNTS; do
        local a r ratio per lo hi target verdict mem mx
        a=$(awk -v m="$mode" -v c="$c" -v n="$n" '$1==m && $2==c && $8==n && $3=="amba" {print $5}' "$results" | median)
        r=$(awk -v m="$mode" -v c="$c" -v n="$n" '$1==m && $2==c && $8==n && $3=="raw" {print $5}' "$results" | median)
        per=$(awk -v m="$mode" -v c="$c" -v n="$n" '$1==m && $2==c && $8==n {t[$4,$3]=$5; k[$4]=1} END {for (i in k) printf "%.3f\n", t[i,"amba"]/t[i,"raw"]}' "$results" | sort -g)
        lo=$(head -1 <<< "$per"); hi=$(tail -1 <<< "$per")
        ratio=$(awk -v a="$a" -v r="$r" 'BEGIN {printf "%.3f", a/r}')
        target=$(target_of "$c")
        verdict=$(awk -v x="$ratio" -v t="$target" 'BEGIN {print (x >= t) ? "ok" : "BELOW"}')
        mem=$(awk -v m="$mode" -v c="$c" -v n="$n" '$1==m && $2==c && $8==n && $3=="amba" {e = (e == "" || $6 > e) ? $6 : e; l = (l == "" || $7 > l) ? $7 : l} END {print e " -> " l}' "$results")
        mx=$(awk -v m="$mode" -v c="$c" -v n="$n" '$1==m && $2==c && $8==n && $3=="amba" {print $9}' "$results" | median)
        say "$(printf '%-58s %7s %8.0f %8.0f %6s %6s %13s  %-6s %12s %s' "$(label_of "$c")" "$n" "$a" "$r" "$ratio" ">=$target" "$lo-$hi" "$verdict" "$mx" "$mem")"
      done
    done
  done
}

# --- results at scale ------------------------------------------------------------------
# peak_rss N: peak private memory (RssAnon: shared buffers excluded) of a backend while
# it runs amba_results, sampled every 10 ms; written to $OUT/rss-N.txt as "before peak" kB.
peak_rss() {
  local n=$1 pidf=$OUT/pid-$1.txt
  rm -f "$pidf"
  printf '%s\n' "\\o $pidf" 'SELECT pg_backend_pid();' '\o /dev/null' 'SELECT pg_sleep(0.5);' \
    "SELECT * FROM amba_results('results', 'purchase');" 'SELECT pg_sleep(0.3);' > "$OUT/results-mem.sql"
  psql_db -At -f "$OUT/results-mem.sql" > /dev/null 2>&1 &
  local job=$! pid="" before="" peak=0 r
  while [ -z "$pid" ] && kill -0 "$job" 2>/dev/null; do pid=$(cat "$pidf" 2>/dev/null || true); sleep 0.01; done
  while kill -0 "$job" 2>/dev/null; do
    r=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    if [ -n "$r" ]; then [ -z "$before" ] && before=$r; [ "$r" -gt "$peak" ] && peak=$r; fi
    sleep 0.01
  done
  wait "$job" || true
  echo "$before $peak" > "$OUT/rss-$n.txt"
}

results() {
  if psql_db -Atc "SELECT 1" > /dev/null 2>&1; then pin_build; else fresh_db; fi
  local results=$OUT/results.tsv
  : > "$results"
  local largest; largest=$(tr ' ' '\n' <<< "$SCALES" | sort -n | tail -1)
  for n in $SCALES; do
    echo "results: generating $n assigned users, $((n / 2)) exposed, $((5 * n)) events over $DAYS days"
    psql_db -v n="$n" -v days="$DAYS" -f "$BENCH/results_data.sql" > "$OUT/results-data-$n.log"
    # One session: a warm-up of each (plans, caches), then REPS alternated timed runs of
    # amba_results, the hand query, amba_metric_results (sum of `amount`; with CUPED) and
    # amba_results_daily.
    local script=$OUT/results-$n.sql
    local q_results="SELECT * FROM amba_results('results', 'purchase') \\g /dev/null"
    local q_metric="SELECT * FROM amba_metric_results('results', 'purchase', 'amount') \\g /dev/null"
    local q_cuped="SELECT * FROM amba_metric_results('results', 'purchase', 'amount', cuped_days => 14) \\g /dev/null"
    local q_daily="SELECT * FROM amba_results_daily('results', 'purchase') \\g /dev/null"
    local q_ratio="SELECT * FROM amba_ratio_results('results', 'purchase', 'amount', 'purchase', NULL) \\g /dev/null"
    local q_quantile="SELECT * FROM amba_quantile_results('results', 'purchase', 'amount', 0.9) \\g /dev/null"
    local q_by="SELECT * FROM amba_results_by('results', 'purchase', 'platform') \\g /dev/null"
    {
      echo '\set key results'
      echo '\set event purchase'
      for q in "$q_results" "$q_metric" "$q_cuped" "$q_daily" "$q_ratio" "$q_quantile" "$q_by"; do echo "$q"; done
      cat "$BENCH/results_hand.sql"; echo ' \g /dev/null'
      echo '\timing on'
      for i in $(seq "$REPS"); do
        echo '\echo @@amba'; echo "$q_results"
        echo '\echo @@hand'; cat "$BENCH/results_hand.sql"; echo ' \g /dev/null'
        echo '\echo @@metric'; echo "$q_metric"
        echo '\echo @@cuped'; echo "$q_cuped"
        echo '\echo @@daily'; echo "$q_daily"
        echo '\echo @@ratio'; echo "$q_ratio"
        echo '\echo @@quantile'; echo "$q_quantile"
        echo '\echo @@by'; echo "$q_by"
      done
    } > "$script"
    psql_db -f "$script" > "$OUT/results-$n.log" 2>&1
    awk -v n="$n" '/^@@/ {side = substr($0, 3)} /^Time:/ && side != "" {print n "\t" side "\t" $2; side = ""}' \
      "$OUT/results-$n.log" >> "$results"
    peak_rss "$n"
    if [ "$n" = "$largest" ]; then
      # The plan amba_results runs inside (auto_explain of its nested statements) and the
      # hand-written query's plan.
      {
        echo "LOAD 'auto_explain';"
        echo "SET auto_explain.log_min_duration = 0;"
        echo "SET auto_explain.log_nested_statements = on;"
        echo "SET auto_explain.log_analyze = on;"
        echo "SET auto_explain.log_buffers = on;"
        echo "SET auto_explain.log_timing = off;"
        echo "SET client_min_messages = log;"
        echo "SELECT variant, assigned_count, exposed_count, converted_count FROM amba_results('results', 'purchase');"
        echo "RESET client_min_messages;"
        echo "LOAD 'auto_explain'; SET auto_explain.log_min_duration = -1;"
        echo '\set key results'
        echo '\set event purchase'
        echo 'EXPLAIN (ANALYZE, BUFFERS, TIMING OFF)'
        cat "$BENCH/results_hand.sql"; echo ';'
        cat "$BENCH/results_hand.sql"; echo ';'
      } > "$OUT/results-plans.sql"
      psql_db -f "$OUT/results-plans.sql" > "$OUT/results-plans.txt" 2>&1 || true
    fi
  done

  say ""
  say "amba_results('results', 'purchase') vs the hand-written query (bench/results_hand.sql), and"
  say "amba_metric_results (sum of amount; with cuped_days => 14) and amba_results_daily ($DAYS days) on the same data:"
  say "n users = n/2 exposed, 5n events; median of $REPS alternated runs after a warm-up, ms (ratio to amba_results)"
  say "$(printf '%10s %10s %9s %7s %14s %14s %14s %10s %16s' users amba_ms hand_ms ratio metric_ms cuped_ms daily_ms ms/100k backend_RssAnon_MB)"
  for n in $SCALES; do
    local a h m cu d per100k rss
    a=$(awk -v n="$n" '$1==n && $2=="amba" {print $3}' "$results" | median)
    h=$(awk -v n="$n" '$1==n && $2=="hand" {print $3}' "$results" | median)
    m=$(awk -v n="$n" '$1==n && $2=="metric" {print $3}' "$results" | median)
    cu=$(awk -v n="$n" '$1==n && $2=="cuped" {print $3}' "$results" | median)
    d=$(awk -v n="$n" '$1==n && $2=="daily" {print $3}' "$results" | median)
    per100k=$(awk -v a="$a" -v n="$n" 'BEGIN {printf "%.0f", a / (n / 100000)}')
    rss=$(awk '{printf "%.0f -> %.0f", $1/1024, $2/1024}' "$OUT/rss-$n.txt" 2>/dev/null || echo "?")
    say "$(printf '%10s %10.0f %9.0f %7.2f %14s %14s %14s %10s %16s' "$n" "$a" "$h" "$(awk -v a="$a" -v h="$h" 'BEGIN {print a/h}')" \
      "$(awk -v x="$m" -v a="$a" 'BEGIN {printf "%.0f (%.2fx)", x, x/a}')" \
      "$(awk -v x="$cu" -v a="$a" 'BEGIN {printf "%.0f (%.2fx)", x, x/a}')" \
      "$(awk -v x="$d" -v a="$a" 'BEGIN {printf "%.0f (%.2fx)", x, x/a}')" "$per100k" "$rss")"
  done
  say ""
  say "0.3.0 (SPEC §13) on the same data: amba_ratio_results (purchase amount per purchase), amba_quantile_results (p90 of amount),"
  say "amba_results_by (3 platforms); median ms (ratio to amba_results, target <= 2)"
  for n in $SCALES; do
    local a r q b
    a=$(awk -v n="$n" '$1==n && $2=="amba" {print $3}' "$results" | median)
    r=$(awk -v n="$n" '$1==n && $2=="ratio" {print $3}' "$results" | median)
    q=$(awk -v n="$n" '$1==n && $2=="quantile" {print $3}' "$results" | median)
    b=$(awk -v n="$n" '$1==n && $2=="by" {print $3}' "$results" | median)
    say "$(printf '%10s  ratio %s  quantile %s  by %s' "$n" \
      "$(awk -v x="$r" -v a="$a" 'BEGIN {printf "%.0f (%.2fx)", x, x/a}')" \
      "$(awk -v x="$q" -v a="$a" 'BEGIN {printf "%.0f (%.2fx)", x, x/a}')" \
      "$(awk -v x="$b" -v a="$a" 'BEGIN {printf "%.0f (%.2fx)", x, x/a}')")"
  done
  say "(plans at $largest users: $OUT/results-plans.txt)"
}

# --- guardrails at scale ----------------------------------------------------------------
# amba_check_guardrails() (CONTRACT 12) over 100 active experiments with three guardrails
# each (two conversion, one mean) and 10,000 exposed users each, 1M in total
# (bench/guardrails.sql; every tenth experiment is harmful and trips). Each call runs in a
# transaction that is rolled back, so every run does the same work, pausing, auditing and
# notifying included. BENCH_GUARDRAILS_REPS=3 timed runs after a warm-up; target: the
# median under 10 s.
guardrails() {
  local reps=${BENCH_GUARDRAILS_REPS:-3}
  echo "guardrails: generating 100 experiments x 10,000 exposed users"
  fresh_db
  psql_db -f "$BENCH/guardrails.sql" > "$OUT/guardrails-data.log"
  local warm rows tripped paused
  warm=$(psql_db -At -F ' ' -c "BEGIN" \
    -c "SELECT count(*), count(*) FILTER (WHERE tripped), count(DISTINCT experiment_key) FILTER (WHERE paused) FROM amba_check_guardrails()" \
    -c "ROLLBACK")
  read -r rows tripped paused <<< "$warm"
  if [ "$rows" != 300 ]; then
    echo "amba_check_guardrails() returned $rows rows, not 300 (100 experiments x 3 guardrails)" >&2; exit 1
  fi
  local script=$OUT/guardrails-check.sql
  {
    echo '\timing on'
    for i in $(seq "$reps"); do
      echo 'BEGIN;'
      echo '\echo @@check'
      echo 'SELECT count(*) FROM amba_check_guardrails() \g /dev/null'
      echo 'ROLLBACK;'
    done
  } > "$script"
  psql_db -f "$script" > "$OUT/guardrails-check.log" 2>&1
  local m
  m=$(awk '/^@@check/ {on = 1} /^Time:/ && on {print $2; on = 0}' "$OUT/guardrails-check.log" | median)
  say ""
  say "amba_check_guardrails(): 100 active experiments x 3 guardrails (2 conversion, 1 mean), 1M exposed users,"
  say "$(psql_db -At -c 'SELECT count(*) FROM amba.events') events; $rows rows, $tripped tripped, $paused experiments paused per call"
  say "(each call rolled back); median of $reps runs: $(printf '%.0f' "$m") ms, target < 10000 ms:" \
      "$(awk -v x="$m" 'BEGIN {print (x < 10000) ? "ok" : "ABOVE"}')"
}

case $WHAT in
  all) throughput; results ;;
  throughput) throughput ;;
  results) results ;;
  guardrails) guardrails ;;
  *) echo "usage: $0 [all|throughput|results|guardrails]" >&2; exit 2 ;;
esac
say ""
say "done; summary in $SUMMARY"
