// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * podscope file-write audit: the fronts of every mode. Each front extracts
 * (op, path, aux) from its hook and hands over to audit_emit (audit.h).
 *
 *   lsm_cgroup/<hook>   BPF_LSM_CGROUP, attached to each armed cgroup
 *   lsm/<hook>          BPF LSM, global
 *   fentry/security_*   trampolines on the LSM entry points, global
 *   tracepoint/syscalls/sys_enter_<write syscall>   global, records the call
 *   tracepoint/syscalls/sys_exit_<write syscall>    global, one program: emits
 *   cgroup/sysctl       on each armed cgroup in every mode
 *
 * All global fronts filter by the audited_cgroups map first.
 */
#include "audit.h"
#include "audit_path.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define O_WRONLY_ 01
#define O_RDWR_ 02
#define O_CREAT_ 0100
#define O_TRUNC_ 01000
#define O_LARGEFILE_ 0100000 /* implied on 64-bit; the kernel adds it to f_flags */
#define AT_REMOVEDIR_ 0x200
#define FMODE_WRITE_ 0x2
#define FMODE_CREATED_ 0x100000

/* ---- shared front helpers ---------------------------------------------- */

static __always_inline bool open_is_write(__u64 flags)
{
	return flags & (O_WRONLY_ | O_RDWR_ | O_CREAT_ | O_TRUNC_);
}

/* The op an open asks for; tp_exit settles it (FMODE_CREATED, or refused). */
static __always_inline __u32 open_op(__u64 flags)
{
	return (flags & O_CREAT_) ? AOP_CREATE : AOP_OPEN_WRITE;
}

/* Mode bits a mkdir/mknod really asks for: the task's umask applied, as the
 * kernel does before its LSM hooks (so every mode reports the same value). */
static __always_inline __u32 umasked(__u64 mode)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 um = BPF_CORE_READ(task, fs, umask);

	return (__u32)mode & ~(um & 0777);
}

/* A pointer the verifier tracks as trusted (a hook argument) turned into a
 * plain scalar, so it can cross a global function as a __u64: read through
 * the stack, the verifier no longer knows it is a pointer. */
static __always_inline __u64 scalar_of(const void *p)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), &p);
	return v;
}

/* ---- syscall tracepoints (mode tracepoint) ----------------------------- */
/*
 * sys_enter_<syscall> (one small program per write syscall) only records the
 * arguments of an armed task's call in audit_inflight, keyed by thread id;
 * ONE program, tp_exit, attached to every matching sys_exit_<syscall>,
 * resolves the path and emits — only for calls that succeeded, or that the
 * kernel refused with EACCES/EPERM (then denied = true). For opens it tells
 * create from open_write by FMODE_CREATED on the returned fd's file. One exit
 * program keeps the verifier's work (and load time) to one path resolver.
 */

enum call_kind {
	CALL_PATH = 0,	   /* (dfd, up) */
	CALL_FD = 1,	   /* fd */
	CALL_TWO_PATHS = 2, /* (dfd, up) + (dfd2, up2) as aux */
	CALL_PATH_RAW = 3, /* (dfd, up) + raw user string up2 as aux */
};

struct inflight {
	__u64 cgid; /* the armed cgroup (the task's own or an ancestor) */
	__u64 up, up2;
	__s64 nr; /* syscall number, checked at exit (a killed task never exits) */
	__s32 dfd, dfd2;
	__s32 fd;
	__u32 op, flags;
	__u8 kind;
	__u8 is_open;
	__u16 pad;
};

