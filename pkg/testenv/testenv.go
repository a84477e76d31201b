// Package testenv gates privileged tests and gives each one throw-away
// kernel state (a bpffs root, named netns) that is removed when it ends.
//
// Rule of the project: a privileged test may skip only when it is not root
// and CI is unset. Under CI=true a missing privilege or tool fails the test.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/podscope/podscope/pkg/pins"
)

// Prefix starts the name of every kernel object a test creates (netns, links,
// bridges, bpffs dirs, cgroups), so leftovers are recognisable and removable.
const Prefix = "pstest"

// InCI reports whether the run is CI's (CI set to anything but "" or "false").
func InCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// RequireRoot skips a privileged test outside CI when not root, and fails it
// under CI.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	Missing(t, "privileged test: needs root")
}

// Missing ends a test whose prerequisite (privilege, tool, environment) is
// missing: under CI=true it fails, otherwise it skips, saying so.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("missing under CI=true (this fails): "+format, args...)
	}
	t.Skipf(format+" (skipped only because CI is unset)", args...)
}

// RequireTool finds an executable on PATH; missing it skips outside CI and
// fails under CI.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	Missing(t, "tool %q not found on PATH: run hack/install-deps.sh", name)
	return ""
}

// Name returns Prefix + a short random suffix, at most 15 characters (an
// interface name's limit).
func Name(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return Prefix + hex.EncodeToString(b)
}

// BPFFSRoot returns a fresh podscope bpffs root under /sys/fs/bpf (mounting
// bpffs there if needed) and removes it, with everything pinned below it,
// when the test ends.
func BPFFSRoot(t testing.TB) pins.Root {
	t.Helper()
	RequireRoot(t)
	if err := pins.MountBPFFS("/sys/fs/bpf"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("/sys/fs/bpf", Name(t))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing bpffs root %s: %v", dir, err)
		}
	})
	return pins.New(dir)
}

// InKernelMatrix reports whether the test runs inside a VM of the qemu
// kernel matrix (`make test-kernels`; hack/kernels/init.sh sets
// PODSCOPE_KERNEL_MATRIX to the VM's name).
func InKernelMatrix() string {
	return os.Getenv("PODSCOPE_KERNEL_MATRIX")
}

// SkipKernelLacks skips a test whose subject this kernel cannot offer. Under
// CI=true on the CI host, whose kernel has everything the tests need, it
// fails instead. Inside the qemu kernel matrix (which also sets CI=true, so
// that a missing tool still fails) it skips with the reason: those VMs boot
// older distribution kernels, some without a feature (6.1 has no BPF
// netfilter links, no TCX) or without a module the VM does not load.
func SkipKernelLacks(t testing.TB, format string, args ...any) {
	t.Helper()
	if vm := InKernelMatrix(); vm != "" {
		t.Skipf("kernel of VM %s lacks it: "+format, append([]any{vm}, args...)...)
	}
	Missing(t, "kernel lacks what the test needs: "+format, args...)
}
