#!/usr/bin/env bash
# The upstream Kubernetes NetworkPolicy e2e tests (the `Netpol` specs of
# k8s.io/kubernetes v1.37.2 test/e2e) against the cluster suite's node
# (hack/k8s/node.sh) with podscope deployed: `make netpol-conformance`.
#
#   hack/k8s/netpol.sh build    build/cache e2e.test, ginkgo and the agnhost image
#   hack/k8s/netpol.sh run      node up, podscope deployed, the Netpol set, node down
#   hack/k8s/netpol.sh list     the specs `run` runs and skips (a dry run, no node)
#   hack/k8s/netpol.sh bench    the NetworkPolicy bench rows (make bench-netpol)
#
# Environment of `run`:
#   ENFORCE=0        podscope without NetworkPolicy enforcement (the baseline:
#                    most deny specs must fail; it shows the tests are live)
#   PODSCOPE_NETPOL_OVERLAY  kustomization deployed when enforcing (default
#                    hack/k8s/overlay/networkpolicy)
#   FOCUS=REGEX      the specs to run (default: the whole Netpol set)
#   SUBSET=ci        the CI subset (one spec per rule kind, ~10 min)
#   PROCS=N          ginkgo processes (default 2)
#   GINKGO_TIMEOUT=D ginkgo's limit for the whole run (default 3h; make test: 30m)
#   KEEP=1           leave the node up afterwards
# Results: $NETPOL_OUT (default bench/out/netpol): junit_01.xml, e2e.log,
# summary.txt (one line per spec: PASS/FAIL/SKIP, seconds, name).
#
# Environment of `bench` (results: bench/out/netpol-bench/results.md):
#   NETPOL_BENCH_POLICIES=N  NetworkPolicies selecting the pods (default 50)
#   NETPOL_BENCH_REPS=N      rounds, no policy and podscope alternating (5)
#   NETPOL_BENCH_SECONDS=N   seconds per load mode and round (3)
#   NETPOL_BENCH_LATENCY=N   update-to-enforcement samples, x2 (20)
#   NETPOL_BENCH_KNP=0       skip the kube-network-policies v0.8.0 attempt
#
# e2e.test, ginkgo and agnhost are built from the Go module proxy with the same
# wrapper module as the node's binaries (hack/k8s/build/kube), cached under
# $PODSCOPE_CACHE/netpol-e2e-<version>. agnhost is packed as an OCI image under
# the exact name the v1.37.2 framework asks for and imported into the node's
# containerd (namespace k8s.io): the pods use IfNotPresent, no registry.
#
# One node per machine at a time: serialized on /run/podscope-k8s.lock.
set -euo pipefail

# shellcheck source=hack/k8s/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/node.sh"
log() { echo "netpol: $*" >&2; }
die() { echo "netpol: error: $*" >&2; exit 1; }

NETPOL_DIR=$K8S_CACHE/netpol-e2e-$KUBE_VERSION
# test/utils/image/manifest.go of v1.37.2: configs[Agnhost].
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.66.1
NETPOL_OUT=${NETPOL_OUT:-$REPO/bench/out/netpol}

# What this node cannot run, each with its reason (docs/networkpolicy.md
# lists them): a regex over the spec's full text.
#  - [Feature:SCTPConnectivity]: the kernel has no SCTP (CONFIG_IP_SCTP off,
#    no modules): agnhost cannot listen on SCTP, so these 3 specs cannot pass
#    whatever enforces the policy. (The 2 specs that only *name* SCTP in a
#    policy and probe TCP run.)
NETPOL_SKIP='\[Feature:SCTPConnectivity\]'
NETPOL_FOCUS='Netpol'

# The CI subset: one upstream spec per rule kind (make test runs it).
NETPOL_SUBSET=(
  "NetworkPolicy between server and client should support a 'default-deny-ingress' policy"    # default deny
  "should enforce policy to allow traffic from pods within server namespace based on PodSelector" # podSelector
  "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector" # namespaceSelector
  "should enforce policy based on PodSelector and NamespaceSelector"                            # both
  "should enforce except clause while egress access to server in CIDR block"                    # ipBlock + except
  "should allow ingress access on one named port"                                               # named port
  "should support creating NetworkPolicy API with endport field"                                # endPort (upstream: API only)
  "should deny egress from pods based on PodSelector"                                           # egress
  "NetworkPolicy between server and client using UDP should enforce policy based on Ports"      # UDP
  "should enforce updated policy"                                                               # policy update
)

