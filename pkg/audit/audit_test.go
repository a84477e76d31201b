package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// Environment of the kernel matrix (hack/kernels, make test-kernels):
// PODSCOPE_AUDIT_TEST_MODE forces the mode every harness opens ("" = the
// probe's); PODSCOPE_AUDIT_TEST_EXPECT_PROBE is the mode the probe must
// choose on that kernel configuration; PODSCOPE_AUDIT_TEST_BURST and
// PODSCOPE_AUDIT_TEST_LOSS shrink the two load tests under emulation.
const (
	modeEnv        = "PODSCOPE_AUDIT_TEST_MODE"
	expectProbeEnv = "PODSCOPE_AUDIT_TEST_EXPECT_PROBE"
)

func testMode() Mode { return Mode(os.Getenv(modeEnv)) }

// TestProbe: the probe takes a mode only after proving it whole, and says
// for every stronger mode which step refused it. The chosen mode must be
// the one the matrix expects on this kernel, when it says.
func TestProbe(t *testing.T) {
	testenv.RequireRoot(t)
	res := ProbeModes("")
	t.Logf("probe: %s", res)
	if !res.Mode.Valid() {
		t.Fatalf("probe found no mode: %s", res)
	}
	if want := Mode(os.Getenv(expectProbeEnv)); want != "" && res.Mode != want {
		t.Fatalf("probe chose %s, want %s on this kernel: %s", res.Mode, want, res)
	}
	i := 0
	for ; Modes[i] != res.Mode; i++ {
	}
	if len(res.Refused) != i {
		t.Fatalf("chose %s (mode %d of %v) with %d refusals, want one per stronger mode: %+v", res.Mode, i+1, Modes, len(res.Refused), res.Refused)
	}
	for j, r := range res.Refused {
		if r.Mode != Modes[j] || r.Reason == "" {
			t.Errorf("refusal %d = %+v, want mode %s with a reason", j, r, Modes[j])
		}
		if !strings.Contains(r.Reason, "load") && !strings.Contains(r.Reason, "attach") && !strings.Contains(r.Reason, "no event") {
			t.Errorf("refusal of %s does not say which step failed: %q", r.Mode, r.Reason)
		}
	}
}

// harness: one Auditor (tracepoint mode, own bpffs root) with a running
// reader collecting every event.
type harness struct {
	a      *Auditor
	stop   func() // stops the reader (idempotent)
	cgRoot string
	mu     sync.Mutex
	events []Event
	last   time.Time
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	testenv.RequireRoot(t)
	root := testenv.BPFFSRoot(t)
	cgRoot, err := cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a, err := Open(root, Options{Mode: testMode(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Open (probe + load + attach) took %v: %s; not seen: %v", time.Since(start), a.Probe(), a.Missing())
	t.Cleanup(func() {
		a.Close()
		if err := Cleanup(root); err != nil {
			t.Error(err)
		}
	})
	h := &harness{a: a, cgRoot: cgRoot}
	h.read(t, a)
	t.Cleanup(h.stop)
	return h
}

// read starts a reader on a collecting into h.events; h.stop ends it.
func (h *harness) read(t *testing.T, a *Auditor) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, func(ev Event) {
			h.mu.Lock()
			h.events = append(h.events, ev)
			h.last = time.Now()
			h.mu.Unlock()
		})
	}()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// cgroup creates a fresh cgroup v2 directory, removed at the end.
func (h *harness) cgroup(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(h.cgRoot, testenv.Name(t))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing cgroup %s: %v", dir, err)
		}
	})
	return dir
}

type childOpts struct {
	env     []string
	files   []*os.File
	unshare uintptr
}

// run re-executes the test binary as workload w, born in cgroup cg (it runs
// no instruction outside it), and returns its pid once it exited cleanly.
func (h *harness) run(t *testing.T, cg, w string, o childOpts) int {
	t.Helper()
	cgfd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgfd)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), workloadEnv+"="+w), o.env...)
	cmd.ExtraFiles = o.files
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd, Unshareflags: o.unshare}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("workload %s: %v: %s", w, err, out)
	}
	return cmd.Process.Pid
}

