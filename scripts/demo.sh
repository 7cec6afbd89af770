#!/usr/bin/env bash
# The demo: installs what is missing, builds and installs the extension (release) into a
# local cluster it starts, runs an experiment with 6,000 simulated users through
# assign → expose → track, and prints amba_results. Idempotent; quick when warm.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
scripts/pg.sh start
echo "[demo] building and installing the extension (release)…" >&2
scripts/pg.sh install
scripts/pg.sh fresh-db amba_demo >/dev/null
scripts/pg.sh psql -d amba_demo -f "$ROOT/scripts/demo.sql"
