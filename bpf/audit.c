// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * podscope file-write audit: the fronts of every mode. Each front extracts
 * (op, path, aux) from its hook and hands over to audit_emit (audit.h).
 *
 *   lsm_cgroup/<hook>   BPF_LSM_CGROUP, attached to each armed cgroup
 *   lsm/<hook>          BPF LSM, global
 *   fentry/security_*   trampolines on the LSM entry points, global
 *   tracepoint/syscalls/sys_enter_<write syscall>   global, syscall tracepoints
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
#define AT_REMOVEDIR_ 0x200
#define FMODE_WRITE_ 0x2
#define FMODE_CREATED_ 0x100000

/* ---- shared front helpers ---------------------------------------------- */

static __always_inline bool open_is_write(__u64 flags)
{
	return flags & (O_WRONLY_ | O_RDWR_ | O_CREAT_ | O_TRUNC_);
}

static __always_inline __u32 open_op(__u64 flags)
{
	return (flags & O_CREAT_) ? AOP_CREATE : AOP_OPEN_WRITE;
}

/* Path-based syscall: (dfd, up) is the object; (dfd2, up2) the aux path (or
 * raw content when raw2). */
static __always_inline int user_op(__u32 op, __u32 flags, int dfd, const char *up, int dfd2,
				   const char *up2, bool raw2)
{
	struct scratch *s;
	__u32 plen, alen = 0;
	__u64 cgid;

	if (!cgroup_armed(&cgid))
		return 0;
	s = scratch_get();
	if (!s) {
		count_lost(cgid, 1);
		return 0;
	}
	plen = put_user_path(s, 0, dfd, up);
	if (up2) {
		if (raw2)
			alen = put_user_raw(s, plen, up2);
		else
			alen = put_user_path(s, plen, dfd2, up2);
	}
	return audit_emit(s, cgid, op, flags, plen, alen, up2 ? AAUX_TARGET : AAUX_NONE, false);
}

/* fd-based syscall: the path comes from the task's file table. */
static __always_inline int fd_op(__u32 op, __u32 flags, int fd)
{
	struct scratch *s;
	__u64 cgid;
	__u32 plen;

	if (!cgroup_armed(&cgid))
		return 0;
	s = scratch_get();
	if (!s) {
		count_lost(cgid, 1);
		return 0;
	}
	plen = put_fd(s, 0, fd);
	return audit_emit(s, cgid, op, flags, plen, 0, AAUX_NONE, false);
}

/* Kernel-object hook (LSM, fentry): (d, vm) is the object, (d2, vm2) the aux
 * path, or raw2 its raw content (symlink). */
static __always_inline void kernel_op(__u32 op, __u32 flags, struct dentry *d, struct vfsmount *vm,
				      struct dentry *d2, struct vfsmount *vm2, const char *raw2)
{
	struct scratch *s;
	__u32 plen, alen = 0, kind = AAUX_NONE;
	__u64 cgid;

	if (!cgroup_armed(&cgid))
		return;
	s = scratch_get();
	if (!s) {
		count_lost(cgid, 1);
		return;
	}
	plen = put_dentry(s, 0, d, vm);
	if (d2) {
		alen = put_dentry(s, plen, d2, vm2);
		kind = AAUX_TARGET;
	} else if (raw2) {
		alen = put_kernel_raw(s, plen, raw2);
		kind = AAUX_TARGET;
	}
	audit_emit(s, cgid, op, flags, plen, alen, kind, false);
}

/* ---- syscall tracepoints (mode tracepoint) ----------------------------- */

#define TP(name) SEC("tracepoint/syscalls/sys_enter_" #name) int tp_##name(struct trace_event_raw_sys_enter *ctx)
#define ARG(i) (ctx->args[i])
#define UPTR(i) ((const char *)ctx->args[i])

