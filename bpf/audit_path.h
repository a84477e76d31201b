/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Paths as the container sees them.
 *
 * Kernel-side objects (a struct path, an fd's file, a dentry) are turned into
 * a string by walking d_parent and, at each mount root, mnt_mountpoint of the
 * parent mount, until the current task's root (task->fs->root): a container's
 * root is its rootfs, so the walk stops there and the result is the path
 * inside the container. A bind mount is walked through its own mountpoint, so
 * the path is the one the process used to reach it.
 *
 * A user pointer (path-based syscalls) is reported as passed when absolute;
 * a relative one is prefixed with the walk of the cwd (AT_FDCWD) or of the
 * dirfd's file.
 */
#ifndef PODSCOPE_AUDIT_PATH_H
#define PODSCOPE_AUDIT_PATH_H

#include "audit.h"

#define AT_FDCWD_ -100
#define E2BIG 7
#define WALK_MAX_DEPTH 64
#define NAME_MASK 255

struct walk_ctx {
	struct dentry *d;
	struct vfsmount *vm;
	struct mount *m;
	struct dentry *root_d;
	struct vfsmount *root_vm;
	__u32 off; /* next free byte is tmp[off-1]; the string is tmp[off..PATH_CAP) */
	__u32 truncated;
};

static __always_inline struct mount *real_mount_of(struct vfsmount *vm)
{
	return (struct mount *)((void *)vm - bpf_core_field_offset(struct mount, mnt));
}

static long walk_step(__u64 i, struct walk_ctx *c)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&audit_scratch, &zero);
	/* Plain locals: BPF_CORE_READ(c->x, …) would relocate walk_ctx too. */
	struct dentry *d = c->d, *mnt_root, *parent;
	struct vfsmount *vm = c->vm;
	struct mount *m = c->m;
	const unsigned char *name;
	__u32 len;

	if (!s)
		return 1;
	if (d == c->root_d && vm == c->root_vm)
		return 1;
	mnt_root = BPF_CORE_READ(vm, mnt_root);
	if (d == mnt_root) {
		struct mount *up = BPF_CORE_READ(m, mnt_parent);

		if (up == m || !up)
			return 1; /* root of the mount tree (or a detached mount) */
		c->d = BPF_CORE_READ(m, mnt_mountpoint);
		c->m = up;
		c->vm = (struct vfsmount *)((void *)up + bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (parent == d || !parent)
		return 1;
	len = BPF_CORE_READ(d, d_name.len);
	name = BPF_CORE_READ(d, d_name.name);
	len &= NAME_MASK;
	if (len + 1 > c->off) {
		c->truncated = 1;
		return 1;
	}
	c->off -= len + 1;
	bpf_probe_read_kernel(s->tmp + ((c->off + 1) & OFF_MASK), len, name);
	s->tmp[c->off & OFF_MASK] = '/';
	c->d = parent;
	return 0;
}

/*
 * The path helpers below are global (non-static, noinline) functions: the
 * verifier checks each once per program instead of once per call site, which
 * keeps the two-path fronts (renameat2, linkat) far below its limits.
 * Kernel and user pointers cross them as u64.
 */
#define AUDIT_GLOBAL __attribute__((noinline))

/* Walk (dentry, vfsmount) up to the task's root into s->tmp; returns the
 * offset of the string start in tmp (PATH_CAP means "/"). */
static __always_inline __u32 walk_dentry(struct dentry *d, struct vfsmount *vm)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct walk_ctx c = {};

	c.d = d;
	c.vm = vm;
	c.m = real_mount_of(vm);
	c.root_d = BPF_CORE_READ(task, fs, root.dentry);
	c.root_vm = BPF_CORE_READ(task, fs, root.mnt);
	c.off = PATH_CAP;
	bpf_loop(WALK_MAX_DEPTH, walk_step, &c, 0);
	return c.off;
}

/* Copy the walked string to s->data[dst..]; "/" for the root itself. */
static __always_inline __u32 put_walked(struct scratch *s, __u32 dst, __u32 off)
{
	__u32 len;

	dst &= OFF_MASK;
	if (off >= PATH_CAP) {
		s->data[dst] = '/';
		return 1;
	}
	len = PATH_CAP - off;
	if (dst + len > PATH_CAP - 1)
		len = PATH_CAP - 1 - dst;
	bpf_probe_read_kernel(s->data + dst, len & OFF_MASK, s->tmp + (off & OFF_MASK));
	return len & OFF_MASK;
}

/* (dentry, vfsmount) as a path string at s->data[dst..]; returns its length. */
AUDIT_GLOBAL __u32 audit_put_dentry(__u32 dst, __u64 dentry, __u64 vfsmount)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&audit_scratch, &zero);

	if (!s)
		return 0;
	return put_walked(s, dst, walk_dentry((struct dentry *)dentry, (struct vfsmount *)vfsmount));
}

