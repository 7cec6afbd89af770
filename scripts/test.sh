#!/usr/bin/env bash
# Runs every test of the project, on a fresh Debian machine as root or on a warm one.
#   1. pure core: unit tests and reference fixtures (no database)
#   2. #[pg_test]: every SQL function and error inside PostgreSQL (cargo pgrx test)
#   3. SQL regression tests with expected output (pg_regress, tests/pg_regress)
#   4. integration tests against a running server: concurrency, HTTP replay, RLS, upgrades,
#      earlier releases served side by side (versions.rs), hardening, identities, daily
#      results, SQL-level references, limits, crash, compose
#   5. the MCP server over stdio against the same server
#   6. the report page in headless Chromium (tests/browser)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
PGPORT=${AMBA_PGPORT:-28815}
export DATABASE_URL="postgresql://postgres@localhost:$PGPORT/amba_test"
step() { echo; echo "==== $*"; }

step "1/6 core: unit tests and reference fixtures"
cargo test -p amba-core
bash scripts/fixtures/check.sh

step "2/6 #[pg_test] tests"
PGRX_TEST_DATA=/var/tmp/amba-pgrx-test
mkdir -p "$PGRX_TEST_DATA" && chown postgres:postgres "$PGRX_TEST_DATA"
# -p amba: the workspace default members include the MCP crate, whose tests
# need the cluster started in step 3; they run in step 5.
cargo pgrx test pg15 -p amba --runas postgres --pgdata "$PGRX_TEST_DATA"

# (the first run also builds earlier releases' libraries from git: scripts/releases.sh)
step "3/6 install into the local cluster; SQL regression tests"
scripts/pg.sh start
AMBA_PROFILE=debug scripts/pg.sh install
scripts/regress.sh

step "4/6 integration tests (DATABASE_URL=$DATABASE_URL)"
scripts/pg.sh fresh-db amba_test
cargo test -p amba-integration-tests

step "5/6 MCP server over stdio"
cargo test -p amba-mcp

step "6/6 the report page in headless Chromium"
bash tests/browser/run.sh

echo; echo "==== all tests passed"
