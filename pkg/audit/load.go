package audit

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/pins"
)

// Pin names under root.Dir(Owner). Maps are pinned by their C names
// (audited_cgroups, audit_identity, audit_lost, audit_dedup, audit_mode,
// audit_events); programs as prog_<name>; global links as link_<name>;
// per-cgroup links as cg_<id>_<name>.
const (
	progPrefix   = "prog_"
	linkPrefix   = "link_"
	cgLinkPrefix = "cg_"
	sysctlProg   = "audit_sysctl"
)

// progNames lists the programs of a mode (without the sysctl program, which
// every mode has), sorted. The lsm and fentry modes also have the fexit
// programs that report write syscalls at their exit (fx_*, see exitFns).
func progNames(spec *ebpf.CollectionSpec, m Mode) []string {
	prefix := map[Mode]string{ModeLSMCgroup: "lsmc_", ModeLSM: "lsm_", ModeFentry: "fentry_", ModeTracepoint: "tp_"}[m]
	var out []string
	for name := range spec.Programs {
		if strings.HasPrefix(name, prefix) || (m.hasExits() && strings.HasPrefix(name, exitPrefix)) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// hookOps names what a hook carries, for the "not seen" list.
var hookOps = map[string]string{
	"file_open": "open, create", "path_truncate": "truncate", "file_truncate": "ftruncate on Linux 6.2+; before, ftruncate passes path_truncate and is seen",
	"path_unlink": "unlink", "path_rmdir": "rmdir", "path_mkdir": "mkdir", "path_mknod": "mknod",
	"path_chmod": "chmod", "path_chown": "chown", "path_rename": "rename", "path_link": "link",
	"path_symlink": "symlink",
}

// exitPrefix names the fexit programs of the lsm and fentry modes, one per
// write syscall (fx_<syscall> on __x64_sys_<syscall>): each reports its
// syscall at its exit, refusals included (see bpf/audit.c, "syscall exits
// in the LSM modes").
const exitPrefix = "fx_"

// exitEmitProg is the one program the exit programs tail-call to resolve
// paths and emit (verified once, not 28 times); loaded, never attached, and
// installed in the pinned prog array audit_exit_tail by installEmitter.
const exitEmitProg = "fx_emit"

// installEmitter puts the loaded fx_emit into audit_exit_tail (a mode
// without exit programs has none: nothing to do).
func installEmitter(tail *ebpf.Map, progs map[string]*ebpf.Program) error {
	p := progs[exitEmitProg]
	if p == nil {
		return nil
	}
	if err := tail.Put(uint32(0), p); err != nil {
		return fmt.Errorf("installing %s in audit_exit_tail: %w", exitEmitProg, err)
	}
	return nil
}

func (m Mode) hasExits() bool { return m == ModeLSM || m == ModeFentry }

// setExitFns tells the programs which exit programs of names are loaded
// (audit_exit_fns, bit 1 << XF_<syscall> of enum exit_fn): a hook leaves a
// syscall to its exit only when that exit is there. Set before loading.
func setExitFns(spec *ebpf.CollectionSpec, names []string) error {
	var enum *btf.Enum
	if err := spec.Types.TypeByName("exit_fn", &enum); err != nil {
		return fmt.Errorf("audit: the BPF object has no enum exit_fn: %w", err)
	}
	index := map[string]uint64{}
	for _, v := range enum.Values {
		index[strings.TrimPrefix(v.Name, "XF_")] = v.Value
	}
	var bits uint32
	for _, n := range names {
		if i, ok := index[strings.TrimPrefix(n, exitPrefix)]; ok && strings.HasPrefix(n, exitPrefix) {
			bits |= 1 << i
		}
	}
	v, ok := spec.Variables["audit_exit_fns"]
	if !ok {
		return errors.New("audit: the BPF object has no audit_exit_fns")
	}
	return v.Set(bits)
}

// availablePrograms drops from names the programs of the LSM-based modes
// whose hook this kernel does not have (file_truncate came with Linux 6.2)
// and says what is then not seen — a missing hook is handled like a
// missing syscall tracepoint: the mode works without it. Other modes and a
// kernel without BTF are returned unchanged (loading then says why).
func availablePrograms(spec *ebpf.CollectionSpec, m Mode, names []string) (keep, missing []string) {
	if m != ModeLSM && m != ModeLSMCgroup && m != ModeFentry {
		return names, nil
	}
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		return names, nil
	}
	for _, n := range names {
		ps := spec.Programs[n]
		if strings.HasPrefix(n, exitPrefix) {
			var fn *btf.Func
			if err := kspec.TypeByName(ps.AttachTo, &fn); errors.Is(err, btf.ErrNotFound) {
				missing = append(missing, fmt.Sprintf("%s: no %s in this kernel: reported at the LSM hook, a refused one as an attempt or not at all", strings.TrimPrefix(n, exitPrefix), ps.AttachTo))
				continue
			}
			keep = append(keep, n)
			continue
		}
		hook := strings.TrimPrefix(ps.AttachTo, "security_")
		target := ps.AttachTo // fentry: the security_* function itself
		if m != ModeFentry {
			target = "bpf_lsm_" + ps.AttachTo
		}
		var fn *btf.Func
		if err := kspec.TypeByName(target, &fn); errors.Is(err, btf.ErrNotFound) {
			missing = append(missing, fmt.Sprintf("%s (%s): no %s in this kernel", hook, hookOps[hook], target))
			continue
		}
		keep = append(keep, n)
	}
	return keep, missing
}

// loadMaps creates (or reopens, from their pins) every map of the object.
func loadMaps(root pins.Root, dir string, ringBytes uint32) (*ebpf.CollectionSpec, auditMaps, error) {
	var maps auditMaps
	spec, err := loadAudit()
	if err != nil {
		return nil, maps, fmt.Errorf("audit: parsing the embedded BPF object: %w", err)
	}
	if ringBytes != 0 {
		spec.Maps["audit_events"].MaxEntries = ringBytes
	}
	if err := spec.LoadAndAssign(&maps, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}); err != nil {
		return nil, maps, pins.Explain(fmt.Errorf("audit: loading pinned maps under %s: %w", dir, err), root, "audit maps")
	}
	return spec, maps, nil
}

