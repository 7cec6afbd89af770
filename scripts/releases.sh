#!/usr/bin/env bash
# The libraries of earlier releases, for the databases still on them (README: Upgrades).
#   scripts/releases.sh DIR
# puts amba-<version>.so of every release in scripts/releases.txt except the version this
# tree builds (Cargo.toml's) into DIR. Each is built from its commit (git archive into
# $AMBA_BUILD_DIR/src-<version>-<commit>, outside the repository; the CARGO_TARGET_DIR
# $AMBA_BUILD_DIR/target is shared by these builds only) once per commit and profile
# (AMBA_PROFILE, release unless debug), then reused: quick when nothing changed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${AMBA_BUILD_DIR:-/var/tmp/amba-build}
PROFILE=${AMBA_PROFILE:-release}
export PATH="$HOME/.cargo/bin:$PATH"
out=${1:?usage: $0 DIR}
current=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
mkdir -p "$out" "$BUILD/lib"
exec 9>"$BUILD/.lock" && flock 9 # one build at a time: they share a target directory

while read -r version commit _; do
  case "$version" in ''|'#'*) continue ;; esac
  [ "$version" = "$current" ] && continue # this tree's own build is amba-$current.so
  lib=$BUILD/lib/amba-$version-$commit-$PROFILE.so
  if [ ! -s "$lib" ]; then
    if ! git -C "$ROOT" cat-file -e "$commit^{commit}" 2>/dev/null; then
      echo "$0: commit $commit of amba $version is not in this clone (shallow? git fetch --unshallow)" >&2
      exit 1
    fi
    src=$BUILD/src-$version-$commit
    if [ ! -e "$src/.complete" ]; then
      rm -rf "$src" && mkdir -p "$src"
      git -C "$ROOT" archive "$commit" | tar -x -C "$src"
      touch "$src/.complete"
    fi
    echo "building the amba $version library from $commit ($PROFILE)" >&2
    flags=(--lib --locked -p amba)
    [ "$PROFILE" = release ] && flags+=(--release)
    (cd "$src" && CARGO_TARGET_DIR=$BUILD/target cargo build -q "${flags[@]}")
    built=$BUILD/target/$([ "$PROFILE" = release ] && echo release || echo debug)/libamba.so
    cp "$built" "$lib.$$" && mv -f "$lib.$$" "$lib"
  fi
  cp "$lib" "$out/amba-$version.so"
done < "$ROOT/scripts/releases.txt"
