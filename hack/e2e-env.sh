#!/usr/bin/env bash
# The environment of podscope's end-to-end suite and demo: a real containerd
# (CRI + NRI) with its own root, state, sockets and CNI dirs under a work dir,
# the reference CNI plugins chained with podscope, podscope-nri, and local
# images (no registry).
#
#   hack/e2e-env.sh deps        build/cache containerd, crictl, CNI plugins, images
#   hack/e2e-env.sh up          deps + configs + start containerd and podscope-nri
#   hack/e2e-env.sh down        stop what `up` started and remove everything it made
#   hack/e2e-env.sh fresh       refuse if an environment runs; else remove a killed run's leftovers
#   hack/e2e-env.sh start-containerd|stop-containerd|start-nri|stop-nri [SIGNAL]
#   hack/e2e-env.sh env         print the environment (source-able) of a running env
#   hack/e2e-env.sh running     exit 0 if the environment's containerd runs
#   hack/e2e-env.sh cached      exit 0 if containerd, crictl and the CNI plugins are built
#
# Tools are cached under $PODSCOPE_CACHE (default /var/cache/podscope), keyed
# by version; everything else lives in $PODSCOPE_E2E_WORK (default
# /run/podscope-e2e). Processes are started and stopped by PID only. The host
# is touched in these places, all undone by `down`: one bridge (pstest-e2e0,
# 10.77.0.0/24), net.ipv4.ip_forward (restored to its saved value),
# /var/lib/cni/results/pstest-e2e-*, cgroups under /pstest-e2e, the bpffs
# root /sys/fs/bpf/pstest-e2e (PODSCOPE_E2E_BPFFS_ROOT at `up` names another;
# later commands use the one `up` recorded in the work dir).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PODSCOPE_CACHE:-/var/cache/podscope}
WORK=${PODSCOPE_E2E_WORK:-/run/podscope-e2e}
export GOFLAGS=-buildvcs=false

CONTAINERD_VERSION=v2.4.2
CRICTL_VERSION=v1.37.0
CNI_PLUGINS_VERSION=v1.9.1

CTRD_DIR=$CACHE/containerd-$CONTAINERD_VERSION
CRICTL_DIR=$CACHE/crictl-$CRICTL_VERSION
CNIP_DIR=$CACHE/cni-plugins-$CNI_PLUGINS_VERSION
IMG_DIR=$CACHE/images

NET_NAME=pstest-e2e
BRIDGE=pstest-e2e0
SUBNET4=10.77.0.0/24
# Not fd00::/64: that one is on this machine's eth0.
SUBNET6=fd00:77::/64
GATEWAY4=10.77.0.1
if [ -f "$WORK/bpffs-root" ]; then
  BPFFS_ROOT=$(cat "$WORK/bpffs-root")
else
  BPFFS_ROOT=${PODSCOPE_E2E_BPFFS_ROOT:-/sys/fs/bpf/pstest-e2e}
fi
CGROUP_PARENT=pstest-e2e
PAUSE_IMAGE=localhost/podscope/pause:e2e
BUSYBOX_IMAGE=localhost/podscope/busybox:e2e

log() { echo "e2e-env: $*" >&2; }
die() { echo "e2e-env: error: $*" >&2; exit 1; }

