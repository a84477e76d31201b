// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * podscope TC datapath: per-pod accounting, flow table and stateful policy on
 * both hooks of a pod's host-side veth. Plain UAPI headers, no CO-RE: the
 * object needs no relocation against kernel BTF and loads fast.
 *
 * Verdicts: TC_ACT_SHOT for a policy drop, otherwise TC_ACT_UNSPEC (-1, equal
 * to TCX_NEXT) so that other programs on the hook still run. Anything not
 * understood (ARP and other ethertypes, truncated headers) passes untouched.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tc.h"
#include "datapath.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define IPV6_MAX_EXT_HEADERS 6
#define IP_OFFSET_MASK 0x1fff
#define IP6_OFFSET_MASK 0xfff8

#define ICMP_ECHO_REPLY     0
#define ICMP_ECHO_REQUEST   8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY   129

/* The one place that knows the mapping: what leaves the pod enters the host
 * veth (host ingress = pod egress) and the other way round. */
static __always_inline __u8 pod_direction(enum hook hook)
{
	return hook == HOOK_HOST_INGRESS ? DIR_EGRESS : DIR_INGRESS;
}

struct packet {
	struct flow_key key; /* pod view; pod filled in by the caller */
	__u16 dport;         /* destination port, what policy rules match */
	__u8  has_ports;
	__u8  nonfirst_frag; /* no L4 header: only port-less rules can match, no flow */
	__u8  is_related;    /* an ICMP error quoting a packet of flow `related` */
	struct flow_key related;
};

/* Reads src/dst into the pod view. */
static __always_inline void set_addrs(struct packet *p, __u8 dir, const void *src, const void *dst, int len)
{
	if (dir == DIR_EGRESS) {
		__builtin_memcpy(p->key.local, src, len);
		__builtin_memcpy(p->key.remote, dst, len);
	} else {
		__builtin_memcpy(p->key.local, dst, len);
		__builtin_memcpy(p->key.remote, src, len);
	}
}

/* ICMP errors that quote the packet they are about (destination
 * unreachable / fragmentation needed, time exceeded, parameter problem;
 * ICMPv6 also packet too big). */
static __always_inline int is_icmp_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

/* ICMPv6 link-local control (MLD 130-132 and 143; router and neighbour
 * solicitation and advertisement, redirect 133-137): like ARP for IPv4, the
 * pod's link cannot work without it, so no policy applies. */
static __always_inline int is_icmpv6_link_control(__u8 type)
{
	return (type >= 130 && type <= 137) || type == 143;
}

/* Parses the packet quoted by an ICMP error at off into p->related, in the
 * pod's view of that packet, which travelled opposite to dir. */
