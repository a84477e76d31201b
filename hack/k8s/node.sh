#!/usr/bin/env bash
# A single-node Kubernetes v1.37.2 built from source, for podscope's cluster
# suite (tests/e2e-k8s, `make e2e-k8s`): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd (with NRI), kubelet and
# kube-proxy, all on this machine.
#
#   hack/k8s/node.sh deps      build/cache what the node needs (hack/k8s/build.sh,
#                              hack/e2e-env.sh's containerd, CNI plugins, images)
#   hack/k8s/node.sh up        deps + start the node; prints where its env is
#   hack/k8s/node.sh down      stop everything `up` started, undo every host change,
#                              verify the host is as it was (exit 1 if not)
#   hack/k8s/node.sh env       print the environment (source-able) of a running node
#   hack/k8s/node.sh running   exit 0 if a node is up
#   hack/k8s/node.sh exec CMD  run CMD in the node's network namespace (kubectl
#                              finds the node's kubeconfig there: source env first)
#
# Isolation (why the host is untouched): every node process runs in one mount
# and one network namespace of their own (hack/k8s/nsinit.sh holds them). The
# node has its own /etc, /opt and /var (overlays: /etc/cni/net.d,
# /opt/cni/bin, /var/lib/kubelet, ... exist only there, at the paths deploy/
# uses on a real node), its own /run, its own bpffs at /sys/fs/bpf, its own
# address (10.79.0.2 on node0), bridge, ip_forward and netfilter rules
# (kube-proxy's). The API server listens on 127.0.0.1:6443 inside that
# namespace: clients (kubectl, the suite) run there too (`exec`).
# What is shared with the host, and undone by `down`: kubelet's cgroups
# (under /podscope-k8s in every hierarchy), the global sysctls kubelet sets
# (kernel.panic, kernel.panic_on_oops, vm.overcommit_memory), and processes.
# `down` checks the host's iptables-save, ip6tables-save, nft list ruleset and
# net.ipv4.ip_forward are what they were before `up`.
#
# Work dir: $PODSCOPE_K8S_WORK (default /run/podscope-k8s); tools are cached
# under $PODSCOPE_CACHE by version. One node at a time per work dir; it runs
# alongside the containerd e2e environment (/run/podscope-e2e).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
K8S_WORK=${PODSCOPE_K8S_WORK:-/run/podscope-k8s}
# shellcheck source=hack/e2e-env.sh
. "$REPO/hack/e2e-env.sh"
# shellcheck source=hack/k8s/build.sh
. "$REPO/hack/k8s/build.sh"
# shellcheck source=hack/k8s/images.sh
. "$REPO/hack/k8s/images.sh"
# From here on WORK is the node's (e2e-env.sh's helpers use it).
WORK=$K8S_WORK
log() { echo "k8s-node: $*" >&2; }
die() { echo "k8s-node: error: $*" >&2; exit 1; }

NODE_NAME=podscope-node
NODE_IP=10.79.0.2
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
API=https://127.0.0.1:6443
CGROUP_ROOT=podscope-k8s
CTRD_SOCK=$WORK/containerd.sock
PKI=$WORK/pki
KCFG=$WORK/kubeconfig
KERNEL_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward)

holder() { cat "$WORK/holder.pid" 2>/dev/null; }
# in_node CMD...: CMD in the node's mount and network namespaces.
in_node() { nsenter -t "$(holder)" -m -n -- "$@"; }

# --- building -----------------------------------------------------------------

cmd_deps() {
  command -v go >/dev/null || die "go not found"
  for t in nsenter unshare openssl iptables-save ip6tables-save nft; do
    command -v $t >/dev/null || die "$t not found: run hack/install-deps.sh"
  done
  mkdir -p "$CACHE"
  k8s_build_all
  build_containerd
  build_crictl
  build_cni_plugins
  build_images
}

# --- certificates and configs ------------------------------------------------------