# The command line of a script built on this file (this one, hack/k8s/node.sh):
# `dispatch "SUB ..." "$@"` runs cmd_SUB (a dash in SUB is an underscore in
# the function's name) with the remaining arguments when SUB is one of the
# listed sub-commands; otherwise it prints the script's header comment (its
# usage, up to `set`) and exits 2.
dispatch() {
  local subs=" $1 " sub=${2:-}
  shift
  [ $# -eq 0 ] || shift
  if [ -z "$sub" ] || [[ $subs != *" $sub "* ]]; then
    sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
  fi
  "cmd_${sub//-/_}" "$@"
}

# --- building and caching ---------------------------------------------------

gobuild_into() { # dir, go install args...
  local dir=$1; shift
  mkdir -p "$dir.tmp"
  CGO_ENABLED=0 GOBIN="$dir.tmp" go install "$@"
}

build_containerd() {
  [ -x "$CTRD_DIR/containerd" ] && [ -x "$CTRD_DIR/containerd-shim-runc-v2" ] && [ -x "$CTRD_DIR/ctr" ] && return
  log "building containerd $CONTAINERD_VERSION (once; cached in $CTRD_DIR)"
  rm -rf "$CTRD_DIR.tmp"
  gobuild_into "$CTRD_DIR" -tags "no_btrfs no_devmapper no_zfs" \
    github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION \
    github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION
  rm -rf "$CTRD_DIR" && mv "$CTRD_DIR.tmp" "$CTRD_DIR"
}

build_crictl() {
  [ -x "$CRICTL_DIR/crictl" ] && return
  log "building crictl $CRICTL_VERSION (once; cached in $CRICTL_DIR)"
  rm -rf "$CRICTL_DIR.tmp"
  gobuild_into "$CRICTL_DIR" sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION
  rm -rf "$CRICTL_DIR" && mv "$CRICTL_DIR.tmp" "$CRICTL_DIR"
}

build_cni_plugins() {
  local p ok=1
  for p in bridge host-local loopback portmap; do [ -x "$CNIP_DIR/$p" ] || ok=0; done
  [ $ok = 1 ] && return
  log "building CNI plugins $CNI_PLUGINS_VERSION (once; cached in $CNIP_DIR)"
  rm -rf "$CNIP_DIR.tmp"
  gobuild_into "$CNIP_DIR" \
    github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS_VERSION \
    github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION \
    github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION \
    github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_PLUGINS_VERSION
  rm -rf "$CNIP_DIR" && mv "$CNIP_DIR.tmp" "$CNIP_DIR"
}

check_runc() {
  command -v runc >/dev/null || die "runc not found: run hack/install-deps.sh"
  runc --version >/dev/null || die "runc --version failed"
}

# oci_layout OUT.tar NAME ENTRYPOINT-JSON ROOTFS-DIR [PATH] [USER]: writes an OCI image
# layout (oci-layout, index.json, blobs/sha256/{layer,config,manifest}) as a
# tarball that `ctr images import` takes. Reproducible: sorted names, zero
# mtimes and owners, gzip without a timestamp.
oci_layout() {
  local out=$1 name=$2 entry=$3 rootfs=$4 path=${5:-/bin} user=${6:-} d layer diffid lsize cfg csize man msize
  d=$(mktemp -d)
  mkdir -p "$d/blobs/sha256"
  tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$d/layer.tar" .
  diffid=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
  gzip -n -9 "$d/layer.tar"
  layer=$(sha256sum "$d/layer.tar.gz" | cut -d' ' -f1)
  lsize=$(stat -c %s "$d/layer.tar.gz")
  mv "$d/layer.tar.gz" "$d/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","config":{%s"Entrypoint":%s,"Env":["PATH=%s"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "${user:+\"User\":\"$user\",}" "$entry" "$path" "$diffid" >"$d/config.json"
  cfg=$(sha256sum "$d/config.json" | cut -d' ' -f1)
  csize=$(stat -c %s "$d/config.json")
  mv "$d/config.json" "$d/blobs/sha256/$cfg"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$cfg" "$csize" "$layer" "$lsize" >"$d/manifest.json"
  man=$(sha256sum "$d/manifest.json" | cut -d' ' -f1)
  msize=$(stat -c %s "$d/manifest.json")
  mv "$d/manifest.json" "$d/blobs/sha256/$man"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man" "$msize" "$name" "${name##*:}" >"$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
  tar -C "$d" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$d"
}

build_images() {
  local key rootfs a
  mkdir -p "$IMG_DIR"
  # The pause image: keyed by the source's hash so an edit rebuilds it.
  key=$(cat "$REPO/hack/pause/"*.go | sha256sum | cut -c1-12)
  if [ ! -f "$IMG_DIR/pause-$key.tar" ]; then
    log "building pause image"
    rm -f "$IMG_DIR"/pause-*.tar
    rootfs=$(mktemp -d)
    (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$rootfs/pause" ./hack/pause)
    oci_layout "$IMG_DIR/pause-$key.tar" "$PAUSE_IMAGE" '["/pause"]' "$rootfs"
    rm -rf "$rootfs"
  fi
  ln -sf "pause-$key.tar" "$IMG_DIR/pause.tar"
  # busybox: the static binary of busybox-static with every applet linked.
  [ -x /bin/busybox ] || die "/bin/busybox missing: run hack/install-deps.sh (busybox-static)"
  # Plus the suite's traffic tool (tests/e2e/images/pstraffic): busybox's
  # nc has no UDP.
  key=$( (sha256sum /bin/busybox; cat "$REPO/tests/e2e/images/pstraffic/"*.go) | sha256sum | cut -c1-12)
  if [ ! -f "$IMG_DIR/busybox-$key.tar" ]; then
    log "building busybox image"
    rm -f "$IMG_DIR"/busybox-*.tar
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/www" "$rootfs/data"
    chmod 1777 "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$rootfs/bin/pstraffic" ./tests/e2e/images/pstraffic)
    for a in $(/bin/busybox --list); do
      [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
    echo 'hello from podscope e2e' >"$rootfs/var/www/index.html"
    oci_layout "$IMG_DIR/busybox-$key.tar" "$BUSYBOX_IMAGE" '["/bin/sh"]' "$rootfs"
    rm -rf "$rootfs"
  fi
  ln -sf "busybox-$key.tar" "$IMG_DIR/busybox.tar"
}

cmd_cached() {
  local p
  [ -x "$CTRD_DIR/containerd" ] && [ -x "$CTRD_DIR/containerd-shim-runc-v2" ] && [ -x "$CTRD_DIR/ctr" ] \
    && [ -x "$CRICTL_DIR/crictl" ] || return 1
  for p in bridge host-local loopback portmap; do [ -x "$CNIP_DIR/$p" ] || return 1; done
}

cmd_deps() {
  command -v go >/dev/null || die "go not found"
  mkdir -p "$CACHE"
  check_runc
  build_containerd
  build_crictl
  build_cni_plugins
  build_images
}

# --- the running environment ---------------------------------------------

CTRD_SOCK=$WORK/containerd.sock
NRI_SOCK=$WORK/nri.sock
PS_STATE=$WORK/podscope
AUDIT_LOG=$WORK/audit.jsonl
METRICS_ADDR=${PODSCOPE_E2E_METRICS:-127.0.0.1:19810}
CRICTL="$CRICTL_DIR/crictl --config $WORK/crictl.yaml"

# alive PID: the process exists and is not a zombie (a killed daemon stays a
# zombie until PID 1 reaps it, and kill -0 still succeeds on it).
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_alive() { [ -f "$1" ] && alive "$(cat "$1")"; }

# stop_pid PIDFILE [SIGNAL]: signal the recorded process, wait up to 20 s for
# it to exit, then SIGKILL it. Only ever the PID this script recorded.
stop_pid() {
  local f=$1 sig=${2:-TERM} pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if alive "$pid"; then
    kill -s "$sig" "$pid" 2>/dev/null || true
    for i in $(seq 200); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "pid $pid ($f) ignored SIG$sig for 20s: SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
      for i in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$f"
}

wait_socket() { # path seconds what
  local i
  for i in $(seq $(( $2 * 10 ))); do [ -S "$1" ] && return 0; sleep 0.1; done
  die "$3: socket $1 did not appear within $2 s (see its log in $WORK)"
}

podscope_bin() { [ -x "$REPO/bin/$1" ] && echo "$REPO/bin/$1"; }

# bridge_conflist NAME RANGE-START RANGE-END [EXTRA-ENTRY]: a conflist of the
# bridge plugin on our bridge and subnet, optionally followed by one entry.
bridge_conflist() {
  cat <<JSON
{ "cniVersion": "1.0.0",
  "name": "$1",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
      "ipam": { "type": "host-local", "dataDir": "$WORK/ipam",
                "ranges": [[{"subnet": "$SUBNET4", "rangeStart": "$2", "rangeEnd": "$3", "gateway": "$GATEWAY4"}]] } }${4:+,
    $4}
  ] }
JSON
}

# containerd_config COMMENT RUNC CNI_BIN CNI_CONF NRI_SOCK [RUNTIME:CONF_DIR...]
# prints the containerd config of both harnesses (this environment and
# hack/k8s/node.sh's node): root, state, sockets and shims under $WORK, no
# TCP, runc at RUNC (cgroupfs, its state in $WORK/runc) as the default
# runtime "runc" on the CNI dirs given, one more runtime per
# RUNTIME:CONF_DIR with its own conflist dir, NRI on NRI_SOCK.
# CONTAINERD_CRI_EXTRA and CONTAINERD_NRI_EXTRA: lines added to the CRI
# runtime section and to the NRI section.
containerd_config() {
  local comment=$1 runc_bin=$2 cni_bin=$3 cni_conf=$4 nri_sock=$5 rt runtimes
  shift 5
  runtimes=$(containerd_runtime runc "" "$runc_bin")
  for rt in "$@"; do runtimes+=$'\n'$(containerd_runtime "${rt%%:*}" "${rt#*:}" "$runc_bin"); done
  cat <<TOML
# $comment
version = 3
root = '$WORK/root'
state = '$WORK/state'
imports = []

[grpc]
  address = '$CTRD_SOCK'
[ttrpc]
  address = '$CTRD_SOCK.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'

  [plugins.'io.containerd.cri.v1.runtime']
    # root here may lack CAP_SYS_RESOURCE: never lower a score below ours.
    restrict_oom_score_adj = true
    cdi_spec_dirs = ['$WORK/cdi']
    enable_criu = false
${CONTAINERD_CRI_EXTRA:-}
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
$runtimes
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$cni_bin']
      conf_dir = '$cni_conf'
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.internal.v1.opt']
    path = '$WORK/opt'

  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '$WORK/opt/image-verifier/bin'

  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    disable_connections = false
    socket_path = '$nri_sock'
    plugin_path = '$WORK/nri-plugins'
    plugin_config_path = '$WORK/nri-conf'
${CONTAINERD_NRI_EXTRA:-}

  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '$WORK/s'
TOML
}

containerd_runtime() { # name cni-conf-dir ("" = the CRI default) runc
  echo "      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.$1]"
  [ -z "$2" ] || echo "        cni_conf_dir = '$2'"
  cat <<TOML
        runtime_type = 'io.containerd.runc.v2'
        sandboxer = 'podsandbox'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.$1.options]
          BinaryName = '$3'
          Root = '$WORK/runc'
          SystemdCgroup = false
TOML
}

write_configs() {
  local runc_bin entry=""
  runc_bin=$(command -v runc)
  mkdir -p "$WORK"/{root,state,s,runc,cdi,opt,nri-plugins,nri-conf,ipam,log,bin} \
    "$WORK/cni/bin" "$WORK/cni/net.d" "$WORK/cni/net.d-bare" "$WORK/cni/net.d-adopt" "$WORK/cni/net.d-dual" "$PS_STATE"
  cp -f "$CNIP_DIR"/{bridge,host-local,loopback,portmap} "$WORK/cni/bin/"
  # podscope's entry, also what the adoption test gives podscope-install.
  cat >"$WORK/podscope-entry.json" <<JSON
{ "type": "podscope",
      "bpffsRoot": "$BPFFS_ROOT",
      "stateDir": "$PS_STATE",
      "capabilities": {"io.kubernetes.cri.pod-annotations": true},
      "policy": {
        "egress":  {"default": "allow", "rules": [{"cidr": "10.77.0.0/24", "protocol": "tcp", "ports": ["7777"], "action": "deny"}]},
        "ingress": {"default": "allow", "rules": []}
      } }
JSON
  if [ -n "$(podscope_bin podscope)" ]; then
    cp -f "$REPO/bin/podscope" "$WORK/cni/bin/podscope"
    entry=$(cat "$WORK/podscope-entry.json")
  else
    log "bin/podscope not built: the chain is bridge only (run make build)"
  fi
  # Three networks on the same bridge and subnet, disjoint IP ranges, one
  # per runtime handler: "runc" (the default) chains podscope; "runc-bare"
  # never does (the suite compares the two); "runc-adopt" starts without it
  # and gets it chained by podscope-install while its pods run.
  bridge_conflist "$NET_NAME" 10.77.0.16 10.77.0.79 "$entry" >"$WORK/cni/net.d/10-$NET_NAME.conflist"
  # "runc-dual": IPv4 + IPv6 with podscope. No gateway (isGateway false), so
  # the bridge gets no IPv6 address, the host no IPv6 route and its IPv6
  # forwarding stays untouched; pods reach each other on the bridge.
  cat >"$WORK/cni/net.d-dual/10-$NET_NAME-dual.conflist" <<JSON
{ "cniVersion": "1.0.0",
  "name": "$NET_NAME-dual",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false,
      "ipam": { "type": "host-local", "dataDir": "$WORK/ipam",
                "ranges": [[{"subnet": "$SUBNET4", "rangeStart": "10.77.0.80", "rangeEnd": "10.77.0.99"}],
                           [{"subnet": "$SUBNET6"}]] } }${entry:+,
    $entry}
  ] }
JSON
  bridge_conflist "$NET_NAME-adopt" 10.77.0.100 10.77.0.127 >"$WORK/cni/net.d-adopt/10-$NET_NAME-adopt.conflist"
  bridge_conflist "$NET_NAME-bare" 10.77.0.128 10.77.0.254 >"$WORK/cni/net.d-bare/10-$NET_NAME-bare.conflist"
  CONTAINERD_CRI_EXTRA="    netns_mounts_under_state_dir = true" \
  CONTAINERD_NRI_EXTRA="    plugin_registration_timeout = '5s'
    # A handler slower than this makes containerd drop the plugin and start
    # the container anyway (measured): podscope-nri must answer within it.
    plugin_request_timeout = '2s'" \
    containerd_config "Written by hack/e2e-env.sh: everything under $WORK." "$runc_bin" \
    "$WORK/cni/bin" "$WORK/cni/net.d" "$NRI_SOCK" \
    "runc-bare:$WORK/cni/net.d-bare" "runc-dual:$WORK/cni/net.d-dual" "runc-adopt:$WORK/cni/net.d-adopt" \
    >"$WORK/containerd.toml"
  cat >"$WORK/crictl.yaml" <<YAML
runtime-endpoint: unix://$CTRD_SOCK
image-endpoint: unix://$CTRD_SOCK
timeout: 30
YAML
  # Wrappers for a person poking at a kept environment (KEEP=1).
  printf '#!/bin/sh\nexec %s --config %s "$@"\n' "$CRICTL_DIR/crictl" "$WORK/crictl.yaml" >"$WORK/bin/crictl"
  printf '#!/bin/sh\nexec %s --address %s --namespace k8s.io "$@"\n' "$CTRD_DIR/ctr" "$CTRD_SOCK" >"$WORK/bin/ctr"
  # Global flags (--bpffs-root) go anywhere; command flags after the command.
  cat >"$WORK/bin/podscopectl" <<SH
#!/bin/sh
# podscopectl of the e2e environment: its bpffs root, audit log, state dir.
ctl=$REPO/bin/podscopectl
case "\${1:-}" in
  audit) shift; exec \$ctl --bpffs-root $BPFFS_ROOT audit --log $AUDIT_LOG "\$@" ;;
  cleanup) shift; exec \$ctl --bpffs-root $BPFFS_ROOT cleanup --state-dir $PS_STATE "\$@" ;;
  status) shift; exec \$ctl --bpffs-root $BPFFS_ROOT status --nri-socket $NRI_SOCK "\$@" ;;
  *) exec \$ctl --bpffs-root $BPFFS_ROOT "\$@" ;;