static __always_inline int parse_related(struct __sk_buff *skb, struct packet *p, __u8 dir, __u32 off)
{
	__u8 inner_dir = dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS;
	__u8 src[16] = {}, dst[16] = {};
	__u8 proto;
	__u32 l4;

	if (p->key.family == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
			return -1;
		__builtin_memcpy(src, &ip.saddr, 4);
		__builtin_memcpy(dst, &ip.daddr, 4);
		proto = ip.protocol;
		l4 = off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
			return -1;
		__builtin_memcpy(src, &ip6.saddr, 16);
		__builtin_memcpy(dst, &ip6.daddr, 16);
		proto = ip6.nexthdr;
		l4 = off + sizeof(ip6);
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return -1;
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
		return -1;
	__u16 sport = bpf_ntohs(ports[0]), dport = bpf_ntohs(ports[1]);

	struct flow_key *k = &p->related;
	k->family = p->key.family;
	k->proto = proto;
	if (inner_dir == DIR_EGRESS) {
		__builtin_memcpy(k->local, src, 16);
		__builtin_memcpy(k->remote, dst, 16);
		k->local_port = sport;
		k->remote_port = dport;
	} else {
		__builtin_memcpy(k->local, dst, 16);
		__builtin_memcpy(k->remote, src, 16);
		k->local_port = dport;
		k->remote_port = sport;
	}
	return 0;
}

/* What parse() made of a packet. */
enum parsed {
	PARSED = 0,  /* addresses, protocol and (where it has them) ports known */
	SKIP   = -1, /* not IP, or link-local control: passes untouched */
	OPAQUE = -2, /* IP with addresses known but no readable L4 header
		      * within the datapath's limits: judged as the strictest
		      * packet it could be */
};

/* Parses L4 at off. Returns PARSED, OPAQUE when the header is truncated, or
 * SKIP for link-local control that passes untouched. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct packet *p, __u8 dir, __u32 off)
{
	__u8 proto = p->key.proto;

	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return OPAQUE;
		__u16 sport = bpf_ntohs(ports[0]), dport = bpf_ntohs(ports[1]);
		p->dport = dport;
		p->has_ports = 1;
		p->key.local_port = dir == DIR_EGRESS ? sport : dport;
		p->key.remote_port = dir == DIR_EGRESS ? dport : sport;
		return PARSED;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		__u8 hdr[8]; /* type, code, csum, echo id, echo seq */
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return OPAQUE;
		__u8 type = hdr[0];
		if (proto == IPPROTO_ICMPV6 && is_icmpv6_link_control(type))
			return SKIP;
		if (is_icmp_error(proto, type) && parse_related(skb, p, dir, off + sizeof(hdr)) == 0)
			p->is_related = 1;
		if (type == ICMP_ECHO_REQUEST || type == ICMP_ECHO_REPLY ||
		    type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY) {
			if ((proto == IPPROTO_ICMP) == (type < ICMPV6_ECHO_REQUEST))
				p->key.local_port = ((__u16)hdr[4] << 8) | hdr[5];
		}
	}
	return PARSED;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct packet *p, __u8 dir)
{
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return SKIP;
	if (ip.version != 4 || ip.ihl < 5)
		return SKIP;
	p->key.family = 4;
	p->key.proto = ip.protocol;
	set_addrs(p, dir, &ip.saddr, &ip.daddr, 4);
	if (bpf_ntohs(ip.frag_off) & IP_OFFSET_MASK) {
		p->nonfirst_frag = 1;
		return PARSED;
	}
	return parse_l4(skb, p, dir, ETH_HLEN + ip.ihl * 4);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct packet *p, __u8 dir)
{
	struct ipv6hdr ip6;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
		return SKIP;
	if (ip6.version != 6)
		return SKIP;
	p->key.family = 6;
	set_addrs(p, dir, &ip6.saddr, &ip6.daddr, 16);

	__u8 nexthdr = ip6.nexthdr;
	__u32 off = ETH_HLEN + sizeof(ip6);
	/* Extension headers, bounded: a packet with more than
	 * IPV6_MAX_EXT_HEADERS of them, or one cut inside them, is OPAQUE (its
	 * protocol and ports are unknown), never taken at face value: padding
	 * headers must not walk a packet past a port rule. */
#pragma unroll
	for (int i = 0; i <= IPV6_MAX_EXT_HEADERS; i++) {
		__u8 ext[8];
		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING && nexthdr != IPPROTO_DSTOPTS &&
		    nexthdr != IPPROTO_FRAGMENT && nexthdr != IPPROTO_AH)
			break;
		if (i == IPV6_MAX_EXT_HEADERS)
			return OPAQUE;
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return OPAQUE;
		if (nexthdr == IPPROTO_FRAGMENT) {
			__u16 frag = ((__u16)ext[2] << 8) | ext[3];
			nexthdr = ext[0];
			off += 8;
			if (frag & IP6_OFFSET_MASK) {
				p->key.proto = nexthdr;
				p->nonfirst_frag = 1;
				return PARSED;
			}
		} else if (nexthdr == IPPROTO_AH) {
			nexthdr = ext[0];
			off += ((__u32)ext[1] + 2) * 4;
		} else {
			nexthdr = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
		}
	}
	p->key.proto = nexthdr;
	return parse_l4(skb, p, dir, off);
}

/* Sets the ports of a TCP/UDP/SCTP packet read at ports. */
static __always_inline void set_ports(struct packet *p, __u8 dir, const __be16 *ports)
{
	__u16 sport = bpf_ntohs(ports[0]), dport = bpf_ntohs(ports[1]);
	p->dport = dport;
	p->has_ports = 1;
	p->key.local_port = dir == DIR_EGRESS ? sport : dport;
	p->key.remote_port = dir == DIR_EGRESS ? dport : sport;
}

