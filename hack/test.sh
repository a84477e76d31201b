#!/usr/bin/env bash
# The README's test command (`make test`). Runs every Go package's tests
# (privileged ones included: run as root), then the end-to-end suite against a
# real containerd (hack/e2e.sh) and the cluster suite on a single-node
# Kubernetes (hack/k8s/e2e.sh), then the CI subset of the upstream
# NetworkPolicy e2e tests (hack/k8s/netpol.sh). E2E=0 leaves the end-to-end suites out; they are
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
# The upstream Kubernetes NetworkPolicy e2e tests, the CI subset (one spec
# per rule kind, ~4 min warm) on the same kind of node with podscope
# enforcing; the whole set is `make netpol-conformance`. The first run
# builds e2e.test, ginkgo and agnhost (cached; ~15 min cold on 2 cores).
SUBSET=ci GINKGO_TIMEOUT=${GINKGO_TIMEOUT:-30m} PODSCOPE_E2E_NO_BUILD=1 hack/k8s/netpol.sh run