// loadPrograms returns the named programs, from their pins when present;
// the missing ones are loaded (one verifier pass per node) and pinned.
func loadPrograms(spec *ebpf.CollectionSpec, maps *auditMaps, root pins.Root, names []string) (map[string]*ebpf.Program, error) {
	out := map[string]*ebpf.Program{}
	sub := spec.Copy()
	sub.Programs = map[string]*ebpf.ProgramSpec{}
	if err := setExitFns(sub, names); err != nil {
		return nil, err
	}
	fail := func(err error) (map[string]*ebpf.Program, error) {
		for _, p := range out {
			p.Close()
		}
		return nil, err
	}
	for _, n := range names {
		p, err := ebpf.LoadPinnedProgram(root.Pin(Owner, progPrefix+n), nil)
		if err == nil {
			out[n] = p
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("audit: opening pinned program %s: %w", n, err))
		}
		sub.Programs[n] = spec.Programs[n]
	}
	if len(sub.Programs) == 0 {
		return out, nil
	}
	coll, err := ebpf.NewCollectionWithOptions(sub, ebpf.CollectionOptions{MapReplacements: maps.byName()})
	if err != nil {
		return fail(fmt.Errorf("load: %w", err))
	}
	for n, p := range coll.Programs {
		if err := p.Pin(root.Pin(Owner, progPrefix+n)); err != nil {
			coll.Close()
			return fail(fmt.Errorf("audit: pinning program %s: %w", n, err))
		}
		out[n] = p
	}
	coll.Programs = nil // handed over to out
	coll.Close()
	return out, nil
}

