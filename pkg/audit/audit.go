// Package audit is podscope's file-write audit: BPF programs that see every
// write-like file operation of the processes in armed cgroups (containers)
// and a reader that turns their ring-buffer records into Events.
//
// The programs are loaded once per node and pinned under
// root.Dir(Owner), in the strongest mode a real probe finds working
// (lsm_cgroup, lsm, fentry, tracepoint). Arm puts a cgroup v2 id and the
// container's identity into pinned maps; from then on every write of that
// cgroup reaches the ring buffer, and every record that cannot be delivered
// is counted per cgroup in a pinned map.
package audit

import (
	"errors"
	"reflect"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// Mode is how the audit programs are attached.
type Mode string

const (
	// ModeLSMCgroup: BPF LSM programs attached to each armed cgroup.
	ModeLSMCgroup Mode = "lsm_cgroup"
	// ModeLSM: global BPF LSM programs, filtered by the armed-cgroup map.
	ModeLSM Mode = "lsm"
	// ModeFentry: fentry on the security_* LSM entry points, filtered.
	ModeFentry Mode = "fentry"
	// ModeTracepoint: syscalls:sys_enter_* tracepoints of the write-related
	// syscalls only, filtered.
	ModeTracepoint Mode = "tracepoint"
)

// Modes lists the modes strongest first: the order the probe tries them.
var Modes = []Mode{ModeLSMCgroup, ModeLSM, ModeFentry, ModeTracepoint}

func (m Mode) kernel() auditAttachMode {
	switch m {
	case ModeLSMCgroup:
		return auditAttachModeAMODE_LSM_CGROUP
	case ModeLSM:
		return auditAttachModeAMODE_LSM
	case ModeFentry:
		return auditAttachModeAMODE_FENTRY
	case ModeTracepoint:
		return auditAttachModeAMODE_TRACEPOINT
	}
	return auditAttachModeAMODE_NONE
}

func modeFromKernel(v uint32) Mode {
	for _, m := range Modes {
		if uint32(m.kernel()) == v {
			return m
		}
	}
	return ""
}

// Valid reports whether m names a mode.
func (m Mode) Valid() bool { return m.kernel() != auditAttachModeAMODE_NONE }

// Owner is the pins owner directory of the audit: root.Dir(Owner).
const Owner = "audit"

// Identity is who a cgroup belongs to. It lives in user space (a pinned
// user-space-only map), never in the programs.
type Identity struct {
	pods.Identity
	Container   string `json:"container"`
	ContainerID string `json:"containerID"`
}

// Event is one audited operation, or (Count > 1) a fold: Count repeats of
// exactly the same operation — same cgroup, op, path, target, uid, flags
// and outcome — from Time (the first) to Last. PID and Comm are the first
// repeat's; SeveralPIDs says other processes repeated it too. JSON field
// names are the contract of docs/design.md "Audit event", plus count,
// last, severalPIDs, and target/value where the op has them.
type Event struct {
	Time time.Time `json:"time"`
	Identity
	CgroupID uint64 `json:"cgroupID"`
	PID      uint32 `json:"pid"`
	Comm     string `json:"comm"`
	UID      uint32 `json:"uid"`
	Op       string `json:"op"`
	Path     string `json:"path"`
	Flags    uint32 `json:"flags"`
	Denied   bool   `json:"denied"`
	// Count is how many operations this line stands for: 1, or the number
	// of repeats a fold line sums (0 is never sent).
	Count uint32 `json:"count,omitempty"`
	// Last: a fold line's last repeat (zero for a single operation).
	Last time.Time `json:"last,omitzero"`
	// SeveralPIDs: a fold line whose repeats came from more than one
	// process (PID and Comm are the first one's).
	SeveralPIDs bool `json:"severalPIDs,omitempty"`
	// Target: rename's new path, link's existing file, symlink's content.
	Target string `json:"target,omitempty"`
	// Value: sysctl_write's value as written, truncated to 255 bytes.
	Value string `json:"value,omitempty"`
}

// Ops are the values of Event.Op, indexed by the kernel's op number.
var opNames = map[auditWriteOp]string{
	auditWriteOpAOP_OPEN_WRITE:   "open_write",
	auditWriteOpAOP_CREATE:       "create",
	auditWriteOpAOP_TRUNCATE:     "truncate",
	auditWriteOpAOP_UNLINK:       "unlink",
	auditWriteOpAOP_RENAME:       "rename",
	auditWriteOpAOP_CHMOD:        "chmod",
	auditWriteOpAOP_CHOWN:        "chown",
	auditWriteOpAOP_MKDIR:        "mkdir",
	auditWriteOpAOP_RMDIR:        "rmdir",
	auditWriteOpAOP_LINK:         "link",
	auditWriteOpAOP_SYMLINK:      "symlink",
	auditWriteOpAOP_SYSCTL_WRITE: "sysctl_write",
}

// Ops lists every op name an Event can carry.
func Ops() []string {
	out := make([]string, 0, len(opNames))
	for i := auditWriteOpAOP_OPEN_WRITE; i <= auditWriteOpAOP_SYSCTL_WRITE; i++ {
		out = append(out, opNames[i])
	}
	return out
}

// Options tune Open. The zero value probes and finds the cgroup2 mount.
type Options struct {
	// Mode forces a mode instead of probing ("" = probe). A forced mode
	// that does not load fails Open.
	Mode Mode
	// CgroupRoot is the cgroup v2 mount used for the probe's scratch
	// cgroup ("" = found in /proc/self/mountinfo).
	CgroupRoot string
	// Logf receives one line per notable step (mode chosen, refusals).
	Logf func(format string, args ...any)

	// ringBytes overrides the ring buffer size (a power of two, multiple
	// of the page size) when the ring is created: tests use a small ring
	// to provoke losses.
	ringBytes uint32
}

// ErrNotLoaded is returned by PinnedMode when no audit programs are pinned.
var ErrNotLoaded = errors.New("audit programs are not loaded (nothing pinned)")

// Auditor holds the pinned maps and programs of the audit.
type Auditor struct {
	root  pins.Root
	dir   string
	mode  Mode
	probe ProbeResult
	logf  func(string, ...any)

	maps  auditMaps // every map of the object, pinned ones from bpffs
	progs map[string]*ebpf.Program
	// missing: hooks or tracepoints of the mode this kernel does not have
	// (their operations are not seen), e.g. "file_truncate (ftruncate)".
	missing []string

	mu    sync.Mutex // serialises Arm/Disarm
	cache identityCache
	long  longIdentities
}

// Mode is the mode the programs run in.
func (a *Auditor) Mode() Mode { return a.mode }

// Probe is what the probe found: the chosen mode and why each stronger one
// was refused. When the mode was taken from the pins of an earlier start,
// the probe of that start is not known and Reused is set.
func (a *Auditor) Probe() ProbeResult { return a.probe }

// Close drops this process's handles; pins (and therefore the programs,
// links and maps) stay. Call it after Run has returned.
func (a *Auditor) Close() error {
	var errs []error
	for _, p := range a.progs {
		errs = append(errs, p.Close())
	}
	errs = append(errs, a.maps.Close())
	a.long.close()
	return errors.Join(errs...)
}

func (a *Auditor) logfOrNop(format string, args ...any) {
	if a.logf != nil {
		a.logf(format, args...)
	}
}

// Missing lists what the mode cannot see on this kernel: hooks or syscall
// tracepoints the kernel lacks, with the operations they carry.
func (a *Auditor) Missing() []string { return a.missing }

// byName is the maps keyed by their C names (for MapReplacements).
func (m *auditMaps) byName() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		if name := v.Type().Field(i).Tag.Get("ebpf"); name != "" {
			if mp, _ := v.Field(i).Interface().(*ebpf.Map); mp != nil {
				out[name] = mp
			}
		}
	}
	return out
}

// SeesRefusals reports whether the mode reports writes the kernel refused
// (denied events). tracepoint sees every write syscall's result. lsm and
// fentry report a write syscall at the exit of the kernel function that
// returns its result (fexit, the syscall decoded from its saved registers:
// x86-64 only), so they see its refusal too; Missing lists an exit this
// kernel lacks. Elsewhere (other architectures; io_uring, which the hooks
// report) the LSM hooks run after the kernel's permission check for opens
// and truncates (a refused one is not seen) and before it for the other
// writes (a refused one is reported as an attempt, denied false).
func (m Mode) SeesRefusals() bool {
	return m == ModeTracepoint || (m.hasExits() && runtime.GOARCH == "amd64")
}
