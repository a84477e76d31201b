#!/usr/bin/env bash
# podscope end to end on a kind cluster, the way a user installs it:
#
#   1. create a kind cluster (hack/kind/cluster.yaml: kindnet, containerd
#      with NRI on /var/run/nri/nri.sock, a control plane and a worker);
#   2. build the image from the Dockerfile and `kind load` it (no registry);
#   3. `kubectl apply -k deploy/` and wait for the DaemonSet on every node;
#   4. check podscope is chained into kindnet's conflist on the nodes;
#   5. run two pods that talk (busybox httpd + a wget loop that also tries
#      169.254.169.254, which the ConfigMap's default policy denies) and one
#      that writes files, on the worker;
#   6. assert with podscopectl, via `kubectl exec` into the DaemonSet pod on
#      the worker: the pods are attached, their counters move, the denied
#      destination shows as a denied flow and egress drops, the writer's file
#      writes are in the audit log; and the metrics endpoint serves them;
#   7. uninstall as docs/install-cluster.md says (delete deploy/, apply deploy/cleanup/)
#      and check each node's conflist is byte for byte what kindnet wrote and
#      the plugin binary is gone;
#   8. delete the cluster (KEEP_CLUSTER=1 keeps it for a look).
#
# Needs docker (or a docker-compatible CLI that kind supports), kind >= 0.20,
# kubectl and jq, and network access for the base images (golang,
# distroless, busybox, kind's node image). It cannot run in podscope's CI,
# which has no Docker engine and no registry: it is checked there only by
# reading and by the shellcheck linter.
# jq filters and the pods' shell commands use $ on purpose:
# shellcheck disable=SC2016
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-podscope-e2e}
IMAGE=podscope:dev # the image deploy/kustomization.yaml names
BUSYBOX=${BUSYBOX_IMAGE:-docker.io/library/busybox:1.36}
NS=podscope-e2e
TIMEOUT=${E2E_TIMEOUT:-180}
DENIED=169.254.169.254 # deploy/configmap.yaml: egress deny 169.254.169.254/32
KCTX=kind-$CLUSTER
WORK=$(mktemp -d)

log() { echo "kind-e2e: $*" >&2; }
die() {
  echo "kind-e2e: FAIL: $*" >&2
  exit 1
}
need() { command -v "$1" >/dev/null || die "$1 not found on PATH (needs: docker, kind, kubectl, jq)"; }

for t in docker kind kubectl jq; do need "$t"; done

k() { kubectl --context "$KCTX" "$@"; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ] && k get ns podscope >/dev/null 2>&1; then
    log "diagnostics:"
    k -n podscope get pods -o wide >&2 || true
    k -n podscope logs ds/podscope -c install --tail=50 >&2 || true
    k -n podscope logs ds/podscope -c podscope-nri --tail=100 >&2 || true
    k -n podscope logs ds/podscope -c cni-watch --tail=50 >&2 || true
    k -n "$NS" get pods -o wide >&2 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# retry SECONDS DESCRIPTION CMD...: run CMD until it succeeds or time is up.
retry() {
  local secs=$1 what=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || die "$what (not true after ${secs}s)"
    sleep 3
  done
  log "ok: $what"
}

# --- 1. cluster -------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named $CLUSTER exists already; delete it or set KIND_CLUSTER"
fi
log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --config "$REPO/hack/kind/cluster.yaml" --wait "${TIMEOUT}s"
mapfile -t NODES < <(kind get nodes --name "$CLUSTER")
WORKER=$(k get nodes -l podscope.io/e2e=workload -o jsonpath='{.items[0].metadata.name}')
[ -n "$WORKER" ] || die "no worker node labelled podscope.io/e2e=workload"

# What kindnet wrote, per node, before podscope touches it.
for n in "${NODES[@]}"; do
  retry 60 "kindnet conflist on $n" docker exec "$n" test -s /etc/cni/net.d/10-kindnet.conflist
  docker exec "$n" cat /etc/cni/net.d/10-kindnet.conflist >"$WORK/$n.conflist"
  docker exec "$n" test -S /var/run/nri/nri.sock || die "$n: containerd has no NRI socket (is the containerdConfigPatches entry applied?)"
