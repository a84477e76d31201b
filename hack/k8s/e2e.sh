#!/usr/bin/env bash
# podscope's cluster suite on this machine (`make e2e-k8s`; `make test` runs
# it as root): brings up the single-node Kubernetes of hack/k8s/node.sh
# (building and caching its binaries on first use), runs tests/e2e-k8s in the
# node's network namespace, and tears the node down on exit — also on
# failure or ^C — checking the host is as it was.
#
#   KEEP=1 hack/k8s/e2e.sh     leave the node up afterwards (source its env)
#
# One node per machine at a time: serialized on /run/podscope-k8s.lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
export GOFLAGS=-buildvcs=false
export PODSCOPE_K8S_WORK=${PODSCOPE_K8S_WORK:-/run/podscope-k8s}
WORK=$PODSCOPE_K8S_WORK
[ "$(id -u)" = 0 ] || { echo "e2e-k8s: must run as root" >&2; exit 1; }

exec 9>/run/podscope-k8s.lock
flock -w 3600 9 || { echo "e2e-k8s: another cluster suite holds /run/podscope-k8s.lock" >&2; exit 1; }

t0=$(date +%s)
if hack/k8s/node.sh running; then
  echo "e2e-k8s: a node is up in $WORK (a KEEP=1 run?): stop it with hack/k8s/node.sh down" >&2
  exit 1
fi
if [ "${PODSCOPE_E2E_NO_BUILD:-}" != 1 ]; then
  make -s build
fi
# Compile the suite first: build time does not count against the node.
mkdir -p .e2e-k8s
go test -c -o .e2e-k8s/e2e-k8s.test ./tests/e2e-k8s

sampler=
finish() {
  local rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  [ -f "$WORK/peak-rss-kib" ] && echo "e2e-k8s: peak memory of the node's processes: $(( $(cat "$WORK/peak-rss-kib") / 1024 )) MiB (sum of RSS)"
  if [ "${KEEP:-}" = 1 ]; then
    echo "e2e-k8s: KEEP=1: node left up; source $WORK/env, stop with hack/k8s/node.sh down"
  else
    hack/k8s/node.sh down || rc=1
  fi
  echo "e2e-k8s: total $(( $(date +%s) - t0 ))s (rc=$rc)"
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

hack/k8s/node.sh up
t1=$(date +%s)
echo "e2e-k8s: node up in $((t1 - t0))s"
# shellcheck disable=SC1091
. "$WORK/env"

# Peak memory: the summed RSS of every process in the node's namespaces.
(
  peak=0
  ns=/proc/$PODSCOPE_K8S_HOLDER/ns/mnt
  while [ -d "$WORK" ]; do
    sum=0
    for p in /proc/[0-9]*; do
      [ "$p/ns/mnt" -ef "$ns" ] 2>/dev/null || continue
      while read -r k v _; do
        [ "$k" = VmRSS: ] && sum=$((sum + v)) && break
      done 2>/dev/null <"$p/status" || true
    done
    [ $sum -gt $peak ] && { peak=$sum; echo $peak >"$WORK/peak-rss-kib.tmp" && mv "$WORK/peak-rss-kib.tmp" "$WORK/peak-rss-kib"; }
    sleep 2
  done
) &
sampler=$!

rc=0
(cd tests/e2e-k8s && nsenter -t "$PODSCOPE_K8S_HOLDER" -n -- ../../.e2e-k8s/e2e-k8s.test \
  -test.v -test.count=1 -test.timeout 25m ${RUN:+-test.run "$RUN"}) 2>&1 | tee .e2e-k8s/e2e-k8s.log || rc=$?
echo "e2e-k8s: suite took $(( $(date +%s) - t1 ))s (rc=$rc)"
exit $rc
