/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * podscope file-write audit: types, pinned maps and the one decision every
 * mode shares (is the current cgroup armed, fold repeats, emit, count losses).
 * A mode (lsm_cgroup, lsm, fentry, tracepoint, plus cgroup/sysctl) is a thin
 * front in audit.c that knows only how to get the path of its operation.
 *
 * Map layouts (layout version in the pin path, see pkg/pins):
 *   audited_cgroups  HASH        u64 cgroup v2 id -> struct audit_cgroup
 *   audit_identity   HASH        u64 cgroup v2 id -> struct identity (user space only)
 *   audit_lost       PERCPU_HASH u64 cgroup v2 id -> u64 operations not delivered
 *   audit_foldmap    LRU_HASH    struct dedup_key -> struct dedup_val
 *   audit_levels     ARRAY       0 -> struct armed_levels (ascending levels of armed cgroups)
 *   audit_folds      PERCPU_ARRAY 0 -> u64 repeats folded since load
 *   audit_mode       ARRAY       0 -> u32 mode (enum attach_mode)
 *   audit_object     ARRAY       0 -> struct object_id (user space only)
 *   audit_probe      ARRAY       enum attach_mode -> struct probe_refusal (user space only)
 *   audit_events     RINGBUF     struct event + path bytes + aux bytes
 *   audit_inflight   LRU_HASH    u32 thread id -> struct inflight (audit.c, tracepoint mode)
 */
#ifndef PODSCOPE_AUDIT_H
#define PODSCOPE_AUDIT_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "pinned_map.h"

#define AUDIT_MAX_CGROUPS 16384
#define AUDIT_RING_BYTES (32 << 20)
/* Repeats of the same operation (cgroup, op, path, target, uid, flags and
 * outcome) within this window are folded. */
#define AUDIT_DEDUP_WINDOW_NS 1000000000ULL

/* Event payload: path bytes, then aux bytes (rename/link target, symlink
 * content, sysctl value); never NUL-terminated. */
#define PATH_CAP 4096 /* total bytes of the primary path, after cwd prefixing */
#define AUX_CAP 4096
#define DATA_BYTES 8192
#define DATA_MASK 8191
#define OFF_MASK 4095
#define SYSCTL_VALUE_CAP 256

enum write_op { /* numbered from 0 in this order: the events' op contract */
	AOP_NONE,
	AOP_OPEN_WRITE,
	AOP_CREATE,
	AOP_TRUNCATE,
	AOP_UNLINK,
	AOP_RENAME,
	AOP_CHMOD,
	AOP_CHOWN,
	AOP_MKDIR,
	AOP_RMDIR,
	AOP_LINK,
	AOP_SYMLINK,
	AOP_SYSCTL_WRITE,
};

enum aux_kind {
	AAUX_NONE = 0,
	AAUX_TARGET = 1, /* rename: new path; link: existing path; symlink: link content */
	AAUX_VALUE = 2,	/* sysctl_write: value written, truncated */
};

enum attach_mode {
	AMODE_NONE = 0,
	AMODE_LSM_CGROUP = 1,
	AMODE_LSM = 2,
	AMODE_FENTRY = 3,
	AMODE_TRACEPOINT = 4,
};

/* Fixed header of every ring-buffer record; path_len + aux_len bytes follow. */
struct event {
	__u64 time_ns; /* CLOCK_BOOTTIME; a fold record: time of the first repeat */
	__u64 cgroup_id;
	__u64 key; /* hash of path+aux: the fold key with cgroup, op, uid, flags, denied */
	__u64 last_ns; /* a fold record: time of the last repeat; 0 otherwise */
	__u32 pid; /* tgid, in the initial pid namespace (a fold record: the first repeat's) */
	__u32 uid;
	__u32 flags; /* open flags, mode (chmod/mkdir), *at flags (rename/link/unlink) */
	__u32 count; /* operations this record stands for: 1, or the repeats a fold record sums */
	__u16 op;
	__u16 path_len;
	__u16 aux_len;
	__u8 aux_kind;
	__u8 denied;
	__u8 several_pids; /* a fold record whose repeats came from more than one process */
	__u8 pad[7];
	char comm[16];
};

