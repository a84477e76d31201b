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
// program (hooks and syscall exits) on its own: each must load, or be refused by the kernel with
// EPERM (trampolines not allowed here), or have no hook in this kernel
// (then the mode drops it and says so). A CO-RE failure or a verifier
// rejection is our bug and fails the test, so the probe's fallback never
// hides one. lsm_cgroup programs may also fail for want of an attach BTF id,
// which cilium/ebpf v0.22 does not look up for BPF_LSM_CGROUP (see
// docs/audit.md): that refusal is logged.
func TestStrongModeProgramsLoadOrEPERM(t *testing.T) {
	testenv.RequireRoot(t)
	spec, err := loadAudit()
	if err != nil {
		t.Fatal(err)
	}
	n, loaded := 0, 0
	for _, m := range []Mode{ModeLSMCgroup, ModeLSM, ModeFentry} {
		all := progNames(spec, m)
		n += len(all)
		names, missing := availablePrograms(spec, m, all)
		if len(missing) > 0 {
			t.Logf("%s: not in this kernel: %v", m, missing)
		}
		for _, name := range names {
			s := spec.Copy()
			for _, ms := range s.Maps {
				ms.Pinning = ebpf.PinNone
			}
			s.Maps["audit_events"].MaxEntries = 1 << 16
			s.Programs = map[string]*ebpf.ProgramSpec{name: spec.Programs[name]}
			coll, err := ebpf.NewCollection(s)
			switch {
			case err == nil:
				loaded++
				coll.Close()
			case errors.Is(err, syscall.EPERM):
			case m == ModeLSMCgroup && strings.Contains(err.Error(), "btf_id"):
				t.Logf("%s: %v", name, firstLine(err.Error()))
			default:
				t.Errorf("%s (%s): %v", name, m, err)
			}
		}
	}
	if n != 94 {
		t.Fatalf("%d programs in modes lsm_cgroup/lsm/fentry, want 12 hooks x 3 + (28 syscall exits + fx_emit) x 2 (lsm, fentry)", n)
	}
	t.Logf("%d of %d programs loaded", loaded, n)
}

// TestForcedModeRefusedLeavesNothing: forcing a mode the probe refuses
// fails Open with the mode and the kernel's reason, pins no program or
// link, and a later Open without force takes the probed mode.
func TestForcedModeRefusedLeavesNothing(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	t.Cleanup(func() { Cleanup(root) })
	probe := ProbeModes("")
	if len(probe.Refused) == 0 {
		testenv.SkipKernelLacks(t, "the probe refused no mode on this kernel (%s): nothing to force", probe)
	}
	m := probe.Refused[len(probe.Refused)-1].Mode
	forced, err := Open(root, Options{Mode: m})
	if err == nil {
		forced.Close()
		t.Fatalf("forced %s opened, though the probe refused it: %s", m, probe)
	}
	if !strings.Contains(err.Error(), string(m)) {
		t.Fatalf("forced %s: %v; want the mode and the kernel's reason", m, err)
	}
	t.Logf("forced %s: %v", m, err)
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
	if a.Mode() != probe.Mode {
		t.Fatalf("fallback mode %s, want the probe's %s", a.Mode(), probe.Mode)
	}
}

// TestExitProgramsCoverEveryWriteSyscall: the lsm and fentry modes have an
// exit program on __x64_sys_<syscall> for exactly the syscalls the
// tracepoint mode records, and setExitFns marks one distinct bit for each
// (a hook leaves a syscall to its exit only when that bit is set).
func TestExitProgramsCoverEveryWriteSyscall(t *testing.T) {
	spec, err := loadAudit()
	if err != nil {
		t.Fatal(err)
	}
	tp := map[string]bool{}
	for _, n := range progNames(spec, ModeTracepoint) {
		if n != tpExitProg {
			tp[strings.TrimPrefix(n, "tp_")] = true
		}
	}
	for _, m := range []Mode{ModeLSM, ModeFentry} {
		var exits []string
		for _, n := range progNames(spec, m) {
			if !strings.HasPrefix(n, exitPrefix) || n == exitEmitProg {
				continue
			}
			exits = append(exits, n)
			call := strings.TrimPrefix(n, exitPrefix)
			if !tp[call] {
				t.Errorf("%s: exit program %s for a syscall the tracepoint mode does not record", m, n)
			}
			if got := spec.Programs[n].AttachTo; got != "__x64_sys_"+call {
				t.Errorf("%s attaches to %s, want __x64_sys_%s", n, got, call)
			}
		}
		if len(exits) != len(tp) {
			t.Errorf("%s: %d exit programs, want one per recorded syscall (%d)", m, len(exits), len(tp))
		}
		s := spec.Copy()
		if err := setExitFns(s, exits); err != nil {
			t.Fatal(err)
		}
		var bits uint32
		if err := s.Variables["audit_exit_fns"].Get(&bits); err != nil {
			t.Fatal(err)
		}
		if n := popcount(bits); n != len(tp) {
			t.Errorf("%s: audit_exit_fns %#x has %d bits, want %d", m, bits, n, len(tp))
		}
	}
	if len(tp) != 28 {
		t.Errorf("%d write syscalls recorded, want 28 (docs/audit.md)", len(tp))
	}
}

func popcount(v uint32) int {
	n := 0
	for ; v != 0; v &= v - 1 {
		n++
	}
	return n
}
