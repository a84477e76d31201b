package audit

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
)

// Open loads the audit once per node: maps, programs and (global modes)
// links are pinned under root.Dir(Owner), and a later Open — a restart of
// the daemon — reuses them, including the mode, without a new probe or a
// verifier pass. Without opts.Mode and without pins, the mode is the one
// ProbeModes finds.
func Open(root pins.Root, opts Options) (*Auditor, error) {
	if opts.Mode != "" && !opts.Mode.Valid() {
		return nil, fmt.Errorf("audit: unknown mode %q (one of lsm_cgroup, lsm, fentry, tracepoint)", opts.Mode)
	}
	dir, err := root.Ensure(Owner)
	if err != nil {
		return nil, err
	}
	spec, maps, err := loadMaps(root, dir, opts.ringBytes)
	if err != nil {
		return nil, err
	}
	a := &Auditor{root: root, dir: dir, logf: opts.Logf, maps: maps}
	fail := func(err error) (*Auditor, error) {
		a.Close()
		return nil, err
	}

	var pinned uint32
	if err := maps.AuditMode.Lookup(uint32(0), &pinned); err != nil {
		return fail(fmt.Errorf("audit: reading pinned mode: %w", err))
	}
	pinnedMode := modeFromKernel(pinned)

	probeMap := maps.AuditProbe
	switch {
	case opts.Mode != "":
		if opts.Mode == ModeLSM || opts.Mode == ModeLSMCgroup {
			if err := bpfLSMActive(); err != nil {
				return fail(fmt.Errorf("audit: mode %s: %w", opts.Mode, err))
			}
		}
		a.mode, a.probe = opts.Mode, ProbeResult{Mode: opts.Mode, Forced: true}
	case pinnedMode != "":
		a.probe, err = readProbe(probeMap, pinnedMode)
		if err != nil {
			return fail(err)
		}
		a.probe.Reused = true
		a.mode = pinnedMode
	default:
		a.probe = ProbeModes(opts.CgroupRoot)
		if a.probe.Mode == "" {
			return fail(fmt.Errorf("audit: no mode works on this kernel: %s", a.probe))
		}
		a.mode = a.probe.Mode
	}
	a.logfOrNop("audit: %s", a.probe)

	if pinnedMode != "" && pinnedMode != a.mode {
		a.logfOrNop("audit: replacing pinned mode %s by %s", pinnedMode, a.mode)
		if err := removeModePins(root, spec, pinnedMode); err != nil {
			return fail(fmt.Errorf("audit: removing pins of mode %s: %w", pinnedMode, err))
		}
		if pinnedMode == ModeLSMCgroup {
			if err := a.removeCgroupLinks(0, "lsmc_"); err != nil {
				return fail(err)
			}
		}
	}

	// Pins made by another build of the programs (an upgrade): drop the
	// program pins so this build's programs load, then swap every link to
	// them. Global tracepoint links are replaced one by one; per-cgroup
	// links are updated in place (no gap).
	objSum := sha256.Sum256(_AuditBytes)
	var stored auditObjectId
	if err := maps.AuditObject.Lookup(uint32(0), &stored); err != nil {
		return fail(fmt.Errorf("audit: reading pinned object id: %w", err))
	}
	upgrade := pinnedMode != "" && stored.Sha256 != objSum
	if upgrade {
		a.logfOrNop("audit: pinned programs come from another build of podscope; replacing them")
		if err := removePins(root, progPrefix); err != nil {
			return fail(fmt.Errorf("audit: removing old program pins: %w", err))
		}
	}

	names, missing := availablePrograms(spec, a.mode, progNames(spec, a.mode))
	for _, m := range missing {
		a.logfOrNop("audit: mode %s does not see %s", a.mode, m)
	}
	a.progs, err = loadPrograms(spec, &a.maps, root, append([]string{sysctlProg}, names...))
	if err != nil {
		return fail(fmt.Errorf("audit: mode %s: %w", a.mode, unwrapErrno(err)))
	}
	if err := installEmitter(a.maps.AuditExitTail, a.progs); err != nil {
		return fail(fmt.Errorf("audit: mode %s: %w", a.mode, err))
	}
	if a.mode == ModeLSMCgroup {
		// Only a mode whose every program can be attached is taken: try
		// them all on a scratch cgroup now, not at the first Arm.
		if err := a.tryCgroupAttach(opts.CgroupRoot, names); err != nil {
			return fail(fmt.Errorf("audit: mode %s: %w", a.mode, err))
		}
	} else {
		tpMissing, err := attachGlobal(root, a.mode, a.progs, names, upgrade, a.logfOrNop)
		if err != nil {
			return fail(fmt.Errorf("audit: mode %s: %w", a.mode, err))
		}
		missing = append(missing, tpMissing...)
	}
	a.missing = missing
	if upgrade {
		if err := a.updateCgroupLinks(); err != nil {
			a.logfOrNop("audit: %v (those cgroups keep the old programs until re-armed)", err)
		}
	}
	if err := maps.AuditObject.Put(uint32(0), auditObjectId{Sha256: objSum}); err != nil {
		return fail(fmt.Errorf("audit: pinning object id: %w", err))
	}
	if !a.probe.Reused {
		if err := writeProbe(probeMap, a.probe); err != nil {
			return fail(err)
		}
	}
	if err := maps.AuditMode.Put(uint32(0), uint32(a.mode.kernel())); err != nil {
		return fail(fmt.Errorf("audit: pinning mode: %w", err))
	}
	// Cgroups armed under another mode get no cgroup programs here (the pin
	// does not know their directory): the caller re-arms them (the NRI
	// daemon's Synchronize does).
	return a, nil
}

