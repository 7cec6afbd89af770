#!/usr/bin/env bash
# The report page in a real browser, on the real extension: seeds a database
# (tests/browser/seed.sql) and runs tests/browser/report_test.py on each experiment.
# Screenshots: target/report-<experiment>.png. Needs the cluster of scripts/pg.sh with amba
# installed (scripts/test.sh step 6).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PGPORT=${AMBA_PGPORT:-28815}
DB=amba_report_test
URL=postgresql://postgres@localhost:$PGPORT/$DB
cd "$ROOT"
mkdir -p target
bash scripts/pg.sh fresh-db "$DB" > /dev/null
psql -X -q -v ON_ERROR_STOP=1 -d "$URL" -f tests/browser/seed.sql > /dev/null
status=0
for exp in checkout-redesign hostile.srm empty-exp; do
  echo "# report of $exp"
  python3 tests/browser/report_test.py --database-url "$URL" --experiment "$exp" --event purchase \
    --screenshot "target/report-$exp.png" || status=1
done
exit $status