# --- building -----------------------------------------------------------------

# build_into DEST CMD...: CMD writes $out; DEST appears only when it succeeded.
build_into() {
  local dest=$1; shift
  [ -e "$dest" ] && return
  local out=$dest.tmp.$$
  rm -rf "$out"
  out=$out "$@" || { rm -rf "$out"; return 1; }
  mv -f "$out" "$dest"
}

go_e2e_test() {
  (cd "$REPO/hack/k8s/build/kube" && go test -c -vet=off -trimpath -ldflags "$(kube_ldflags)" -o "$out" k8s.io/kubernetes/test/e2e)
}
go_ginkgo() {
  (cd "$REPO/hack/k8s/build/kube" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out" github.com/onsi/ginkgo/v2/ginkgo)
}
# busybox_rootfs: a new directory (printed) with busybox-static's applets in
# /bin, /etc/passwd and /etc/group (root, nobody) and /tmp: the base of the
# images below (the upstream agnhost image is alpine with bash, nc, curl).
busybox_rootfs() {
  local rootfs a
  [ -x /bin/busybox ] || die "/bin/busybox missing: run hack/install-deps.sh (busybox-static)"
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"
  done
  chmod 1777 "$rootfs/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
  echo "$rootfs"
}

# The agnhost image: /agnhost plus busybox; entrypoint /agnhost.
agnhost_image() {
  local rootfs
  rootfs=$(busybox_rootfs)
  (cd "$REPO/hack/k8s/build/kube" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$rootfs/agnhost" k8s.io/kubernetes/test/images/agnhost)
  oci_layout "$out" "$AGNHOST_IMAGE" '["/agnhost"]' "$rootfs" /bin
  rm -rf "$rootfs"
}

build_netpol() {
  [ -x "$NETPOL_DIR/e2e.test" ] && [ -x "$NETPOL_DIR/ginkgo" ] && [ -f "$NETPOL_DIR/agnhost.tar" ] && return
  log "building e2e.test, ginkgo and agnhost of Kubernetes $KUBE_VERSION (once, ~15 min cold on 2 cores; cached in $NETPOL_DIR)"
  mkdir -p "$NETPOL_DIR"
  export GOFLAGS=-buildvcs=false
  build_into "$NETPOL_DIR/e2e.test" go_e2e_test
  build_into "$NETPOL_DIR/ginkgo" go_ginkgo
  build_into "$NETPOL_DIR/agnhost.tar" agnhost_image
}

# --- the specs --------------------------------------------------------------------

# focus_regex: FOCUS, or the CI subset's spec texts, or the whole set.
focus_regex() {
  if [ -n "${FOCUS:-}" ]; then
    echo "$FOCUS"
  elif [ "${SUBSET:-}" = ci ]; then
    local s re=
    for s in "${NETPOL_SUBSET[@]}"; do re+="${re:+|}$s"; done
    echo "$NETPOL_FOCUS.*($re)"
  else
    echo "$NETPOL_FOCUS"
  fi
}

cmd_list() {
  build_netpol
  local d
  d=$(mktemp -d)
  "$NETPOL_DIR/e2e.test" --ginkgo.dry-run --ginkgo.v --ginkgo.no-color --ginkgo.focus="$(focus_regex)" \
    --ginkgo.skip="$NETPOL_SKIP" --report-dir="$d" >"$d/out" 2>&1 || true
  summarize "$d/junit_01.xml" | sed 's/^PASS /RUN  /'
  rm -rf "$d"
}

# summarize JUNIT: one line per spec (PASS/FAIL/SKIP, seconds, name), then
# the totals; exit 1 if a spec failed or none ran.
summarize() {
  [ -f "$1" ] || { echo "no JUnit report at $1"; return 1; }
  tr '\n' ' ' <"$1" | sed 's/<testcase /\n<testcase /g' | grep '^<testcase ' | grep 'Netpol' | sed -E \
    -e 's/^<testcase name="([^"]*)".*status="([a-z]*)".*time="([0-9.]*)".*/\2 \3 \1/' \
    -e 's/^<testcase name="([^"]*)".*time="([0-9.]*)".*status="([a-z]*)".*/\3 \2 \1/' |
    sed -e 's/&#39;/'"'"'/g' -e 's/&#34;/"/g' -e 's/&amp;/\&/g' -e 's/&lt;/</g' -e 's/&gt;/>/g' |
    awk '{ st=$1; t=$2; $1=""; $2=""; sub(/^  /, "");
           s = (st=="passed") ? "PASS" : (st=="skipped" || st=="pending") ? "SKIP" : "FAIL";
           n[s]++; printf "%s %6.0fs %s\n", s, t, $0 }
         END { printf "total: %d passed, %d failed, %d skipped\n", n["PASS"], n["FAIL"], n["SKIP"];
               exit (n["FAIL"] > 0 || n["PASS"] == 0) }'
}

# --- the run ------------------------------------------------------------------------

BRIDGE_CONFLIST='{
  "cniVersion": "0.3.1",
  "name": "podscope-netpol",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "%s"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
'

# deploy_podscope OVERLAY: the primary CNI's conflist (bridge, as the cluster
# suite's primary CNI writes it), podscope applied, Ready and chained.
deploy_podscope() {
  local overlay=$1 cidr i
  cidr=$(kctl get node "$NODE_NAME" -o jsonpath='{.spec.podCIDR}')
  # shellcheck disable=SC2059
  printf "$BRIDGE_CONFLIST" "$cidr" | in_node sh -c 'cat >/etc/cni/net.d/10-podscope-netpol.conflist.tmp && mv /etc/cni/net.d/10-podscope-netpol.conflist.tmp /etc/cni/net.d/10-podscope-netpol.conflist'
  kctl apply -k "$overlay" >&2
  kctl -n podscope rollout status ds/podscope --timeout=5m >&2 || { kctl -n podscope describe pods >&2 || true; die "podscope not Ready"; }
  for i in $(seq 60); do
    in_node grep -q '"podscope"' /etc/cni/net.d/10-podscope-netpol.conflist && break
    [ "$i" = 60 ] && die "podscope not chained into the conflist within 60s"
    sleep 1
  done
  kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2m >&2
}

cmd_run() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  exec 9>/run/podscope-k8s.lock
  flock -w 3600 9 || die "another cluster suite holds /run/podscope-k8s.lock"
  local t0=$SECONDS overlay procs=${PROCS:-2} rc=0 t1
  if [ "${ENFORCE:-1}" = 0 ]; then
    overlay=$REPO/hack/k8s/overlay
  else
    overlay=${PODSCOPE_NETPOL_OVERLAY:-$REPO/hack/k8s/overlay/networkpolicy}
    [ -f "$overlay/kustomization.yaml" ] || die "no overlay with NetworkPolicy enforcement at $overlay (ENFORCE=0 runs the baseline)"
  fi
  pid_alive "$WORK/holder.pid" && die "a node is up in $WORK (a KEEP=1 run?): stop it with hack/k8s/node.sh down"
  build_netpol
  [ "${PODSCOPE_E2E_NO_BUILD:-}" = 1 ] || (cd "$REPO" && make -s build)
  rm -rf "$NETPOL_OUT"; mkdir -p "$NETPOL_OUT"
  trap 'finish_run' EXIT
  trap 'exit 130' INT TERM
  "$REPO/hack/k8s/node.sh" up
  in_node "$CTRD_DIR/ctr" --address "$CTRD_SOCK" --namespace k8s.io images import "$NETPOL_DIR/agnhost.tar" >/dev/null
  deploy_podscope "$overlay"
  t1=$SECONDS
  log "node up, podscope deployed ($(basename "$overlay")) in $((t1 - t0))s; running $(focus_regex | cut -c1-60)... with $procs processes"
  # In the node's network namespace (the API server listens on its 127.0.0.1).
  nsenter -t "$(holder)" -n -- "$NETPOL_DIR/ginkgo" --procs="$procs" --no-color --timeout="${GINKGO_TIMEOUT:-3h}" \
    --focus="$(focus_regex)" --skip="$NETPOL_SKIP" --output-interceptor-mode=none \
    "$NETPOL_DIR/e2e.test" -- --kubeconfig="$KCFG" --provider=local --report-dir="$NETPOL_OUT" \
    --e2e-output-dir="$NETPOL_OUT" --num-nodes=1 \
    >"$NETPOL_OUT/e2e.log" 2>&1 || rc=$?
  log "specs done in $((SECONDS - t1))s (ginkgo rc=$rc)"
  {
    echo "# hack/k8s/netpol.sh run, $(date -u '+%F %H:%M UTC'), $(git -C "$REPO" describe --always --dirty 2>/dev/null)"
    echo "# overlay $(basename "$overlay") (ENFORCE=${ENFORCE:-1}), focus '$(focus_regex | cut -c1-80)', $procs processes, $((SECONDS - t1)) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
    summarize "$NETPOL_OUT/junit_01.xml" || rc=1
  } >"$NETPOL_OUT/summary.txt"
  cat "$NETPOL_OUT/summary.txt"
  return $rc
}

