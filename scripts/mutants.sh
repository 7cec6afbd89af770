#!/usr/bin/env bash
# Mutation check: plants, one at a time, a bug that a named integration test says it
# catches, runs those tests, and reports each mutant KILLED (a test failed) or SURVIVED
# (they all passed: the test does not catch what it claims).
#
#   scripts/mutants.sh              # every mutant
#   scripts/mutants.sh NAME...      # some of them (scripts/mutants.sh --list names them)
#   scripts/mutants.sh --list
#
# Two kinds of mutant:
# - rust: a literal edit of one file of the working tree (the text must occur exactly once,
#   else the mutant is STALE: the code moved, update this script), then
#   `AMBA_PROFILE=debug scripts/pg.sh install`, the tests, and the file restored byte for
#   byte from a copy taken just before (so uncommitted edits in that file survive; for a
#   file without uncommitted edits this is `git checkout -- <file>`), checked with cmp.
# - sql: a literal edit of one plpgsql function of sql/*.sql. The installed 0.2.0 schema is
#   the frozen sql/amba--0.2.0.sql (pg.sh install refuses a tree whose schema differs), so an
#   edit of sql/api.sql could never reach a database: the function is planted instead in
#   the mutant database only (its definition from pg_get_functiondef, the same edit,
#   CREATE OR REPLACE). The text must occur once in the source file and once in the
#   installed definition.
#
# Every mutant runs against a fresh database of its own (amba_mutants, via
# `scripts/pg.sh fresh-db`), never amba_test. But a rust mutant replaces the installed
# library for the whole cluster while its tests run: run this only when nobody else uses the
# cluster or edits the mutated files. First the unmutated tree is built, installed and
# tested (every named test must pass, else nothing is concluded); at the end (and on any
# exit or interrupt) the files are restored and that unmutated package is placed again.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
PGPORT=${AMBA_PGPORT:-28815}
MUTANT_DB=${AMBA_MUTANT_DB:-amba_mutants}
MUTANT_URL="postgresql://postgres@localhost:$PGPORT/$MUTANT_DB"
CLEAN_PACKAGE=$ROOT/target/amba-mutants-clean
LOG=$ROOT/target/mutants
mkdir -p "$LOG"

# ---------------------------------------------------------------------------------------
# The mutants: name, kind, file (rust: candidates, the one holding the text is used; sql:
# the source file), function (sql only), text, replacement, tests (test-file::test-name).
# ---------------------------------------------------------------------------------------
NAMES=()
declare -A KIND FILES FUNC FROM TO TESTS WHAT

mutant() { # name kind files function from to tests what
  NAMES+=("$1")
  KIND[$1]=$2 FILES[$1]=$3 FUNC[$1]=$4 FROM[$1]=$5 TO[$1]=$6 TESTS[$1]=$7 WHAT[$1]=$8
}

mutant track_skips_user_lock rust "src/assign.rs" "" \
$'    // An event tracked while its id is being aliased lands under the user it moves to.\n    locks::user(user_id, false);\n' \
$'    // An event tracked while its id is being aliased lands under the user it moves to.\n' \
"identities::an_alias_in_flight_holds_off_assign_expose_and_track_for_its_anonymous_id_which_then_act_as_the_user" \
"amba_track does not take the caller's user lock (an event tracked during an alias stays under the anonymous id)"

mutant assign_skips_user_lock rust "src/assign.rs" "" \
$'    // identity it leaves.\n    locks::user(user_id, false);\n' \
$'    // identity it leaves.\n' \
"identities::an_alias_in_flight_holds_off_assign_expose_and_track_for_its_anonymous_id_which_then_act_as_the_user" \
"amba_assign does not take the caller's user lock (a first assignment during an alias lands under the anonymous id)"

mutant expose_skips_user_lock rust "src/assign.rs" "" \
$'    // An alias committing meanwhile moves the assignment with its exposure: wait for it.\n    locks::user(user_id, false);\n' \
$'    // An alias committing meanwhile moves the assignment with its exposure: wait for it.\n' \
"identities::an_alias_in_flight_holds_off_assign_expose_and_track_for_its_anonymous_id_which_then_act_as_the_user" \
"amba_expose does not take the caller's user lock (an exposure during an alias finds no assignment)"