// settle waits until the reader has been quiet for a while (records reach
// it within the poll interval).
func (h *harness) settle() {
	time.Sleep(3 * pollInterval)
	for {
		h.mu.Lock()
		quiet := time.Since(h.last) > 4*pollInterval
		h.mu.Unlock()
		if quiet {
			return
		}
		time.Sleep(pollInterval)
	}
}

// waitFor waits (up to 30 s: the reader may be starved on a loaded CI
// machine) until n events match, then settles to catch any extra ones.
func (h *harness) waitFor(match func(Event) bool, n int) {
	h.waitUntil(func() bool { return len(h.take(match)) >= n })
}

func (h *harness) waitUntil(done func() bool) {
	for deadline := time.Now().Add(30 * time.Second); !done() && time.Now().Before(deadline); {
		time.Sleep(pollInterval)
	}
	h.settle()
}

func (h *harness) take(match func(Event) bool) []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Event
	for _, ev := range h.events {
		if match(ev) {
			out = append(out, ev)
		}
	}
	return out
}

func realDir(t *testing.T) string {
	d, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestAudit(t *testing.T) {
	h := newHarness(t)
	if m := testMode(); m != "" && h.a.Mode() != m {
		t.Fatalf("mode %s, want the forced %s", h.a.Mode(), m)
	}
	t.Logf("mode %s", h.a.Mode())
	id := Identity{Identity: pods.Identity{Namespace: "ns1", Pod: "pod1", PodUID: "uid-1"}, Container: "c1", ContainerID: "abc123"}

	t.Run("every op, exact events", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		if again, err := h.a.Arm(cg, id); err != nil || again != cgid {
			t.Fatalf("second Arm = %d, %v; want %d (idempotent)", again, err, cgid)
		}
		d := realDir(t)
		fd, err := opFixture(d)
		if err != nil {
			t.Fatal(err)
		}
		defer fd.Close()
		want := opsWant(d, haveFchmodat2(t))
		pid := h.run(t, cg, "ops", childOpts{env: []string{dirEnv + "=" + d}, files: []*os.File{fd}, unshare: unix.CLONE_NEWNS})
		h.waitFor(func(ev Event) bool { return ev.CgroupID == cgid }, len(want))
		got := h.take(func(ev Event) bool { return ev.CgroupID == cgid })
		comm := filepath.Base(os.Args[0])
		if len(comm) > 15 {
			comm = comm[:15]
		}
		for i, ev := range got {
			if ev.PID != uint32(pid) || ev.Comm != comm || ev.UID != 0 || ev.Count != 1 || ev.Denied ||
				ev.Namespace != id.Namespace || ev.Pod != id.Pod || ev.PodUID != id.PodUID ||
				ev.Container != id.Container || ev.ContainerID != id.ContainerID {
				t.Errorf("event %d: %+v: want pid %d comm %q uid 0 count 1 and identity %+v", i, ev, pid, comm, id)
			}
			if time.Since(ev.Time) > time.Minute || time.Until(ev.Time) > time.Second {
				t.Errorf("event %d: time %v is not now", i, ev.Time)
			}
		}
		var gotW []wantEvent
		for _, ev := range got {
			gotW = append(gotW, wantEvent{ev.Op, ev.Path, ev.Target, ev.Flags})
		}
		if diff := diffEvents(want, gotW); diff != "" {
			t.Errorf("events differ (-want +got):\n%s", diff)
		}
	})

	t.Run("agrees with strace, refused writes included", func(t *testing.T) { straceOracle(t, h) })

	t.Run("unarmed sibling produces none", func(t *testing.T) {
		armed := h.cgroup(t)
		sibling := h.cgroup(t)
		cgid, err := h.a.Arm(armed, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		sib, err := cgroups.V2ID(sibling)
		if err != nil {
			t.Fatal(err)
		}
		d := realDir(t)
		pid := h.run(t, sibling, "writes", childOpts{env: []string{dirEnv + "=" + d, countEnv + "=50"}})
		armedPid := h.run(t, armed, "writes", childOpts{env: []string{dirEnv + "=" + realDir(t), countEnv + "=3"}})
		h.waitFor(func(ev Event) bool { return ev.PID == uint32(armedPid) }, 3)
		if evs := h.take(func(ev Event) bool { return ev.CgroupID == sib || ev.PID == uint32(pid) }); len(evs) != 0 {
			t.Fatalf("unarmed sibling cgroup produced %d events, first %+v", len(evs), evs[0])
		}
		// The same workload in the armed cgroup is seen: the check above is not vacuous.
		if evs := h.take(func(ev Event) bool { return ev.PID == uint32(armedPid) }); len(evs) != 3 {
			t.Fatalf("armed cgroup: %d events, want 3", len(evs))
		}
	})

	t.Run("sub-cgroup of an armed cgroup is audited as it", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		inner := filepath.Join(cg, "inner", "deeper")
		if err := os.MkdirAll(inner, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(inner); os.Remove(filepath.Dir(inner)) })
		d := realDir(t)
		pid := h.run(t, inner, "writes", childOpts{env: []string{dirEnv + "=" + d, countEnv + "=4"}})
		h.waitFor(func(ev Event) bool { return ev.PID == uint32(pid) }, 4)
		got := h.take(func(ev Event) bool { return ev.PID == uint32(pid) })
		if len(got) != 4 {
			t.Fatalf("writes in %s (under the armed cgroup): %d events, want 4: %+v", inner, len(got), got)
		}
		for _, ev := range got {
			if ev.CgroupID != cgid || ev.Pod != id.Pod || ev.Op != "create" {
				t.Fatalf("event %+v: want it attributed to the armed cgroup %d (%s)", ev, cgid, id.Pod)
			}
		}
	})

	t.Run("sysctl write in own netns", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		var st unix.Stat_t
		if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
			t.Fatal(err)
		}
		pid := h.run(t, cg, "sysctl", childOpts{
			env:     []string{netnsEnv + "=" + strconv.FormatUint(st.Ino, 10)},
			unshare: unix.CLONE_NEWNET,
		})
		h.waitFor(func(ev Event) bool { return ev.PID == uint32(pid) }, 2)
		got := h.take(func(ev Event) bool { return ev.PID == uint32(pid) })
		var sys, open int
		for _, ev := range got {
			switch {
			case ev.Op == "sysctl_write" && ev.Path == "/proc/sys/net/ipv4/ip_forward" && ev.Value == "1" && ev.CgroupID == cgid:
				sys++
			// os.WriteFile opens with O_CREAT, but the file exists: the open
			// is open_write (FMODE_CREATED unset), then the sysctl write.
			case ev.Op == "open_write" && ev.Path == "/proc/sys/net/ipv4/ip_forward":
				open++
			default:
				t.Errorf("unexpected event %+v", ev)
			}
		}
		if sys != 1 || open != 1 {
			t.Fatalf("want one sysctl_write (value 1) and one open_write of /proc/sys/net/ipv4/ip_forward, got %+v", got)
		}
	})

	t.Run("refused write is denied, failed one is not reported", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		d := shmDir(t) // its parents are searchable by nobody, unlike t.TempDir's
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "secret"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		pid := h.run(t, cg, "denied", childOpts{env: []string{dirEnv + "=" + d}})
		// A mark written after the refused and the failed opens: once its
		// event is in, anything about them would be too.
		mark := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + realDir(t), countEnv + "=1"}})
		h.waitFor(func(ev Event) bool { return ev.PID == uint32(mark) }, 1)
		got := h.take(func(ev Event) bool { return ev.CgroupID == cgid && ev.PID == uint32(pid) })
		// What each mode is documented to see (docs/audit.md "Refusals"):
		// tracepoint everywhere, lsm and fentry on x86-64 (syscall exits);
		// lsm_cgroup never.
		m := h.a.Mode()
		want := m == ModeTracepoint || (m == ModeLSM || m == ModeFentry) && runtime.GOARCH == "amd64"
		if m.SeesRefusals() != want {
			t.Fatalf("mode %s on %s: SeesRefusals() = %v, documented %v", m, runtime.GOARCH, m.SeesRefusals(), want)
		}
		if !h.a.Mode().SeesRefusals() {
			// The kernel refuses the open before the LSM hook: not seen.
			if len(got) != 0 {
				t.Fatalf("mode %s says it cannot see refusals, yet reported %+v", h.a.Mode(), got)
			}
			return
		}
		if len(got) != 2 {
			t.Fatalf("want exactly two events (the refused opens), got %+v", got)
		}
		// A refused open is labelled by what it attempted: writing a file
		// (with O_CREAT in its flags when it would have created it), never a
		// create of a file that exists.
		for i, flags := range []uint32{unix.O_WRONLY, unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND} {
			ev := got[i]
			if !ev.Denied || ev.Op != "open_write" || ev.Flags != flags || ev.Path != filepath.Join(d, "secret") || ev.UID != 65534 || ev.PID != uint32(pid) {
				t.Fatalf("event %+v: want a denied open_write (flags %#o) of %s by uid 65534 pid %d", ev, flags, filepath.Join(d, "secret"), pid)
			}
		}
	})

	t.Run("folding keeps who, what and the outcome apart", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		d := shmDir(t)
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(d, "rootonly")
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		// Root opens and chmods f twice, then nobody tries the same,
		// twice, within one fold window: nothing of nobody's may be
		// folded into root's lines, nor a chmod into an open.
		pid := h.run(t, cg, "mixed", childOpts{env: []string{dirEnv + "=" + d}})
		want := map[string]uint32{ // op uid denied -> operations
			"open_write 0 false": 2, "chmod 0 false": 2, "open_write 65534 true": 2, "chmod 65534 true": 2,
		}
		if !h.a.Mode().SeesRefusals() {
			// At the LSM hook (Mode.SeesRefusals): the refused opens are
			// not seen, the refused chmods are attempts — still apart from
			// root's.
			want = map[string]uint32{"open_write 0 false": 2, "chmod 0 false": 2, "chmod 65534 false": 2}
		}
		sum := func() map[string]uint32 {
			out := map[string]uint32{}
			for _, ev := range h.take(func(ev Event) bool { return ev.CgroupID == cgid }) {
				out[fmt.Sprintf("%s %d %v", ev.Op, ev.UID, ev.Denied)] += ev.Count
			}
			return out
		}
		h.waitUntil(func() bool { return fmt.Sprint(sum()) == fmt.Sprint(want) })
		if got := sum(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("operations by (op uid denied) = %v, want %v: %+v", got, want, h.take(func(ev Event) bool { return ev.CgroupID == cgid }))
		}
		for _, ev := range h.take(func(ev Event) bool { return ev.CgroupID == cgid }) {
			if ev.Path != f || ev.PID != uint32(pid) || ev.SeveralPIDs {
				t.Errorf("event %+v: want path %s, pid %d, one pid", ev, f, pid)
			}
			if ev.Count > 1 && (ev.Last.Before(ev.Time) || ev.Last.IsZero()) {
				t.Errorf("fold line %+v: last %v before first %v", ev, ev.Last, ev.Time)
			}
		}
	})

	t.Run("fold lines name their own path", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		d := realDir(t)
		const files, reps = 300, 3
		for i := 0; i < files; i++ {
			if err := os.WriteFile(filepath.Join(d, "f"+strconv.Itoa(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		h.run(t, cg, "repeat", childOpts{env: []string{dirEnv + "=" + d, countEnv + "=" + strconv.Itoa(files)}})
		per := func() map[string]uint32 {
			out := map[string]uint32{}
			for _, ev := range h.take(func(ev Event) bool { return ev.CgroupID == cgid }) {
				out[ev.Op+" "+ev.Path] += ev.Count
			}
			return out
		}
		h.waitUntil(func() bool {
			n := uint32(0)
			for _, c := range per() {
				n += c
			}
			return n >= files*reps
		})
		got := per()
		if len(got) != files {
			t.Errorf("%d distinct (op, path), want %d", len(got), files)
		}
		for i := 0; i < files; i++ {
			k := "open_write " + filepath.Join(d, "f"+strconv.Itoa(i))
			if got[k] != reps {
				t.Errorf("%s: %d operations, want %d", k, got[k], reps)
			}
		}
	})

	t.Run("repeats folded, count kept", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		d := realDir(t)
		if err := os.WriteFile(filepath.Join(d, "same"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		pid := h.run(t, cg, "same", childOpts{env: []string{dirEnv + "=" + d}})
		// The folded repeats are flushed by Run's sweep once the window has
		// passed: wait for them (bounded), then check exactly.
		var got []Event
		var total uint32
		for deadline := time.Now().Add(2*foldWindow + time.Second); ; {
			h.settle()
			got = h.take(func(ev Event) bool { return ev.CgroupID == cgid })
			total = 0
			for _, ev := range got {
				total += ev.Count
			}
			if total >= 5 || time.Now().After(deadline) {
				break
			}
			time.Sleep(pollInterval)
		}
		for _, ev := range got {
			if ev.Op != "open_write" || ev.Path != filepath.Join(d, "same") || ev.PID != uint32(pid) {
				t.Errorf("unexpected event %+v", ev)
			}
		}
		if total != 5 || len(got) != 2 || got[0].Count != 1 || got[1].Count != 4 {
			t.Fatalf("5 identical opens gave %d events with counts summing to %d, want the first (count 1) and a fold line of the 4 repeats: %+v", len(got), total, got)
		}
		if f := got[1]; f.Last.Before(f.Time) || f.Time.Before(got[0].Time) || f.SeveralPIDs {
			t.Fatalf("fold line %+v: want first >= the first event's time, last >= first, one pid", f)
		}
	})

	t.Run("disarm stops events", func(t *testing.T) {
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		armed, err := h.a.Armed()
		if err != nil || armed[cgid] != id {
			t.Fatalf("Armed() = %v, %v; want %d -> %+v", armed, err, cgid, id)
		}
		if err := h.a.Disarm(cgid); err != nil {
			t.Fatal(err)
		}
		if err := h.a.Disarm(cgid); err != nil {
			t.Fatalf("second Disarm: %v (must be idempotent)", err)
		}
		if armed, _ := h.a.Armed(); len(armed) != 0 {
			if _, still := armed[cgid]; still {
				t.Fatalf("cgroup %d still armed after Disarm", cgid)
			}
		}
		pid := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + realDir(t), countEnv + "=20"}})
		h.settle()
		if evs := h.take(func(ev Event) bool { return ev.CgroupID == cgid || ev.PID == uint32(pid) }); len(evs) != 0 {
			t.Fatalf("disarmed cgroup produced %d events, first %+v", len(evs), evs[0])
		}
		entries, _ := os.ReadDir(h.a.dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), cgLinkPrefix+strconv.FormatUint(cgid, 10)+"_") {
				t.Errorf("link pin %s left after Disarm", e.Name())
			}
		}
	})

	t.Run("burst of distinct writes: delivered + lost == done", func(t *testing.T) {
		n := envInt("PODSCOPE_AUDIT_TEST_BURST", 200000)
		cg := h.cgroup(t)
		cgid, err := h.a.Arm(cg, id)
		if err != nil {
			t.Fatal(err)
		}
		defer h.a.Disarm(cgid)
		d := shmDir(t) // tmpfs: offer the events as fast as the kernel can create files
		start := time.Now()
		pid := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + d, countEnv + "=" + strconv.Itoa(n)}})
		took := time.Since(start)
		h.waitUntil(func() bool {
			var sum uint64
			for _, ev := range h.take(func(ev Event) bool { return ev.CgroupID == cgid }) {
				sum += uint64(ev.Count)
			}
			lost, _ := h.a.Lost()
			return sum+lost[cgid] >= uint64(n)
		})
		got := h.take(func(ev Event) bool { return ev.CgroupID == cgid })
		var delivered uint64
		seen := make(map[string]bool, len(got))
		for _, ev := range got {
			if ev.PID != uint32(pid) || ev.Op != "create" || !strings.HasPrefix(ev.Path, d+"/f") || seen[ev.Path] {
				t.Fatalf("unexpected or duplicate event %+v", ev)
			}
			seen[ev.Path] = true
			delivered += uint64(ev.Count)
		}
		lost, err := h.a.Lost()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("burst: %d writes in %v (%.0f events/s offered), delivered %d, lost %d",
			n, took, float64(n)/took.Seconds(), delivered, lost[cgid])
		if delivered+lost[cgid] != uint64(n) {
			t.Fatalf("delivered %d + lost %d != %d operations", delivered, lost[cgid], n)
		}
	})
}