struct audit_cgroup {
	__u32 flags; /* reserved (e.g. deny mode); 0 = audit */
	__u32 armed_at; /* seconds, CLOCK_BOOTTIME; for diagnostics */
	__u32 level; /* depth in the cgroup v2 tree (root = 0) */
	__u32 pad;
};



/* Identity strings, kept by user space only, so they survive a daemon
 * restart; fixed size because a BPF hash map value is. */
struct identity {
	char namespace[64];
	char pod[254];
	char pod_uid[40];
	char container[254];
	char container_id[128];
};

/* Two operations fold together only when every field of this key is equal
 * (the map compares keys in full); hash covers the path and aux bytes. */
struct dedup_key {
	__u64 cgroup_id;
	__u64 hash;
	__u32 op;
	__u32 uid;
	__u32 flags;
	__u32 denied;
};

/* The repeats folded since the window's record: first/last time, the first
 * repeat's pid and comm, several_pids when another process repeated it. */
struct dedup_val {
	__u64 window_start_ns;
	__u64 pending;
	__u64 first_ns;
	__u64 last_ns;
	__u32 pid;
	__u32 several_pids;
	char comm[16];
};

struct scratch {
	struct event ev;
	char data[DATA_BYTES]; /* must follow ev: ev+data is what goes out */
	char ustr[PATH_CAP];
	char tmp[2 * PATH_CAP]; /* dentry walk writes right to left into tmp[0..PATH_CAP) */
	__u32 busy;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AUDIT_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct audit_cgroup);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audited_cgroups SEC(".maps");

/* Levels (depths) at which cgroups are armed, kept by user space: a task
 * in a sub-cgroup of an armed cgroup (systemd or a runtime inside the
 * container) is found by checking its ancestor at those levels only —
 * usually one extra lookup, none when nothing is armed. */
#define AUDIT_MAX_LEVELS 8
struct armed_levels {
	__u32 n;
	__u32 level[AUDIT_MAX_LEVELS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct armed_levels);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_levels SEC(".maps");

PINNED_MAP(audit_identity, BPF_MAP_TYPE_HASH, AUDIT_MAX_CGROUPS, __u64, struct identity);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4 * AUDIT_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dedup_key);
	__type(value, struct dedup_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_foldmap SEC(".maps"); /* was audit_dedup, keyed by (cgroup, hash, op) only */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_mode SEC(".maps");

/* Why the probe refused each stronger mode (index: enum attach_mode), so a
 * restarted daemon and podscopectl can still say it: user space only. */
struct probe_refusal {
	char reason[252];
	__u32 refused; /* 1: this mode was probed and refused */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 5);
	__type(key, __u32);
	__type(value, struct probe_refusal);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_probe SEC(".maps");

/* SHA-256 of the BPF object whose programs are pinned: user space only. A
 * restart with another build replaces the pinned programs and links. */
struct object_id {
	__u8 sha256[32];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct object_id);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_object SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, AUDIT_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} audit_scratch SEC(".maps");

/* Keep the generated Go types in the object even if unused by a program. */
const struct event *unused_event __attribute__((unused));
const struct identity *unused_identity __attribute__((unused));
const struct dedup_key *unused_dedup_key __attribute__((unused));
const struct dedup_val *unused_dedup_val __attribute__((unused));
const struct audit_cgroup *unused_audit_cgroup __attribute__((unused));
const struct armed_levels *unused_armed_levels __attribute__((unused));
const struct object_id *unused_object_id __attribute__((unused));
const struct probe_refusal *unused_probe_refusal __attribute__((unused));
const enum write_op *unused_write_op __attribute__((unused));
const enum attach_mode *unused_attach_mode __attribute__((unused));
const enum aux_kind *unused_aux_kind __attribute__((unused));