finish_run() {
  local rc=$?
  if [ "${KEEP:-}" = 1 ]; then
    log "KEEP=1: node left up; source $WORK/env, stop with hack/k8s/node.sh down"
  else
    "$REPO/hack/k8s/node.sh" down || rc=1
  fi
  log "total $SECONDS s (rc=$rc); results in $NETPOL_OUT"
  exit $rc
}

# --- the bench rows (make bench-netpol) ----------------------------------------------

BENCH_IMAGE=localhost/podscope/netpol-bench:e2e
BENCH_NS=netpol-bench
BENCH_POLICIES=${NETPOL_BENCH_POLICIES:-50}
BENCH_REPS=${NETPOL_BENCH_REPS:-5}
BENCH_SECONDS=${NETPOL_BENCH_SECONDS:-3}
BENCH_LATENCY=${NETPOL_BENCH_LATENCY:-20}

# bench_image OUT.tar: busybox + tests/bench's podscope-bench (serve, load, flip).
bench_image() {
  local out=$1 rootfs
  rootfs=$(busybox_rootfs)
  (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$rootfs/bin/podscope-bench" ./tests/bench/cmd/podscope-bench)
  oci_layout "$out" "$BENCH_IMAGE" '["/bin/sh"]' "$rootfs"
  rm -rf "$rootfs"
}

bench_pod() { # name app command
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $BENCH_NS, labels: {app: $2}}
spec:
  nodeName: $NODE_NAME
  terminationGracePeriodSeconds: 1
  containers:
    - {name: main, image: $BENCH_IMAGE, imagePullPolicy: Never, command: ["/bin/sh", "-c", "$3"]}
YAML
}