done

# --- 2. image ---------------------------------------------------------------
log "building $IMAGE"
docker build -t "$IMAGE" --build-arg VERSION="$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo e2e)" "$REPO"
kind load docker-image "$IMAGE" --name "$CLUSTER"
docker pull -q "$BUSYBOX" >/dev/null
kind load docker-image "$BUSYBOX" --name "$CLUSTER"

# --- 3. install ---------------------------------------------------------------
log "kubectl apply -k deploy/"
k apply -k "$REPO/deploy"
k -n podscope rollout status ds/podscope --timeout="${TIMEOUT}s"
ds_ready() {
  local want ready
  want=${#NODES[@]}
  ready=$(k -n podscope get ds podscope -o jsonpath='{.status.numberReady}')
  [ "${ready:-0}" -eq "$want" ]
}
retry "$TIMEOUT" "podscope Ready on all ${#NODES[@]} nodes (control plane included)" ds_ready

# --- 4. chained ---------------------------------------------------------------
chained() { # node
  docker exec "$1" cat /etc/cni/net.d/10-kindnet.conflist |
    jq -e '(.plugins[-1].type == "podscope") and ([.plugins[] | select(.type == "podscope")] | length == 1)' >/dev/null
}
for n in "${NODES[@]}"; do
  retry 60 "podscope chained once into $n's kindnet conflist" chained "$n"
  docker exec "$n" test -x /opt/cni/bin/podscope || die "$n: /opt/cni/bin/podscope missing"
done

# --- 5. workload ----------------------------------------------------------------
log "starting workload pods on $WORKER"
k create namespace "$NS"
pod() { # name, shell command, [env SERVER_IP]
  cat <<EOF | k apply -f -
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
spec:
  nodeSelector: {podscope.io/e2e: workload}
  terminationGracePeriodSeconds: 1
  containers:
    - name: $1
      image: $BUSYBOX
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "$2"]
      env: [{name: SERVER_IP, value: "${3:-}"}]
EOF
}
pod server 'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www'
k -n "$NS" wait --for=condition=Ready pod/server --timeout="${TIMEOUT}s"
SERVER_IP=$(k -n "$NS" get pod server -o jsonpath='{.status.podIP}')
[ -n "$SERVER_IP" ] || die "server has no pod IP"
pod client "while true; do wget -q -T 2 -O /dev/null http://\$SERVER_IP:8080/; wget -q -T 1 -O /dev/null http://$DENIED/ 2>/dev/null; sleep 1; done" "$SERVER_IP"
pod writer 'i=0; while true; do echo $i > /tmp/podscope-e2e.txt; mkdir /tmp/podscope-e2e.d; rmdir /tmp/podscope-e2e.d; i=$((i+1)); sleep 1; done'
k -n "$NS" wait --for=condition=Ready pod/client pod/writer --timeout="${TIMEOUT}s"

# --- 6. assertions, through podscopectl in the DaemonSet pod on the worker -----
DSPOD=$(k -n podscope get pod -l app.kubernetes.io/name=podscope --field-selector "spec.nodeName=$WORKER" -o jsonpath='{.items[0].metadata.name}')
[ -n "$DSPOD" ] || die "no podscope pod on $WORKER"
ctl() { k -n podscope exec "$DSPOD" -c podscope-nri -- podscopectl "$@"; }
# jq over podscopectl -o json, whether it prints one array or JSON lines.
ctlq() { # jq-filter, podscopectl args...
  local filter=$1
  shift
  ctl "$@" -o json | jq -s -e --arg ns "$NS" --arg denied "$DENIED" "flatten | $filter" >/dev/null
}

ctl status || true # for the log
retry 60 "podscopectl status: NRI socket present, bpffs mounted" \
  ctlq '.[0] | .nriSocketPresent and .bpffsMounted' status
retry 60 "server, client and writer attached" \
  ctlq '(["server", "client", "writer"] - [.[] | select(.namespace == $ns) | .name]) | length == 0' pods