/* The first question of every front: is the current task's cgroup, or its
 * ancestor at a level where cgroups are armed, in audited_cgroups? *cgid is
 * the armed cgroup's id (so the event names the container). Unarmed tasks
 * pay a cgroup-id lookup and, with cgroups armed, one ancestor lookup per
 * armed level. */
static __always_inline bool cgroup_armed(__u64 *cgid)
{
	struct armed_levels *lv;
	__u32 zero = 0;
	__u64 self, id;

	self = bpf_get_current_cgroup_id();
	*cgid = self;
	if (bpf_map_lookup_elem(&audited_cgroups, &self))
		return true;
	lv = bpf_map_lookup_elem(&audit_levels, &zero);
	if (!lv)
		return false;
#pragma unroll
	for (int i = 0; i < AUDIT_MAX_LEVELS; i++) {
		if (i >= lv->n)
			break;
		id = bpf_get_current_ancestor_cgroup_id(lv->level[i]);
		if (id == 0)
			break; /* levels are ascending: the task is above the rest */
		if (id != self && bpf_map_lookup_elem(&audited_cgroups, &id)) {
			*cgid = id;
			return true;
		}
	}
	return false;
}

/* Take the per-CPU scratch; NULL if it is in use (a preempted program on this
 * CPU): the caller counts a loss rather than corrupting the other event. */
static __always_inline struct scratch *scratch_get(void)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&audit_scratch, &zero);

	if (!s)
		return NULL;
	if (__sync_lock_test_and_set(&s->busy, 1))
		return NULL;
	return s;
}

static __always_inline void count_lost(__u64 cgid, __u64 n);

/* The scratch for an event of cgroup cgid, or NULL with the event counted
 * as lost. */
static __always_inline struct scratch *scratch_or_lost(__u64 cgid)
{
	struct scratch *s = scratch_get();

	if (!s)
		count_lost(cgid, 1);
	return s;
}

static __always_inline void scratch_put(struct scratch *s)
{
	__sync_lock_test_and_set(&s->busy, 0);
}

static __always_inline void count_lost(__u64 cgid, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&audit_lost, &cgid);

	if (v) {
		*v += n; /* per-CPU value: no atomics needed */
		return;
	}
	if (bpf_map_update_elem(&audit_lost, &cgid, &n, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&audit_lost, &cgid);
	if (v) {
		*v += n;
		return;
	}
	/* Map full: account under cgroup id 0 so the loss still shows. */
	cgid = 0;
	v = bpf_map_lookup_elem(&audit_lost, &cgid);
	if (v)
		*v += n;
	else
		bpf_map_update_elem(&audit_lost, &cgid, &n, BPF_ANY);
}

/* Folds since boot (per CPU): lets the user-space sweep skip scanning
 * audit_dedup when nothing was folded since its last pass. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_folds SEC(".maps");

static __always_inline void fold_note(void)
{
	__u32 zero = 0;
	__u64 *v = bpf_map_lookup_elem(&audit_folds, &zero);

	if (v)
		*v += 1;
}

struct hash_ctx {
	__u64 h;
	__u32 len;
};

/* FNV-1a-style over 8-byte words of scratch->data (tail word masked), with
 * a xor-shift after each multiply so every bit of the hash depends on every
 * byte (plain FNV over words leaves the low bits depending only on the low
 * bytes of each word). */
static long hash_word(__u64 i, struct hash_ctx *c)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&audit_scratch, &zero);
	__u32 off = (i * 8) & (DATA_MASK & ~7);
	__u64 w;
	__u32 rem;

	if (!s)
		return 1;
	w = *(__u64 *)(s->data + off);
	rem = c->len - (__u32)(i * 8);
	if (rem < 8)
		w &= (1ULL << (rem * 8)) - 1;
	c->h ^= w;
	c->h *= 0x100000001b3ULL;
	c->h ^= c->h >> 29;
	return 0;
}

