#!/usr/bin/env bash
# Builds the test node's Kubernetes v1.37.2 binaries (kubelet, kube-apiserver,
# kube-scheduler, kube-controller-manager, kube-proxy, kubectl), etcd v3.7.0
# and runc (with seccomp: kubelet asks for the runtime-default profile) from
# the Go module proxy into $PODSCOPE_CACHE, keyed by version. Atomic: built in
# a temp dir, then renamed. Sourced by hack/k8s/node.sh; runnable alone:
#   hack/k8s/build.sh        build what is missing, print the directories
set -euo pipefail

K8S_REPO=${K8S_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
K8S_CACHE=${PODSCOPE_CACHE:-/var/cache/podscope}
KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.7.0
RUNC_VERSION=v1.5.3
KUBE_DIR=$K8S_CACHE/kubernetes-$KUBE_VERSION
ETCD_DIR=$K8S_CACHE/etcd-$ETCD_VERSION
RUNC_DIR=$K8S_CACHE/runc-$RUNC_VERSION-seccomp
KUBE_CMDS=(kubelet kube-apiserver kube-scheduler kube-controller-manager kube-proxy kubectl)

k8s_build_log() { echo "k8s-build: $*" >&2; }

have_all() { # dir names...
  local d=$1 n; shift
  for n in "$@"; do [ -x "$d/$n" ] || return 1; done
}

# kube_ldflags: stripped, with the version the binaries report (also the
# e2e.test of hack/k8s/netpol.sh).
kube_ldflags() {
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean" \
    "-X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
}

build_kube() {
  have_all "$KUBE_DIR" "${KUBE_CMDS[@]}" && return
  k8s_build_log "building Kubernetes $KUBE_VERSION (once, several minutes; cached in $KUBE_DIR)"
  local ld; ld=$(kube_ldflags)
  rm -rf "$KUBE_DIR.tmp"; mkdir -p "$KUBE_DIR.tmp"
  local c
  for c in "${KUBE_CMDS[@]}"; do
    (cd "$K8S_REPO/hack/k8s/build/kube" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
      go build -trimpath -ldflags "$ld" -o "$KUBE_DIR.tmp/$c" "k8s.io/kubernetes/cmd/$c")
  done
  rm -rf "$KUBE_DIR" && mv "$KUBE_DIR.tmp" "$KUBE_DIR"
}

build_etcd() {
  have_all "$ETCD_DIR" etcd && return
  k8s_build_log "building etcd $ETCD_VERSION (once; cached in $ETCD_DIR)"
  rm -rf "$ETCD_DIR.tmp"; mkdir -p "$ETCD_DIR.tmp"
  (cd "$K8S_REPO/hack/k8s/build/etcd" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags '-s -w' -o "$ETCD_DIR.tmp/etcd" .)
  rm -rf "$ETCD_DIR" && mv "$ETCD_DIR.tmp" "$ETCD_DIR"
}

build_runc() {
  have_all "$RUNC_DIR" runc && return
  k8s_build_log "building runc $RUNC_VERSION with seccomp (once; cached in $RUNC_DIR)"
  [ -f /usr/include/seccomp.h ] || { k8s_build_log "libseccomp-dev missing: run hack/install-deps.sh"; return 1; }
  rm -rf "$RUNC_DIR.tmp"; mkdir -p "$RUNC_DIR.tmp"
  CGO_ENABLED=1 GOFLAGS=-buildvcs=false GOBIN="$RUNC_DIR.tmp" \
    go install -trimpath -tags seccomp -ldflags "-X main.version=${RUNC_VERSION#v}" \
    "github.com/opencontainers/runc@$RUNC_VERSION"
  "$RUNC_DIR.tmp/runc" --version | grep -q 'seccomp' || { k8s_build_log "runc built without seccomp"; return 1; }
  rm -rf "$RUNC_DIR" && mv "$RUNC_DIR.tmp" "$RUNC_DIR"
}

k8s_build_all() {
  mkdir -p "$K8S_CACHE"
  build_runc
  build_etcd
  build_kube
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  k8s_build_all
  echo "$KUBE_DIR $ETCD_DIR $RUNC_DIR"
fi