static __always_inline struct file *fd_file(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;

	if (!fdt || fd < 0 || (__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&f, sizeof(f), fds + fd);
	return f;
}

/* Path of an open fd, as the task sees it. */
AUDIT_GLOBAL __u32 audit_put_fd(__u32 dst, int fd)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&audit_scratch, &zero);
	struct file *f = fd_file(fd);

	if (!s)
		return 0;
	if (!f) {
		s->data[dst & OFF_MASK] = '?';
		return 1;
	}
	return put_walked(s, dst, walk_dentry(BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt)));
}

static __always_inline __u32 put_fd(struct scratch *s, __u32 dst, int fd)
{
	return audit_put_fd(dst, fd) & OFF_MASK;
}

/* Directory a relative path is resolved against: the cwd or dirfd's file.
 * One walk call site, so the walk is verified once per caller. */
static __always_inline __u32 walk_dir(int dfd, bool *ok)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct dentry *d;
	struct vfsmount *vm;
	struct file *f;

	*ok = true;
	if (dfd == AT_FDCWD_) {
		d = BPF_CORE_READ(task, fs, pwd.dentry);
		vm = BPF_CORE_READ(task, fs, pwd.mnt);
	} else {
		f = fd_file(dfd);
		if (!f) {
			*ok = false;
			return PATH_CAP;
		}
		d = BPF_CORE_READ(f, f_path.dentry);
		vm = BPF_CORE_READ(f, f_path.mnt);
	}
	return walk_dentry(d, vm);
}

/*
 * The path a path-based syscall passed (dfd, upath), made absolute: as passed
 * when it starts with '/', else the walk of dfd (or the cwd) + '/' + upath
 * with leading "./" dropped. An empty upath (AT_EMPTY_PATH) is dfd itself.
 * Written to s->data[dst..]; returns its length (no NUL).
 */
AUDIT_GLOBAL __u32 audit_put_user_path(__u32 dst, int dfd, __u64 upath)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&audit_scratch, &zero);
	const char *up = (const char *)upath;
	__u32 skip = 0, rlen, w, off;
	long n;
	bool ok;

	if (!s)
		return 0;
	n = bpf_probe_read_user_str(s->ustr, sizeof(s->ustr), up);
	dst &= OFF_MASK;
	if (n <= 0) {
		s->ustr[0] = 0;
		n = 1;
	}
	rlen = (__u32)(n - 1) & OFF_MASK;
	if (rlen > 0 && s->ustr[0] == '/') {
		if (dst + rlen > PATH_CAP - 1)
			rlen = PATH_CAP - 1 - dst;
		bpf_probe_read_kernel(s->data + dst, rlen & OFF_MASK, s->ustr);
		return rlen & OFF_MASK;
	}
	/* Relative: drop up to four leading "./" and a lone ".". */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (rlen >= skip + 2 && s->ustr[skip & OFF_MASK] == '.' && s->ustr[(skip + 1) & OFF_MASK] == '/')
			skip += 2;
	}
	if (rlen == skip + 1 && s->ustr[skip & OFF_MASK] == '.')
		skip++;
	rlen -= skip;

	off = walk_dir(dfd, &ok);
	if (!ok) {
		s->data[dst] = '?';
		w = 1;
	} else {
		w = put_walked(s, dst, off);
		if (off >= PATH_CAP && rlen > 0)
			w = 0; /* cwd is "/": do not print "//" */
	}
	if (rlen == 0)
		return w;
	w &= OFF_MASK;
	if (dst + w + 1 + rlen > PATH_CAP - 1) {
		if (dst + w + 1 >= PATH_CAP - 1)
			return w;
		rlen = PATH_CAP - 2 - dst - w;
	}
	s->data[(dst + w) & OFF_MASK] = '/';
	w++;
	bpf_probe_read_kernel(s->data + ((dst + w) & OFF_MASK), rlen & OFF_MASK,
			      s->ustr + (skip & OFF_MASK));
	return (w + rlen) & OFF_MASK;
}

static __always_inline __u32 put_user_path(struct scratch *s, __u32 dst, int dfd, const char *up)
{
	return audit_put_user_path(dst, dfd, (__u64)up) & OFF_MASK;
}

/* A string copied as is (symlink content): from user memory (syscalls)
 * or kernel memory (LSM hooks). */
static __always_inline __u32 put_raw(struct scratch *s, __u32 dst, const char *p, bool user)
{
	long n;

	dst &= OFF_MASK;
	n = user ? bpf_probe_read_user_str(s->data + dst, AUX_CAP, p) :
		   bpf_probe_read_kernel_str(s->data + dst, AUX_CAP, p);
	if (n <= 0)
		return 0;
	return (__u32)(n - 1) & OFF_MASK;
}

#endif