/* LRU: an entry left by a thread killed inside a syscall is evicted under
 * pressure instead of filling the table. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct inflight);
} audit_inflight SEC(".maps");

#define EPERM_ 1
#define EACCES_ 13

#define TP(name) SEC("tracepoint/syscalls/sys_enter_" #name) int tp_##name(struct trace_event_raw_sys_enter *ctx)
#define PATH1(op_, fl, dfd_, up_) \
	((struct inflight){ .op = (op_), .flags = (fl), .dfd = (dfd_), .up = (__u64)(up_), .kind = CALL_PATH })
#define PATH2(op_, fl, dfd_, up_, dfd2_, up2_)                                                          \
	((struct inflight){ .op = (op_), .flags = (fl), .dfd = (dfd_), .up = (__u64)(up_), .dfd2 = (dfd2_), \
			    .up2 = (__u64)(up2_), .kind = CALL_TWO_PATHS })
#define RAW2(op_, dfd_, up_, up2_) \
	((struct inflight){ .op = (op_), .dfd = (dfd_), .up = (__u64)(up_), .up2 = (__u64)(up2_), .kind = CALL_PATH_RAW })
#define FD1(op_, fl, fd_) ((struct inflight){ .op = (op_), .flags = (fl), .fd = (fd_), .kind = CALL_FD })

static __always_inline struct inflight open_call(__u64 flags, int dfd, __u64 up)
{
	struct inflight in = PATH1(open_op(flags), flags & ~O_LARGEFILE_, dfd, up);

	in.is_open = 1;
	return in;
}

static __always_inline __u64 openat2_flags(__u64 uhow)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)uhow);
	return how.flags;
}

/*
 * The write syscalls, one table for every mode: name, x86-64 number, and
 * the call's arguments A(0..5) as a struct inflight. The tracepoint mode
 * expands it into one sys_enter program per syscall; the LSM modes into
 * one fexit program per syscall that decodes the call from the task's
 * saved registers, so every mode reports a call with the same op, path,
 * flags and target. mknod(S_IFREG) creates a regular file without open:
 * reported as create. link/symlink: path is the new name, aux the existing
 * file / the link's content.
 */
#define WRITE_CALLS(X)                                                                                  \
	X(open, 2, open_call(A(1), AT_FDCWD_, A(0)))                                                    \
	X(openat, 257, open_call(A(2), (int)A(0), A(1)))                                                \
	X(openat2, 437, open_call(openat2_flags(A(2)), (int)A(0), A(1)))                                \
	X(creat, 85, open_call(O_CREAT_ | O_WRONLY_ | O_TRUNC_, AT_FDCWD_, A(0)))                       \
	X(truncate, 76, PATH1(AOP_TRUNCATE, 0, AT_FDCWD_, A(0)))                                        \
	X(ftruncate, 77, FD1(AOP_TRUNCATE, 0, (int)A(0)))                                               \
	X(unlink, 87, PATH1(AOP_UNLINK, 0, AT_FDCWD_, A(0)))                                            \
	X(unlinkat, 263,                                                                                \
	  PATH1((A(2) & AT_REMOVEDIR_) ? AOP_RMDIR : AOP_UNLINK, A(2) & AT_REMOVEDIR_, (int)A(0), A(1))) \
	X(rmdir, 84, PATH1(AOP_RMDIR, AT_REMOVEDIR_, AT_FDCWD_, A(0)))                                  \
	X(rename, 82, PATH2(AOP_RENAME, 0, AT_FDCWD_, A(0), AT_FDCWD_, A(1)))                           \
	X(renameat, 264, PATH2(AOP_RENAME, 0, (int)A(0), A(1), (int)A(2), A(3)))                        \
	X(renameat2, 316, PATH2(AOP_RENAME, A(4), (int)A(0), A(1), (int)A(2), A(3)))                    \
	X(chmod, 90, PATH1(AOP_CHMOD, A(1), AT_FDCWD_, A(0)))                                           \
	X(fchmod, 91, FD1(AOP_CHMOD, A(1), (int)A(0)))                                                  \
	X(fchmodat, 268, PATH1(AOP_CHMOD, A(2), (int)A(0), A(1)))                                       \
	X(fchmodat2, 452, PATH1(AOP_CHMOD, A(2), (int)A(0), A(1)))                                      \
	X(chown, 92, PATH1(AOP_CHOWN, 0, AT_FDCWD_, A(0)))                                              \
	X(lchown, 94, PATH1(AOP_CHOWN, 0, AT_FDCWD_, A(0)))                                             \
	X(fchown, 93, FD1(AOP_CHOWN, 0, (int)A(0)))                                                     \
	X(fchownat, 260, PATH1(AOP_CHOWN, 0, (int)A(0), A(1)))                                          \
	X(mknod, 133, PATH1(AOP_CREATE, umasked(A(1)), AT_FDCWD_, A(0)))                                \
	X(mknodat, 259, PATH1(AOP_CREATE, umasked(A(2)), (int)A(0), A(1)))                              \
	X(mkdir, 83, PATH1(AOP_MKDIR, umasked(A(1)) & 07777, AT_FDCWD_, A(0)))                          \
	X(mkdirat, 258, PATH1(AOP_MKDIR, umasked(A(2)) & 07777, (int)A(0), A(1)))                       \
	X(link, 86, PATH2(AOP_LINK, 0, AT_FDCWD_, A(1), AT_FDCWD_, A(0)))                               \
	X(linkat, 265, PATH2(AOP_LINK, 0, (int)A(2), A(3), (int)A(0), A(1)))                            \
	X(symlink, 88, RAW2(AOP_SYMLINK, AT_FDCWD_, A(1), A(0)))                                        \
	X(symlinkat, 266, RAW2(AOP_SYMLINK, (int)A(1), A(2), A(0)))

