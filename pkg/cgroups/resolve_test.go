package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const (
	mountinfoPure = `25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 25 0:25 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:9 - bpf bpf rw,mode=700
`
	mountinfoHybrid = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	// A test or container bind mount listed before the host's mount.
	mountinfoExtra = `50 23 0:38 /kubepods /run/my\040cgroup rw,relatime - cgroup2 cgroup2 rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	mountinfoOnlyOther = `50 23 0:38 /kubepods /run/my\040cgroup rw,relatime - cgroup2 cgroup2 rw
`
	mountinfoV1 = `32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
`
)

func TestFindUnified(t *testing.T) {
	for _, tc := range []struct {
		name, info string
		want       Mount
	}{
		{"pure v2", mountinfoPure, Mount{Point: "/sys/fs/cgroup", Root: "/"}},
		{"hybrid", mountinfoHybrid, Mount{Point: "/sys/fs/cgroup/unified", Root: "/"}},
		{"preferred over earlier other mount", mountinfoExtra, Mount{Point: "/sys/fs/cgroup/unified", Root: "/"}},
		{"only another mount, unescaped", mountinfoOnlyOther, Mount{Point: "/run/my cgroup", Root: "/kubepods"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FindUnified(strings.NewReader(tc.info))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := FindUnified(strings.NewReader(mountinfoV1)); !errors.Is(err, ErrNoUnified) {
		t.Errorf("v1 only: err = %v, want ErrNoUnified", err)
	}
}

// fakeMount builds a unified hierarchy under a temp dir at the place the
// mountinfo table names (the table's mount point re-rooted under the temp
// dir), creates the container directory rel in it and returns a Resolver.
func fakeMount(t *testing.T, mountinfo, rel string) (*Resolver, string) {
	t.Helper()
	m, err := FindUnified(strings.NewReader(mountinfo))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	m.Point = filepath.Join(tmp, m.Point)
	dir := filepath.Join(m.Point, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &Resolver{Mount: m, Proc: filepath.Join(tmp, "proc")}, dir
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestResolveBothStylesBothMounts(t *testing.T) {
	const id = "0123abcd"
	styles := []struct{ name, cgroupsPath, rel string }{
		{"systemd", "kubepods-besteffort-pod0f1e_22aa.slice:cri-containerd:" + id,
			"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e_22aa.slice/cri-containerd-" + id + ".scope"},
		{"cgroupfs", "/kubepods/besteffort/pod0f1e-22aa/" + id, "kubepods/besteffort/pod0f1e-22aa/" + id},
	}
	mounts := []struct{ name, info, point string }{
		{"pure", mountinfoPure, "sys/fs/cgroup"},
		{"hybrid", mountinfoHybrid, "sys/fs/cgroup/unified"},
	}
	for _, s := range styles {
		for _, m := range mounts {
			t.Run(s.name+"/"+m.name, func(t *testing.T) {
				r, dir := fakeMount(t, m.info, s.rel)
				if !strings.HasSuffix(r.Mount.Point, m.point) {
					t.Fatalf("mount point %s, want …/%s", r.Mount.Point, m.point)
				}
				cg, err := r.Resolve(s.cgroupsPath, 0)
				if err != nil {
					t.Fatal(err)
				}
				if cg.Dir != dir {
					t.Errorf("Dir = %s, want %s", cg.Dir, dir)
				}
				if want := inode(t, dir); cg.ID != want || cg.ID == 0 {
					t.Errorf("ID = %d, want inode %d", cg.ID, want)
				}
				if cg.Source != FromCgroupsPath || cg.Fallback != nil {
					t.Errorf("Source = %s (fallback %v), want %s", cg.Source, cg.Fallback, FromCgroupsPath)
				}
			})
		}
	}
}

func writeProcCgroup(t *testing.T, r *Resolver, pid, content string) {
	t.Helper()
	d := filepath.Join(r.Proc, pid)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "cgroup"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestResolvePIDFallback(t *testing.T) {
	// The runtime put the container somewhere else than its cgroups path
	// says (e.g. the v1 path on a hybrid host): the pid's 0:: line wins.
	r, dir := fakeMount(t, mountinfoHybrid, "elsewhere/ctr1")
	writeProcCgroup(t, r, "4242", "9:name=systemd:/kubepods/x\n4:memory:/kubepods/x\n0::/elsewhere/ctr1\n")

	cg, err := r.Resolve("/kubepods/besteffort/podX/ctr1", 4242)
	if err != nil {
		t.Fatal(err)
	}
	if cg.Dir != dir || cg.ID != inode(t, dir) || cg.Source != FromPID {
		t.Errorf("got %+v, want dir %s from pid", cg, dir)
	}
	if !errors.Is(cg.Fallback, ErrGone) {
		t.Errorf("Fallback = %v, want the missing-directory reason", cg.Fallback)
	}

	// An unparsable path also falls back, and says why.
	cg, err = r.Resolve("garbage", 4242)
	if err != nil || cg.Dir != dir || !errors.Is(cg.Fallback, ErrBadPath) {
		t.Errorf("garbage path: %+v, %v", cg, err)
	}

	// Without a pid the error is the path's.
	if _, err := r.Resolve("garbage", 0); !errors.Is(err, ErrBadPath) {
		t.Errorf("no pid: err = %v, want ErrBadPath", err)
	}
}

func TestResolveErrors(t *testing.T) {
	r, _ := fakeMount(t, mountinfoPure, "kubepods/pod1/live")
	writeProcCgroup(t, r, "10", "0::/\n")
	writeProcCgroup(t, r, "11", "0::/kubepods/pod1/dead (deleted)\n")
	writeProcCgroup(t, r, "12", "4:memory:/kubepods/pod1/x\n")
	writeProcCgroup(t, r, "13", "0::/../../kubepods/pod1/live\n")

	for _, tc := range []struct {
		name, path string
		pid        uint32
		is         error
		mention    string
	}{
		{"gone, no pid", "/kubepods/pod1/dead", 0, ErrGone, "not found"},
		{"gone, pid gone", "/kubepods/pod1/dead", 99, ErrGone, "process gone"},
		{"pid in root cgroup", "/kubepods/pod1/dead", 10, ErrGone, "root cgroup"},
		{"pid cgroup deleted", "/kubepods/pod1/dead", 11, ErrGone, "(deleted)"},
		{"pid without v2 line", "/kubepods/pod1/dead", 12, ErrGone, "no cgroup v2"},
		{"pid outside our cgroup namespace", "/kubepods/pod1/dead", 13, ErrGone, "outside this process's cgroup namespace"},
		{"root path", "/", 0, nil, "root cgroup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg, err := r.Resolve(tc.path, tc.pid)
			if err == nil {
				t.Fatalf("got %+v, want an error", cg)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err %v does not wrap %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("err %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestDirLimitedMount(t *testing.T) {
	r := &Resolver{Mount: Mount{Point: "/host/cgroup", Root: "/kubepods"}}
	got, err := r.Dir("/kubepods/pod1/c1")
	if err != nil || got != "/host/cgroup/pod1/c1" {
		t.Errorf("Dir = %q, %v", got, err)
	}
	if _, err := r.Dir("/system.slice/x"); err == nil {
		t.Error("a cgroup outside the mount's root resolved")
	}
}
