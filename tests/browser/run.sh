#!/usr/bin/env bash
# The report page in a real browser, on the real extension: seeds a database
# (tests/browser/seed.sql) and runs tests/browser/report_test.py on each experiment, then
# checks that amba_admin and amba_analyst may render it (as the extension grants it).
# Screenshots: target/report-<experiment>.png. Needs the cluster of scripts/pg.sh with amba
# installed (scripts/test.sh step 6).
#
# AMBA_REPORT_FROM_TREE=1 first loads the working tree's sql/report.sql over the installed
# one in that database (CREATE OR REPLACE), to test a change to the page before the
# extension is reinstalled.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PGPORT=${AMBA_PGPORT:-28815}
DB=amba_report_test
URL=postgresql://postgres@localhost:$PGPORT/$DB
cd "$ROOT"
mkdir -p target
bash scripts/pg.sh fresh-db "$DB" > /dev/null
if [[ ${AMBA_REPORT_FROM_TREE:-} == 1 ]]; then
  echo "# loading the working tree's sql/report.sql over the installed one"
  schema=$(psql -X -At -d "$URL" -c "SELECT quote_ident(n.nspname) FROM pg_extension e
                                       JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amba'")
  sed -e "s/@extschema@/$schema/g" -e 's/^CREATE FUNCTION /CREATE OR REPLACE FUNCTION /' \
      -e 's/^CREATE DOMAIN amba_api."text\/html" AS text;$//' sql/report.sql |
    psql -X -q -v ON_ERROR_STOP=1 -d "$URL" -f - > /dev/null
fi
psql -X -q -v ON_ERROR_STOP=1 -d "$URL" -f tests/browser/seed.sql > /dev/null
status=0
for exp in checkout-redesign hostile.srm empty-exp q4-holdout guard-live guard-paused segmented bandit-exp; do
  echo "# report of $exp"
  extra=()
  # guard-live is active with a tripping guardrail: its report must render without pausing it.
  [[ $exp == guard-live ]] && extra=(--expect-tripping)
  python3 tests/browser/report_test.py --database-url "$URL" --experiment "$exp" --event purchase \
    --screenshot "target/report-$exp.png" "${extra[@]}" || status=1
done
echo "# who may render it"
for role in amba_admin amba_analyst; do
  # Guardrails, segments and the bandit's weights too (SPEC §12-§14: analysts read them).
  for exp in checkout-redesign guard-paused segmented bandit-exp; do
    out=$(psql -X -q -At -d "$URL" -c "SET ROLE $role" \
            -c "SELECT length(amba._report('$exp'::text, 'purchase'::text)) > 1000" 2>&1 || true)
    if [[ $out == t ]]; then echo "ok   - $role may run amba._report ($exp)"
    else echo "FAIL - $role cannot run amba._report ($exp): ${out:0:300}"; status=1; fi
  done
done
out=$(psql -X -q -At -d "$URL" -c "SET ROLE amba_client" \
        -c "SELECT amba._report('checkout-redesign'::text, 'purchase'::text)" 2>&1 || true)
if [[ $out == *"permission denied"* ]]; then echo "ok   - amba_client may not run amba._report"
else echo "FAIL - amba_client ran amba._report: ${out:0:200}"; status=1; fi
exit $status
