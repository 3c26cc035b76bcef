#!/usr/bin/env bash
# Smoke run of mpanel-bench: the cheap subcommands at tiny sizes, so CI proves the benchmark
# still works (about 25 s of run time once built). It fails only when the benchmark itself
# breaks (a subcommand exits non-zero, or its JSON has no figures), never on a figure.
#
#   bench/smoke.sh            builds mpanel, mpanel-agent and mpanel-bench (debug) first
#   PROFILE=release bench/smoke.sh
#   SMOKE_NO_BUILD=1 bench/smoke.sh   uses what is already built
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mpanel/target}"
profile="${PROFILE:-debug}"
if [ -z "${SMOKE_NO_BUILD:-}" ]; then
  if [ "$profile" = release ]; then flag=--release; else flag=; fi
  cargo build $flag -p mpanel -p mpanel-agent -p mpanel-bench
fi
bench="$CARGO_TARGET_DIR/$profile/mpanel-bench"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() { # run NAME ARGS...
  local name=$1; shift
  local started=$SECONDS
  echo "== mpanel-bench $*" >&2
  if ! "$bench" --json "$out/$name.json" "$@" >"$out/$name.md" 2>"$out/$name.log"; then
    echo "mpanel-bench $* failed; its last log lines:" >&2
    tail -n 40 "$out/$name.log" >&2
    exit 1
  fi
  if ! grep -q '"mpanel": {' "$out/$name.json"; then
    echo "mpanel-bench $* wrote no figures:" >&2
    cat "$out/$name.json" >&2
    exit 1
  fi
  cat "$out/$name.md"
  echo "(took $((SECONDS - started)) s)" >&2
}

run roundtrip roundtrip --n 20 --warmup 5 --ssh-n 3
run ingest ingest --orders 20 --concurrency 4 --pgbench-secs 2
run order-live order-live --orders 1 --deadline-secs 60
run idle-agent idle-agent --window-secs 3 --settle-secs 1
run hub hub --agents 50 --concurrency 16 --window-secs 2 --pings 20 --storm-deadline-secs 30
echo "mpanel-bench smoke: ok" >&2