// TestLossIsCountedExactly provokes losses: a 1 MiB ring, no reader while
// 50,000 distinct files are created, so most records cannot be reserved.
// Every operation must then be either delivered or counted lost for its
// cgroup — never silently dropped.
func TestLossIsCountedExactly(t *testing.T) {
	testenv.RequireRoot(t)
	root := testenv.BPFFSRoot(t)
	a, err := Open(root, Options{Mode: testMode(), ringBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); Cleanup(root) })
	h := &harness{a: a}
	if h.cgRoot, err = cgroup2Root(); err != nil {
		t.Fatal(err)
	}
	cg := h.cgroup(t)
	cgid, err := a.Arm(cg, Identity{Identity: pods.Identity{Pod: "lossy"}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Disarm(cgid)
	n := uint64(envInt("PODSCOPE_AUDIT_TEST_LOSS", 50000))
	pid := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + shmDir(t), countEnv + "=" + strconv.FormatUint(n, 10)}})
	lost, err := a.Lost()
	if err != nil {
		t.Fatal(err)
	}
	if lost[cgid] == 0 {
		t.Fatalf("no loss with a 1 MiB ring and no reader for %d events: the test provokes nothing", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var got atomic.Uint64
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, func(ev Event) {
			if ev.PID == uint32(pid) && ev.Op == "create" && ev.CgroupID == cgid {
				got.Add(uint64(ev.Count))
			}
		})
	}()
	// Drain (bounded: a starved reader on a loaded machine), then a little
	// more to catch anything extra.
	for deadline := time.Now().Add(30 * time.Second); got.Load()+lost[cgid] < n && time.Now().Before(deadline); {
		time.Sleep(pollInterval)
	}
	time.Sleep(3 * pollInterval)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	delivered := got.Load()
	t.Logf("%d operations: %d delivered from the ring, %d counted lost", n, delivered, lost[cgid])
	if delivered+lost[cgid] != n {
		t.Fatalf("delivered %d + lost %d != %d", delivered, lost[cgid], n)
	}
}

