#!/usr/bin/env bash
# Runs every Go fuzz target (func FuzzXxx) of the repository for FUZZTIME
# each, one after the other (fuzzing takes every core: one at a time).
#   make fuzz-quick   FUZZTIME=30000x: CI, 30,000 executions per target
#   make fuzz         FUZZTIME=10m (default here): the long run
# FUZZTIME is what `go test -fuzztime` takes: a duration or a count (Nx).
# Only FUZZ=<regexp> limits the targets. A crash leaves the failing input in
# the package's testdata/fuzz/<Target>/ (commit it: it becomes a seed that
# every `go test` replays) and makes this script fail.
#
# Go 1.26's fuzzing coordinator can end a duration run that found nothing
# with a bare "context deadline exceeded" when the deadline passes while a
# worker is busy (more often on a loaded machine); a count has no deadline.
# Under a duration, a run that fails with only that line and writes no input
# is reported as that race, not as a crash; anything else fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=-buildvcs=false
time=${FUZZTIME:-10m}
filter=${FUZZ:-.}
start=$(date +%s)
n=0
races=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Inputs kept under dir (one per line, sorted).
inputs() { { find "$1" -type f 2>/dev/null || true; } | sort; }
# Targets are found in the sources (compiling every package's tests to ask
# `go test -list` costs minutes).
for file in $(grep -rlE '^func Fuzz[A-Za-z0-9_]*\(' --include='*_test.go' pkg cmd plugins | sort); do
  pkg=./$(dirname "$file")
  for target in $(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' "$file" | grep -E "$filter" || true); do
    echo "== fuzz $pkg $target for $time"
    corpus=$(dirname "$file")/testdata/fuzz/$target
    before=$(inputs "$corpus")
    # -parallel 2: the machines this runs on are small and shared.
    rc=0
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$time" -parallel 2 "$pkg" 2>&1 | tee "$out" || rc=$?
    n=$((n + 1))
    [[ $rc == 0 ]] && continue
    if [[ "$(inputs "$corpus")" != "$before" ]]; then
      echo "fuzz: $target found a failing input, written to $corpus/ (see above)" >&2
      exit 1
    fi
    if [[ $time != *x ]] && grep -qx '    context deadline exceeded' "$out" &&
      ! grep -qvE '^(fuzz: |--- FAIL: |FAIL|exit status|    context deadline exceeded$)' "$out"; then
      echo "fuzz: $target: the coordinator's deadline race (no input written, nothing else failed); not a crash"
      races=$((races + 1))
      continue
    fi
    echo "fuzz: $target failed without writing an input (see above)" >&2
    exit 1
  done
done
echo "fuzz: $n targets, ${time} each, no crash ($races ended by the deadline race), in $(( $(date +%s) - start ))s"
