#!/usr/bin/env bash
# `make demo`: podscope on real pods in two minutes. Starts a containerd
# (CRI + NRI) with podscope chained after the bridge plugin and podscope-nri
# beside it (hack/e2e-env.sh: everything under /run/podscope-e2e, removed
# afterwards), runs a small scene and prints what podscope saw:
#
#   demo/web     an HTTP server on :80, and an "admin" port :8080 that its
#                podscope.io/ingress annotation closes (default deny, tcp/80 allowed)
#   demo/client  calls web:80, then tries web:8080 (denied by web's policy) and
#                web:7777 (denied by the network's default egress policy)
#   demo/writer  writes, renames, chmods and removes files in its own filesystem
#
#   hack/demo.sh          run the scene, print, tear down
#   KEEP=1 hack/demo.sh   leave it running and print how to poke at it
#   hack/demo.sh stop     tear a kept demo down
set -euo pipefail
cd "$(dirname "$0")/.."
export PODSCOPE_E2E_WORK=${PODSCOPE_E2E_WORK:-/run/podscope-e2e}
# The demo's own bpffs root (the end-to-end suite's is /sys/fs/bpf/pstest-e2e;
# a node's real one, /sys/fs/bpf/podscope, is never touched).
export PODSCOPE_E2E_BPFFS_ROOT=${PODSCOPE_E2E_BPFFS_ROOT:-/sys/fs/bpf/podscope-demo}
WORK=$PODSCOPE_E2E_WORK

if [ "${1:-}" = stop ]; then exec hack/e2e-env.sh down; fi
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it starts containerd and loads BPF programs)" >&2; exit 1; }
hack/e2e-env.sh fresh

# Bold headings on a terminal only: no escape codes in a file or a pipe.
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi
# note TEXT: how to read what was just printed.
note() { fold -s -w 76 <<<"$*" | sed 's/ *$//; s/^/   | /'; }

step "dependencies (apt, bpffs) and build"
hack/install-deps.sh
make -s build || echo "demo: make build failed: going on with what was built; the parts missing are said below" >&2
[ -x bin/podscopectl ] || { echo "demo: bin/podscopectl missing: nothing to show" >&2; exit 1; }
if [ "${KEEP:-}" != 1 ]; then trap 'step "teardown"; hack/e2e-env.sh down' EXIT; fi
if hack/e2e-env.sh cached; then
  step "containerd + podscope"
else
  step "containerd + podscope (first run: building containerd, crictl and the CNI plugins once, about 2 min; cached in ${PODSCOPE_CACHE:-/var/cache/podscope})"
fi
hack/e2e-env.sh up
# shellcheck disable=SC1091
. "$WORK/env"
mkdir -p "$WORK/demo"

# pod NAME [ANNOTATIONS-JSON] -> sandbox id
pod() {
  local uid ann=${2:-}
  uid="demo-$1-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  [ -n "$ann" ] || ann='{}'
  cat >"$WORK/demo/pod-$1.json" <<JSON
{"metadata":{"name":"$1","namespace":"demo","uid":"$uid","attempt":0},
 "annotations":$ann,
 "log_directory":"$WORK/podlogs/$uid",
 "linux":{"cgroup_parent":"/$PODSCOPE_E2E_CGROUP_PARENT/pod$uid"}}
JSON
  crictl runp "$WORK/demo/pod-$1.json"
}
# ctr POD-NAME POD-ID CTR-NAME CMD... -> container id (started)
ctr() {
  local pname=$1 pid=$2 name=$3 id; shift 3
  printf '{"metadata":{"name":"%s"},"image":{"image":"%s"},"command":%s,"log_path":"%s.log"}' \
    "$name" "$PODSCOPE_E2E_BUSYBOX_IMAGE" "$(printf '%s\n' "$@" | jq -R . | jq -sc .)" "$name" >"$WORK/demo/ctr-$pname-$name.json"
  id=$(crictl create --no-pull "$pid" "$WORK/demo/ctr-$pname-$name.json" "$WORK/demo/pod-$pname.json")
  crictl start "$id" >/dev/null
  echo "$id"
}
ip_of() { crictl inspectp -o json "$1" | jq -r .status.network.ip; }