# netpol_yaml NAME APP TYPE RULE: a NetworkPolicy of the bench namespace
# selecting the pods labelled app=APP, policyTypes [TYPE] (Ingress or
# Egress) with the one rule RULE (a YAML flow mapping).
netpol_yaml() {
  local dir=ingress
  [ "$3" = Egress ] && dir=egress
  cat <<YAML
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: $1, namespace: $BENCH_NS}
spec:
  podSelector: {matchLabels: {app: $2}}
  policyTypes: [$3]
  $dir:
    - $4
YAML
}

# bench_policies: N NetworkPolicies selecting the pods: N-2 ingress ipBlock
# rules on the server that match nobody, one that allows the client, and an
# egress policy on the client (to the server's 5 ports, by endPort).
bench_policies() {
  local i
  for i in $(seq 1 $((BENCH_POLICIES - 2))); do
    netpol_yaml "decoy-$i" bench-server Ingress \
      "{from: [{ipBlock: {cidr: 10.$((200 + i / 250)).$((i % 250)).0/24}}], ports: [{protocol: TCP, port: $((6000 + i))}]}"
  done
  netpol_yaml allow-client bench-server Ingress "{from: [{podSelector: {matchLabels: {app: bench-client}}}]}"
  netpol_yaml client-egress bench-client Egress \
    "{to: [{podSelector: {matchLabels: {app: bench-server}}}], ports: [{protocol: TCP, port: 5201, endPort: 5205}, {protocol: UDP, port: 5201, endPort: 5205}]}"
}

bexec() { kctl -n "$BENCH_NS" exec "$1" -- /bin/podscope-bench "${@:2}"; }

# flip_from POD WANT: until POD's new connections to the server show WANT.
flip_from() { bexec "$1" flip --target "$SERVER_IP:5201" --want "$2" --limit 60s; }

# measure ROW-DIR: BENCH_SECONDS each of TCP_RR, TCP_CRR, UDP from the client.
measure() {
  local d=$1 m
  mkdir -p "$d"
  for m in rr crr udp; do
    bexec client load --mode "$m" --target "$SERVER_IP:5201" --duration "${BENCH_SECONDS}s" >>"$d/$m.jsonl"
  done
}