// PinnedMode is the mode of the programs pinned under root, for status and
// metrics; it opens nothing but the mode map. ErrNotLoaded when none.
func PinnedMode(root pins.Root) (Mode, error) {
	m, err := ebpf.LoadPinnedMap(root.Pin(Owner, "audit_mode"), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return "", ErrNotLoaded
	}
	if err != nil {
		return "", fmt.Errorf("audit: opening pinned mode: %w", err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		return "", fmt.Errorf("audit: reading pinned mode: %w", err)
	}
	mode := modeFromKernel(v)
	if mode == "" {
		return "", ErrNotLoaded
	}
	return mode, nil
}

// PinnedProbe is the probe result behind the pinned mode (the refusals of
// the stronger modes, or Forced), for status commands; it opens only the
// pinned mode and probe maps. ErrNotLoaded when nothing is pinned.
func PinnedProbe(root pins.Root) (ProbeResult, error) {
	mode, err := PinnedMode(root)
	if err != nil {
		return ProbeResult{}, err
	}
	m, err := ebpf.LoadPinnedMap(root.Pin(Owner, "audit_probe"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return ProbeResult{}, fmt.Errorf("audit: opening pinned probe result: %w", err)
	}
	defer m.Close()
	return readProbe(m, mode)
}

const forcedMarker = "forced"

func writeProbe(m *ebpf.Map, r ProbeResult) error {
	put := func(idx uint32, reason string, refused bool) error {
		var v auditProbeRefusal
		for i := 0; i < len(reason) && i < len(v.Reason)-1; i++ {
			v.Reason[i] = int8(reason[i])
		}
		if refused {
			v.Refused = 1
		}
		return m.Put(idx, v)
	}
	marker := ""
	if r.Forced {
		marker = forcedMarker
	}
	if err := put(0, marker, false); err != nil {
		return fmt.Errorf("audit: pinning probe result: %w", err)
	}
	for _, mode := range Modes {
		reason, refused := "", false
		for _, f := range r.Refused {
			if f.Mode == mode {
				reason, refused = f.Reason, true
			}
		}
		if err := put(uint32(mode.kernel()), reason, refused); err != nil {
			return fmt.Errorf("audit: pinning probe result: %w", err)
		}
	}
	return nil
}

func readProbe(m *ebpf.Map, mode Mode) (ProbeResult, error) {
	r := ProbeResult{Mode: mode}
	var v auditProbeRefusal
	if err := m.Lookup(uint32(0), &v); err != nil {
		return r, fmt.Errorf("audit: reading pinned probe result: %w", err)
	}
	r.Forced = cstr(v.Reason[:]) == forcedMarker
	for _, md := range Modes {
		if err := m.Lookup(uint32(md.kernel()), &v); err != nil {
			return r, fmt.Errorf("audit: reading pinned probe result: %w", err)
		}
		if v.Refused != 0 {
			r.Refused = append(r.Refused, Refusal{Mode: md, Reason: cstr(v.Reason[:])})
		}
	}
	return r, nil
}

// Cleanup detaches and unpins everything of the audit under root: removing
// a link's last pin (nobody else holds it) detaches it, and the maps and
// programs go with their last reference.
func Cleanup(root pins.Root) error {
	dir := root.Dir(Owner)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("audit: removing %s: %w", dir, err)
	}
	return nil
}
