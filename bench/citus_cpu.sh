#!/usr/bin/env bash
# CPU per call on each server of a Citus cluster (docs/SCALE-OUT.md, "A model of N
# workers"): runs a pgbench script through one server for 24 s (4 clients) and prints, for
# each server named, the CPU time (user + system, all its processes) spent per call between
# the 6th and the 20th second. Not part of the test suite.
#
#   bash bench/citus_cpu.sh SCRIPT.sql PORT DB SERVER_PORT...
#   e.g. bash bench/citus_cpu.sh new.sql 29700 amba_citus 29700 29701 29702   # Citus
#        bash bench/citus_cpu.sh new.sql 28815 amba_one 28815                 # one node
#
# Servers are found by the port they listen on (127.0.0.1); the script gets -D p=<prefix>.
set -euo pipefail
script=$1 port=$2 db=$3; shift 3
servers=("$@")
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
log=$(mktemp)
cpu_ticks() {   # utime + stime of the postmaster listening on port $1 and its children
  local pm total=0 t
  pm=$(ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
  for p in $pm $(pgrep -P "$pm"); do
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
PGOPTIONS="-c synchronous_commit=off" "$PG_BIN/pgbench" -n -M prepared -h 127.0.0.1 -p "$port" -U postgres \
  -c 4 -j 2 -T 24 -P 1 -D p=cpu$RANDOM -f "$script" "$db" > "$log" 2>&1 &
sleep 6
declare -A before
for s in "${servers[@]}"; do before[$s]=$(cpu_ticks "$s"); done
sleep 14
declare -A after
for s in "${servers[@]}"; do after[$s]=$(cpu_ticks "$s"); done
wait
calls=$(awk '/^progress:/ {t = $2 + 0; if (t > 6 && t <= 20) n += $4} END {print n + 0}' "$log")
hz=$(getconf CLK_TCK)
echo "$(basename "$script") through :$port, $calls calls in the window, $(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$log") tps"
for s in "${servers[@]}"; do
  awk -v d=$(( after[$s] - before[$s] )) -v hz="$hz" -v n="$calls" -v s="$s" \
    'BEGIN {printf "  server :%s  %.3f ms CPU per call\n", s, d * 1000 / hz / n}'
done
rm -f "$log"
