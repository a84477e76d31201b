// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * podscope NetworkPolicy: a BPF_PROG_TYPE_NETFILTER program attached in the
 * node's network namespace at NF_INET_PRE_ROUTING, priority
 * NF_IP_PRI_NAT_DST + 1, for IPv4 and IPv6 (pkg/datapath/netpol.go).
 *
 * There, conntrack (priority -200) has classified the packet and DNAT (-100)
 * has translated a Service's ClusterIP to the backend pod, for routed
 * packets and for bridged ones (br_netfilter runs the same hooks when
 * net.bridge.bridge-nf-call-iptables/ip6tables is 1). So the decision is on
 * the real destination, and on the first packet of a connection only:
 *
 *   - ctinfo ESTABLISHED, RELATED or a reply: pass at once (two loads);
 *   - no conntrack entry (conntrack not active in the netns, or a packet
 *     conntrack found invalid): pass, counted in netpol_stats; explicitly
 *     untracked (a notrack rule): pass.
 *     Judging such packets one by one would also judge the replies of
 *     allowed connections, which policy must let through; a node running
 *     kube-proxy always has conntrack active;
 *   - NEW: the source address's endpoint (a local pod with a NetworkPolicy
 *     set) is judged by its egress spec against the translated destination,
 *     then the destination's endpoint by its ingress spec against the
 *     source; both must allow. A pod talking to itself passes.
 *
 * Addresses, protocol and ports come from the connection's conntrack tuples,
 * not from the packet: the original tuple is what the source pod sent (and
 * what its TC hook recorded, before DNAT), the reply tuple's source is the
 * translated destination. Conntrack has parsed IPv6 extension headers and
 * reassembled fragments already.
 *
 * A denied packet counts as a drop of the pod whose policy denied it
 * (DROP_NETPOL), and its flow shows DENIED_NETPOL: for egress, the source
 * pod's TC hook counted the packet as passed a moment ago, so the count is
 * moved to the drops; for ingress the destination's TC hook never sees the
 * packet, so it is recorded here.
 *
 * Kernel types are read with CO-RE (relocated against the running kernel's
 * BTF); only the fields below are declared.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "tc.h"
#include "datapath.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct sk_buff {
	unsigned int len;
	unsigned long _nfct;
} __attribute__((preserve_access_index));

struct nf_hook_state;

struct bpf_nf_ctx {
	const struct nf_hook_state *state;
	struct sk_buff *skb;
} __attribute__((preserve_access_index));

union nf_inet_addr {
	__u32 all[4];
} __attribute__((preserve_access_index));

union nf_conntrack_man_proto {
	__be16 all;
} __attribute__((preserve_access_index));

