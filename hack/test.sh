#!/usr/bin/env bash
# The README's test command (`make test`). Runs every Go package's tests
# (privileged ones included: run as root), then the end-to-end suite against a
# real containerd (hack/e2e.sh) and the cluster suite on a single-node
# Kubernetes (hack/k8s/e2e.sh). E2E=0 leaves the end-to-end suite out; it is
# skipped only when not root and CI is unset (under CI=true it always runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=-buildvcs=false
pkgs=$(go list ./... | grep -v /tests/e2e)
go test -count=1 -timeout 25m $pkgs

if [ "${CI:-}" != "true" ] && [ "${E2E:-}" = "0" ]; then
  echo "test: end-to-end suite left out (E2E=0)"
  exit 0
fi
if [ "$(id -u)" != 0 ] && [ "${CI:-}" != "true" ]; then
  echo "test: end-to-end suite skipped: it needs root (run as root, or under CI=true it fails instead)"
  exit 0
fi
hack/e2e.sh
# The cluster suite (tests/e2e-k8s; the grep above leaves it out of the
# package list, it needs the node of hack/k8s/node.sh).
PODSCOPE_E2E_NO_BUILD=1 hack/k8s/e2e.sh