esac
SH
  chmod +x "$WORK/bin/"*
  cat >"$WORK/env" <<ENV
# source me: the running podscope e2e environment (hack/e2e-env.sh)
export PODSCOPE_E2E_ENV='$WORK'
export PODSCOPE_E2E_REPO='$REPO'
export PODSCOPE_E2E_CRICTL='$CRICTL_DIR/crictl'
export PODSCOPE_E2E_CTR='$CTRD_DIR/ctr'
export PODSCOPE_E2E_CONTAINERD_SOCK='$CTRD_SOCK'
export PODSCOPE_E2E_NRI_SOCK='$NRI_SOCK'
export PODSCOPE_E2E_BPFFS_ROOT='$BPFFS_ROOT'
export PODSCOPE_E2E_STATE_DIR='$PS_STATE'
export PODSCOPE_E2E_AUDIT_LOG='$AUDIT_LOG'
export PODSCOPE_E2E_METRICS_ADDR='$METRICS_ADDR'
export PODSCOPE_E2E_NET='$NET_NAME'
export PODSCOPE_E2E_BRIDGE='$BRIDGE'
export PODSCOPE_E2E_CGROUP_PARENT='$CGROUP_PARENT'
export PODSCOPE_E2E_PAUSE_IMAGE='$PAUSE_IMAGE'
export PODSCOPE_E2E_BUSYBOX_IMAGE='$BUSYBOX_IMAGE'
export PODSCOPE_E2E_PODSCOPE_CHAINED='$([ -n "$entry" ] && echo 1 || echo 0)'
export PODSCOPE_E2E_CNI_BIN_DIR='$WORK/cni/bin'
export PODSCOPE_E2E_ADOPT_CONF_DIR='$WORK/cni/net.d-adopt'
export PODSCOPE_E2E_PODSCOPE_ENTRY='$WORK/podscope-entry.json'
export PATH="$WORK/bin:\$PATH"
ENV
}

