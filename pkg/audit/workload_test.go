package audit

// Workloads the privileged tests run as child processes (this test binary
// re-executed with workloadEnv set), born inside a test cgroup.

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	workloadEnv = "PODSCOPE_AUDIT_TEST_WORKLOAD"
	dirEnv      = "PODSCOPE_AUDIT_TEST_DIR"
	countEnv    = "PODSCOPE_AUDIT_TEST_COUNT"
	netnsEnv    = "PODSCOPE_AUDIT_TEST_PARENT_NETNS"
)

func TestMain(m *testing.M) {
	if w := os.Getenv(workloadEnv); w != "" {
		if err := runWorkload(w); err != nil {
			fmt.Fprintf(os.Stderr, "workload %s: %v\n", w, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runWorkload(name string) error {
	d := os.Getenv(dirEnv)
	switch name {
	case "ops":
		return opsWorkload(d)
	case "writes":
		n, err := strconv.Atoi(os.Getenv(countEnv))
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			fd, err := unix.Open(filepath.Join(d, "f"+strconv.Itoa(i)), unix.O_CREAT|unix.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			unix.Close(fd)
		}
		return nil
	case "loop":
		// open(O_WRONLY|O_TRUNC) + 4 KiB write + close over pre-created
		// files f0..fN-1 (same=1: always f0, so the programs fold); prints
		// ns per iteration.
		n, err := strconv.Atoi(os.Getenv(countEnv))
		if err != nil {
			return err
		}
		same := os.Getenv("PODSCOPE_AUDIT_TEST_SAME") == "1"
		if os.Getenv("PODSCOPE_AUDIT_TEST_GETPPID") == "1" {
			// n x 20 getppid calls (a getppid is far cheaper than the
			// write loop's iteration); ns per call.
			var ru0, ru1 unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &ru0)
			start := time.Now()
			for i := 0; i < 20*n; i++ {
				unix.Getppid()
			}
			wall := time.Since(start)
			unix.Getrusage(unix.RUSAGE_SELF, &ru1)
			cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
			fmt.Println(wall.Nanoseconds()/int64(20*n), cpu/int64(20*n))
			return nil
		}
		names := make([]string, n)
		for i := range names {
			if same {
				names[i] = filepath.Join(d, "f0")
			} else {
				names[i] = filepath.Join(d, "f"+strconv.Itoa(i))
			}
		}
		buf := make([]byte, 4096)
		var ru0, ru1 unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru0); err != nil {
			return err
		}
		start := time.Now()
		for _, name := range names {
			fd, err := unix.Open(name, unix.O_WRONLY|unix.O_TRUNC, 0)
			if err != nil {
				return err
			}
			if _, err := unix.Write(fd, buf); err != nil {
				return err
			}
			unix.Close(fd)
		}
		wall := time.Since(start)
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru1); err != nil {
			return err
		}
		// CPU time of this process (user+system: the audit programs run in
		// the writer's syscalls) is what the writer pays, whatever else the
		// machine is doing; wall time shows the contention too.
		cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		fmt.Println(wall.Nanoseconds()/int64(n), cpu.Nanoseconds()/int64(n))
		return nil
	case "denied":
		// As nobody: a write the kernel refuses (EACCES) is reported as
		// denied; one that fails otherwise (ENOENT) is not reported.
		if err := syscall.Setuid(65534); err != nil {
			return err
		}
		if _, err := unix.Open(filepath.Join(d, "secret"), unix.O_WRONLY, 0); err != unix.EACCES {
			return fmt.Errorf("open secret as nobody: %v, want EACCES", err)
		}
		// `echo x >> secret`: O_CREAT of a file that exists, refused.
		if _, err := unix.Open(filepath.Join(d, "secret"), unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND, 0o644); err != unix.EACCES {
			return fmt.Errorf("append to secret as nobody: %v, want EACCES", err)
		}
		if _, err := unix.Open(filepath.Join(d, "missing", "x"), unix.O_WRONLY|unix.O_CREAT, 0o600); err != unix.ENOENT {
			return fmt.Errorf("open missing/x: %v, want ENOENT", err)
		}
		return nil
	case "mixed":
		// Root: open f for writing and chmod it, twice; then as nobody the
		// same, refused (EACCES, EPERM).
		f := filepath.Join(d, "rootonly")
		for _, as := range []int{0, 65534} {
			if as != 0 {
				if err := syscall.Setuid(as); err != nil {
					return err
				}
			}
			for i := 0; i < 2; i++ {
				fd, err := unix.Open(f, unix.O_WRONLY, 0)
				if as != 0 && err != unix.EACCES || as == 0 && err != nil {
					return fmt.Errorf("open as %d: %v", as, err)
				}
				if err == nil {
					unix.Close(fd)
				}
				err = unix.Chmod(f, 0o644)
				if as != 0 && err != unix.EPERM || as == 0 && err != nil {
					return fmt.Errorf("chmod as %d: %v", as, err)
				}
			}
		}
		return nil
	case "repeat":
		// Each of f0..fN-1 opened for writing 3 times, interleaved.
		n, err := strconv.Atoi(os.Getenv(countEnv))
		if err != nil {
			return err
		}
		for r := 0; r < 3; r++ {
			for i := 0; i < n; i++ {
				fd, err := unix.Open(filepath.Join(d, "f"+strconv.Itoa(i)), unix.O_WRONLY, 0)
				if err != nil {
					return err
				}
				unix.Close(fd)
			}
		}
		return nil
	case "same":
		for i := 0; i < 5; i++ {
			fd, err := unix.Open(filepath.Join(d, "same"), unix.O_WRONLY, 0)
			if err != nil {
				return err
			}
			unix.Close(fd)
		}
		return nil
	case "sysctl":
		// Refuse to write unless this process is in a network namespace of
		// its own: /proc/sys/net is the writer's netns, never the host's here.
		var st unix.Stat_t
		if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
			return err
		}
		if strconv.FormatUint(st.Ino, 10) == os.Getenv(netnsEnv) {
			return fmt.Errorf("still in the parent's network namespace: not writing a sysctl")
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0)
	}
	return fmt.Errorf("unknown workload %q", name)
}

