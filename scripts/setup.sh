#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, as root.
# Idempotent: each step checks first and is quick when already done.
set -euo pipefail

PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PGRX_VERSION=0.18.0
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { echo "[setup] $*" >&2; }

need_pkgs=()
# chromium: Debian's browser for the report page's browser test (tests/browser), never a
# downloaded one.
# postgresql-15-pgaudit: the audit test (tests/integration/tests/maintenance.rs) runs a cluster
# of its own with pgaudit preloaded, to show that amba's writes reach executor hooks.
# postgresql-15-cron: pg_cron, the scheduler the guardrail check runs under (SPEC §12); the
# local cluster preloads it (scripts/pg.sh). amba itself never requires it.
for p in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib postgresql-$PG_MAJOR-pgaudit postgresql-$PG_MAJOR-cron libclang-dev clang sudo pkg-config python3 chromium; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  log "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The browser test's Python dependency, pinned in tests/browser/requirements.txt (Playwright
# drives /usr/bin/chromium; `playwright install` is never run, nothing else is downloaded).
PLAYWRIGHT_VERSION=$(sed -n 's/^playwright==//p' "$ROOT/tests/browser/requirements.txt")
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null)" != "$PLAYWRIGHT_VERSION" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing Debian package python3-pip"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  log "installing playwright $PLAYWRIGHT_VERSION (Python) for tests/browser"
  # (a Debian-managed python3 refuses pip installs without PIP_BREAK_SYSTEM_PACKAGES)
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
    python3 -m pip install -q --disable-pip-version-check -r "$ROOT/tests/browser/requirements.txt"
fi

# The Python references of the test suite (statistics, bucketing), pinned.
if ! python3 -c 'import sys, importlib.metadata as m
want = [l.split("==") for l in open(sys.argv[1]) if "==" in l and not l.startswith("#")]
sys.exit(any(m.version(p) != v.strip() for p, v in want))' "$ROOT/scripts/fixtures/requirements.txt" 2>/dev/null; then
  log "installing the Python references (scripts/fixtures/requirements.txt)"
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
    python3 -m pip install -q --disable-pip-version-check -r "$ROOT/scripts/fixtures/requirements.txt"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

if ! grep -qs "pg$PG_MAJOR" "$HOME/.pgrx/config.toml"; then
  log "cargo pgrx init against $PG_CONFIG"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi
log "ok"