cmd_start_containerd() {
  pid_alive "$WORK/containerd.pid" && { log "containerd already running (pid $(cat "$WORK/containerd.pid"))"; return; }
  rm -f "$CTRD_SOCK" "$CTRD_SOCK.ttrpc" "$NRI_SOCK"
  # setsid: a ^C in the terminal reaches this script, which stops containerd
  # in order, not containerd directly.
  setsid "$CTRD_DIR/containerd" --config "$WORK/containerd.toml" --log-level info \
    </dev/null >>"$WORK/log/containerd.log" 2>&1 &
  echo $! >"$WORK/containerd.pid"
  wait_socket "$CTRD_SOCK" 30 containerd
  local i
  for i in $(seq 100); do
    $CRICTL info >/dev/null 2>&1 && break
    pid_alive "$WORK/containerd.pid" || die "containerd exited: $(tail -5 "$WORK/log/containerd.log")"
    sleep 0.2
  done
  $CRICTL info >/dev/null || die "containerd CRI not ready (see $WORK/log/containerd.log)"
  wait_socket "$NRI_SOCK" 10 "containerd NRI"
  log "containerd up (pid $(cat "$WORK/containerd.pid"))"
}

cmd_stop_containerd() { stop_pid "$WORK/containerd.pid" "${1:-TERM}"; }