mutant alias_conflict_anon_always_wins sql "sql/api.sql" "amba._alias(text,text)" \
" AND s.assigned_at < t.assigned_at'" \
"'" \
"identities::calls_in_flight_hold_off_an_alias_which_then_moves_their_rows_and_the_earlier_assignment_wins identities::alias_moves_history_keeps_first_touch_and_redirects_later_calls identities::aliasing_raced_against_assign_and_track_never_loses_or_duplicates_a_row" \
"alias conflicts: the earlier-assignment condition dropped (the anonymous assignment always wins)"

mutant alias_conflict_later_wins sql "sql/api.sql" "amba._alias(text,text)" \
" AND s.assigned_at < t.assigned_at'" \
" AND s.assigned_at > t.assigned_at'" \
"identities::calls_in_flight_hold_off_an_alias_which_then_moves_their_rows_and_the_earlier_assignment_wins identities::alias_moves_history_keeps_first_touch_and_redirects_later_calls" \
"alias conflicts: the later assignment wins"

mutant overrides_ignore_aliases rust "src/store/experiments.rs" "" \
"JOIN amba.aliases a ON a.user_id = o.user_id" \
"JOIN amba.aliases a ON false" \
"identities::an_override_for_the_user_applies_to_its_aliases_on_assign_peek_and_expose identities::alias_moves_history_keeps_first_touch_and_redirects_later_calls" \
"overrides stop following aliases (the alias half of the definition's override map is empty)"

mutant daily_ignores_alpha rust "src/results/daily.rs src/daily.rs" "" \
"stats::analyze(&arms, alpha)" \
"stats::analyze(&arms, 0.05)" \
"daily::daily_intervals_follow_alpha" \
"amba_results_daily ignores its alpha (intervals and sequential p-values at 0.05)"

mutant paused_alias_inactive rust "src/assign.rs" "" \
$'        // Nothing to write; the alias target may hold an assignment, though.\n        let who = store::alias_of(path, user_id);\n        if who != user_id {' \
$'        // Nothing to write; the alias target may hold an assignment, though.\n        let who = store::alias_of(path, user_id);\n        if who == user_id {' \
"identities::an_aliased_id_on_a_paused_experiment_gets_its_users_variant_not_inactive" \
"an aliased id on a paused experiment is EXPERIMENT_INACTIVE instead of getting its user's variant"

# ---------------------------------------------------------------------------------------

if [ "${1:-}" = --list ]; then
  for n in "${NAMES[@]}"; do printf '%-34s %-4s %s\n' "$n" "${KIND[$n]}" "${WHAT[$n]}"; done
  exit 0
fi
CHECK_ONLY=0
if [ "${1:-}" = --check ]; then
  CHECK_ONLY=1
  shift
