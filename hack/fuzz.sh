#!/usr/bin/env bash
# Runs every Go fuzz target (func FuzzXxx) of the repository for FUZZTIME
# each, one after the other (fuzzing takes every core: one at a time).
#   make fuzz-quick   FUZZTIME=3s: CI, catches a parser that crashes early
#   make fuzz         FUZZTIME=10m (default here): the long run
# Only FUZZ=<regexp> limits the targets. A crash leaves the failing input in
# the package's testdata/fuzz/<Target>/ (commit it: it becomes a seed that
# every `go test` replays) and makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=-buildvcs=false
time=${FUZZTIME:-10m}
filter=${FUZZ:-.}
start=$(date +%s)
n=0
# Targets are found in the sources (compiling every package's tests to ask
# `go test -list` costs minutes).
for file in $(grep -rlE '^func Fuzz[A-Za-z0-9_]*\(' --include='*_test.go' pkg cmd plugins | sort); do
  pkg=./$(dirname "$file")
  for target in $(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' "$file" | grep -E "$filter" || true); do
    echo "== fuzz $pkg $target for $time"
    # -parallel 2: the machines this runs on are small and shared.
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$time" -parallel 2 "$pkg"
    n=$((n + 1))
  done
done
echo "fuzz: $n targets, ${time} each, no crash, in $(( $(date +%s) - start ))s"
