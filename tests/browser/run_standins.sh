#!/usr/bin/env bash
# Develops/checks the report page without the extension: loads the stand-ins and
# sql/report.sql into report_dev (see load_standins.sh), then runs the browser test on
# every stand-in experiment (healthy 3 arms / 30 days, SRM with hostile names, nobody
# exposed, one day, 90 days with 5 arms) and checks the not-found errors.
# Screenshots: target/report-<experiment>.png. Exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
URL=${DATABASE_URL:-postgresql://postgres@localhost:28815/report_dev}
cd "$ROOT"
bash tests/browser/load_standins.sh "$URL"
status=0
run() {  # experiment event
  echo "# $1"
  python3 tests/browser/report_test.py --database-url "$URL" --experiment "$1" --event "$2" \
    --screenshot "target/report-$1.png" || status=1
}
run checkout-redesign purchase
run hostile.srm '"><svg onload=alert(1)><script>alert(3)</script>'
run empty-exp purchase
run one-day purchase
run long-90 purchase

echo "# unknown experiment"
out=$(psql -X -At -d "$URL" -c "SELECT amba._report('no-such-experiment'::text, 'x'::text)" 2>&1 || true)
if [[ $out == *"EXPERIMENT_NOT_FOUND: "* ]]; then echo "ok   - amba._report: EXPERIMENT_NOT_FOUND"
else echo "FAIL - amba._report on an unknown key: $out"; status=1; fi
out=$(psql -X -At -d "$URL" -c "SELECT amba_api.experiments_report('no-such-experiment'::text, 'x'::text)" 2>&1 || true)
if [[ $out == *'"code" : "EXPERIMENT_NOT_FOUND"'* && $out == *'"status" : 404'* ]]; then
  echo "ok   - amba_api.experiments_report: HTTP 404 EXPERIMENT_NOT_FOUND"
else echo "FAIL - amba_api.experiments_report on an unknown key: $out"; status=1; fi
out=$(psql -X -At -d "$URL" -c "SELECT format_type(prorettype, NULL) FROM pg_proc WHERE oid = 'amba_api.experiments_report(text, text)'::regprocedure")
if [[ $out == 'amba_api."text/html"' ]]; then echo "ok   - experiments_report returns the domain amba_api.\"text/html\""
else echo "FAIL - experiments_report returns $out"; status=1; fi
for role in amba_admin amba_analyst; do
  out=$(psql -X -q -At -d "$URL" -c "SET ROLE $role" -c "SELECT length(amba._report('checkout-redesign'::text, 'purchase'::text)) > 1000" 2>&1 || true)
  if [[ $out == t ]]; then echo "ok   - $role may run amba._report"
  else echo "FAIL - $role cannot run amba._report: $out"; status=1; fi
done
out=$(psql -X -q -At -d "$URL" -c "SET ROLE amba_client" -c "SELECT amba._report('checkout-redesign'::text, 'purchase'::text)" 2>&1 || true)
if [[ $out == *"permission denied"* ]]; then echo "ok   - amba_client (PUBLIC) may not run amba._report"
else echo "FAIL - amba_client ran amba._report: ${out:0:200}"; status=1; fi
out=$(psql -X -q -At -d "$URL" -c "SET ROLE amba_analyst" -c "SELECT amba_api.experiments_report('checkout-redesign'::text, 'purchase'::text)" 2>&1 || true)
if [[ $out == *"permission denied"* ]]; then echo "ok   - amba_analyst may not call amba_api.experiments_report (admin endpoint)"
else echo "FAIL - amba_analyst called amba_api.experiments_report: ${out:0:200}"; status=1; fi
exit $status
