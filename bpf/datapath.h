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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODSCOPE_MAX_PODS);
	__type(key, __u32); /* ifindex */
	__type(value, struct pod_iface);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, PODSCOPE_MAX_PODS);
	__type(key, __u32); /* pod */
	__type(value, struct traffic_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PODSCOPE_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows SEC(".maps");

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
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODSCOPE_MAX_PODS);
	__type(key, __u32); /* pod */
	__type(value, struct pod_policy_ref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODSCOPE_MAX_PODS + 1);
	__type(key, struct policy_set_key);
	__type(value, struct policy_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASONS);
	__type(key, __u32); /* enum drop_reason */
	__type(value, struct drop_counts);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drop_reasons SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * PODSCOPE_MAX_PODS);
	__type(key, struct attachment_key);
	__type(value, struct attachment);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} attachments SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODSCOPE_MAX_ENDPOINTS);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netpol_endpoints SEC(".maps");

/* User space only: a pod's NetworkPolicy set and addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODSCOPE_MAX_PODS);
	__type(key, __u32); /* pod */
	__type(value, struct pod_netpol);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_netpol SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, PODSCOPE_MAX_PODS);
	__type(key, __u32); /* pod */
	__type(value, struct drop_counts);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netpol_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct netpol_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netpol_stats SEC(".maps");

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
