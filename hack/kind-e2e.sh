#!/usr/bin/env bash
# podscope's cluster suite (tests/e2e-k8s) on a kind cluster: the same Go
# suite `make e2e-k8s` runs on the CI node, unchanged. This wrapper only
# 1. creates a kind cluster (hack/kind/cluster.yaml: kindnet, containerd with
#    NRI on /var/run/nri/nri.sock, a control plane and a worker labelled
#    podscope.io/e2e=workload, where the suite's pods run);
# 2. builds podscope's image (and the upgrade's, and the suite's busybox with
#    its traffic tool) as OCI archives the way the CI node does
#    (hack/k8s/images.sh, hack/e2e-env.sh: no Docker build, no registry) and
#    `kind load image-archive`s them;
# 3. runs the suite with the kind cluster's kubeconfig; kindnet is the
#    primary CNI (PODSCOPE_K8S_PRIMARY_CNI=existing);
# 4. deletes the cluster (KEEP_CLUSTER=1 keeps it for a look).
#
# Needs docker (or what kind supports), kind >= 0.20, kubectl, go, and
# busybox-static (/bin/busybox). Not run in CI (no Docker engine there): the
# suite itself runs in CI on the node of hack/k8s/node.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-podscope-e2e}
OUT=$(mktemp -d)

# shellcheck source=hack/e2e-env.sh
. "$REPO/hack/e2e-env.sh"
# shellcheck source=hack/k8s/images.sh
. "$REPO/hack/k8s/images.sh"
log() { echo "kind-e2e: $*" >&2; }
die() { echo "kind-e2e: FAIL: $*" >&2; exit 1; }
for t in docker kind kubectl go; do command -v "$t" >/dev/null || die "$t not found on PATH"; done

cleanup() {
  local rc=$?
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "keeping cluster $CLUSTER (KUBECONFIG=$OUT/kubeconfig; kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$OUT"
  fi
  exit "$rc"
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named $CLUSTER exists already; delete it or set KIND_CLUSTER"
fi
log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --config "$REPO/hack/kind/cluster.yaml" --wait 180s
kind get kubeconfig --name "$CLUSTER" >"$OUT/kubeconfig"

log "building the images"
(cd "$REPO" && make -s build)
mkdir -p "$CACHE"
build_images # hack/e2e-env.sh: busybox (+ pstraffic), pause
build_podscope_images "$OUT"
for a in "$OUT/podscope.tar" "$OUT/podscope-next.tar" "$IMG_DIR/busybox.tar"; do
  kind load image-archive "$a" --name "$CLUSTER"
done

log "running tests/e2e-k8s"
cd "$REPO/tests/e2e-k8s"
KUBECONFIG=$OUT/kubeconfig \
  PODSCOPE_K8S_KUBECTL=kubectl \
  PODSCOPE_K8S_PRIMARY_CNI=existing \
  PODSCOPE_K8S_TEST_IMAGE="$BUSYBOX_IMAGE" \
  PODSCOPE_K8S_IMAGE_NEXT="$PODSCOPE_IMAGE_NEXT" \
  go test -count=1 -v -timeout 30m .
log "PASS"