cmd_start_nri() {
  local nri before i
  nri=$(podscope_bin podscope-nri) || { log "bin/podscope-nri not built: not started"; return 0; }
  pid_alive "$WORK/nri.pid" && { log "podscope-nri already running (pid $(cat "$WORK/nri.pid"))"; return; }
  before=0
  [ -f "$WORK/log/podscope-nri.log" ] && before=$(wc -l <"$WORK/log/podscope-nri.log")
  # A short reap interval: the suite's reaper test should not wait a minute.
  setsid "$nri" --nri-socket "$NRI_SOCK" --bpffs-root "$BPFFS_ROOT" --state-dir "$PS_STATE" \
    --audit-log "$AUDIT_LOG" --metrics-addr "$METRICS_ADDR" \
    --reap-interval "${PODSCOPE_E2E_REAP_INTERVAL:-3s}" ${PODSCOPE_NRI_ARGS:-} \
    </dev/null >>"$WORK/log/podscope-nri.log" 2>&1 &
  echo $! >"$WORK/nri.pid"
  # Ready = registered with containerd (which then sent it Synchronize).
  for i in $(seq 150); do
    pid_alive "$WORK/nri.pid" || die "podscope-nri exited: $(tail -n +$((before + 1)) "$WORK/log/podscope-nri.log" | tail -5)"
    if tail -n +$((before + 1)) "$WORK/log/podscope-nri.log" | grep -q 'registered with the runtime'; then
      log "podscope-nri up (pid $(cat "$WORK/nri.pid"))"
      return 0
    fi
    sleep 0.2
  done
  die "podscope-nri did not register with containerd within 30 s: $(tail -5 "$WORK/log/podscope-nri.log")"
}

