package audit

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/testenv"
)

// TestStrongModeProgramsLoadOrEPERM loads every lsm_cgroup, lsm and fentry
// program on its own: each must load, or be refused by the kernel with
// EPERM (trampolines not allowed here). A missing attach target, a CO-RE
// failure or a verifier rejection is our bug and fails the test, so the
// probe's fallback never hides one.
func TestStrongModeProgramsLoadOrEPERM(t *testing.T) {
	testenv.RequireRoot(t)
	spec, err := loadAudit()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range []Mode{ModeLSMCgroup, ModeLSM, ModeFentry} {
		for _, name := range progNames(spec, m) {
			n++
			s := spec.Copy()
			for _, ms := range s.Maps {
				ms.Pinning = ebpf.PinNone
			}
			s.Maps["audit_events"].MaxEntries = 1 << 16
			s.Programs = map[string]*ebpf.ProgramSpec{name: spec.Programs[name]}
			coll, err := ebpf.NewCollection(s)
			switch {
			case err == nil:
				coll.Close()
			case errors.Is(err, syscall.EPERM):
			default:
				t.Errorf("%s (%s): %v", name, m, err)
			}
		}
	}
	if n != 36 {
		t.Fatalf("%d programs in modes lsm_cgroup/lsm/fentry, want 12 hooks x 3", n)
	}
}

// TestForcedModeRefusedLeavesNothing: forcing a mode the kernel refuses
// fails Open with the reason, pins no program or link, and a later Open
// without force falls back to the probed mode.
func TestForcedModeRefusedLeavesNothing(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	t.Cleanup(func() { Cleanup(root) })
	forced, err := Open(root, Options{Mode: ModeLSM})
	if err == nil {
		// A kernel that allows BPF LSM: the forced mode must be the one in use.
		defer forced.Close()
		if forced.Mode() != ModeLSM || !forced.Probe().Forced {
			t.Fatalf("forced lsm loaded but reports %s", forced.Probe())
		}
		return
	}
	if !strings.Contains(err.Error(), "operation not permitted") || !strings.Contains(err.Error(), "lsm") {
		t.Fatalf("forced lsm: %v; want the mode and the kernel's reason", err)
	}
	entries, _ := os.ReadDir(root.Dir(Owner))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), progPrefix) || strings.HasPrefix(e.Name(), linkPrefix) {
			t.Errorf("refused mode left pin %s", e.Name())
		}
	}
	if m, err := PinnedMode(root); !errors.Is(err, ErrNotLoaded) {
		t.Errorf("PinnedMode after a refused Open = %q, %v; want ErrNotLoaded", m, err)
	}
	a, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Mode() != ModeTracepoint {
		t.Fatalf("fallback mode %s, want tracepoint", a.Mode())
	}
}