/* One bit per write syscall (1 << XF_<name>) in audit_exit_fns: its exit
 * program is attached (lsm and fentry modes). */
#define XF_INDEX(name, nr, call) XF_##name,
enum exit_fn { WRITE_CALLS(XF_INDEX) XF_COUNT };

const enum exit_fn *unused_exit_fn __attribute__((unused));

static __always_inline int enter(struct trace_event_raw_sys_enter *ctx, struct inflight *in)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 cgid;

	if (in->is_open && !open_is_write(in->flags))
		return 0; /* opens are filtered on their flags before the map lookup */
	if (!cgroup_armed(&cgid))
		return 0;
	in->nr = (__s32)ctx->id; /* __syscall_nr is an int; the rest of the word is padding */
	in->cgid = cgid;
	if (bpf_map_update_elem(&audit_inflight, &tid, in, BPF_ANY))
		count_lost(cgid, 1); /* table of calls in flight full */
	return 0;
}

#define A(i) (ctx->args[i])
#define SYS_ENTER(name, nr, call)                \
	TP(name)                                \
	{                                       \
		struct inflight in = call;      \
		return enter(ctx, &in);         \
	}
WRITE_CALLS(SYS_ENTER)
#undef A

/*
 * The end of a recorded call, in every mode: emit it when it succeeded, or
 * when the kernel refused it with EACCES/EPERM (denied). For opens, create
 * or open_write by FMODE_CREATED on the returned fd's file.
 */
static __always_inline int call_emit(struct scratch *s, struct inflight *in, long ret)
{
	__u32 plen, alen = 0, kind = AAUX_NONE;
	bool denied = ret < 0;

	if (in->is_open && !denied) {
		struct file *f = fd_file((int)ret);

		if (f)
			in->op = (BPF_CORE_READ(f, f_mode) & FMODE_CREATED_) ? AOP_CREATE : AOP_OPEN_WRITE;
	} else if (in->is_open) {
		/* Refused: whether the file existed is not known here, so the
		 * attempt is an open for writing; O_CREAT in flags says it would
		 * have been created if missing. Never a create that did not
		 * happen, of a file that already existed. */
		in->op = AOP_OPEN_WRITE;
	}
	if (in->kind == CALL_FD) {
		plen = put_fd(s, 0, in->fd);
	} else {
		plen = put_user_path(s, 0, in->dfd, (const char *)in->up);
		if (in->kind == CALL_TWO_PATHS) {
			alen = put_user_path(s, plen, in->dfd2, (const char *)in->up2);
			kind = AAUX_TARGET;
		} else if (in->kind == CALL_PATH_RAW) {
			alen = put_raw(s, plen, (const char *)in->up2, true);
			kind = AAUX_TARGET;
		}
	}
	return audit_emit(s, in->cgid, in->op, in->flags, plen, alen, kind, denied);
}

/* Success, or refused with EACCES/EPERM: reported; other failures (ENOENT,
 * EEXIST…) wrote nothing. */
static __always_inline bool reported_result(long ret)
{
	return ret >= 0 || ret == -EACCES_ || ret == -EPERM_;
}

static __always_inline int call_exit(struct inflight *in, long ret)
{
	struct scratch *s;

	if (!reported_result(ret))
		return 0;
	s = scratch_or_lost(in->cgid);
	if (!s)
		return 0;
	return call_emit(s, in, ret);
}