// TestRestartKeepsState: a second Open on the same root (a daemon restart)
// reuses the pinned mode, programs, links and armed cgroups with their
// identities, without probing again.
func TestRestartKeepsState(t *testing.T) {
	h := newHarness(t)
	cg := h.cgroup(t)
	id := Identity{Identity: pods.Identity{Namespace: "ns", Pod: "p", PodUID: "u"}, Container: "c", ContainerID: "cid"}
	cgid, err := h.a.Arm(cg, id)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b, err := Open(h.a.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() }) // after the reader on b stops (cleanups run in reverse)
	t.Logf("reopen took %v", time.Since(start))
	mode := h.a.Mode()
	if !b.Probe().Reused || b.Mode() != mode {
		t.Fatalf("reopen: %s, want the pinned %s mode reused", b.Probe(), mode)
	}
	// The refusals of the first start's probe survive the restart.
	if got, want := b.Probe().Refused, h.a.Probe().Refused; fmt.Sprint(got) != fmt.Sprint(want) || b.Probe().Forced != h.a.Probe().Forced {
		t.Fatalf("reopen refusals %v, want the first probe's %v", got, want)
	}
	if pr, err := PinnedProbe(h.a.root); err != nil || pr.Mode != mode || fmt.Sprint(pr.Refused) != fmt.Sprint(h.a.Probe().Refused) {
		t.Fatalf("PinnedProbe = %+v, %v; want %s with %v", pr, err, mode, h.a.Probe().Refused)
	}
	if m, err := PinnedMode(h.a.root); err != nil || m != mode {
		t.Fatalf("PinnedMode = %q, %v", m, err)
	}
	armed, err := b.Armed()
	if err != nil || armed[cgid] != id {
		t.Fatalf("after reopen Armed() = %v, %v; want %d -> %+v", armed, err, cgid, id)
	}
	// The old daemon exits (reader stopped, handles closed); the new one
	// reads: auditing goes on.
	h.stop()
	h.a.Close()
	h.read(t, b)
	t.Cleanup(h.stop)
	pid := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + realDir(t), countEnv + "=2"}})
	h.waitFor(func(ev Event) bool { return ev.PID == uint32(pid) }, 2)
	if evs := h.take(func(ev Event) bool { return ev.PID == uint32(pid) }); len(evs) != 2 {
		t.Fatalf("after the first handle closed: %d events, want 2", len(evs))
	}
	if err := b.Disarm(cgid); err != nil {
		t.Fatalf("Disarm through the new handle: %v", err)
	}
	if armed, _ := b.Armed(); len(armed) != 0 {
		t.Fatalf("still armed after Disarm: %v", armed)
	}
}