struct nf_conntrack_man {
	union nf_inet_addr u3;
	union nf_conntrack_man_proto u;
	__u16 l3num;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple {
	struct nf_conntrack_man src;
	struct {
		union nf_inet_addr u3;
		union {
			__be16 all;
		} u;
		__u8 protonum;
	} dst;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple_hash {
	struct nf_conntrack_tuple tuple;
} __attribute__((preserve_access_index));

struct nf_conn {
	struct nf_conntrack_tuple_hash tuplehash[2];
} __attribute__((preserve_access_index));

#define NF_DROP   0
#define NF_ACCEPT 1

/* skb->_nfct: the conntrack entry's address with ctinfo in the low bits. */
#define NFCT_INFOMASK   7UL
#define IP_CT_NEW       2
#define IP_CT_DIR_ORIGINAL 0
#define IP_CT_DIR_REPLY    1

#define AF_INET  2
#define AF_INET6 10

#define ETH_HLEN 14

#define ICMP_ECHO_REPLY     0
#define ICMP_ECHO_REQUEST   8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY   129

/* A new connection as conntrack holds it. Addresses network order, ports
 * host order. */
struct conn {
	__u8  family;
	__u8  proto;
	__u8  has_ports;
	__u8  icmp_echo;
	__u16 sport;      /* or the ICMP echo identifier */
	__u16 orig_dport; /* before DNAT */
	__u16 dport;      /* after DNAT: what policy rules match */
	__u16 pad;
	__u8  src[16];
	__u8  orig_dst[16]; /* before DNAT */
	__u8  dst[16];      /* after DNAT */
};

static __always_inline int read_conn(struct nf_conn *ct, struct conn *c)
{
	__u16 l3num = BPF_CORE_READ(ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.l3num);
	if (l3num == AF_INET)
		c->family = 4;
	else if (l3num == AF_INET6)
		c->family = 6;
	else
		return -1;
	c->proto = BPF_CORE_READ(ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.protonum);
	if (BPF_CORE_READ_INTO(&c->src, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.u3) ||
	    BPF_CORE_READ_INTO(&c->orig_dst, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.u3) ||
	    BPF_CORE_READ_INTO(&c->dst, ct, tuplehash[IP_CT_DIR_REPLY].tuple.src.u3))
		return -1;
	__be16 sport = BPF_CORE_READ(ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.u.all);
	__be16 odport = BPF_CORE_READ(ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.u.all);
	__be16 dport = BPF_CORE_READ(ct, tuplehash[IP_CT_DIR_REPLY].tuple.src.u.all);
	if (c->proto == IPPROTO_TCP || c->proto == IPPROTO_UDP || c->proto == IPPROTO_SCTP) {
		c->has_ports = 1;
		c->sport = bpf_ntohs(sport);
		c->orig_dport = bpf_ntohs(odport);
		c->dport = bpf_ntohs(dport);
	} else if (c->proto == IPPROTO_ICMP || c->proto == IPPROTO_ICMPV6) {
		/* The original tuple's source "port" is the echo identifier,
		 * its destination holds type and code. */
		__u8 type = ((__u8 *)&odport)[0];
		if (type == ICMP_ECHO_REQUEST || type == ICMP_ECHO_REPLY ||
		    type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY) {
			c->icmp_echo = 1;
			c->sport = bpf_ntohs(sport);
		}
	}
	return 0;
}

static __always_inline struct endpoint *endpoint_of(__u8 family, const __u8 *addr)
{
	struct endpoint_key k = {.family = family};
	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	return bpf_map_lookup_elem(&netpol_endpoints, &k);
}

static __always_inline int denies(__u32 set, __u8 dir, struct conn *c, const __u8 *peer)
{
	if (!set)
		return 0;
	struct policy_value *v = policy_lookup(set, dir, c->family, peer);
	return v && policy_scan(v, c->proto, c->has_ports, c->dport) == ACTION_DENY;
}

/* Records a packet the NetworkPolicy of pod denied in dir: the node-wide
 * reason, the pod's counters and the flow in the pod's view. */
static __always_inline void record_deny(__u32 pod, __u8 dir, struct conn *c, __u64 len)
{
	struct flow_key k = {.pod = pod, .family = c->family, .proto = c->proto};
	if (dir == DIR_EGRESS) {
		/* As the source pod's TC hook saw it: before DNAT. */
		__builtin_memcpy(k.local, c->src, 16);
		__builtin_memcpy(k.remote, c->orig_dst, 16);
		k.local_port = c->sport;
		k.remote_port = c->has_ports ? c->orig_dport : 0;
	} else {
		__builtin_memcpy(k.local, c->dst, 16);
		__builtin_memcpy(k.remote, c->src, 16);
		k.local_port = c->has_ports ? c->dport : c->sport;
		k.remote_port = c->has_ports ? c->sport : 0;
	}
	if (!c->has_ports && !c->icmp_echo)
		k.local_port = 0;

	count_drop(DROP_NETPOL, dir);
	struct drop_counts *nd = bpf_map_lookup_elem(&netpol_drops, &pod);
	if (!nd) {
		struct drop_counts zero = {};
		bpf_map_update_elem(&netpol_drops, &pod, &zero, BPF_NOEXIST);
		nd = bpf_map_lookup_elem(&netpol_drops, &pod);
	}
	if (nd)
		nd->packets[dir & 1]++; /* per-CPU */
	/* Only a pod the TC programs count (attached) has counters: none are
	 * created here. Per-CPU values: plain arithmetic; the sum over CPUs is
	 * right whichever CPU counted the pass. */
	struct traffic_counters *tc = bpf_map_lookup_elem(&pod_counters, &pod);
	if (tc) {
		if (dir == DIR_EGRESS) {
			tc->bytes[DIR_EGRESS] -= len;
			tc->packets[DIR_EGRESS]--;
		}
		tc->drop_bytes[dir & 1] += len;
		tc->drop_packets[dir & 1]++;
	}

	/* The coarse clock the TC programs use is not offered to netfilter
	 * programs; both read CLOCK_MONOTONIC. */
	__u64 now = bpf_ktime_get_ns();
	struct flow_stats *f = bpf_map_lookup_elem(&flows, &k);
	if (!f) {
		if (flow_create(&k, now, dir, len, ACTION_DENY, DENIED_NETPOL, 0, 0) == 0)
			return;
		f = bpf_map_lookup_elem(&flows, &k);
		if (!f)
			return;
	} else if (dir == DIR_INGRESS) {
		/* The destination's TC hook never sees it: count it here. An
		 * egress packet was counted by the source's TC hook. */
		__sync_fetch_and_add(&f->bytes[DIR_INGRESS], len);
		__sync_fetch_and_add(&f->packets[DIR_INGRESS], 1);
		f->last_seen_ns = now;
	}
	f->verdict = ACTION_DENY;
	f->denied_by = DENIED_NETPOL;
}

static __always_inline void count_untracked(void)
{
	__u32 zero = 0;
	struct netpol_stats *s = bpf_map_lookup_elem(&netpol_stats, &zero);
	if (s)
		s->untracked++; /* per-CPU */
}

static __always_inline void count_judged(void)
{
	__u32 zero = 0;
	struct netpol_stats *s = bpf_map_lookup_elem(&netpol_stats, &zero);
	if (s)
		s->judged++; /* per-CPU */
}

static __always_inline int judge(struct nf_conn *ct, __u64 len)
{
	struct conn c = {};
	if (read_conn(ct, &c) < 0)
		return NF_ACCEPT;
	struct endpoint *src = endpoint_of(c.family, c.src);
	struct endpoint *dst = endpoint_of(c.family, c.dst);
	/* Branches, not (!src && !dst): the compiler would OR the pointers,
	 * which the verifier refuses. */
	if (src) {
		if (dst && src->pod == dst->pod)
			return NF_ACCEPT; /* a pod talking to itself */
		count_judged();
		if (denies(src->set, DIR_EGRESS, &c, c.dst)) {
			record_deny(src->pod, DIR_EGRESS, &c, len);
			return NF_DROP;
		}
	} else if (dst) {
		count_judged();
	} else {
		return NF_ACCEPT; /* neither side has a NetworkPolicy set */
	}
	if (dst && denies(dst->set, DIR_INGRESS, &c, c.src)) {
		record_deny(dst->pod, DIR_INGRESS, &c, len);
		return NF_DROP;
	}
	return NF_ACCEPT;
}

SEC("netfilter")
int netpol_prerouting(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	unsigned long nfct = skb->_nfct;

	if ((nfct & NFCT_INFOMASK) != IP_CT_NEW) {
		/* Established, related, replies, and packets a notrack rule
		 * marked untracked: the cheap, common exit. No entry at all:
		 * counted (conntrack inactive here, or an invalid packet). */
		if (!nfct)
			count_untracked();
		return NF_ACCEPT;
	}
	/* Counted as the TC hook counts: with an Ethernet header. */
	return judge((struct nf_conn *)(nfct & ~NFCT_INFOMASK), (__u64)skb->len + ETH_HLEN);
}