static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* Fills p from a fast-path packet, IPv4 or IPv6: the caller checked that its
 * header and ports lie in the linear data and that proto has ports. Returns 1
 * (parsed). */
static __always_inline int fill_fast(struct packet *p, __u8 dir, __u8 family, __u8 proto, const void *saddr,
				     const void *daddr, int alen, const __be16 *ports)
{
	p->key.family = family;
	p->key.proto = proto;
	set_addrs(p, dir, saddr, daddr, alen);
	set_ports(p, dir, ports);
	return 1;
}

/* The common case read in place (direct packet access, no helper call):
 * TCP/UDP/SCTP right after an option-less IPv4 header or a bare IPv6
 * header, first fragment or none, all within the skb's linear data.
 * Returns 1 when it parsed the packet, 0 to take the general path. */
static __always_inline int parse_fast(struct __sk_buff *skb, struct packet *p, __u8 dir, __be16 proto)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		__be16 *ports = (void *)(ip + 1);
		if ((void *)(ports + 2) > end || ip->version != 4 || ip->ihl != 5 ||
		    (ip->frag_off & bpf_htons(IP_OFFSET_MASK)) || !has_ports(ip->protocol))
			return 0;
		return fill_fast(p, dir, 4, ip->protocol, &ip->saddr, &ip->daddr, 4, ports);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		__be16 *ports = (void *)(ip6 + 1);
		if ((void *)(ports + 2) > end || ip6->version != 6 || !has_ports(ip6->nexthdr))
			return 0;
		return fill_fast(p, dir, 6, ip6->nexthdr, &ip6->saddr, &ip6->daddr, 16, ports);
	}
	return 0;
}

/* Parses what the policy and flow table need (enum parsed). */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p, __u8 dir)
{
	__be16 proto = skb->protocol;
	if (parse_fast(skb, p, dir, proto))
		return PARSED;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, p, dir);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, p, dir);
	return SKIP;
}

static __always_inline struct policy_value *policy_entry(__u32 set, __u8 dir, struct packet *p)
{
	return policy_lookup(set, dir, p->key.family, p->key.remote);
}

/* One LPM lookup on the peer address, then the first matching rule, for a
 * packet of p's flow travelling in dir with destination port dport. */
static __always_inline __u8 policy_verdict(__u32 set, __u8 dir, struct packet *p, __u16 dport)
{
	if (!set)
		return ACTION_ALLOW; /* the pod has no policy */
	struct policy_value *v = policy_entry(set, dir, p);
	if (!v)
		return ACTION_ALLOW; /* a set always has /0 entries: not reached */
	return policy_scan(v, p->key.proto, p->has_ports, dport) == ACTION_DENY ? ACTION_DENY : ACTION_ALLOW;
}

static __always_inline void count(__u32 pod, __u8 dir, __u64 len, __u8 verdict)
{
	struct traffic_counters *c = bpf_map_lookup_elem(&pod_counters, &pod);
	if (!c) {
		struct traffic_counters zero = {};
		bpf_map_update_elem(&pod_counters, &pod, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&pod_counters, &pod);
		if (!c)
			return;
	}
	/* Per-CPU value: plain adds, no atomics needed. */
	if (verdict == ACTION_DENY) {
		c->drop_bytes[dir & 1] += len;
		c->drop_packets[dir & 1]++;
	} else {
		c->bytes[dir & 1] += len;
		c->packets[dir & 1]++;
	}
}

/* The opening directions of a flow (bits of struct flow_stats.allowed)
 * that the pod's current policy set still allows, each judged with that
 * direction's destination port. */
static __always_inline __u8 rejudge(__u32 set, struct packet *p, __u8 allowed)
{
	__u8 keep = 0;
	if ((allowed & (1 << DIR_EGRESS)) && policy_verdict(set, DIR_EGRESS, p, p->key.remote_port) == ACTION_ALLOW)
		keep |= 1 << DIR_EGRESS;
	if ((allowed & (1 << DIR_INGRESS)) && policy_verdict(set, DIR_INGRESS, p, p->key.local_port) == ACTION_ALLOW)
		keep |= 1 << DIR_INGRESS;
	return keep;
}