fi
SELECTED=("$@")
[ ${#SELECTED[@]} -gt 0 ] || SELECTED=("${NAMES[@]}")
for n in "${SELECTED[@]}"; do
  [ -n "${KIND[$n]:-}" ] || { echo "no mutant $n (see --list)" >&2; exit 2; }
done

log() { echo "[mutants] $*"; }

# Literal, exactly-once replacement of FROM by TO in a file (or stdin → stdout with -).
REPLACE_ONCE='
import sys
path, old, new = sys.argv[1], sys.argv[2], sys.argv[3]
text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
n = text.count(old)
if n != 1:
    sys.stderr.write(f"the text to mutate occurs {n} times in {path}, not once\n")
    sys.exit(3)
out = text.replace(old, new)
if path == "-":
    sys.stdout.write(out)
else:
    open(path, "w", encoding="utf-8").write(out)
'
replace_once() { # file from to  (exit 3 when the text does not occur exactly once)
  python3 -c "$REPLACE_ONCE" "$@"
}

# Whether FILE holds TEXT exactly once.
once() { # file text
  [ -f "$1" ] && python3 -c 'import sys; sys.exit(open(sys.argv[1], encoding="utf-8").read().count(sys.argv[2]) != 1)' "$1" "$2"
}

# The file of a rust mutant: the one candidate that holds its text once.
mutant_file() { # name
  local f found=""
  for f in ${FILES[$1]}; do
    if once "$f" "${FROM[$1]}"; then
      [ -z "$found" ] || { echo "the text occurs in both $found and $f" >&2; return 1; }
      found=$f
    fi
  done
  [ -n "$found" ] || return 1
  echo "$found"
}

MUTATED=""        # the working-tree file currently mutated
BACKUP=$LOG/backup
INSTALLED_MUTANT=0
restore_file() {
  [ -n "$MUTATED" ] || return 0
  cp "$BACKUP" "$MUTATED"
  if ! cmp -s "$BACKUP" "$MUTATED"; then
    echo "[mutants] COULD NOT RESTORE $MUTATED: its pre-mutation copy is $BACKUP" >&2
    return 1
  fi
  log "restored $MUTATED"
  MUTATED=""
}
restore_install() {
  [ "$INSTALLED_MUTANT" = 1 ] || return 0
  [ -d "$CLEAN_PACKAGE" ] || { echo "[mutants] no clean package to place again: run AMBA_PROFILE=debug scripts/pg.sh install" >&2; return 1; }
  rm -rf "$ROOT/target/amba-package"
  cp -a "$CLEAN_PACKAGE" "$ROOT/target/amba-package"
  scripts/pg.sh place
  INSTALLED_MUTANT=0
  log "placed the unmutated package again"
}
cleanup() {
  local rc=$?
  restore_file || rc=1
  restore_install || rc=1
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install() { # log-file
  AMBA_PROFILE=debug scripts/pg.sh install >"$1" 2>&1
}

fresh_db() {
  scripts/pg.sh fresh-db "$MUTANT_DB" >/dev/null
}

# Runs the tests named in $1 (file::name ...) against the mutant database; returns
# non-zero when any of them fails. Output in $2.
run_tests() { # tests log-file
  local spec file names rc=0
  : >"$2"
  for file in $(for spec in $1; do echo "${spec%%::*}"; done | sort -u); do
    names=()
    for spec in $1; do [ "${spec%%::*}" = "$file" ] && names+=("${spec#*::}"); done
    DATABASE_URL=$MUTANT_URL cargo test -p amba-integration-tests --test "$file" -- \
      --exact "${names[@]}" --test-threads=2 >>"$2" 2>&1 || rc=1
  done
  return $rc
}

plant_sql() { # name
  local n=$1 def planted
  def=$(psql "$MUTANT_URL" -XAtq -c "SELECT pg_get_functiondef('${FUNC[$n]}'::regprocedure)")
  planted=$(printf '%s' "$def" | replace_once - "${FROM[$n]}" "${TO[$n]}") || return 3
  printf '%s\n' "$planted" | psql "$MUTANT_URL" -Xq -v ON_ERROR_STOP=1 >/dev/null
}

# --check: is every mutant's text still where it is looked for (nothing built, nothing
# changed; the installed definitions read from $DATABASE_URL)?
if [ "$CHECK_ONLY" = 1 ]; then
  status=0
  for n in "${SELECTED[@]}"; do
    case "${KIND[$n]}" in
      rust)
        if file=$(mutant_file "$n"); then where="$file"; else where=""; fi ;;
      sql)
        where=""
        if once "${FILES[$n]}" "${FROM[$n]}" \
          && psql "${DATABASE_URL:-postgresql://postgres@localhost:$PGPORT/amba_test}" -XAtq \
               -c "SELECT pg_get_functiondef('${FUNC[$n]}'::regprocedure)" \
             | replace_once - "${FROM[$n]}" "${TO[$n]}" >/dev/null; then
          where="${FILES[$n]} and the installed ${FUNC[$n]}"
        fi ;;
    esac
    if [ -n "$where" ]; then
      printf '%-34s ok (%s)\n' "$n" "$where"
    else
      printf '%-34s STALE (text not found once in %s)\n' "$n" "${FILES[$n]}"
      status=1
    fi
  done
  exit $status
fi

# Build the tests first: a test that does not compile would look like a kill.
log "building the integration tests"
cargo test -q -p amba-integration-tests --no-run >"$LOG/build-tests.log" 2>&1 \
  || { echo "the integration tests do not build: $LOG/build-tests.log" >&2; exit 1; }

# Baseline: the unmutated tree passes every named test.
ALL_TESTS=$(for n in "${SELECTED[@]}"; do echo "${TESTS[$n]}"; done | tr ' ' '\n' | sort -u | tr '\n' ' ')
log "baseline: building and installing the unmutated tree (AMBA_PROFILE=debug scripts/pg.sh install)"
install "$LOG/install-baseline.log" \
  || { echo "the unmutated tree does not install: $LOG/install-baseline.log" >&2; exit 1; }
rm -rf "$CLEAN_PACKAGE"
cp -a "$ROOT/target/amba-package" "$CLEAN_PACKAGE"
fresh_db
log "baseline: running $(wc -w <<<"$ALL_TESTS") tests"
if ! run_tests "$ALL_TESTS" "$LOG/baseline.log"; then
  echo "the unmutated tree fails a named test, so no mutant can be judged: $LOG/baseline.log" >&2
  exit 1
fi

declare -A RESULT
for n in "${SELECTED[@]}"; do
  log "---- $n (${KIND[$n]}): ${WHAT[$n]}"
  case "${KIND[$n]}" in
    rust)
      if ! file=$(mutant_file "$n"); then
        RESULT[$n]="STALE (text not found once in ${FILES[$n]})"; continue
      fi
      if ! git diff --quiet HEAD -- "$file" 2>/dev/null; then
        log "note: $file has uncommitted edits; they are kept (restored from a copy)"
      fi
      cp "$file" "$BACKUP"
      MUTATED=$file
      replace_once "$file" "${FROM[$n]}" "${TO[$n]}"
      log "mutated $file; building and installing"
      # From here the installed package (or target/amba-package) may be the mutant's.
      INSTALLED_MUTANT=1
      if ! install "$LOG/install-$n.log"; then
        restore_file
        RESULT[$n]="BUILD FAILED ($LOG/install-$n.log)"; continue
      fi
      restore_file        # the mutant is installed; the tree is clean again meanwhile
      fresh_db
      ;;
    sql)
      if ! once "${FILES[$n]}" "${FROM[$n]}"; then
        RESULT[$n]="STALE (text not found once in ${FILES[$n]})"; continue
      fi
      restore_install     # the unmutated library
      fresh_db
      planted=0
      plant_sql "$n" || planted=$?
      if [ "$planted" = 3 ]; then
        RESULT[$n]="STALE (text not found once in the installed ${FUNC[$n]})"; continue
      elif [ "$planted" != 0 ]; then
        RESULT[$n]="PLANT FAILED (psql: CREATE OR REPLACE of ${FUNC[$n]})"; continue
      fi
      log "planted ${FUNC[$n]} in $MUTANT_DB"
      ;;
  esac
  if run_tests "${TESTS[$n]}" "$LOG/tests-$n.log"; then
    RESULT[$n]="SURVIVED (every named test passed: $LOG/tests-$n.log)"
  else
    failed=$(grep -oE '^test [^ ]+ \.\.\. FAILED' "$LOG/tests-$n.log" | awk '{print $2}' | tr '\n' ' ' || true)
    RESULT[$n]="KILLED by ${failed:-a failing test (see $LOG/tests-$n.log)}"
  fi
done

restore_file
restore_install
psql "postgresql://postgres@localhost:$PGPORT/postgres" -Xq \
  -c "DROP DATABASE IF EXISTS \"$MUTANT_DB\" WITH (FORCE)" >/dev/null || true

echo
echo "==== mutants"
status=0
for n in "${SELECTED[@]}"; do
  printf '%-34s %s\n' "$n" "${RESULT[$n]}"
  case "${RESULT[$n]}" in KILLED*) ;; *) status=1 ;; esac
done
exit $status