step "the scene"
web=$(pod web '{"podscope.io/ingress":"{\"default\":\"deny\",\"rules\":[{\"cidr\":\"10.77.0.0/24\",\"protocol\":\"tcp\",\"ports\":[\"80\"],\"action\":\"allow\"}]}"}')
ctr web "$web" httpd httpd -f -p 80 -h /var/www >/dev/null
ctr web "$web" admin pstraffic tcp-serve 8080 >/dev/null
ctr web "$web" other pstraffic tcp-serve 7777 >/dev/null
WEB=$(ip_of "$web")
echo "demo/web     $WEB  (httpd :80; :8080 and :7777 listening but closed by policy)"

writer=$(pod writer)
ctr writer "$writer" app sh -c 'echo report > /data/report.tmp; mv /data/report.tmp /data/report.txt; chmod 600 /data/report.txt; mkdir /data/cache; echo x > /data/cache/x; rm /data/cache/x; rmdir /data/cache; sleep 3600' >/dev/null
echo "demo/writer  $(ip_of "$writer")  (writes, renames, chmods, removes files under /data)"

client=$(pod client)
cc=$(ctr client "$client" app sleep 3600)
echo "demo/client  $(ip_of "$client")"
for _ in 1 2 3; do
  if crictl exec "$cc" timeout 3 wget -q -O /dev/null "http://$WEB/"; then
    echo "  client -> web:80    allowed, page fetched"; break
  fi
  sleep 1
done
crictl exec "$cc" wget -q -O - "http://$WEB/" | sed 's/^/  web says: /'
for port in 8080 7777; do
  if crictl exec "$cc" pstraffic tcp-connect "$WEB:$port" 2s >/dev/null 2>&1; then
    echo "  client -> web:$port  CONNECTED (policy not enforced?)"
  else
    echo "  client -> web:$port  blocked ($([ $port = 8080 ] && echo "web's ingress annotation" || echo "network default egress policy"))"
  fi
done
sleep 2   # let the audit events reach the log

step "podscopectl status   (summary; the full one lists every pinned program)"
podscopectl status | sed '/^$/q' || true
note "datapath mode: how podscope's TC programs are attached to each pod's host veth, tcx (kernel TCX links) or tc (clsact + cls_bpf on older kernels). Pin layout v1: the version of the layout of podscope's pinned maps under the bpffs root. Audit mode: the kind of BPF program the file-write audit runs as on this kernel."
step "podscopectl pods"
podscopectl pods || true
note "RX/TX: bytes and packets from the pod's side (RX = into the pod), whole Ethernet frames, passed packets only. DROPS EG/IN: packets the policy dropped leaving (egress) / entering (ingress) the pod: the client's egress drops are its tries of web:7777 (the network's egress policy), web's ingress drops are the client's tries of web:8080 (web's ingress annotation)."
step "podscopectl flows --pod demo/client"
podscopectl flows --pod demo/client || true
note "Each pod's policy is enforced at its own veth, and VERDICT is the client's. :7777 is deny: the network's egress policy stops it at the client. :8080 is allow at the client, which may send it; web's ingress annotation drops it at web (web's DROPS IN above; RX 0 here, no reply came back). INITIATOR egress: the client opened the flow."
step "podscopectl policy show demo/web"
podscopectl policy show demo/web || true
note "Per direction the longest PREFIX containing the peer applies; its RULES are tried in order, else its DEFAULT. [from]: the CIDR a rule was written for (rules of wider CIDRs are copied into narrower ones). Egress here is the network's policy, ingress web's annotation."
step "podscopectl audit --pod demo/writer"
podscopectl audit --pod demo/writer || true
note "One line per write operation of the container, PATH as the container sees it. DENIED: the kernel refused the operation (EACCES/EPERM). COUNT: identical operations within one second folded into one line."
echo
echo "Every column and verdict above is explained in docs/podscopectl.md."

if [ "${KEEP:-}" = 1 ]; then
  cat <<TXT

The demo keeps running. Poke at it:
  . $WORK/env                       # puts crictl, ctr and podscopectl (set up for this env) on PATH
  crictl pods; crictl ps
  crictl exec $cc wget -q -O - http://$WEB/
  podscopectl pods -o json
  podscopectl audit --follow
  podscopectl status
Logs: $WORK/log/ (containerd.log, podscope-nri.log), audit log: $WORK/audit.jsonl
Stop it:  hack/demo.sh stop
TXT
fi