func bytePtr(s string) uintptr {
	p, err := unix.BytePtrFromString(s)
	if err != nil {
		panic(err)
	}
	return uintptr(unsafe.Pointer(p))
}

// raw issues the legacy (non-*at) syscalls that Go's wrappers never use.
func raw(nr uintptr, args ...uintptr) error {
	var a [3]uintptr
	copy(a[:], args)
	r, _, e := unix.Syscall(nr, a[0], a[1], a[2])
	if e != 0 {
		return e
	}
	if nr == unix.SYS_OPEN || nr == unix.SYS_CREAT {
		unix.Close(int(r))
	}
	return nil
}

// opFixture lays out dir for opsWorkload (run by the parent, outside the
// armed cgroup) and returns the fd the child gets as fd 3: a file opened
// before the child exists, written through in the child.
func opFixture(dir string) (*os.File, error) {
	for _, d := range []string{"dirfd", "bind-src", "mnt", "root"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"abs-write", "trunc-me", "chmod-rel", "chown-abs", "dirfd/fchmodat-me",
		"dirfd/fchownat-me", "link-src", "rename-a", "renameat-a", "renameat2-a", "unlink-me",
		"dirfd/unlinkat-me", "bind-src/existing", "root/inroot", "fdfile", "otrunc-me", "ocreat-trunc-me"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.Symlink("abs-write", filepath.Join(dir, "lchown-link")); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(dir, "fdfile"), os.O_RDWR, 0)
}

type wantEvent struct {
	op, path, target string
	flags            uint32
}

// haveFchmodat2 reports whether this kernel has fchmodat2 (Linux 6.6+):
// the ops workload calls it only then (ENOSYS otherwise).
func haveFchmodat2(t *testing.T) bool {
	_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, ^uintptr(99), bytePtr(t.TempDir()), 0o755, 0, 0, 0) // AT_FDCWD
	return e != unix.ENOSYS
}

