# podscope's node image as an OCI archive, without Docker or a registry
# (sourced by hack/k8s/node.sh and hack/kind-e2e.sh; needs hack/e2e-env.sh's
# oci_layout and a die function). The tags are what hack/k8s/overlay names.
PODSCOPE_IMAGE=localhost/podscope/podscope:e2e
PODSCOPE_IMAGE_NEXT=localhost/podscope/podscope:e2e-next

# podscope_image OUT.tar NAME BINDIR: the Dockerfile's image (distroless/static
# + the four binaries in /usr/local/bin, user 0, entrypoint podscope-nri)
# built without Docker: same paths, user and entrypoint.
podscope_image() {
  local out=$1 name=$2 bindir=$3 rootfs b
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
  chmod 1777 "$rootfs/tmp"
  for b in podscope podscope-nri podscopectl podscope-install; do
    install -m 0755 "$bindir/$b" "$rootfs/usr/local/bin/$b"
  done
  # What distroless/static-debian12 has for a root user.
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
  oci_layout "$out" "$name" '["/usr/local/bin/podscope-nri"]' "$rootfs" \
    /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin 0
  rm -rf "$rootfs"
}

# build_podscope_images OUT-DIR: podscope.tar from bin/ (make build), and
# podscope-next.tar: the same sources linked with VERSION-next (the suite's
# upgrade). Cached under $CACHE by the hash of bin/'s binaries (a re-link
# under load takes minutes); OUT-DIR gets copies.
build_podscope_images() { # OUT-DIR
  local out=$1 v b tmp key dir
  for b in podscope podscope-nri podscopectl podscope-install; do
    [ -x "$REPO/bin/$b" ] || die "bin/$b missing: run make build"
  done
  key=$(cd "$REPO/bin" && cat podscope podscope-nri podscopectl podscope-install | sha256sum | cut -c1-16)
  dir=$CACHE/podscope-images/$key
  if [ ! -f "$dir/podscope-next.tar" ]; then
    v=$(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo dev)
    rm -rf "$CACHE/podscope-images" && mkdir -p "$dir.tmp"
    podscope_image "$dir.tmp/podscope.tar" "$PODSCOPE_IMAGE" "$REPO/bin"
    tmp=$(mktemp -d)
    (cd "$REPO" && make -s build BIN="$tmp" VERSION="$v-next" >/dev/null)
    podscope_image "$dir.tmp/podscope-next.tar" "$PODSCOPE_IMAGE_NEXT" "$tmp"
    rm -rf "$tmp"
    mv "$dir.tmp" "$dir"
  fi
  mkdir -p "$out"
  cp -f "$dir/podscope.tar" "$dir/podscope-next.tar" "$out/"
}
