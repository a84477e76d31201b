#!/usr/bin/env bash
# Installs what podscope's build, tests, e2e and benchmarks need on a Debian
# machine, as root: apt packages, and a bpffs at /sys/fs/bpf. Go tools are
# pinned in go.mod (bpf2go) or built by the scripts that need them into
# $PODSCOPE_CACHE. Safe to run repeatedly; it installs only what is missing.
set -euo pipefail

# libseccomp-dev, pkg-config, gcc: the cluster suite's runc is built with
# seccomp (cgo, hack/k8s/build.sh); openssl makes its node's certificates.
PKGS=(clang llvm libbpf-dev bpftool iproute2 iperf3 nftables iptables busybox-static runc jq util-linux kmod
      qemu-system-x86 cpio strace
      libseccomp-dev pkg-config gcc libc6-dev openssl)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs: pins live there. Mounting it is the only change made to the host.
if ! mount -t bpf | grep -q ' /sys/fs/bpf '; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

go version >/dev/null
go mod download
echo "install-deps: ok ($(clang --version | head -1); $(bpftool version | head -1))"
