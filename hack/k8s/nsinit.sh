#!/usr/bin/env bash
# PID 1 of nothing, holder of the test node's namespaces: hack/k8s/node.sh
# starts it as `unshare --mount --net -- hack/k8s/nsinit.sh WORK NODE_IP/LEN`
# and runs every node process (etcd, control plane, containerd, kubelet,
# kube-proxy, and so the pods) inside its mount and network namespaces with
# nsenter. When it and they are gone, both namespaces and everything mounted
# or configured in them are gone with them.
#
# Mount namespace (private to the host: nothing mounted here propagates out):
#   /etc /opt /var   overlays of the host's, writes go to WORK/ovl/*: the
#                    node's /etc/cni/net.d, /opt/cni/bin, /var/lib/kubelet,
#                    /var/lib/cni, /var/lib/podscope, /var/log/pods, ...
#                    exist only here, at the paths a real node has them
#   /run             an empty tmpfs (/run/nri, /run/netns, /run/xtables.lock)
#                    with WORK bound back at its own path
#   /sys/fs/bpf      a bpffs of its own: the pins of podscope on this node
#   /                rshared inside, as kubelet's Bidirectional propagation needs
# Network namespace: lo, and the node's address on node0 (the
# node IP must not be loopback; a veth whose peer stays here) with the default route; pods' bridge, veths,
# kube-proxy's rules, ip_forward and bridge netfilter are all per namespace.
set -euo pipefail
WORK=$1 NODE_CIDR=$2

# unshare made every mount private in this namespace: arrange, then share.
for d in etc opt var; do
  mkdir -p "$WORK/ovl/$d/upper" "$WORK/ovl/$d/work"
  mount -t overlay "k8s-$d" -o "lowerdir=/$d,upperdir=$WORK/ovl/$d/upper,workdir=$WORK/ovl/$d/work" "/$d"
done
# WORK lives under /run: keep it reachable across the fresh /run.
mkdir -p /etc/.podscope-k8s-work
mount --bind "$WORK" /etc/.podscope-k8s-work
mount -t tmpfs -o mode=0755 k8s-run /run
mkdir -p "$WORK"
mount --move /etc/.podscope-k8s-work "$WORK"
rmdir /etc/.podscope-k8s-work
mount -t bpf bpf /sys/fs/bpf
mount --make-rshared /

ip link set lo up
# No dummy driver on every kernel: a veth pair, both ends in here.
ip link add node0 type veth peer name node0-peer
ip addr add "$NODE_CIDR" dev node0
ip link set node0-peer up
ip link set node0 up
ip route add default dev node0
sysctl -qw net.ipv4.ip_forward=1
# kube-proxy's ClusterIP DNAT for pods on the same bridge needs the bridged
# replies to pass netfilter.
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 2>/dev/null || true

echo $$ >"$WORK/holder.pid"
exec sleep infinity
