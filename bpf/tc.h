/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * podscope TC datapath: map key/value layouts shared by bpf/tc.c and the Go
 * loader in pkg/datapath (its Go types are generated from these by bpf2go
 * -type, never copied by hand).
 *
 * Every layout here is part of pins.LayoutVersion: change a struct, bump it.
 * All integers are host byte order unless a field says otherwise.
 */
#pragma once

#include <linux/types.h>

/* Sizes. A node runs far fewer than 16384 pods; an LRU map evicts its least
 * recently used flows when full. The policy trie is allocated on demand
 * (BPF_F_NO_PREALLOC) so its large max_entries costs nothing until used. */
#define PODSCOPE_MAX_PODS       16384
#define PODSCOPE_MAX_FLOWS      131072
#define PODSCOPE_MAX_CIDRS      1048576
#define PODSCOPE_MAX_RULES      32
#define PODSCOPE_MAX_NETPOL_ADDRS 8
#define PODSCOPE_MAX_ENDPOINTS  (4 * PODSCOPE_MAX_PODS)

/* Hooks of the host-side veth. */
enum hook {
	HOOK_HOST_INGRESS = 0, /* packets the pod sent */
	HOOK_HOST_EGRESS  = 1, /* packets going into the pod */
};

/* Directions as the pod sees them (policy.Direction in Go). */
enum pod_dir {
	DIR_EGRESS  = 0,
	DIR_INGRESS = 1,
};

/* policy.Action in Go. */
enum action {
	ACTION_ALLOW = 1,
	ACTION_DENY  = 2,
};

/* Attach modes recorded in struct attachment. */
enum attach_mode {
	MODE_TCX = 1,
	MODE_TC  = 2,
};

/* pod_ifaces: HASH, key __u32 ifindex of the host-side veth -> value.
 * Written by Attach, deleted by Detach (ifindexes are reused by the kernel:
 * nothing else may be keyed by them). policy_set is the policy set the pod
 * uses (struct pod_policy_ref), copied here so a packet needs one lookup for
 * both; 0 = no policy (everything passes, no policy lookup at all). Set ids
 * are never reused, so the set id doubles as the policy generation that
 * flows remember (struct flow_stats). */
struct pod_iface {
	__u32 pod;        /* stable pod id, never 0 */
	__u32 policy_set; /* the pod's policy set, 0 = none */
};

/* pod_policy: HASH, key __u32 pod -> value; user space only. The pod's
 * reference to its policy set, kept apart from pod_ifaces because a pod's
 * policy is written before its veth is registered (and survives Detach
 * until RemovePod); and the ifindex the pod is registered under in
 * pod_ifaces, written before that entry, so that finding a pod's veth
 * never scans pod_ifaces (ADD and DEL stay flat with the number of pods). */
struct pod_policy_ref {
	__u32 set;
	__u32 ifindex; /* 0 = none */
};

/* policy_sets: HASH, key -> value; user space only. One record per distinct
 * policy content: key is the SHA-256 of the policy's canonical encoding.
 * Pods whose effective policy is the same share one set of policy entries.
 * A set's users are the pod_policy entries naming it (users below; all
 * under the datapath lock, nothing kept in a process). The all-zero key holds the
 * last id issued (ids are never reused). state: 1 while its entries are
 * being written (a set found in that state was left by a crash and is
 * removed), 2 once complete. */
struct policy_set_key {
	__u8 sum[32];
};

struct policy_set {
	__u32 id;
	__u32 entries; /* LPM entries of the set */
	__u32 state;
	__u32 users;   /* pods referring to it: raised before a pod switches
			* to the set, lowered after it let go, so a crash leaves
			* it too high, never too low; at 0 the pod_policy
			* entries are counted to confirm before the set goes */
};

#define POLICY_SET_WRITING  1
#define POLICY_SET_COMPLETE 2

/* drop_reasons: PERCPU_ARRAY, index enum drop_reason -> value: node-wide
 * count of dropped packets by why, by enum pod_dir. The pod's own
 * counters count every drop too (drop_packets). DROP_NETPOL came later:
 * the loader grows a pinned map with fewer entries, keeping its counts. */
enum drop_reason {
	DROP_POLICY = 0, /* a rule or default said deny */
	DROP_OPAQUE = 1, /* L4 not parsable within the datapath's limits (IPv6
			  * extension headers beyond IPV6_MAX_EXT_HEADERS,
			  * truncated L4 header) and the pod's policy denies some
			  * packet this one could be */
	DROP_NETPOL = 2, /* the pod's NetworkPolicy denied it (bpf/netpol.c) */
	DROP_REASONS,
};

struct drop_counts {
	__u64 packets[2];
};

/* pod_counters: PERCPU_HASH, key __u32 pod -> value; arrays indexed by
 * enum pod_dir. bytes count skb->len at the hook, i.e. the L2 frame with its
 * 14-byte Ethernet header. Passed packets count in bytes/packets, dropped ones
 * only in drop_bytes/drop_packets. */
struct traffic_counters {
	__u64 bytes[2];
	__u64 packets[2];
	__u64 drop_bytes[2];
	__u64 drop_packets[2];
};

/* flows: LRU_HASH, key -> struct flow_stats. The 5-tuple is in the pod's
 * view: local is the pod's side, remote the peer, whatever the direction, so
 * a request and its reply share one entry. The flow table doubles as the
 * conntrack table (one lookup per packet instead of two). For ICMP/ICMPv6
 * echo the identifier is local_port and remote_port is 0; other ICMP has no
 * ports. Addresses: IPv4 in the first 4 bytes, rest zero; network order. */