// attachGlobal attaches a global mode's programs, keeping links already
// pinned (a restart re-attaches nothing). Tracepoints that this kernel does
// not have (openat2, fchmodat2 on older kernels; open, creat… on arm64) are
// skipped; it is an error only when none attaches.
//
// replace: the pinned links belong to older programs; each is unpinned
// (detached) right before its successor is attached.
func attachGlobal(root pins.Root, m Mode, progs map[string]*ebpf.Program, names []string, replace bool, logf func(string, ...any)) (missing []string, err error) {
	attached := 0
	var created []string
	undo := func() {
		for _, p := range created {
			os.Remove(p)
		}
	}
	pinned := func(pin string) bool {
		if replace {
			os.Remove(pin)
			return false
		}
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
	for _, n := range names {
		if n == tpExitProg || n == exitEmitProg {
			continue // tp_exit: attached below, once per sys_exit of an attached sys_enter; fx_emit: tail-called
		}
		pin := root.Pin(Owner, linkPrefix+n)
		if !pinned(pin) {
			l, err := attachOne(m, n, progs[n])
			if errors.Is(err, os.ErrNotExist) && m == ModeTracepoint {
				logf("audit: tracepoint syscalls:%s not in this kernel, skipped", tracepointOf(n))
				missing = append(missing, fmt.Sprintf("%s: no syscall tracepoint in this kernel", strings.TrimPrefix(n, "tp_")))
				continue
			}
			if err != nil {
				undo()
				return nil, fmt.Errorf("attach %s: %w", n, err)
			}
			if err := l.Pin(pin); err != nil {
				l.Close()
				undo()
				return nil, fmt.Errorf("audit: pinning link of %s: %w", n, err)
			}
			l.Close() // the pin keeps it attached
			created = append(created, pin)
		}
		attached++
		if m != ModeTracepoint {
			continue
		}
		xpin := root.Pin(Owner, linkPrefix+exitLinkName(n))
		if pinned(xpin) {
			continue
		}
		l, err := attachExit(n, progs[tpExitProg])
		if err == nil {
			if err = l.Pin(xpin); err != nil {
				l.Close()
			}
		}
		if err != nil {
			undo()
			return nil, fmt.Errorf("attach %s to %s: %w", tpExitProg, exitTracepointOf(n), err)
		}
		l.Close()
		created = append(created, xpin)
	}
	if attached == 0 {
		return nil, fmt.Errorf("attach: no %s program attached", m)
	}
	return missing, nil
}

// tpExitProg is the one program attached to the sys_exit tracepoint of
// every write syscall whose sys_enter is attached.
const tpExitProg = "tp_exit"

func tracepointOf(prog string) string     { return "sys_enter_" + strings.TrimPrefix(prog, "tp_") }
func exitTracepointOf(prog string) string { return "sys_exit_" + strings.TrimPrefix(prog, "tp_") }
func exitLinkName(prog string) string     { return "tpx_" + strings.TrimPrefix(prog, "tp_") }

func attachExit(enterProg string, exit *ebpf.Program) (link.Link, error) {
	if exit == nil {
		return nil, fmt.Errorf("program %s not loaded", tpExitProg)
	}
	return retryExist(func() (link.Link, error) {
		return link.Tracepoint("syscalls", exitTracepointOf(enterProg), exit, nil)
	})
}

// retryExist retries an attach that fails with EEXIST for up to a second:
// a link of the same program on the same tracepoint whose last pin was just
// removed (Cleanup, a mode switch) is released asynchronously.
func retryExist(attach func() (link.Link, error)) (link.Link, error) {
	deadline := time.Now().Add(time.Second)
	for {
		l, err := attach()
		if !errors.Is(err, unix.EEXIST) || time.Now().After(deadline) {
			return l, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func attachOne(m Mode, name string, p *ebpf.Program) (link.Link, error) {
	if p == nil {
		return nil, fmt.Errorf("program %s not loaded", name)
	}
	switch {
	case strings.HasPrefix(name, exitPrefix):
		return link.AttachTracing(link.TracingOptions{Program: p})
	}
	switch m {
	case ModeLSM:
		return link.AttachLSM(link.LSMOptions{Program: p})
	case ModeFentry:
		return link.AttachTracing(link.TracingOptions{Program: p})
	case ModeTracepoint:
		if err := ensureTracefs(); err != nil {
			return nil, err
		}
		return retryExist(func() (link.Link, error) { return link.Tracepoint("syscalls", tracepointOf(name), p, nil) })
	}
	return nil, fmt.Errorf("mode %s has no global attachment", m)
}

// ensureTracefs mounts tracefs at /sys/kernel/tracing when neither it nor
// debugfs's tracing directory is there: syscall tracepoints are found by id
// through it.
func ensureTracefs() error {
	for _, d := range []string{"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(d); err == nil {
			return nil
		}
	}
	if err := mountTracefs("/sys/kernel/tracing"); err != nil {
		return fmt.Errorf("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: %w", err)
	}
	return nil
}

// removePins removes every audit pin whose name starts with prefix.
func removePins(root pins.Root, prefix string) error {
	entries, err := os.ReadDir(root.Dir(Owner))
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := os.Remove(root.Pin(Owner, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeGlobalLinks unpins (and so detaches) the global links and the
// pinned programs of mode m: used when a forced mode replaces a pinned one.
func removeModePins(root pins.Root, spec *ebpf.CollectionSpec, m Mode) error {
	var errs []error
	for _, n := range progNames(spec, m) {
		for _, p := range []string{linkPrefix + n, progPrefix + n, linkPrefix + exitLinkName(n)} {
			if err := os.Remove(root.Pin(Owner, p)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