func TestPinnedModeWithoutPins(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	if _, err := PinnedMode(root); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("PinnedMode on an empty root = %v, want ErrNotLoaded", err)
	}
}

func diffEvents(want, got []wantEvent) string {
	key := func(w wantEvent) string { return fmt.Sprintf("%s %s -> %q flags %#o", w.op, w.path, w.target, w.flags) }
	count := map[string]int{}
	for _, w := range want {
		count[key(w)]++
	}
	for _, g := range got {
		count[key(g)]--
	}
	var lines []string
	for k, c := range count {
		for ; c > 0; c-- {
			lines = append(lines, "- "+k)
		}
		for ; c < 0; c++ {
			lines = append(lines, "+ "+k)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestUpgradeReplacesPrograms: pins made by another build are replaced on
// Open — new programs loaded, the global links and the per-cgroup sysctl
// link pointed at them — and the audit goes on.
func TestUpgradeReplacesPrograms(t *testing.T) {
	h := newHarness(t)
	cg := h.cgroup(t)
	id := Identity{Identity: pods.Identity{Namespace: "ns", Pod: "upgraded"}}
	cgid, err := h.a.Arm(cg, id)
	if err != nil {
		t.Fatal(err)
	}
	progID := func(p *ebpf.Program) ebpf.ProgramID {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := info.ID()
		return pid
	}
	linkProg := func(pin string) ebpf.ProgramID {
		l, err := link.LoadPinnedLink(filepath.Join(h.a.dir, pin), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		return info.Program
	}
	// The program and global link checked: tp_exit on sys_exit_openat, or
	// the file_open hook's.
	prog, linkPin := tpExitProg, linkPrefix+exitLinkName("tp_openat")
	switch h.a.Mode() {
	case ModeLSM, ModeFentry:
		prog = map[Mode]string{ModeLSM: "lsm_file_open", ModeFentry: "fentry_file_open"}[h.a.Mode()]
		linkPin = linkPrefix + prog
	case ModeLSMCgroup:
		t.Fatal("lsm_cgroup is never chosen (docs/audit.md): the test cannot be in that mode")
	}
	oldExit := progID(h.a.progs[prog])
	sysctlPin := cgLinkPrefix + strconv.FormatUint(cgid, 10) + "_" + sysctlProg
	if linkProg(sysctlPin) != progID(h.a.progs[sysctlProg]) {
		t.Fatal("sysctl link does not run the loaded sysctl program")
	}
	// Pretend the pins were made by another build.
	if err := h.a.maps.AuditObject.Put(uint32(0), auditObjectId{}); err != nil {
		t.Fatal(err)
	}
	var logs []string
	b, err := Open(h.a.root, Options{Logf: func(f string, args ...any) { logs = append(logs, fmt.Sprintf(f, args...)) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if !strings.Contains(strings.Join(logs, "\n"), "another build") {
		t.Errorf("upgrade not logged: %q", logs)
	}
	newExit := progID(b.progs[prog])
	if newExit == oldExit {
		t.Fatalf("%s was not reloaded", prog)
	}
	if got := linkProg(linkPin); got != newExit {
		t.Fatalf("link %s runs program %d, want the new %d", linkPin, got, newExit)
	}
	if got, want := linkProg(sysctlPin), progID(b.progs[sysctlProg]); got != want {
		t.Fatalf("sysctl link of the armed cgroup runs program %d, want the new %d", got, want)
	}
	// A third Open of the same build changes nothing.
	c, err := Open(h.a.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if progID(c.progs[prog]) != newExit {
		t.Fatal("an Open of the same build reloaded the programs")
	}
	c.Close()

	h.stop()
	h.a.Close()
	h.read(t, b)
	t.Cleanup(h.stop)
	pid := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + realDir(t), countEnv + "=3"}})
	h.waitFor(func(ev Event) bool { return ev.PID == uint32(pid) }, 3)
	if evs := h.take(func(ev Event) bool { return ev.PID == uint32(pid) && ev.Pod == "upgraded" }); len(evs) != 3 {
		t.Fatalf("after the upgrade: %d events, want 3", len(evs))
	}
	if err := b.Disarm(cgid); err != nil {
		t.Fatal(err)
	}
}

// TestLeaveLoaded is a helper of the kernel matrix, not a check of its own:
// with PODSCOPE_AUDIT_TEST_LEAVE=<bpffs root> it loads the audit there (the
// probe's mode), arms a cgroup, sees one write and leaves everything pinned,
// so that `podscopectl status` can show the live mode afterwards.
func TestLeaveLoaded(t *testing.T) {
	dir := os.Getenv("PODSCOPE_AUDIT_TEST_LEAVE")
	if dir == "" {
		t.Log("PODSCOPE_AUDIT_TEST_LEAVE not set: nothing to leave (a helper of make test-kernels, no check of its own)")
		return
	}
	testenv.RequireRoot(t)
	a, err := Open(pins.New(dir), Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cgRoot, err := cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(cgRoot, "podscope-status-demo")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Arm(cg, Identity{Identity: pods.Identity{Namespace: "demo", Pod: "status"}, Container: "c"}); err != nil {
		t.Fatal(err)
	}
	h := &harness{a: a, cgRoot: cgRoot}
	h.read(t, a)
	defer h.stop()
	pid := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + realDir(t), countEnv + "=1"}})
	h.waitFor(func(ev Event) bool { return ev.PID == uint32(pid) }, 1)
	for _, ev := range h.take(func(ev Event) bool { return ev.PID == uint32(pid) }) {
		t.Logf("event in mode %s: %s %s by pid %d", a.Mode(), ev.Op, ev.Path, ev.PID)
	}
	if len(h.take(func(ev Event) bool { return ev.PID == uint32(pid) })) != 1 {
		t.Fatalf("mode %s: the write was not seen", a.Mode())
	}
}