/* Conntrack + policy + flow accounting for a parsed packet. set is the
 * pod's policy set, which is also the generation a flow's allowed bits were
 * judged under: after a policy change each flow is judged again, once, on
 * its next packet. */
static __always_inline __u8 decide(__u32 pod, __u32 set, __u8 dir, struct packet *p, __u64 len)
{
	if (p->nonfirst_frag)
		return policy_verdict(set, dir, p, 0);

	if (p->is_related && set) {
		/* An error about an allowed connection (path MTU, unreachable)
		 * passes like its replies. */
		p->related.pod = pod;
		struct flow_stats *rf = bpf_map_lookup_elem(&flows, &p->related);
		if (rf && rf->allowed && rf->policy_set == set)
			return ACTION_ALLOW;
	}

	p->key.pod = pod;
	struct flow_stats *f = bpf_map_lookup_elem(&flows, &p->key);
	__u8 verdict, allowed = 0;
	if (f) {
		allowed = f->allowed;
		if (f->policy_set != set)
			allowed = rejudge(set, p, allowed);
	}
	if (allowed) {
		verdict = ACTION_ALLOW; /* an allowed connection: its replies pass too */
	} else {
		/* Not (or no longer) an allowed connection: the packet is judged
		 * on its own, and if the policy allows it, it opens the flow. */
		verdict = policy_verdict(set, dir, p, p->dport);
		if (verdict == ACTION_ALLOW)
			allowed = 1 << dir;
	}

	/* The coarse clock (the kernel tick) is plenty for first/last seen and
	 * much cheaper than a clocksource read per packet in a VM. */
	__u64 now = bpf_ktime_get_coarse_ns();
	if (!f) {
		if (flow_create(&p->key, now, dir, len, verdict, verdict == ACTION_DENY ? DENIED_POLICY : DENIED_NONE,
				allowed, set) == 0)
			return verdict;
		/* Another CPU created it first: count into that one. */
		f = bpf_map_lookup_elem(&flows, &p->key);
		if (!f)
			return verdict;
	}
	/* Shared entry: counters with atomics; the rest is last-writer-wins,
	 * written only when it changes (no store per packet). */
	__sync_fetch_and_add(&f->bytes[dir & 1], len);
	__sync_fetch_and_add(&f->packets[dir & 1], 1);
	if (f->last_seen_ns != now)
		f->last_seen_ns = now;
	__u8 by = verdict == ACTION_DENY ? DENIED_POLICY : DENIED_NONE;
	if (f->verdict != verdict || f->denied_by != by) {
		f->verdict = verdict;
		f->denied_by = by;
	}
	if (f->policy_set != set || f->allowed != allowed) {
		f->policy_set = set;
		f->allowed = allowed;
	}
	return verdict;
}

/* The one handler of both hooks. */
static __always_inline int handle(struct __sk_buff *skb, enum hook hook)
{
	__u32 ifindex = skb->ifindex;
	struct pod_iface *pi = bpf_map_lookup_elem(&pod_ifaces, &ifindex);
	if (!pi)
		return TC_ACT_UNSPEC; /* not a pod's veth (or being detached) */

	__u32 pod = pi->pod, set = pi->policy_set;
	__u8 dir = pod_direction(hook);
	__u64 len = skb->len;
	__u8 verdict = ACTION_ALLOW;
	struct packet p = {};

	int r = parse(skb, &p, dir);
	if (r == PARSED) {
		verdict = decide(pod, set, dir, &p, len);
		if (verdict == ACTION_DENY)
			count_drop(DROP_POLICY, dir);
	} else if (r == OPAQUE && set) {
		struct policy_value *v = policy_entry(set, dir, &p);
		if (v && policy_strictest(v) == ACTION_DENY) {
			verdict = ACTION_DENY;
			count_drop(DROP_OPAQUE, dir);
		}
	}
	count(pod, dir, len, verdict);
	return verdict == ACTION_DENY ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

SEC("tc")
int host_ingress(struct __sk_buff *skb)
{
	return handle(skb, HOOK_HOST_INGRESS);
}

SEC("tc")
int host_egress(struct __sk_buff *skb)
{
	return handle(skb, HOOK_HOST_EGRESS);
}