cmd_stop_nri() { stop_pid "$WORK/nri.pid" "${1:-TERM}"; }

import_images() {
  local c="$CTRD_DIR/ctr --address $CTRD_SOCK --namespace k8s.io" t err
  for t in pause busybox; do
    # ctr repeats containerd's cgroup v1 deprecation warning on every call
    # (it is in containerd.log once): keep the rest of its stderr.
    err=$($c images import "$IMG_DIR/$t.tar" 2>&1 >/dev/null) || die "ctr images import $t.tar: $err"
    grep -v 'support for cgroup v1 is deprecated' <<<"$err" >&2 || true
  done
  $CRICTL inspecti "$PAUSE_IMAGE" >/dev/null || die "pause image not visible to CRI after import"
  $CRICTL inspecti "$BUSYBOX_IMAGE" >/dev/null || die "busybox image not visible to CRI after import"
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  cmd_deps
  if pid_alive "$WORK/containerd.pid"; then die "an environment is already up in $WORK: hack/e2e-env.sh down first"; fi
  mkdir -p "$WORK"
  echo "$BPFFS_ROOT" >"$WORK/bpffs-root"
  [ -f "$WORK/saved-ip_forward" ] || cat /proc/sys/net/ipv4/ip_forward >"$WORK/saved-ip_forward"
  mount -t bpf | grep -q ' /sys/fs/bpf ' || { mkdir -p /sys/fs/bpf; mount -t bpf bpf /sys/fs/bpf; }
  write_configs
  cmd_start_containerd
  import_images
  cmd_start_nri
  log "up: source $WORK/env (crictl, ctr, podscopectl wrappers in $WORK/bin)"
}