SEC("tracepoint/syscalls/sys_exit")
int tp_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight *p = bpf_map_lookup_elem(&audit_inflight, &tid);
	struct inflight in;

	if (!p)
		return 0;
	in = *p;
	bpf_map_delete_elem(&audit_inflight, &tid);
	if (in.nr != (__s32)ctx->id)
		return 0;
	return call_exit(&in, ctx->ret);
}

/* ---- syscall exits in the LSM modes (fexit) ---------------------------- */
/*
 * The LSM hooks run before the kernel's permission checks of most writes
 * (may_delete, may_create, the owner check of chmod/chown) and after those
 * of opens and truncates: at the hook, a refusal is either not seen or not
 * yet known. So in the LSM modes a write that comes from a syscall is
 * reported at the exit of its syscall (fexit/__x64_sys_unlinkat…), with the arguments decoded from the syscall's saved
 * registers by the same table as the tracepoint mode — same op, path,
 * flags, target, and denied when refused. The hooks report what no syscall
 * exit covers (io_uring, coredumps, other architectures). audit_exit_fns
 * (set by user space before loading) says which exit programs are attached,
 * so a hook never leaves a call to an exit that is not there.
 */
volatile const __u32 audit_exit_fns = 0;

/* x86-64's saved user registers (CO-RE: the fields exist only there). */
struct pt_regs___x86 {
	unsigned long di, si, dx, r10, r8, r9, orig_ax;
} __attribute__((preserve_access_index));

/* The current task's syscall number and arguments (x86-64: its saved
 * registers); false when not on x86-64. */
static __always_inline bool current_regs(long *nr, __u64 *a)
{
	struct pt_regs___x86 *r = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());

	if (!bpf_core_field_exists(r->orig_ax))
		return false;
	*nr = BPF_CORE_READ(r, orig_ax);
	a[0] = BPF_CORE_READ(r, di);
	a[1] = BPF_CORE_READ(r, si);
	a[2] = BPF_CORE_READ(r, dx);
	a[3] = BPF_CORE_READ(r, r10);
	a[4] = BPF_CORE_READ(r, r8);
	a[5] = BPF_CORE_READ(r, r9);
	return true;
}

/* A hook inside a write syscall whose exit program is attached leaves the
 * call to it. */
static __always_inline bool reported_at_exit(void)
{
	struct pt_regs___x86 *r = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());

	if (!bpf_core_field_exists(r->orig_ax))
		return false;
#define EXIT_OF(name, nr_, call) \
	case nr_:                \
		return audit_exit_fns & (1U << XF_##name);
	switch (BPF_CORE_READ(r, orig_ax)) {
		WRITE_CALLS(EXIT_OF)
	}
	return false;
}

/*
 * The exit programs hand the decoded call to ONE program, fx_emit, by a
 * tail call: it resolves the paths and emits, so the verifier checks the
 * path resolver once per mode instead of once per syscall (28 times). The
 * call goes through audit_exit_call (per CPU) while the caller holds the
 * scratch (so no other audit program on this CPU can touch either).
 * fx_emit is loaded for __x64_sys_openat, never attached: a tail call needs
 * the same attach prototype, long (const struct pt_regs *), which every
 * __x64_sys_* has. audit_exit_tail is pinned: a prog array loses its
 * entries when its last user-space reference goes.
 */
struct exit_call {
	struct inflight in;
	__s64 ret;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exit_call);
} audit_exit_call SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} audit_exit_tail SEC(".maps");

static __always_inline int exit_tail(void *ctx, struct inflight *in, long ret)
{
	__u32 zero = 0;
	struct exit_call *c = bpf_map_lookup_elem(&audit_exit_call, &zero);
	struct scratch *s;

	if (!c)
		return 0;
	s = scratch_or_lost(in->cgid);
	if (!s)
		return 0;
	c->in = *in;
	c->ret = ret;
	bpf_tail_call(ctx, &audit_exit_tail, 0);
	/* No fx_emit installed: the event cannot be made. */
	scratch_put(s);
	count_lost(in->cgid, 1);
	return 0;
}