struct flow_key {
	__u32 pod;
	__u8  family; /* 4 or 6 */
	__u8  proto;  /* IP protocol number */
	__u16 local_port;
	__u16 remote_port;
	__u16 pad;
	__u8  local[16];
	__u8  remote[16];
};

/* Arrays indexed by enum pod_dir. Times are bpf_ktime_get_ns() (CLOCK_MONOTONIC).
 * allowed: bit (1 << dir) is set when the policy itself (not connection
 * tracking) allowed a packet of this flow in dir: the flow's opening
 * direction(s). Any set bit lets every later packet of the flow pass in both
 * directions (replies of an allowed connection) while policy_set equals the
 * pod's (struct pod_iface). After a policy change the flow is judged again
 * on its next packet: each opening direction is kept only if the new policy
 * still allows it (with that direction's destination port); with none left,
 * the flow starts over like a new one. Flows count every packet seen, passed
 * or dropped; verdict is the last packet's. A connection the NetworkPolicy
 * program (bpf/netpol.c) refused is found by its conntrack original tuple,
 * which is the tuple the TC hook saw (before DNAT) on the source pod's side
 * and the translated one on the destination pod's side. */
struct flow_stats {
	__u64 bytes[2];
	__u64 packets[2];
	__u64 first_seen_ns;
	__u64 last_seen_ns;
	__u8  verdict;   /* enum action */
	__u8  initiator; /* enum pod_dir of the first packet */
	__u8  allowed;
	__u8  denied_by; /* enum denied_by: which policy denied the last packet */
	__u32 policy_set; /* the pod's policy set when allowed was judged */
};

/* flow_stats.denied_by (was padding, always 0: a flow written by an older
 * program reads as DENIED_NONE or, with verdict deny, as unknown). */
enum denied_by {
	DENIED_NONE   = 0,
	DENIED_POLICY = 1, /* podscope's own policy (conflist, annotations) */
	DENIED_NETPOL = 2, /* the pod's Kubernetes NetworkPolicy */
};

/* policy: LPM_TRIE (BPF_F_NO_PREALLOC), key -> struct policy_value.
 * prefixlen counts the bits after itself: 64 (set, dir, family, pad) plus
 * the CIDR's length, so a lookup with prefixlen 64+32 (v4) or 64+128 (v6)
 * finds the most specific CIDR of that policy set and direction. Every set
 * has a /0 entry per family and direction. Entries belong to a policy set
 * (struct policy_set), not to a pod: pods with the same policy share them. */
struct policy_key {
	__u32 prefixlen;
	__u32 set;    /* prefixlen >= 64 always matches it exactly: host order is fine */
	__u8  dir;    /* enum pod_dir */
	__u8  family; /* 4 or 6 */
	__u16 pad;
	__u8  addr[16];
};

/* One match: proto 0 = any; ports (host order, inclusive) compared with the
 * packet's destination port only when has_ports. src_bits is the prefix
 * length of the CIDR the rule was written for (the entry's address masked to
 * it), so `policy show` can say where an inherited rule came from. */
struct policy_rule {
	__u16 port_from;
	__u16 port_to;
	__u8  proto;
	__u8  has_ports;
	__u8  action;
	__u8  src_bits;
};

/* The CIDR's own rules, then those of every less specific CIDR containing
 * it, in priority order (compiled by pkg/policy); first match wins, else
 * dflt. */
struct policy_value {
	__u8  nrules;
	__u8  dflt; /* enum action */
	__u8  pad[6];
	struct policy_rule rules[PODSCOPE_MAX_RULES];
};

/* attachments: HASH, key -> value; written by the Go loader only (the
 * programs never read it). Records what Attach did so Detach, Check and
 * Attachments find it again from the pins alone: a tc filter has no pin. */
struct attachment_key {
	__u32 pod;
	__u32 hook; /* enum hook */
};

struct attachment {
	__u32 ifindex;
	__u32 mode;   /* enum attach_mode */
	__u32 handle; /* tc: cls_bpf filter handle */
	__u32 prio;   /* tc: filter priority */
	__u32 flags;  /* ATTACH_F_* */
};

/* tc: the clsact qdisc was created by podscope (and is removed with the
 * last podscope filter on the device). */
#define ATTACH_F_CREATED_QDISC 1

/* NetworkPolicy (bpf/netpol.c, pkg/datapath/netpol.go).
 *
 * netpol_endpoints: HASH, key -> value. Every address of a pod that has a
 * NetworkPolicy set; read per new connection for its source and its
 * (translated) destination. set 0 = the pod is isolated in no direction. */
struct endpoint_key {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16]; /* network order; IPv4 in the first 4 bytes */
};

struct endpoint {
	__u32 pod;
	__u32 set; /* policy set (struct policy_set), 0 = none */
};

/* pod_netpol: HASH, key __u32 pod -> value; user space only. The pod's
 * reference to its NetworkPolicy set (a second kind of user of policy
 * sets, beside pod_policy) and the addresses it wrote to netpol_endpoints,
 * so that removing the pod needs no scan. */
struct pod_netpol {
	__u32 set;
	__u32 naddrs;
	struct endpoint_key addrs[PODSCOPE_MAX_NETPOL_ADDRS];
};

/* netpol_drops: PERCPU_HASH, key __u32 pod -> struct drop_counts: the
 * pod's drops by its NetworkPolicy, by enum pod_dir (also counted in its
 * pod_counters drops). Created by the program on the pod's first such
 * drop, deleted with the pod. */

/* netpol_stats: PERCPU_ARRAY, index 0 -> value. judged: new connections
 * (conntrack NEW) with a NetworkPolicy endpoint on either side; untracked:
 * packets that passed without any conntrack entry (conntrack not active in
 * the netns, or invalid packets). */
struct netpol_stats {
	__u64 judged;
	__u64 untracked;
};