# latency_sample WANT APPLY-CMD...: seconds from just before the API call to
# the start of the intruder's first connection with the new outcome.
latency_sample() {
  local want=$1 t0 out at; shift
  bexec intruder flip --target "$SERVER_IP:5201" --want "$want" --limit 60s --timeout 50ms >"$WORK/flip.out" 2>&1 &
  local fp=$!
  sleep 1.5
  t0=$(date +%s%N)
  "$@" >/dev/null
  wait $fp || die "flip ($want): $(cat "$WORK/flip.out")"
  at=$(grep -o '"at_unix_nano":[0-9]*' "$WORK/flip.out" | cut -d: -f2)
  awk -v a="$at" -v b="$t0" 'BEGIN { printf "%.4f\n", (a - b) / 1e9 }'
}

# --- kube-network-policies (the comparison of the issue; NETPOL_BENCH_KNP=1) ----------

KNP_VERSION=v0.8.0
KNP_DIR=$K8S_CACHE/kube-network-policies-$KNP_VERSION
KNP_IMAGE=localhost/podscope/kube-network-policies:$KNP_VERSION

# go_knp: $out/netpol (the release's cmd, built from the Go module proxy)
# and $out/install.yaml (its manifest, from the same module).
go_knp() {
  local d
  mkdir -p "$out"
  d=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kube-network-policies@$KNP_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -f "$d/install.yaml" ] || return 1
  cp "$d/install.yaml" "$out/install.yaml"
  (cd /tmp && GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN="$out/bin" go install -trimpath -ldflags '-s -w' "sigs.k8s.io/kube-network-policies/cmd@$KNP_VERSION")
  mv "$out/bin/cmd" "$out/netpol"
  rmdir "$out/bin"
}

# knp_try ROW-DIR: kube-network-policies deployed as its release manifest
# says (image: the binary as /bin/netpol, imported, never pulled; NRI off:
# podscope is the node's NRI plugin). Where it cannot enforce, ROW-DIR/na.txt
# gets its error; it is removed again either way.
knp_try() {
  local d=$1 rootfs i err=
  mkdir -p "$d"
  build_into "$KNP_DIR" go_knp || { echo "build from the Go module proxy failed" >"$d/na.txt"; return; }
  rootfs=$(busybox_rootfs)
  cp "$KNP_DIR/netpol" "$rootfs/bin/netpol"
  oci_layout "$WORK/knp.tar" "$KNP_IMAGE" null "$rootfs"
  rm -rf "$rootfs"
  in_node "$CTRD_DIR/ctr" --address "$CTRD_SOCK" --namespace k8s.io images import "$WORK/knp.tar" >/dev/null
  sed -e "s|image: registry.k8s.io/networking/kube-network-policies:.*|image: $KNP_IMAGE\\n        imagePullPolicy: Never|" \
    -e 's|- --nfqueue-id=98|- --nfqueue-id=98\n        - --disable-nri|' "$KNP_DIR/install.yaml" | kctl apply -f - >&2
  for i in $(seq 90); do
    kctl -n kube-system logs ds/kube-network-policies --all-containers >"$d/log.txt" 2>&1 || true
    kctl -n kube-system logs ds/kube-network-policies --all-containers --previous >>"$d/log.txt" 2>/dev/null || true
    err=$(grep -m1 -iE 'error|fail' "$d/log.txt" || true)
    [ -n "$err" ] && break
    sleep 1
  done
  kctl -n kube-system get pods -l app=kube-network-policies -o wide >>"$d/log.txt" 2>&1 || true
  if [ -n "$err" ]; then
    echo "$err" >"$d/na.txt"
  else
    echo "started without an error in 90 s; this script does not measure it next to podscope (not implemented)" >"$d/na.txt"
  fi
  log "kube-network-policies $KNP_VERSION: $(cat "$d/na.txt")"
  sed -e "s|image: registry.k8s.io/networking/kube-network-policies:.*|image: $KNP_IMAGE|" "$KNP_DIR/install.yaml" |
    kctl delete --ignore-not-found -f - >&2 || true
}

