package cgroups

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/testenv"
)

// TestRealCgroupID checks on the machine's own unified hierarchy that the
// inode Resolve reports is the kernel's cgroup id, taken independently from
// the cgroup's file handle (kernfs encodes the 64-bit id in it), for both
// the cgroupfs path and the pid fallback.
func TestRealCgroupID(t *testing.T) {
	testenv.RequireRoot(t)
	r, err := NewResolver("")
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.Name(t)
	dir := filepath.Join(r.Mount.Point, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing test cgroup: %v", err)
		}
	})

	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	if err != nil {
		t.Fatalf("name_to_handle_at %s: %v", dir, err)
	}
	if len(h.Bytes()) < 8 {
		t.Fatalf("file handle of %d bytes, want a 64-bit cgroup id", len(h.Bytes()))
	}
	kernelID := binary.NativeEndian.Uint64(h.Bytes()[:8])

	cg, err := r.Resolve("/"+name, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cg.ID != kernelID || cg.Dir != dir {
		t.Errorf("Resolve = %+v, want dir %s id %d", cg, dir, kernelID)
	}

	// The pid fallback through the real /proc: a child moved into the test
	// cgroup is found from its pid when the cgroups path names nothing.
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Registered after the rmdir cleanup, so it runs first: the cgroup
		// must be empty before it can be removed.
		_ = child.Process.Kill()
		_ = child.Wait()
	})
	procs := filepath.Join(dir, "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(child.Process.Pid)), 0o644); err != nil {
		t.Fatalf("moving pid %d into %s: %v", child.Process.Pid, dir, err)
	}
	cg, err = r.Resolve("/"+name+"-missing", uint32(child.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if cg.Source != FromPID || cg.ID != kernelID || cg.Dir != dir {
		t.Errorf("pid fallback = %+v, want dir %s id %d from pid", cg, dir, kernelID)
	}
}

// TestScratch checks that Scratch makes a real, empty cgroup (the kernel
// fills it with its interface files) on the unified mount by default.
func TestScratch(t *testing.T) {
	testenv.RequireRoot(t)
	m, err := FindUnifiedSelf()
	if err != nil {
		t.Fatal(err)
	}
	prefix := testenv.Name(t) + "-"
	dir, err := Scratch("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	if filepath.Dir(dir) != m.Point || !strings.HasPrefix(filepath.Base(dir), prefix) {
		t.Fatalf("Scratch made %s, want %s/%s*", dir, m.Point, prefix)
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil || len(procs) != 0 {
		t.Fatalf("%s is not an empty cgroup: cgroup.procs %q, %v", dir, procs, err)
	}
	if _, err := Scratch(filepath.Join(t.TempDir(), "nope"), "x-"); err == nil || !strings.Contains(err.Error(), "scratch cgroup") {
		t.Fatalf("Scratch under a missing root: %v, want a scratch cgroup error", err)
	}
}