# cert NAME CN [O] [SANS]: an EC key and a certificate signed by the node's CA.
cert() {
  local n=$1 cn=$2 o=${3:-} sans=${4:-} subj ext
  subj="/CN=$cn${o:+/O=$o}"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$n.key" 2>/dev/null
  openssl req -new -key "$PKI/$n.key" -subj "$subj" -out "$PKI/$n.csr" 2>/dev/null
  ext="$PKI/$n.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl x509 -req -in "$PKI/$n.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 7 -sha256 -extfile "$ext" -out "$PKI/$n.crt" 2>/dev/null
  rm -f "$PKI/$n.csr" "$ext"
}

kubeconfig() { # file user cert
  cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: podscope-k8s
    cluster: {server: $API, certificate-authority: $PKI/ca.crt}
users:
  - name: $2
    user: {client-certificate: $PKI/$3.crt, client-key: $PKI/$3.key}
contexts:
  - name: podscope-k8s
    context: {cluster: podscope-k8s, user: $2}
current-context: podscope-k8s
YAML
}

write_pki() {
  mkdir -p "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=podscope-k8s-ca" -days 7 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kube-proxy system:kube-proxy
  cert kubelet "system:node:$NODE_NAME" system:nodes
  cert kubelet-serving "$NODE_NAME" "" "DNS:$NODE_NAME,IP:$NODE_IP"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
  openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig "$KCFG" kubernetes-admin admin
  kubeconfig "$WORK/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  kubeconfig "$WORK/scheduler.kubeconfig" system:kube-scheduler scheduler
  kubeconfig "$WORK/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  kubeconfig "$WORK/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
}