retry 90 "client counters move both ways" \
  ctlq '[.[] | select(.namespace == $ns and .name == "client")][0].counters | (.txBytes > 0 and .rxBytes > 0 and .txPackets > 0)' pods
retry 90 "server received the client's requests" \
  ctlq '[.[] | select(.namespace == $ns and .name == "server")][0].counters | (.rxPackets > 0 and .txBytes > 0)' pods
retry 90 "client egress to $DENIED dropped by the default policy" \
  ctlq '[.[] | select(.namespace == $ns and .name == "client")][0].counters.dropsEgress > 0' pods
retry 90 "a denied flow to $DENIED in the client's flows" \
  ctlq '[.[].flows[]? | select((.remote | startswith($denied + ":")) and .verdict == "deny")] | length > 0' flows --pod "$NS/client"
retry 90 "an allowed flow to the server in the client's flows" \
  ctlq '[.[].flows[]? | select(.verdict == "allow" and (.remote | endswith(":8080")))] | length > 0' flows --pod "$NS/client"
retry 90 "the writer's writes to /tmp/podscope-e2e.txt audited" \
  ctlq 'map(select(.namespace == $ns and .pod == "writer" and .container == "writer" and .path == "/tmp/podscope-e2e.txt" and (.op == "open_write" or .op == "create" or .op == "truncate"))) | length > 0' audit --pod "$NS/writer"
retry 90 "the writer's mkdir/rmdir audited" \
  ctlq 'map(select(.pod == "writer" and (.op == "mkdir" or .op == "rmdir") and .path == "/tmp/podscope-e2e.d")) | length > 0' audit --pod "$NS/writer"
retry 60 "audit events carry the writer's identity (pod UID, container ID, cgroup)" \
  ctlq 'map(select(.namespace == $ns and .pod == "writer")) | length > 0 and all(.podUID != "" and .containerID != "" and .cgroupID > 0)' audit --pod "$NS/writer"

# Metrics on the node's address (hostNetwork, --metrics-addr=$(POD_IP):9810).
NODE_IP=$(k get node "$WORKER" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
metrics() { docker exec "$WORKER" curl -fsS "http://$NODE_IP:9810/metrics" >"$WORK/metrics"; }
retry 60 "metrics served on $NODE_IP:9810" metrics
grep -q "^podscope_network_transmit_bytes_total{.*pod=\"client\"" "$WORK/metrics" ||
  die "no podscope_network_transmit_bytes_total for the client in /metrics"
grep -q '^podscope_network_policy_drops_total{.*direction="egress"' "$WORK/metrics" ||
  die "no egress podscope_network_policy_drops_total in /metrics"
log "ok: metrics carry the client's counters and drops"

# --- 7. uninstall ---------------------------------------------------------------
log "uninstalling: kubectl delete -k deploy/, then deploy/cleanup/"
k delete namespace "$NS" --wait=true --timeout="${TIMEOUT}s"
k delete -k "$REPO/deploy" --wait=true --timeout="${TIMEOUT}s"
# Deleting the DaemonSet leaves podscope chained and working on the nodes.
for n in "${NODES[@]}"; do chained "$n" || die "$n: podscope unchained by kubectl delete alone"; done
k apply -k "$REPO/deploy/cleanup"
k -n podscope-cleanup rollout status ds/podscope-cleanup --timeout="${TIMEOUT}s"
for n in "${NODES[@]}"; do
  docker exec "$n" cat /etc/cni/net.d/10-kindnet.conflist >"$WORK/$n.after"
  cmp -s "$WORK/$n.conflist" "$WORK/$n.after" || {
    diff -u "$WORK/$n.conflist" "$WORK/$n.after" >&2 || true
    die "$n: conflist not restored byte for byte"
  }
  if docker exec "$n" test -e /opt/cni/bin/podscope; then die "$n: /opt/cni/bin/podscope left behind"; fi
  if docker exec "$n" test -e /sys/fs/bpf/podscope; then die "$n: pins left under /sys/fs/bpf/podscope"; fi
done
log "ok: every node back to what kindnet wrote, no plugin binary, no pins"
k delete -k "$REPO/deploy/cleanup" --wait=true --timeout="${TIMEOUT}s"

log "PASS"