cmd_bench() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  exec 9>/run/podscope-k8s.lock
  flock -w 3600 9 || die "another cluster suite holds /run/podscope-k8s.lock"
  local overlay out=${NETPOL_BENCH_OUT:-$REPO/bench/out/netpol-bench} i t0=$SECONDS load0 knp_row=
  overlay=${PODSCOPE_NETPOL_OVERLAY:-$REPO/hack/k8s/overlay/networkpolicy}
  [ -f "$overlay/kustomization.yaml" ] || die "no overlay with NetworkPolicy enforcement at $overlay"
  pid_alive "$WORK/holder.pid" && die "a node is up in $WORK: stop it with hack/k8s/node.sh down"
  [ "${PODSCOPE_E2E_NO_BUILD:-}" = 1 ] || (cd "$REPO" && make -s build)
  (cd "$REPO" && mkdir -p bench/out && go build -o bench/out/podscope-bench ./tests/bench/cmd/podscope-bench)
  rm -rf "$out"; mkdir -p "$out"
  NETPOL_OUT=$out
  trap 'finish_run' EXIT
  trap 'exit 130' INT TERM
  "$REPO/hack/k8s/node.sh" up
  bench_image "$WORK/netpol-bench.tar"
  in_node "$CTRD_DIR/ctr" --address "$CTRD_SOCK" --namespace k8s.io images import "$WORK/netpol-bench.tar" >/dev/null
  deploy_podscope "$overlay"
  kctl create namespace "$BENCH_NS" >&2
  { bench_pod server bench-server "exec /bin/podscope-bench serve --addr 0.0.0.0:5201"; echo ---
    bench_pod client bench-client "exec sleep 1000000"; echo ---
    bench_pod intruder bench-intruder "exec sleep 1000000"; } | kctl apply -f - >&2
  kctl -n "$BENCH_NS" wait --for=condition=Ready pod --all --timeout=3m >&2
  SERVER_IP=$(kctl -n "$BENCH_NS" get pod server -o jsonpath='{.status.podIP}')
  flip_from client open >/dev/null
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  log "pods up; $BENCH_REPS rounds of (no policy, podscope with $BENCH_POLICIES NetworkPolicies) and no policy again, ${BENCH_SECONDS}s per mode; load $load0"
  # A B A B ... A: each variant round between two baseline rounds, so that
  # drift of the machine cancels in the paired ratios.
  measure "$out/none"
  for i in $(seq "$BENCH_REPS"); do
    bench_policies | kctl apply -f - >/dev/null
    flip_from intruder closed >/dev/null
    flip_from client open >/dev/null
    measure "$out/podscope"
    kctl -n "$BENCH_NS" delete networkpolicy --all >/dev/null
    flip_from intruder open >/dev/null
    measure "$out/none"
    log "round $i/$BENCH_REPS done; load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
  # Update to enforcement: the intruder isolated by the N policies, then a
  # policy allowing it created and deleted, K times each.
  bench_policies | kctl apply -f - >/dev/null
  flip_from intruder closed >/dev/null
  for i in $(seq "$BENCH_LATENCY"); do
    latency_sample open allow_intruder >>"$out/podscope/latency.txt"
    latency_sample closed kctl -n "$BENCH_NS" delete networkpolicy allow-intruder >>"$out/podscope/latency.txt"
  done
  log "latency samples done; load $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ "${NETPOL_BENCH_KNP:-1}" = 1 ]; then
    knp_try "$out/knp"
    knp_row="kube-network-policies $KNP_VERSION, $BENCH_POLICIES NetworkPolicies=knp"
  fi
  {
    echo "# make bench-netpol, $(date -u '+%F %H:%M UTC'), $(git -C "$REPO" describe --always --dirty 2>/dev/null), $BENCH_POLICIES NetworkPolicies, $BENCH_REPS rounds of ${BENCH_SECONDS}s per mode, $BENCH_LATENCY x 2 update samples, load $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end, $((SECONDS - t0)) s"
    echo
    "$REPO/bench/out/podscope-bench" netpol-report --in "$out" "no policy=none" "podscope, $BENCH_POLICIES NetworkPolicies=podscope" ${knp_row:+"$knp_row"}
  } >"$out/results.md"
  cat "$out/results.md"
}
allow_intruder() { netpol_yaml allow-intruder bench-server Ingress "{from: [{podSelector: {matchLabels: {app: bench-intruder}}}]}" | kctl apply -f -; }

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-}" in
  build) build_netpol; echo "$NETPOL_DIR" ;;
  list) cmd_list ;;
  run) cmd_run ;;
  bench) cmd_bench ;;
  *) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