SEC("fexit/__x64_sys_openat")
int fx_emit(void *ctx)
{
	__u32 zero = 0;
	struct exit_call *c = bpf_map_lookup_elem(&audit_exit_call, &zero);
	struct scratch *s = bpf_map_lookup_elem(&audit_scratch, &zero);
	struct inflight in;

	if (!s)
		return 0;
	if (!c) {
		scratch_put(s);
		return 0;
	}
	in = c->in;
	return call_emit(s, &in, c->ret); /* frees the scratch the caller took */
}

/*
 * fexit/__x64_sys_<syscall>: the syscall's own entry point, reached only
 * through the syscall table (never inlined, never called by io_uring), so
 * its exit sees every such call and its result. The result is checked
 * first (success, or EACCES/EPERM), then the cgroup, then the call is
 * decoded with the table and handed to fx_emit.
 */
#define A(i) (a[i])
#define SYS_EXIT(name, nr_, call)                                          \
	SEC("fexit/__x64_sys_" #name)                                      \
	int fx_##name(void *ctx)                                           \
	{                                                                  \
		struct inflight in;                                        \
		__u64 a[6] = {}, ret = 0, cgid;                            \
		long nr;                                                   \
                                                                           \
		bpf_get_func_ret(ctx, &ret);                               \
		if (!reported_result((long)ret))                           \
			return 0;                                          \
		if (!cgroup_armed(&cgid) || !current_regs(&nr, a))         \
			return 0;                                          \
		in = call;                                                 \
		if (in.is_open && !open_is_write(in.flags))                \
			return 0;                                          \
		in.cgid = cgid;                                            \
		return exit_tail(ctx, &in, (long)ret);                     \
	}
WRITE_CALLS(SYS_EXIT)
#undef A

/* ---- LSM hooks: one body, three attach types ---------------------------- */

/* The scratch of an event seen at a kernel-object hook (LSM, fentry), with
 * its cgroup in *cgid: NULL when the cgroup is not armed, when the write
 * syscall's exit program reports the call, or when no scratch is left (the
 * event is counted lost). */
static __always_inline struct scratch *kernel_hook_scratch(__u64 *cgid)
{
	if (!cgroup_armed(cgid) || reported_at_exit())
		return NULL;
	return scratch_or_lost(*cgid);
}

/* Kernel-object hook (LSM, fentry): (d, vm) is the object, (d2, vm2) the aux
 * path, or raw2 its raw content (symlink). */
static __always_inline void kernel_op(__u32 op, __u32 flags, struct dentry *d, struct vfsmount *vm,
				      struct dentry *d2, struct vfsmount *vm2, const char *raw2)
{
	struct scratch *s;
	__u32 plen, alen = 0, kind = AAUX_NONE;
	__u64 cgid;

	s = kernel_hook_scratch(&cgid);
	if (!s)
		return;
	plen = audit_put_dentry(0, scalar_of(d), scalar_of(vm)) & OFF_MASK;
	if (d2) {
		alen = audit_put_dentry(plen, scalar_of(d2), scalar_of(vm2)) & OFF_MASK;
		kind = AAUX_TARGET;
	} else if (raw2) {
		alen = put_raw(s, plen, raw2, false);
		kind = AAUX_TARGET;
	}
	audit_emit(s, cgid, op, flags, plen, alen, kind, false);
}


/* Opens, creating ones included: file_open runs once the file is there,
 * with FMODE_CREATED set when this open created it, and with the open's
 * flags still in f_flags (O_CREAT/O_TRUNC are cleared only after the hook).
 * The same test as the tracepoint mode's: an open is a write when it asks
 * for writing, creating or truncating. */
static __always_inline void on_file_open(struct file *f)
{
	__u32 mode = BPF_CORE_READ(f, f_mode);
	__u32 flags = BPF_CORE_READ(f, f_flags) & ~O_LARGEFILE_;

	if (!open_is_write(flags) && !(mode & FMODE_CREATED_))
		return;
	kernel_op((mode & FMODE_CREATED_) ? AOP_CREATE : AOP_OPEN_WRITE, flags, BPF_CORE_READ(f, f_path.dentry),
		  BPF_CORE_READ(f, f_path.mnt), NULL, NULL, NULL);
}

/* Inside an open's path walk (current->nameidata set): an O_TRUNC open
 * truncating its file (handle_truncate). The open reports it, with O_TRUNC
 * in its flags, as the tracepoint mode does; truncate(2) and ftruncate(2)
 * call the hooks outside any walk. */
static __always_inline bool in_open_walk(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, nameidata) != NULL;
}

