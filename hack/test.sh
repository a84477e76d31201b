#!/usr/bin/env bash
# The README's test command (`make test`). Runs every Go package's tests
# (privileged ones included: run as root), then the end-to-end suite against a
# real containerd when CI=true or E2E=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=-buildvcs=false
pkgs=$(go list ./... | grep -v /tests/e2e)
go test -count=1 -timeout 25m $pkgs
if [ "${CI:-}" = "true" ] || [ "${E2E:-}" = "1" ]; then
  if [ -x hack/e2e.sh ]; then
    hack/e2e.sh
  fi
fi
