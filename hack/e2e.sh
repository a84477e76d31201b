#!/usr/bin/env bash
# podscope's end-to-end suite against a real containerd (`make e2e`; `make
# test` runs it after the Go packages' tests unless E2E=0, and always under
# CI=true). Brings up the environment of
# hack/e2e-env.sh (building and caching containerd, crictl, CNI plugins and
# the local images on first use), runs tests/e2e, and tears everything down
# on exit — also on failure or ^C.
#
#   RUN=TestX hack/e2e.sh      run only matching tests
#   RUN='^$' BENCH=PodStartLatency hack/e2e.sh
#                              run a benchmark of the suite (BENCHTIME, default
#                              20x: pod start latency over 20 pods of each kind)
#   KEEP=1 hack/e2e.sh         leave the environment up afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=-buildvcs=false
export PODSCOPE_E2E_WORK=${PODSCOPE_E2E_WORK:-/run/podscope-e2e}
[ "$(id -u)" = 0 ] || { echo "e2e: must run as root" >&2; exit 1; }

t0=$(date +%s)
# A running environment is not ours to stop; a killed run's leftovers go.
hack/e2e-env.sh fresh
# Test what the tree holds, not a stale bin/ (cheap when nothing changed;
# `make e2e` has just built, so it may skip this).
if [ "${PODSCOPE_E2E_NO_BUILD:-}" != 1 ]; then
  make -s build || echo "e2e: make build failed: podscope tests will fail under CI=true, skip otherwise" >&2
fi

if [ "${KEEP:-}" != 1 ]; then
  trap 'hack/e2e-env.sh down' EXIT
fi
hack/e2e-env.sh up
t1=$(date +%s)
echo "e2e: environment up in $((t1 - t0))s"
# shellcheck disable=SC1091
. "$PODSCOPE_E2E_WORK/env"

# Compile first so that build time does not count against the tests.
go test -c -o "$PODSCOPE_E2E_WORK/e2e.test" ./tests/e2e
rc=0
(cd tests/e2e && "$PODSCOPE_E2E_WORK/e2e.test" -test.v -test.count=1 -test.timeout 15m ${RUN:+-test.run "$RUN"} \
  ${BENCH:+-test.bench "$BENCH" -test.benchtime "${BENCHTIME:-20x}"}) \
  2>&1 | tee "$PODSCOPE_E2E_WORK/log/e2e.log" || rc=$?
[ -f "$PODSCOPE_E2E_WORK/latency.txt" ] && cat "$PODSCOPE_E2E_WORK/latency.txt"
echo "e2e: tests took $(( $(date +%s) - t1 ))s, total $(( $(date +%s) - t0 ))s (rc=$rc)"
if [ "${KEEP:-}" = 1 ]; then
  echo "e2e: KEEP=1: environment left up; source $PODSCOPE_E2E_WORK/env, stop with hack/e2e-env.sh down"
fi
exit $rc