/* Output s->ev + the path/aux bytes already in s->data. */
static __always_inline void emit_record(struct scratch *s, __u64 cgid, __u32 total)
{
	__u64 wake;
	__u32 size;

	/* Batched wake-ups: the reader polls with a short timeout; it is woken
	 * early only when an eighth of the ring is waiting. */
	wake = bpf_ringbuf_query(&audit_events, BPF_RB_AVAIL_DATA) >= AUDIT_RING_BYTES / 8 ?
		       BPF_RB_FORCE_WAKEUP :
		       BPF_RB_NO_WAKEUP;
	size = sizeof(struct event) + (total & DATA_MASK);
	if (bpf_ringbuf_output(&audit_events, &s->ev, size, wake) != 0)
		count_lost(cgid, s->ev.count);
}

/*
 * Fold, fill the header, emit, count losses. path_len/aux_len bytes are
 * already in s->data. The record is header + path + aux bytes, no padding.
 *
 * Folding never merges different operations: the key is (cgroup, op, hash
 * of path+aux, uid, flags, denied). The first operation of a window is
 * emitted; repeats inside the window are counted in the fold map (first and
 * last time, first pid and comm, whether other pids did it). They go out as
 * one fold record (count = repeats) either here, when the next window of the
 * same key opens, or from user space's sweep once the window has passed.
 * Returns 0; frees the scratch.
 */
static __always_inline int audit_emit(struct scratch *s, __u64 cgid, __u32 op, __u32 flags,
				      __u32 path_len, __u32 aux_len, __u32 aux_kind, bool denied)
{
	struct hash_ctx hc = { .h = 0xcbf29ce484222325ULL };
	struct dedup_key dk = {};
	struct dedup_val *dv, nv = {};
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u32 total;

	path_len &= OFF_MASK;
	aux_len &= OFF_MASK;
	total = path_len + aux_len;
	hc.len = total;
	bpf_loop((total + 7) / 8, hash_word, &hc, 0);

	dk.cgroup_id = cgid;
	dk.hash = hc.h ^ ((__u64)path_len << 48); /* path/aux split is part of the key */
	dk.op = op;
	dk.uid = uid;
	dk.flags = flags;
	dk.denied = denied;

	s->ev.cgroup_id = cgid;
	s->ev.key = dk.hash;
	s->ev.uid = uid;
	s->ev.flags = flags;
	s->ev.op = op;
	s->ev.path_len = path_len;
	s->ev.aux_len = aux_len;
	s->ev.aux_kind = aux_kind;
	s->ev.denied = denied;

	dv = bpf_map_lookup_elem(&audit_foldmap, &dk);
	if (dv) {
		if (now - dv->window_start_ns < AUDIT_DEDUP_WINDOW_NS) {
			if (__sync_fetch_and_add(&dv->pending, 1) == 0) {
				dv->first_ns = now;
				dv->pid = pid;
				dv->several_pids = 0;
				bpf_get_current_comm(dv->comm, sizeof(dv->comm));
			} else if (dv->pid != pid) {
				dv->several_pids = 1;
			}
			dv->last_ns = now;
			fold_note();
			scratch_put(s);
			return 0;
		}
		/* A new window: the last window's repeats go out first, as
		 * their own record. */
		__u64 n = __sync_lock_test_and_set(&dv->pending, 0);

		if (n > 0) {
			s->ev.time_ns = dv->first_ns;
			s->ev.last_ns = dv->last_ns;
			s->ev.pid = dv->pid;
			s->ev.several_pids = dv->several_pids;
			s->ev.count = n;
			__builtin_memcpy(s->ev.comm, dv->comm, sizeof(s->ev.comm));
			emit_record(s, cgid, total);
		}
		dv->window_start_ns = now;
	} else {
		nv.window_start_ns = now;
		bpf_map_update_elem(&audit_foldmap, &dk, &nv, BPF_ANY);
	}

	s->ev.time_ns = now;
	s->ev.last_ns = 0;
	s->ev.pid = pid;
	s->ev.several_pids = 0;
	s->ev.count = 1;
	bpf_get_current_comm(s->ev.comm, sizeof(s->ev.comm));
	emit_record(s, cgid, total);
	scratch_put(s);
	return 0;
}

#endif