write_node_configs() {
  local runc_bin=$RUNC_DIR/runc
  mkdir -p "$WORK"/{etcd,root,state,s,cdi,opt,log,bin,runc,kubelet}
  # Run in the node's mount namespace: /etc/cni, /opt/cni and /var/run/nri
  # are the node's own (overlays), where deploy/ expects them on a real node.
  containerd_config "Written by hack/k8s/node.sh: the node's containerd." "$runc_bin" \
    /opt/cni/bin /etc/cni/net.d /var/run/nri/nri.sock >"$WORK/containerd.toml"
  cat >"$WORK/kubelet.yaml" <<YAML
# Written by hack/k8s/node.sh: what works on a hybrid-cgroup host without
# systemd, with nothing of the host's own cgroups or netfilter touched.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
# Pods under /$CGROUP_ROOT/kubepods, not /kubepods: down removes exactly it.
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%", imagefs.inodesFree: "1%"}
# The images are imported, not pulled: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
makeIPTablesUtilChains: false
serializeImagePulls: false
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
syncFrequency: 10s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
YAML
  cat >"$WORK/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $WORK/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $CLUSTER_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# nf_conntrack_max is global to the host: leave it (and the timeouts) alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# --- processes ----------------------------------------------------------------------

# start NAME CMD...: CMD in the node's namespaces, in a session of its own
# (a ^C reaches this script, not the node), its PID in WORK/NAME.pid.
start() {
  local name=$1; shift
  pid_alive "$WORK/$name.pid" && return 0
  # 9>&-: not the caller's /run/podscope-k8s.lock (a node left up must not
  # hold it: `flock ... node.sh down` would wait for itself).
  setsid nsenter -t "$(holder)" -m -n -- bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$WORK/$name.pid" "$@" \
    </dev/null >>"$WORK/log/$name.log" 2>&1 9>&- &
  local i
  for i in $(seq 50); do [ -s "$WORK/$name.pid" ] && return 0; sleep 0.1; done
  die "$name did not start"
}

# wait_until SECONDS WHAT NAME CMD...: run CMD until it succeeds; NAME's
# process must stay alive meanwhile.
wait_until() {
  local secs=$1 what=$2 name=$3 end; shift 3
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$WORK/$name.pid" || die "$name exited: $(tail -5 "$WORK/log/$name.log")"
    [ $SECONDS -lt $end ] || die "$what: not within ${secs}s (see $WORK/log/$name.log)"
    sleep 0.2
  done
}

kctl() { in_node "$KUBE_DIR/kubectl" --kubeconfig "$KCFG" "$@"; }
node_has_cidr() { kctl get node "$NODE_NAME" -o jsonpath='{.spec.podCIDR}' | grep -q /; }

start_node() {
  start etcd "$ETCD_DIR/etcd" --name node --data-dir "$WORK/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster node=http://127.0.0.1:2380 --log-level warn --quota-backend-bytes 1073741824
  start kube-apiserver "$KUBE_DIR/kube-apiserver" --bind-address=127.0.0.1 --secure-port=6443 \
    --advertise-address="$NODE_IP" \
    --etcd-servers=http://127.0.0.1:2379 --service-cluster-ip-range="$SERVICE_CIDR" \
    --endpoint-reconciler-type=none --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --enable-priority-and-fairness=false --profiling=false --v=1
  wait_until 90 "kube-apiserver ready" kube-apiserver kctl get --raw /readyz
  start kube-controller-manager "$KUBE_DIR/kube-controller-manager" --kubeconfig="$WORK/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$WORK/controller-manager.kubeconfig" --authorization-kubeconfig="$WORK/controller-manager.kubeconfig" \
    --controllers='*' --allocate-node-cidrs --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="$SERVICE_CIDR" --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" --use-service-account-credentials \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
  start kube-scheduler "$KUBE_DIR/kube-scheduler" --kubeconfig="$WORK/scheduler.kubeconfig" \
    --authentication-kubeconfig="$WORK/scheduler.kubeconfig" --authorization-kubeconfig="$WORK/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
  start containerd "$CTRD_DIR/containerd" --config "$WORK/containerd.toml" --log-level info
  wait_until 60 "containerd CRI ready" containerd in_node "$CRICTL_DIR/crictl" --runtime-endpoint "unix://$CTRD_SOCK" info
  local c="$CTRD_DIR/ctr --address $CTRD_SOCK --namespace k8s.io" img
  for img in "$IMG_DIR/pause.tar" "$IMG_DIR/busybox.tar" "$WORK/images/podscope.tar" "$WORK/images/podscope-next.tar"; do
    in_node $c images import "$img" >/dev/null
  done
  # deploy/cleanup's "done" container: what a node image carries.
  in_node $c images tag --force "$PAUSE_IMAGE" registry.k8s.io/pause:3.10 >/dev/null
  # The node's plugins, where a node image has them (kind's has these).
  in_node install -d /opt/cni/bin /etc/cni/net.d
  in_node cp -f "$CNIP_DIR"/{bridge,host-local,loopback,portmap} /opt/cni/bin/
  for s in "${KERNEL_SYSCTLS[@]}"; do sysctl -n "$s"; done >"$WORK/sysctls.before-kubelet"
  start kubelet "$KUBE_DIR/kubelet" --config="$WORK/kubelet.yaml" --kubeconfig="$WORK/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir=/var/lib/kubelet --v=1
  wait_until 90 "node $NODE_NAME registered with a podCIDR" kubelet node_has_cidr
  start kube-proxy "$KUBE_DIR/kube-proxy" --config="$WORK/kube-proxy.yaml" --v=1
  wait_until 60 "kube-proxy healthy" kube-proxy in_node bash -c "exec 3<>/dev/tcp/127.0.0.1/10256"
  wait_until 60 "namespace default has its service account" kube-controller-manager kctl -n default get serviceaccount default
}

write_env() {
  cat >"$WORK/bin/kubectl" <<SH
#!/bin/sh
# kubectl of the podscope test node, run in its network namespace.
exec nsenter -t $(holder) -n -- $KUBE_DIR/kubectl --kubeconfig $KCFG "\$@"
SH
  printf '#!/bin/sh\n# CMD in the test node'"'"'s network namespace.\nexec nsenter -t %s -n -- "$@"\n' "$(holder)" >"$WORK/bin/node-exec"
  printf '#!/bin/sh\nexec nsenter -t %s -m -n -- %s --runtime-endpoint unix://%s "$@"\n' "$(holder)" "$CRICTL_DIR/crictl" "$CTRD_SOCK" >"$WORK/bin/crictl"
  chmod +x "$WORK/bin/"*
  cat >"$WORK/env" <<ENV
# source me: the running podscope test node (hack/k8s/node.sh)
export PODSCOPE_K8S_WORK='$WORK'
export PODSCOPE_K8S_HOLDER='$(holder)'
export KUBECONFIG='$KCFG'
export PODSCOPE_K8S_KUBECTL='$KUBE_DIR/kubectl'
export PODSCOPE_K8S_OVERLAY='$REPO/hack/k8s/overlay/networkpolicy'
export PODSCOPE_K8S_CLEANUP_OVERLAY='$REPO/hack/k8s/overlay/cleanup'
export PODSCOPE_K8S_IMAGE='$PODSCOPE_IMAGE'
export PODSCOPE_K8S_IMAGE_NEXT='$PODSCOPE_IMAGE_NEXT'
export PODSCOPE_K8S_TEST_IMAGE='$BUSYBOX_IMAGE'
export PODSCOPE_K8S_PRIMARY_CNI=bridge
export PATH="$WORK/bin:\$PATH"
ENV
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local t0=$SECONDS
  pid_alive "$WORK/holder.pid" && die "a node is already up in $WORK: hack/k8s/node.sh down first"
  [ -e "$WORK" ] && { log "removing the leftovers of a previous node in $WORK"; cmd_down || die "could not clean up $WORK"; }
  cmd_deps
  mkdir -p "$WORK/log" "$WORK/host-before"
  snapshot_host "$WORK/host-before"
  build_podscope_images "$WORK/images"
  write_pki
  write_node_configs
  setsid unshare --mount --net -- "$REPO/hack/k8s/nsinit.sh" "$WORK" "$NODE_IP/24" \
    </dev/null >>"$WORK/log/nsinit.log" 2>&1 9>&- &
  local i
  for i in $(seq 50); do pid_alive "$WORK/holder.pid" && break; sleep 0.1; done
  pid_alive "$WORK/holder.pid" || die "namespaces not set up: $(cat "$WORK/log/nsinit.log")"
  # kubelet's cgroup root must exist, in every hierarchy.
  for c in /sys/fs/cgroup/*; do
    if mountpoint -q "$c"; then mkdir -p "$c/$CGROUP_ROOT"; fi
  done
  # cgroup v1 cpuset: a new cgroup starts with no CPUs and no memory nodes.
  if [ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.mems"
  fi
  start_node
  write_env
  log "up in $((SECONDS - t0))s: source $WORK/env (kubectl, crictl, node-exec in $WORK/bin)"
}

# --- teardown -------------------------------------------------------------------

# snapshot_host DIR: what `down` must find unchanged. Counters are not state.
snapshot_host() {
  local d=$1 s
  iptables-save 2>&1 | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' >"$d/iptables" || true
  ip6tables-save 2>&1 | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' >"$d/ip6tables" || true
  nft list ruleset 2>&1 | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/' >"$d/nft" || true
  for s in "${KERNEL_SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$d/sysctls"
}

# node_pids: every process in the node's mount namespace (containerd's shims,
# the pods' processes, anything started there), by namespace identity.
node_pids() {
  local ns p
  ns=/proc/$(holder)/ns/mnt
  [ -e "$ns" ] || return 0
  # -ef: same namespace (device and inode); a builtin, no fork per process.
  for p in /proc/[0-9]*; do
    [ "$p/ns/mnt" -ef "$ns" ] 2>/dev/null && echo "${p#/proc/}"
  done
  return 0
}

remove_pods() {
  local p cr
  pid_alive "$WORK/containerd.pid" || return 0
  cr="$CRICTL_DIR/crictl --runtime-endpoint unix://$CTRD_SOCK --timeout 20s"
  for p in $(in_node $cr pods -q 2>/dev/null); do
    in_node $cr stopp "$p" >/dev/null 2>&1 || log "stopp $p failed"
    in_node $cr rmp -f "$p" >/dev/null 2>&1 || log "rmp $p failed"
  done
}

cmd_down() {
  local rc=0 n p c s left=()
  [ -d "$WORK" ] || { log "nothing in $WORK"; return 0; }
  # Control loops first (nothing restarts what is being removed), then the
  # pods (CNI DEL runs: podscope detaches), then the runtime.
  for n in kube-proxy kubelet kube-scheduler kube-controller-manager; do stop_pid "$WORK/$n.pid"; done
  if pid_alive "$WORK/holder.pid"; then remove_pods; fi
  for n in containerd kube-apiserver etcd; do stop_pid "$WORK/$n.pid"; done
  # Whatever is left in the namespaces (shims, pod processes), then the holder:
  # with the last process the namespaces go, and with them every mount,
  # interface, route and rule in them.
  if pid_alive "$WORK/holder.pid"; then
    for p in $(node_pids); do
      [ "$p" = "$(holder)" ] && continue
      log "killing leftover pid $p ($( { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | cut -c1-80))"
      kill -9 "$p" 2>/dev/null || true
    done
    sleep 0.3
    stop_pid "$WORK/holder.pid"
  fi
  # Processes of pods whose shim is gone live on in kubelet's cgroups.
  c=/sys/fs/cgroup/unified/$CGROUP_ROOT
  if [ -f "$c/cgroup.kill" ] && [ -n "$(find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null)" ]; then
    log "killing processes left in $c"; echo 1 >"$c/cgroup.kill" || true; sleep 0.5
  fi
  for c in /sys/fs/cgroup/*; do
    [ -d "$c/$CGROUP_ROOT" ] || continue
    find "$c/$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # The global sysctls kubelet sets, back to what they were.
  if [ -f "$WORK/host-before/sysctls" ]; then
    while IFS== read -r s p; do
      [ "$(sysctl -n "$s")" = "$p" ] || sysctl -qw "$s=$p" || { log "could not restore $s=$p"; rc=1; }
    done <"$WORK/host-before/sysctls"
  fi
  # Verify.
  for c in /sys/fs/cgroup/*; do
    [ -d "$c/$CGROUP_ROOT" ] && left+=("cgroup $c/$CGROUP_ROOT")
  done
  for n in holder etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    pid_alive "$WORK/$n.pid" && left+=("$n pid $(cat "$WORK/$n.pid")")
  done
  # The patterns are spelled so that grep's own command line does not match.
  for p in $(grep -lsa -e "${CTRD_SOCK%?}[${CTRD_SOCK: -1}]" -e "$WORK/containerd.tom[l]" /proc/[0-9]*/cmdline); do
    p=${p#/proc/}; p=${p%/cmdline}
    left+=("pid $p naming $WORK")
  done
  grep -q " $WORK[/ ]" /proc/self/mountinfo && left+=("mounts under $WORK")
  if [ -d "$WORK/host-before" ]; then
    mkdir -p "$WORK/host-after"
    snapshot_host "$WORK/host-after"
    for n in iptables ip6tables nft sysctls; do
      if ! cmp -s "$WORK/host-before/$n" "$WORK/host-after/$n"; then
        diff -u "$WORK/host-before/$n" "$WORK/host-after/$n" >&2 || true
        left+=("host $n changed")
      fi
    done
  fi
  # Keep the logs of the last run for a person (or CI) to read.
  rm -rf "$REPO/.e2e-k8s/last"
  mkdir -p "$REPO/.e2e-k8s/last"
  cp -f "$WORK"/log/*.log "$REPO/.e2e-k8s/last/" 2>/dev/null || true
  if [ ${#left[@]} -gt 0 ]; then
    log "down: LEFT BEHIND: ${left[*]}"
    return 1
  fi
  rm -rf "$WORK"
  log "down: nothing left running, mounted or changed (logs in .e2e-k8s/last/)"
  return $rc
}

cmd_env() { [ -f "$WORK/env" ] || die "no node up in $WORK"; cat "$WORK/env"; }
cmd_running() { pid_alive "$WORK/holder.pid"; }
cmd_exec() { pid_alive "$WORK/holder.pid" || die "no node up"; nsenter -t "$(holder)" -n -- "$@"; }

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

dispatch "deps up down env running exec" "$@"