// opsWant is what opsWorkload must produce, in order, for fixture dir d;
// the same in every mode.
func opsWant(d string, fchmodat2 bool) []wantEvent {
	j := func(p ...string) string { return filepath.Join(append([]string{d}, p...)...) }
	want := []wantEvent{
		{"create", j("rel-create"), "", unix.O_CREAT | unix.O_WRONLY},
		{"open_write", j("abs-write"), "", unix.O_WRONLY},
		{"create", j("creat-abs"), "", unix.O_CREAT | unix.O_WRONLY | unix.O_TRUNC},
		{"create", j("openat2-rel"), "", unix.O_CREAT | unix.O_WRONLY},
		{"create", j("open-legacy-rel"), "", unix.O_CREAT | unix.O_WRONLY | unix.O_TRUNC},
		// An O_TRUNC open is one open_write (no separate truncate), and
		// O_CREAT|O_TRUNC of an existing file creates nothing.
		{"open_write", j("otrunc-me"), "", unix.O_WRONLY | unix.O_TRUNC},
		{"open_write", j("ocreat-trunc-me"), "", unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC},
		{"truncate", j("trunc-me"), "", 0},
		{"truncate", j("fdfile"), "", 0},
		{"chmod", j("fdfile"), "", 0o600},
		{"chown", j("fdfile"), "", 0},
		{"chmod", j("chmod-rel"), "", 0o640},
		{"chmod", j("dirfd", "fchmodat-me"), "", 0o600},
		{"chmod", j("dirfd"), "", 0o755}, // fchmodat2(AT_EMPTY_PATH), removed below without it
		{"chown", j("chown-abs"), "", 0},
		{"chown", j("lchown-link"), "", 0},
		{"chown", j("dirfd", "fchownat-me"), "", 0},
		{"create", j("mknod-fifo"), "", unix.S_IFIFO | 0o600},
		{"create", j("dirfd", "mknodat-reg"), "", unix.S_IFREG | 0o600},
		{"mkdir", j("mkdir-rel"), "", 0o755},
		{"mkdir", j("dirfd", "mkdirat-sub"), "", 0o700},
		{"rmdir", j("mkdir-rel"), "", unix.AT_REMOVEDIR}, // rmdir(2) is unlinkat(AT_REMOVEDIR)
		{"rmdir", j("dirfd", "mkdirat-sub"), "", unix.AT_REMOVEDIR},
		{"link", j("link-dst"), j("link-src"), 0},
		{"link", j("linkat-dst"), d + "/dirfd/../link-src", 0}, // reported as resolved, not normalised
		{"symlink", j("sym-rel"), "some/target", 0},
		{"symlink", j("dirfd", "symat"), "/abs/target", 0},
		{"rename", j("rename-a"), j("rename-b"), 0},
		{"rename", j("renameat-a"), j("dirfd", "renameat-b"), 0},
		{"rename", j("renameat2-a"), j("dirfd", "renameat2-b"), unix.RENAME_NOREPLACE},
		{"unlink", j("unlink-me"), "", 0},
		{"unlink", j("dirfd", "unlinkat-me"), "", 0},
		// Through a bind mount of bind-src on mnt (child's own mount ns).
		{"create", j("mnt", "viabind"), "", unix.O_CREAT | unix.O_WRONLY},
		{"create", j("mnt", "relbind"), "", unix.O_CREAT | unix.O_WRONLY},
		{"chmod", j("mnt", "existing"), "", 0o600},
		// After chroot(d/root): paths as the (container's) root sees them.
		{"create", "/inroot-new", "", unix.O_CREAT | unix.O_WRONLY},
		{"chmod", "/inroot", "", 0o600},
		{"mkdir", "/relchroot", "", 0o755},
	}
	if !fchmodat2 {
		for i, w := range want {
			if w.path == j("dirfd") && w.op == "chmod" {
				want = append(want[:i], want[i+1:]...)
				break
			}
		}
	}
	return want
}