# --- teardown ----------------------------------------------------------------

remove_pods() {
  local p
  pid_alive "$WORK/containerd.pid" || return 0
  for p in $($CRICTL pods -q 2>/dev/null); do
    echo "$p" >>"$WORK/sandbox-ids"
    $CRICTL stopp "$p" >/dev/null 2>&1 || log "stopp $p failed"
    $CRICTL rmp -f "$p" >/dev/null 2>&1 || log "rmp $p failed"
  done
}

# Shims outlive containerd by design (they are re-parented); ours are the ones
# whose command line names our containerd socket.
stop_shims() {
  local d pid cmd
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    cmd=$( { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in
      *containerd-shim-runc-v2*"$CTRD_SOCK"*) log "stopping leftover shim $pid"; kill -9 "$pid" 2>/dev/null || true ;;
    esac
  done
}

unmount_work() {
  local m
  # Deepest first.
  for m in $(awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || log "umount $m failed"
  done
}

remove_cgroups() {
  local h d
  for h in /sys/fs/cgroup/* /sys/fs/cgroup/unified; do
    d=$h/$CGROUP_PARENT
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$d" ] && log "cgroup $d not empty: left in place"
  done
  return 0
}

# Processes still in our pods' cgroups (a pod containerd failed to remove,
# or whose shim died): all ours, killed through cgroup v2's cgroup.kill.
kill_pod_processes() {
  local d=/sys/fs/cgroup/unified/$CGROUP_PARENT
  [ -d /sys/fs/cgroup/unified ] || d=/sys/fs/cgroup/$CGROUP_PARENT
  [ -f "$d/cgroup.kill" ] || return 0
  if [ -n "$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)" ]; then
    log "killing processes left in $d"
    echo 1 >"$d/cgroup.kill" || true
    sleep 0.5
  fi
}

# verify_clean reports anything `down` should have removed and did not.
verify_clean() {
  local left=() h
  pid_alive "$WORK/containerd.pid" && left+=("containerd pid $(cat "$WORK/containerd.pid")")
  pid_alive "$WORK/nri.pid" && left+=("podscope-nri pid $(cat "$WORK/nri.pid")")
  grep -q " $WORK/" /proc/self/mountinfo && left+=("mounts under $WORK")
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
  for h in /sys/fs/cgroup/* /sys/fs/cgroup/unified; do
    [ -d "$h/$CGROUP_PARENT" ] && left+=("cgroup $h/$CGROUP_PARENT")
  done
  [ -e "$BPFFS_ROOT" ] && left+=("bpffs root $BPFFS_ROOT")
  ls /var/lib/cni/results/"$NET_NAME"-* >/dev/null 2>&1 && left+=("/var/lib/cni/results/$NET_NAME-*")
  if [ ${#left[@]} -gt 0 ]; then
    log "down: LEFT BEHIND: ${left[*]}"
    return 1
  fi
}

cmd_down() {
  local p rc=0
  [ -d "$WORK" ] || { log "nothing in $WORK"; return 0; }
  remove_pods
  cmd_stop_nri
  cmd_stop_containerd
  kill_pod_processes
  stop_shims
  unmount_work
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  if [ -f "$WORK/saved-ip_forward" ]; then
    cat "$WORK/saved-ip_forward" >/proc/sys/net/ipv4/ip_forward
  fi
  # libcni's result cache: our networks' entries, and containerd's
  # loopback entries of our sandboxes.
  rm -f /var/lib/cni/results/"$NET_NAME"-*
  ls "$WORK/root/io.containerd.grpc.v1.cri/sandboxes" >>"$WORK/sandbox-ids" 2>/dev/null || true
  for p in $(sort -u "$WORK/sandbox-ids" 2>/dev/null); do
    rm -f "/var/lib/cni/results/cni-loopback-$p-lo"
  done
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  remove_cgroups
  if [ -d "$BPFFS_ROOT" ]; then
    if [ -x "$REPO/bin/podscopectl" ]; then
      "$REPO/bin/podscopectl" cleanup --bpffs-root "$BPFFS_ROOT" --state-dir "$PS_STATE" >"$WORK/log/cleanup.log" 2>&1 \
        || log "podscopectl cleanup failed: $(tail -3 "$WORK/log/cleanup.log")"
    fi
    rm -rf "$BPFFS_ROOT"
  fi
  # Keep the logs of the last run for a person (or CI) to read.
  rm -rf "$REPO/.e2e/last"
  mkdir -p "$REPO/.e2e/last"
  cp -f "$WORK"/log/*.log "$WORK/audit.jsonl" "$PS_STATE/accounting.jsonl" "$REPO/.e2e/last/" 2>/dev/null || true
  verify_clean || rc=1
  if [ $rc = 0 ]; then
    rm -rf "$WORK"
    log "down: nothing left running, mounted or configured (logs of this run in .e2e/last/)"
  fi
  return $rc
}

# Before `up` (hack/e2e.sh, hack/demo.sh): a running environment (a kept
# demo, another e2e) is not ours to stop; the leftovers of a run killed hard
# are removed.
cmd_fresh() {
  if pid_alive "$WORK/containerd.pid"; then
    die "an environment is running in $WORK (a kept demo or another e2e): stop it with hack/e2e-env.sh down (hack/demo.sh stop)"
  fi
  if [ -e "$WORK" ]; then
    log "removing the leftovers of a previous run in $WORK"
    cmd_down
  fi
}

cmd_env() { [ -f "$WORK/env" ] || die "no environment up in $WORK"; cat "$WORK/env"; }
cmd_running() { pid_alive "$WORK/containerd.pid"; }

# Sourced (hack/k8s/node.sh reuses the builders, images and process helpers
# above), it only defines them.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

dispatch "deps up down fresh start-containerd stop-containerd start-nri stop-nri env running cached" "$@"