static __always_inline void on_path_truncate(const struct path *p)
{
	if (in_open_walk())
		return;
	kernel_op(AOP_TRUNCATE, 0, BPF_CORE_READ(p, dentry), BPF_CORE_READ(p, mnt), NULL, NULL, NULL);
}

/* ftruncate reaches security_file_truncate, not path_truncate. */
static __always_inline void on_file_truncate(struct file *f)
{
	if (in_open_walk())
		return;
	kernel_op(AOP_TRUNCATE, 0, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_unlink(const struct path *dir, struct dentry *d)
{
	kernel_op(AOP_UNLINK, 0, d, BPF_CORE_READ(dir, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_rmdir(const struct path *dir, struct dentry *d)
{
	kernel_op(AOP_RMDIR, AT_REMOVEDIR_, d, BPF_CORE_READ(dir, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_mkdir(const struct path *dir, struct dentry *d, umode_t mode)
{
	kernel_op(AOP_MKDIR, mode, d, BPF_CORE_READ(dir, mnt), NULL, NULL, NULL);
}

/* mknod(2) only. An O_CREAT open calls this hook too (may_o_create), before
 * the kernel knows whether the file exists — inside the open's path walk,
 * while current->nameidata is set; mknod(2) calls it after its walk ended.
 * Opens are reported by file_open, which knows (FMODE_CREATED). */
static __always_inline void on_path_mknod(const struct path *dir, struct dentry *d, umode_t mode)
{
	if (in_open_walk())
		return;
	kernel_op(AOP_CREATE, mode, d, BPF_CORE_READ(dir, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_chmod(const struct path *p, umode_t mode)
{
	kernel_op(AOP_CHMOD, mode, BPF_CORE_READ(p, dentry), BPF_CORE_READ(p, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_chown(const struct path *p)
{
	kernel_op(AOP_CHOWN, 0, BPF_CORE_READ(p, dentry), BPF_CORE_READ(p, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_rename(const struct path *od, struct dentry *o, const struct path *nd,
					   struct dentry *n, unsigned int flags)
{
	kernel_op(AOP_RENAME, flags, o, BPF_CORE_READ(od, mnt), n, BPF_CORE_READ(nd, mnt), NULL);
}

#define NR_LINK_X86_64 86
#define NR_LINKAT_X86_64 265

/* The existing name a link(2)/linkat(2) passed, from the syscall's saved
 * registers, so the target is reported as given (like the tracepoint
 * mode) rather than resolved. False elsewhere (other arches, io_uring). */
static __always_inline bool link_target_arg(int *dfd, __u64 *up)
{
	struct pt_regs___x86 *r = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
	long nr;

	if (!bpf_core_field_exists(r->orig_ax))
		return false;
	nr = BPF_CORE_READ(r, orig_ax);
	if (nr == NR_LINK_X86_64) {
		*dfd = AT_FDCWD_;
		*up = BPF_CORE_READ(r, di);
		return true;
	}
	if (nr == NR_LINKAT_X86_64) {
		*dfd = (int)BPF_CORE_READ(r, di);
		*up = BPF_CORE_READ(r, si);
		return true;
	}
	return false;
}

static __always_inline void on_path_link(struct dentry *old, const struct path *nd, struct dentry *n)
{
	struct vfsmount *vm = BPF_CORE_READ(nd, mnt);
	struct scratch *s;
	__u32 plen, alen;
	__u64 cgid, up = 0;
	int dfd = 0;

	s = kernel_hook_scratch(&cgid);
	if (!s)
		return;
	plen = audit_put_dentry(0, scalar_of(n), scalar_of(vm)) & OFF_MASK;
	if (link_target_arg(&dfd, &up))
		alen = audit_put_user_path(plen, dfd, up) & OFF_MASK;
	else
		alen = audit_put_dentry(plen, scalar_of(old), scalar_of(vm)) & OFF_MASK;
	audit_emit(s, cgid, AOP_LINK, 0, plen, alen, AAUX_TARGET, false);
}

static __always_inline void on_path_symlink(const struct path *dir, struct dentry *d, const char *old)
{
	kernel_op(AOP_SYMLINK, 0, d, BPF_CORE_READ(dir, mnt), NULL, NULL, old);
}

/*
 * FRONTS(hook, args, call): lsm_cgroup returns 1 (allow), lsm passes on an
 * earlier denial and returns 0, fentry returns 0. Audit only: nothing is
 * denied in any mode today (event.denied stays false).
 */
#define FRONT(sec, prog, ret, call, ...) \
	SEC(sec)                         \
	int BPF_PROG(prog, __VA_ARGS__)  \
	{                                \
		call;                    \
		return ret;              \
	}
#define FRONTS(hook, call, ...)                                          \
	FRONT("lsm_cgroup/" #hook, lsmc_##hook, 1, call, __VA_ARGS__)    \
	FRONT("lsm/" #hook, lsm_##hook, 0, call, __VA_ARGS__)            \
	FRONT("fentry/security_" #hook, fentry_##hook, 0, call, __VA_ARGS__)

FRONTS(file_open, on_file_open(file), struct file *file)
FRONTS(path_truncate, on_path_truncate(path), const struct path *path)
FRONTS(file_truncate, on_file_truncate(file), struct file *file)
FRONTS(path_unlink, on_path_unlink(dir, dentry), const struct path *dir, struct dentry *dentry)
FRONTS(path_rmdir, on_path_rmdir(dir, dentry), const struct path *dir, struct dentry *dentry)
FRONTS(path_mkdir, on_path_mkdir(dir, dentry, mode), const struct path *dir, struct dentry *dentry, umode_t mode)
FRONTS(path_mknod, on_path_mknod(dir, dentry, mode), const struct path *dir, struct dentry *dentry, umode_t mode,
       unsigned int dev)
FRONTS(path_chmod, on_path_chmod(path, mode), const struct path *path, umode_t mode)
FRONTS(path_chown, on_path_chown(path), const struct path *path)
FRONTS(path_rename, on_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags), const struct path *old_dir,
       struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry, unsigned int flags)
FRONTS(path_link, on_path_link(old_dentry, new_dir, new_dentry), struct dentry *old_dentry,
       const struct path *new_dir, struct dentry *new_dentry)
FRONTS(path_symlink, on_path_symlink(dir, dentry, old_name), const struct path *dir, struct dentry *dentry,
       const char *old_name)

/* ---- cgroup/sysctl (every mode) ----------------------------------------- */

#define PROC_SYS "/proc/sys/"
#define PROC_SYS_LEN 10
#define SYSCTL_NAME_CAP 512

SEC("cgroup/sysctl")
int audit_sysctl(struct bpf_sysctl *ctx)
{
	struct scratch *s;
	long n, v;
	__u64 cgid;
	__u32 plen;

	if (!ctx->write || !cgroup_armed(&cgid))
		return 1;
	s = scratch_or_lost(cgid);
	if (!s)
		return 1;
	__builtin_memcpy(s->data, PROC_SYS, PROC_SYS_LEN);
	/* Full name ("net/ipv4/ip_forward"); -E2BIG still fills a truncated name. */
	n = bpf_sysctl_get_name(ctx, s->data + PROC_SYS_LEN, SYSCTL_NAME_CAP, 0);
	if (n == -E2BIG)
		n = SYSCTL_NAME_CAP - 1;
	if (n < 0)
		n = 0;
	plen = (PROC_SYS_LEN + (__u32)n) & 1023;
	v = bpf_sysctl_get_new_value(ctx, s->data + plen, SYSCTL_VALUE_CAP);
	if (v == -E2BIG)
		v = SYSCTL_VALUE_CAP - 1;
	if (v < 0)
		v = 0;
	/* "1\n" as written by echo: the newline is not part of the value. */
	if (v > 0 && s->data[(plen + v - 1) & DATA_MASK] == '\n')
		v--;
	audit_emit(s, cgid, AOP_SYSCTL_WRITE, 0, plen, (__u32)v, AAUX_VALUE, false);
	return 1;
}