TP(open)
{
	if (!open_is_write(ARG(1)))
		return 0;
	return user_op(open_op(ARG(1)), ARG(1), AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(openat)
{
	if (!open_is_write(ARG(2)))
		return 0;
	return user_op(open_op(ARG(2)), ARG(2), (int)ARG(0), UPTR(1), 0, NULL, false);
}

TP(openat2)
{
	struct open_how how = {};

	if (bpf_probe_read_user(&how, sizeof(how), (void *)ARG(2)) || !open_is_write(how.flags))
		return 0;
	return user_op(open_op(how.flags), how.flags, (int)ARG(0), UPTR(1), 0, NULL, false);
}

TP(creat)
{
	return user_op(AOP_CREATE, O_CREAT_ | O_WRONLY_ | O_TRUNC_, AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(truncate)
{
	return user_op(AOP_TRUNCATE, 0, AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(ftruncate)
{
	return fd_op(AOP_TRUNCATE, 0, (int)ARG(0));
}

TP(unlink)
{
	return user_op(AOP_UNLINK, 0, AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(unlinkat)
{
	__u32 fl = ARG(2);

	return user_op((fl & AT_REMOVEDIR_) ? AOP_RMDIR : AOP_UNLINK, fl, (int)ARG(0), UPTR(1), 0, NULL, false);
}

TP(rmdir)
{
	return user_op(AOP_RMDIR, 0, AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(rename)
{
	return user_op(AOP_RENAME, 0, AT_FDCWD_, UPTR(0), AT_FDCWD_, UPTR(1), false);
}

TP(renameat)
{
	return user_op(AOP_RENAME, 0, (int)ARG(0), UPTR(1), (int)ARG(2), UPTR(3), false);
}

TP(renameat2)
{
	return user_op(AOP_RENAME, ARG(4), (int)ARG(0), UPTR(1), (int)ARG(2), UPTR(3), false);
}

TP(chmod)
{
	return user_op(AOP_CHMOD, ARG(1), AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(fchmod)
{
	return fd_op(AOP_CHMOD, ARG(1), (int)ARG(0));
}

TP(fchmodat)
{
	return user_op(AOP_CHMOD, ARG(2), (int)ARG(0), UPTR(1), 0, NULL, false);
}

TP(fchmodat2)
{
	return user_op(AOP_CHMOD, ARG(2), (int)ARG(0), UPTR(1), 0, NULL, false);
}

TP(chown)
{
	return user_op(AOP_CHOWN, 0, AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(lchown)
{
	return user_op(AOP_CHOWN, 0, AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(fchown)
{
	return fd_op(AOP_CHOWN, 0, (int)ARG(0));
}

TP(fchownat)
{
	return user_op(AOP_CHOWN, ARG(4), (int)ARG(0), UPTR(1), 0, NULL, false);
}

TP(mkdir)
{
	return user_op(AOP_MKDIR, ARG(1), AT_FDCWD_, UPTR(0), 0, NULL, false);
}

TP(mkdirat)
{
	return user_op(AOP_MKDIR, ARG(2), (int)ARG(0), UPTR(1), 0, NULL, false);
}

/* link/symlink: path is the new name, aux the existing file / link content. */
TP(link)
{
	return user_op(AOP_LINK, 0, AT_FDCWD_, UPTR(1), AT_FDCWD_, UPTR(0), false);
}

TP(linkat)
{
	return user_op(AOP_LINK, ARG(4), (int)ARG(2), UPTR(3), (int)ARG(0), UPTR(1), false);
}

TP(symlink)
{
	return user_op(AOP_SYMLINK, 0, AT_FDCWD_, UPTR(1), 0, UPTR(0), true);
}

TP(symlinkat)
{
	return user_op(AOP_SYMLINK, 0, (int)ARG(1), UPTR(2), 0, UPTR(0), true);
}

/* ---- LSM hooks: one body, three attach types ---------------------------- */

static __always_inline void on_file_open(struct file *f)
{
	__u32 mode = BPF_CORE_READ(f, f_mode);
	__u32 flags = BPF_CORE_READ(f, f_flags);

	if (!(mode & FMODE_WRITE_) && !(mode & FMODE_CREATED_))
		return;
	kernel_op((mode & FMODE_CREATED_) ? AOP_CREATE : AOP_OPEN_WRITE, flags, BPF_CORE_READ(f, f_path.dentry),
		  BPF_CORE_READ(f, f_path.mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_truncate(const struct path *p)
{
	kernel_op(AOP_TRUNCATE, 0, BPF_CORE_READ(p, dentry), BPF_CORE_READ(p, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_unlink(const struct path *dir, struct dentry *d)
{
	kernel_op(AOP_UNLINK, 0, d, BPF_CORE_READ(dir, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_rmdir(const struct path *dir, struct dentry *d)
{
	kernel_op(AOP_RMDIR, 0, d, BPF_CORE_READ(dir, mnt), NULL, NULL, NULL);
}

static __always_inline void on_path_mkdir(const struct path *dir, struct dentry *d, umode_t mode)
{
	kernel_op(AOP_MKDIR, mode, d, BPF_CORE_READ(dir, mnt), NULL, NULL, NULL);
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

static __always_inline void on_path_link(struct dentry *old, const struct path *nd, struct dentry *n)
{
	struct vfsmount *vm = BPF_CORE_READ(nd, mnt);

	kernel_op(AOP_LINK, 0, n, vm, old, vm, NULL);
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
#define FRONTS(hook, call, ...)                                                           \
	SEC("lsm_cgroup/" #hook)                                                          \
	int BPF_PROG(lsmc_##hook, __VA_ARGS__)                                            \
	{                                                                                 \
		call;                                                                     \
		return 1;                                                                 \
	}                                                                                 \
	SEC("lsm/" #hook)                                                                 \
	int BPF_PROG(lsm_##hook, __VA_ARGS__)                                             \
	{                                                                                 \
		call;                                                                     \
		return 0;                                                                 \
	}                                                                                 \
	SEC("fentry/security_" #hook)                                                     \
	int BPF_PROG(fentry_##hook, __VA_ARGS__)                                          \
	{                                                                                 \
		call;                                                                     \
		return 0;                                                                 \
	}

FRONTS(file_open, on_file_open(file), struct file *file)
FRONTS(path_truncate, on_path_truncate(path), const struct path *path)
FRONTS(path_unlink, on_path_unlink(dir, dentry), const struct path *dir, struct dentry *dentry)
FRONTS(path_rmdir, on_path_rmdir(dir, dentry), const struct path *dir, struct dentry *dentry)
FRONTS(path_mkdir, on_path_mkdir(dir, dentry, mode), const struct path *dir, struct dentry *dentry, umode_t mode)
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
	s = scratch_get();
	if (!s) {
		count_lost(cgid, 1);
		return 1;
	}
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
