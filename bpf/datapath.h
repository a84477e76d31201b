/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * podscope datapath: the pinned maps and the policy evaluation shared by the
 * TC programs (bpf/tc.c) and the NetworkPolicy program (bpf/netpol.c). Both
 * objects declare every map (so each carries the same layouts), the loader
 * pins them once and hands the same maps to both. Layouts are in tc.h.
 *
 * Include after <linux/bpf.h>, <bpf/bpf_helpers.h> and "tc.h".
 */
#pragma once

#include "pinned_map.h"

/* Layouts, keys and sizes: tc.h. */
PINNED_MAP(pod_ifaces, BPF_MAP_TYPE_HASH, PODSCOPE_MAX_PODS, __u32, struct pod_iface);

PINNED_MAP(pod_counters, BPF_MAP_TYPE_PERCPU_HASH, PODSCOPE_MAX_PODS, __u32, struct traffic_counters);

PINNED_MAP(flows, BPF_MAP_TYPE_LRU_HASH, PODSCOPE_MAX_FLOWS, struct flow_key, struct flow_stats);

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PODSCOPE_MAX_CIDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* User space only (the programs never read them): pod -> policy set, and
 * the policy sets by content. Defined here so they are pinned with the
 * rest and carry a layout the loader checks. */
PINNED_MAP(pod_policy, BPF_MAP_TYPE_HASH, PODSCOPE_MAX_PODS, __u32, struct pod_policy_ref);

PINNED_MAP(policy_sets, BPF_MAP_TYPE_HASH, PODSCOPE_MAX_PODS + 1, struct policy_set_key, struct policy_set);

PINNED_MAP(drop_reasons, BPF_MAP_TYPE_PERCPU_ARRAY, DROP_REASONS, __u32, struct drop_counts);

PINNED_MAP(attachments, BPF_MAP_TYPE_HASH, 2 * PODSCOPE_MAX_PODS, struct attachment_key, struct attachment);

PINNED_MAP(netpol_endpoints, BPF_MAP_TYPE_HASH, PODSCOPE_MAX_ENDPOINTS, struct endpoint_key, struct endpoint);

/* User space only: a pod's NetworkPolicy set and addresses. */
PINNED_MAP(pod_netpol, BPF_MAP_TYPE_HASH, PODSCOPE_MAX_PODS, __u32, struct pod_netpol);

PINNED_MAP(netpol_drops, BPF_MAP_TYPE_PERCPU_HASH, PODSCOPE_MAX_PODS, __u32, struct drop_counts);

PINNED_MAP(netpol_stats, BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct netpol_stats);

/* The first-match scan of one CIDR's rules. A global (non-inlined)
 * function: the verifier checks it once, not once per path of its caller,
 * which keeps the programs' load time low. */
__attribute__((noinline)) int policy_scan(const struct policy_value *v, __u32 proto, __u32 has_ports, __u32 dport)
{
	if (!v)
		return ACTION_ALLOW;
	__u32 n = v->nrules;
	for (__u32 i = 0; i < PODSCOPE_MAX_RULES; i++) {
		if (i >= n)
			break;
		const struct policy_rule *r = &v->rules[i];
		if (r->proto && r->proto != proto)
			continue;
		if (r->has_ports && (!has_ports || dport < r->port_from || dport > r->port_to))
			continue;
		return r->action;
	}
	return v->dflt;
}

/* Whether any packet could be denied by this entry: its default or any
 * rule says deny. The verdict of a packet whose protocol and ports are
 * unknown (OPAQUE) must not be more permissive than that of any packet it
 * could be. */
__attribute__((noinline)) int policy_strictest(const struct policy_value *v)
{
	if (!v)
		return ACTION_ALLOW;
	if (v->dflt == ACTION_DENY)
		return ACTION_DENY;
	__u32 n = v->nrules;
	for (__u32 i = 0; i < PODSCOPE_MAX_RULES; i++) {
		if (i >= n)
			break;
		if (v->rules[i].action == ACTION_DENY)
			return ACTION_DENY;
	}
	return ACTION_ALLOW;
}

/* The policy entry of set for a peer address in dir: one LPM lookup. */
static __always_inline struct policy_value *policy_lookup(__u32 set, __u8 dir, __u8 family, const __u8 *peer)
{
	struct policy_key k = {
		.prefixlen = 64 + (family == 4 ? 32 : 128),
		.set = set,
		.dir = dir,
		.family = family,
	};
	__builtin_memcpy(k.addr, peer, sizeof(k.addr));
	return bpf_map_lookup_elem(&policy, &k);
}

static __always_inline void count_drop(__u32 reason, __u8 dir)
{
	struct drop_counts *c = bpf_map_lookup_elem(&drop_reasons, &reason);
	if (c)
		c->packets[dir & 1]++; /* per-CPU */
}

/* Creates k's flow with its first packet (len bytes, travelling in dir)
 * counted. Returns 0 when it did, an error when the flow exists (another
 * CPU created it first: count into that one). */
static __always_inline long flow_create(struct flow_key *k, __u64 now, __u8 dir, __u64 len, __u8 verdict,
					__u8 denied_by, __u8 allowed, __u32 set)
{
	struct flow_stats n = {
		.first_seen_ns = now,
		.last_seen_ns = now,
		.initiator = dir,
		.verdict = verdict,
		.denied_by = denied_by,
		.allowed = allowed,
		.policy_set = set,
	};
	n.bytes[dir & 1] = len;
	n.packets[dir & 1] = 1;
	return bpf_map_update_elem(&flows, k, &n, BPF_NOEXIST);
}
