#!/usr/bin/env bash
# hack/kernels/fetch.sh PACKAGE: a Debian kernel image package's vmlinuz
# (and the few modules the VM tests need: veth) cached under
# $PODSCOPE_CACHE/kernels/PACKAGE_VERSION/. Prints that directory. Fetched
# with `apt-get download` (the package is never installed); built into a
# temporary directory and renamed, so a killed fetch leaves nothing half-made.
set -euo pipefail
pkg=${1:?usage: fetch.sh DEBIAN-KERNEL-IMAGE-PACKAGE}
cache=${PODSCOPE_CACHE:-/var/cache/podscope}/kernels
# Modules loaded in the VM when the kernel has them as modules (veth, and
# clsact + cls_bpf for the datapath's tc fallback). RECIPE names this list:
# change it with the list, so cached kernels are fetched again.
RECIPE=r2
MODULES=(veth sch_ingress cls_bpf)

ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
if [ -z "$ver" ]; then
  # The package lists may be stale (fresh machine): refresh once.
  apt-get update -qq >/dev/null
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
fi
# The newest cached copy of this package, if any.
cached() {
  local old
  old=$(ls -d "$cache/${pkg}_"*"_$RECIPE" 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$old" ] && [ -f "$old/vmlinuz" ]; then
    echo "$old"
    return 0
  fi
  return 1
}
if [ -z "$ver" ]; then
  # Not in the archive any more (security updates replace ABI names).
  cached && exit 0
  echo "fetch.sh: package $pkg not found by apt-cache" >&2
  exit 1
fi
dir=$cache/${pkg}_${ver}_$RECIPE
if [ -f "$dir/vmlinuz" ]; then
  echo "$dir"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# A download that fails (the apt lists being rewritten by a concurrent
# apt-get update, a network error) falls back to the cached copy.
if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$ver" >/dev/null) ||
  ! dpkg-deb -x "$tmp"/*.deb "$tmp/x" || ! ls "$tmp"/x/boot/vmlinuz-* >/dev/null 2>&1; then
  echo "fetch.sh: fetching $pkg=$ver failed; using the cached copy" >&2
  cached && exit 0
  exit 1
fi
mkdir "$tmp/out" "$tmp/out/modules"
cp "$tmp"/x/boot/vmlinuz-* "$tmp/out/vmlinuz"
for m in "${MODULES[@]}"; do
  f=$(find "$tmp/x/lib/modules" "$tmp/x/usr/lib/modules" -name "$m.ko*" 2>/dev/null | head -1 || true)
  case "$f" in
    "") ;; # built in (or absent): nothing to load
    *.ko.xz) xz -dc "$f" > "$tmp/out/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$tmp/out/modules/$m.ko" ;;
    *) cp "$f" "$tmp/out/modules/$m.ko" ;;
  esac
done
cp "$tmp"/x/boot/config-* "$tmp/out/config" 2>/dev/null || true
echo "$pkg $ver" > "$tmp/out/VERSION"
mv "$tmp/out" "$dir.new.$$"
mv -T "$dir.new.$$" "$dir" 2>/dev/null || rm -rf "$dir.new.$$" # another fetch won the race
echo "$dir"