// opsWorkload performs every audited operation once, each on its own path
// (identical ones would be folded), mixing absolute and relative paths,
// dirfds, an fd inherited from the parent, a bind mount and a chroot.
func opsWorkload(d string) error {
	const inherited = 3
	steps := []struct {
		name string
		do   func() error
	}{
		{"chdir", func() error { return unix.Chdir(d) }},
		{"openat rel", func() error {
			fd, err := unix.Openat(unix.AT_FDCWD, "rel-create", unix.O_CREAT|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}},
		{"open abs", func() error { return raw(unix.SYS_OPEN, bytePtr(filepath.Join(d, "abs-write")), unix.O_WRONLY) }},
		{"creat", func() error { return raw(unix.SYS_CREAT, bytePtr(filepath.Join(d, "creat-abs")), 0o644) }},
		{"openat2", func() error {
			fd, err := unix.Openat2(unix.AT_FDCWD, "openat2-rel", &unix.OpenHow{Flags: unix.O_CREAT | unix.O_WRONLY, Mode: 0o644})
			if err == nil {
				unix.Close(fd)
			}
			return err
		}},
		{"open rel", func() error {
			return raw(unix.SYS_OPEN, bytePtr("./open-legacy-rel"), unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC, 0o644)
		}},
		{"open O_TRUNC", func() error { return raw(unix.SYS_OPEN, bytePtr("otrunc-me"), unix.O_WRONLY|unix.O_TRUNC) }},
		{"open O_CREAT|O_TRUNC existing", func() error {
			return raw(unix.SYS_OPEN, bytePtr("ocreat-trunc-me"), unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, 0o644)
		}},
		{"truncate", func() error { return raw(unix.SYS_TRUNCATE, bytePtr(filepath.Join(d, "trunc-me")), 0) }},
		{"ftruncate", func() error { return unix.Ftruncate(inherited, 0) }},
		{"fchmod", func() error { return unix.Fchmod(inherited, 0o600) }},
		{"fchown", func() error { return unix.Fchown(inherited, 0, 0) }},
		{"chmod", func() error { return raw(unix.SYS_CHMOD, bytePtr("chmod-rel"), 0o640) }},
		{"dirfd", func() error { return nil }},
	}
	var dirfd int
	steps[len(steps)-1].do = func() (err error) { dirfd, err = unix.Open("dirfd", unix.O_RDONLY|unix.O_DIRECTORY, 0); return }
	steps = append(steps, []struct {
		name string
		do   func() error
	}{
		{"fchmodat", func() error { return unix.Fchmodat(dirfd, "fchmodat-me", 0o600, 0) }},
		{"fchmodat2 empty path", func() error {
			_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(dirfd), bytePtr(""), 0o755, unix.AT_EMPTY_PATH, 0, 0)
			if e == unix.ENOSYS {
				return nil // before Linux 6.6: the parent expects no event
			}
			if e != 0 {
				return e
			}
			return nil
		}},
		{"chown", func() error { return raw(unix.SYS_CHOWN, bytePtr(filepath.Join(d, "chown-abs")), 0, 0) }},
		{"lchown", func() error { return raw(unix.SYS_LCHOWN, bytePtr("lchown-link"), 0, 0) }},
		{"fchownat", func() error { return unix.Fchownat(dirfd, "fchownat-me", 0, 0, 0) }},
		{"mknod", func() error { return raw(unix.SYS_MKNOD, bytePtr("mknod-fifo"), unix.S_IFIFO|0o600, 0) }},
		{"mknodat", func() error { return unix.Mknodat(dirfd, "mknodat-reg", unix.S_IFREG|0o600, 0) }},
		{"mkdir", func() error { return raw(unix.SYS_MKDIR, bytePtr("mkdir-rel"), 0o755) }},
		{"mkdirat", func() error { return unix.Mkdirat(dirfd, "mkdirat-sub", 0o700) }},
		{"rmdir", func() error { return raw(unix.SYS_RMDIR, bytePtr(filepath.Join(d, "mkdir-rel"))) }},
		{"unlinkat rmdir", func() error { return unix.Unlinkat(dirfd, "mkdirat-sub", unix.AT_REMOVEDIR) }},
		{"link", func() error { return raw(unix.SYS_LINK, bytePtr("link-src"), bytePtr("link-dst")) }},
		{"linkat", func() error { return unix.Linkat(dirfd, "../link-src", unix.AT_FDCWD, "linkat-dst", 0) }},
		{"symlink", func() error { return raw(unix.SYS_SYMLINK, bytePtr("some/target"), bytePtr("sym-rel")) }},
		{"symlinkat", func() error { return unix.Symlinkat("/abs/target", dirfd, "symat") }},
		{"rename", func() error { return raw(unix.SYS_RENAME, bytePtr("rename-a"), bytePtr("rename-b")) }},
		{"renameat", func() error { return unix.Renameat(unix.AT_FDCWD, "renameat-a", dirfd, "renameat-b") }},
		{"renameat2", func() error {
			return unix.Renameat2(unix.AT_FDCWD, "renameat2-a", dirfd, "renameat2-b", unix.RENAME_NOREPLACE)
		}},
		{"unlink", func() error { return raw(unix.SYS_UNLINK, bytePtr(filepath.Join(d, "unlink-me"))) }},
		{"unlinkat", func() error { return unix.Unlinkat(dirfd, "unlinkat-me", 0) }},
		{"bind mount", func() error {
			return unix.Mount(filepath.Join(d, "bind-src"), filepath.Join(d, "mnt"), "", unix.MS_BIND, "")
		}},
		{"create via bind", func() error {
			fd, err := unix.Open(filepath.Join(d, "mnt", "viabind"), unix.O_CREAT|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}},
		{"relative in bind", func() error {
			if err := unix.Chdir(filepath.Join(d, "mnt")); err != nil {
				return err
			}
			fd, err := unix.Open("relbind", unix.O_CREAT|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}},
		{"fd via bind", func() error {
			fd, err := unix.Open(filepath.Join(d, "mnt", "existing"), unix.O_RDONLY, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Fchmod(fd, 0o600)
		}},
		{"chroot", func() error {
			if err := syscall.Chroot(filepath.Join(d, "root")); err != nil {
				return err
			}
			return unix.Chdir("/")
		}},
		{"create in chroot", func() error {
			fd, err := unix.Open("/inroot-new", unix.O_CREAT|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}},
		{"fd in chroot", func() error {
			fd, err := unix.Open("inroot", unix.O_RDONLY, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Fchmod(fd, 0o600)
		}},
		{"mkdir in chroot", func() error { return raw(unix.SYS_MKDIR, bytePtr("relchroot"), 0o755) }},
	}...)
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}
