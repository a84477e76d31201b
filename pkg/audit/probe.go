package audit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/podscope/podscope/pkg/cgroups"
)

// Refusal is why the probe did not take a mode.
type Refusal struct {
	Mode   Mode   `json:"mode"`
	Reason string `json:"reason"`
}

// ProbeResult is the mode the probe chose and why each stronger mode was
// refused, e.g. {lsm_cgroup "load: operation not permitted"}.
type ProbeResult struct {
	Mode    Mode      `json:"mode"`
	Refused []Refusal `json:"refused,omitempty"`
	// Forced: the mode came from Options.Mode, nothing was probed.
	Forced bool `json:"forced,omitempty"`
	// Reused: the mode came from the pins of an earlier start.
	Reused bool `json:"reused,omitempty"`
}

func (r ProbeResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode %s", r.Mode)
	switch {
	case r.Forced:
		b.WriteString(" (forced)")
	case r.Reused:
		b.WriteString(" (reused from pins)")
	}
	for _, f := range r.Refused {
		fmt.Fprintf(&b, "; %s refused: %s", f.Mode, f.Reason)
	}
	return b.String()
}

// probeEnv makes a re-executed binary perform the probe's write and exit
// (see init below). Every binary that imports this package can probe.
const probeEnv = "PODSCOPE_AUDIT_PROBE_WRITE"

func init() {
	p := os.Getenv(probeEnv)
	if p == "" {
		return
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "audit probe write: %v\n", err)
		os.Exit(2)
	}
	f.Close()
	os.Exit(0)
}

var (
	probeOnce   sync.Once
	probeResult ProbeResult
)

// ProbeModes runs the real probe once per process (later calls return the
// first answer): for each mode, strongest first, it proves the whole mode
// with private maps — every program of it that this kernel has a hook for
// loads, every one attaches (to a scratch cgroup for lsm_cgroup), and a
// child process in a scratch cgroup, armed in the private map, creates a
// file whose event arrives. The first mode that passes wins: never a mode
// that would then fail to load, attach or arm.
func ProbeModes(cgroupRoot string) ProbeResult {
	probeOnce.Do(func() {
		probeResult = runProbe(cgroupRoot)
	})
	return probeResult
}

func runProbe(cgroupRoot string) ProbeResult {
	var res ProbeResult
	for _, m := range Modes {
		err := probeMode(m, cgroupRoot)
		if err == nil {
			res.Mode = m
			return res
		}
		res.Refused = append(res.Refused, Refusal{Mode: m, Reason: firstLine(err.Error())})
	}
	return res
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSuffix(strings.TrimSpace(s), ":")
}

// bpfLSMActive says whether the kernel runs BPF LSM programs: only when
// "bpf" is among the active LSMs (/sys/kernel/security/lsm). Otherwise lsm
// programs load and attach but never run. Unknown (no securityfs) is not
// an error: the probe's event decides then.
func bpfLSMActive() error {
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return nil
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if l == "bpf" {
			return nil
		}
	}
	return fmt.Errorf("the bpf LSM is not active (active: %s): its programs would never run; boot with bpf in lsm=", strings.TrimSpace(string(b)))
}

func probeMode(m Mode, cgroupRoot string) (err error) {
	if m == ModeLSM || m == ModeLSMCgroup {
		if err := bpfLSMActive(); err != nil {
			return fmt.Errorf("attach: %w", err)
		}
	}
	spec, err := loadAudit()
	if err != nil {
		return fmt.Errorf("object: %w", err)
	}
	names, _ := availablePrograms(spec, m, progNames(spec, m))
	sub := spec.Copy()
	sub.Programs = map[string]*ebpf.ProgramSpec{}
	for _, n := range names {
		sub.Programs[n] = spec.Programs[n]
	}
	if err := setExitFns(sub, names); err != nil {
		return fmt.Errorf("object: %w", err)
	}
	for _, ms := range sub.Maps {
		ms.Pinning = ebpf.PinNone // private maps: the probe never touches the node's
	}
	sub.Maps["audit_events"].MaxEntries = 1 << 16
	sub.Maps["audit_foldmap"].MaxEntries = 64
	coll, err := ebpf.NewCollection(sub)
	if err != nil {
		return fmt.Errorf("load: %w", unwrapErrno(err))
	}
	defer coll.Close()
	var maps auditMaps
	if err := coll.Assign(&maps); err != nil {
		return fmt.Errorf("object: %w", err)
	}
	defer maps.Close()

	cg, err := cgroups.Scratch(cgroupRoot, "podscope-probe-")
	if err != nil {
		return err
	}
	defer os.Remove(cg)
	id, err := cgroups.V2ID(cg)
	if err != nil {
		return fmt.Errorf("scratch cgroup: %w", err)
	}

	var links []link.Link
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	if err := installEmitter(maps.AuditExitTail, coll.Programs); err != nil {
		return fmt.Errorf("load: %w", unwrapErrno(err))
	}
	for _, n := range names {
		if n == tpExitProg || n == exitEmitProg {
			continue
		}
		var l link.Link
		switch m {
		case ModeLSMCgroup:
			l, err = link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachLSMCgroup, Program: coll.Programs[n]})
		default:
			l, err = attachOne(m, n, coll.Programs[n])
		}
		if errors.Is(err, os.ErrNotExist) && m == ModeTracepoint {
			continue // a syscall this kernel does not have
		}
		if err != nil {
			return fmt.Errorf("attach %s: %w", n, unwrapErrno(err))
		}
		links = append(links, l)
		if m == ModeTracepoint {
			x, err := attachExit(n, coll.Programs[tpExitProg])
			if err != nil {
				return fmt.Errorf("attach %s: %w", exitTracepointOf(n), unwrapErrno(err))
			}
			links = append(links, x)
		}
	}

	if err := maps.AuditedCgroups.Put(id, auditAuditCgroup{}); err != nil {
		return fmt.Errorf("arming scratch cgroup: %w", err)
	}
	rd, err := ringbuf.NewReader(maps.AuditEvents)
	if err != nil {
		return fmt.Errorf("ring buffer: %w", err)
	}
	defer rd.Close()

	tmp, err := os.MkdirTemp("", "podscope-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	target := filepath.Join(tmp, "probe")
	if err := runInCgroup(cg, []string{probeEnv + "=" + target}); err != nil {
		return fmt.Errorf("probe child: %w", err)
	}
	rd.SetDeadline(time.Now().Add(2 * time.Second))
	for {
		rec, err := rd.Read()
		if err != nil {
			return fmt.Errorf("loaded and attached %d programs, but no event within 2s of a write in the scratch cgroup (%v)", len(names), err)
		}
		if len(rec.RawSample) < int(unsafe.Sizeof(auditEvent{})) {
			continue
		}
		ev := (*auditEvent)(unsafe.Pointer(&rec.RawSample[0]))
		if ev.CgroupId == id {
			return nil
		}
	}
}

// runInCgroup re-executes this binary with env, born inside cgroup dir
// (clone3 CLONE_INTO_CGROUP, so it never runs a single instruction
// elsewhere), and waits for it.
func runInCgroup(dir string, env []string) error {
	cgfd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(cgfd)
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// unwrapErrno keeps "operation not permitted" instead of cilium's longer
// wrapping with verifier logs.
func unwrapErrno(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}
