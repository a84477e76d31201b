#!/usr/bin/env bash
# `make bench` / `make bench-quick` (QUICK=1): podscope measured against the
# no-program ceiling and the tools people use instead (iptables, nftables, a
# sidecar proxy, the bandwidth CNI plugin, auditd). Runs as root; creates its
# own namespaces (pstestbn*, 10.99.x / 10.x subnets) and removes them. Results:
# bench/out/results.{json,md,png}; `hack/bench.sh --publish` (or PUBLISH=1)
# also copies them to bench/latest.*. It measures, it never fails on a number.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=-buildvcs=false
export PODSCOPE_CACHE=${PODSCOPE_CACHE:-/var/cache/podscope}
CNI_VERSION=v1.9.1

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root (it creates namespaces and loads BPF programs)" >&2
  exit 1
fi
publish=${PUBLISH:-0}
args=()
for a in "$@"; do
  case "$a" in
    --publish) publish=1 ;;
    *) args+=("$a") ;;
  esac
done

# Tools from apt (iperf3, nftables, iptables, bpftool …) come from the
# project's install script; auditd is only for the audit comparison of full
# runs, so a failure to install it turns its rows into "n/a", not a failed run.
hack/install-deps.sh >/dev/null
if [ "${QUICK:-}" != "1" ] && ! command -v auditctl >/dev/null 2>&1; then
  echo "bench: installing auditd (for the auditd comparison rows)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends auditd >/dev/null 2>&1 \
    || echo "bench: auditd could not be installed; its rows will say n/a"
fi

# Reference CNI plugins, built like the other suites build them.
cni_bin=$PODSCOPE_CACHE/cni-bin
for p in main/bridge ipam/host-local meta/bandwidth; do
  name=${p##*/}
  if [ ! -x "$cni_bin/$name" ] || [ "$(cat "$cni_bin/.$name.version" 2>/dev/null)" != "$CNI_VERSION" ]; then
    echo "bench: building reference plugin $name@$CNI_VERSION into $cni_bin"
    mkdir -p "$cni_bin"
    GOBIN=$cni_bin CGO_ENABLED=0 go install "github.com/containernetworking/plugins/plugins/$p@$CNI_VERSION"
    echo "$CNI_VERSION" > "$cni_bin/.$name.version"
  fi
done

mkdir -p bench/out
go build -o bench/out/podscope-bench ./tests/bench/cmd/podscope-bench
quick=()
[ "${QUICK:-}" = "1" ] && quick=(--quick)
start=$(date +%s)
# podscope's own CNI plugin comes from `make build` (bin/), the reference
# plugins from the cache. Built here too (Go's cache makes it quick), so a
# direct run of this script never measures binaries older than the tree.
make build >/dev/null
bench/out/podscope-bench run "${quick[@]}" --out bench/out --cni-bin "$PWD/bin:$cni_bin" "${args[@]}"
echo "bench: done in $(( $(date +%s) - start ))s; results in bench/out/results.{json,md,png}"
if [ "$publish" = "1" ]; then
  cp bench/out/results.json bench/latest.json
  cp bench/out/results.md bench/latest.md
  cp bench/out/results.png bench/latest.png
  echo "bench: published to bench/latest.{json,md,png}"
fi
