#!/usr/bin/env bash
# Builds the loader, $libdir/amba (loader/amba_loader.c), into DIR/amba.so:
#   loader/build.sh DIR
# It exports every C symbol a shipped script binds to MODULE_PATHNAME (sql/amba--*.sql:
# the frozen install scripts of 0.1.0 and 0.2.0 and the upgrade between them), each with
# the pg_finfo_ record PG_FUNCTION_INFO_V1 adds. Takes a second; no Rust involved.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
out=${1:?usage: $0 DIR}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

grep -ho "'MODULE_PATHNAME', '[A-Za-z_][A-Za-z0-9_]*'" "$ROOT"/sql/amba--*.sql \
  | sed "s/^'MODULE_PATHNAME', '\(.*\)'\$/AMBA_SYMBOL(\1)/" | sort -u > "$build/symbols.h"
[ -s "$build/symbols.h" ] || { echo "$0: no MODULE_PATHNAME symbol in sql/amba--*.sql" >&2; exit 1; }

"${CC:-cc}" -O2 -Wall -Werror=implicit-function-declaration -fPIC -shared \
  -I"$build" -I"$("$PG_CONFIG" --includedir-server)" \
  "$ROOT/loader/amba_loader.c" -o "$build/amba.so"
mkdir -p "$out"
mv -f "$build/amba.so" "$out/amba.so"
