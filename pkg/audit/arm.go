package audit

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/fault"
	"github.com/podscope/podscope/pkg/pods"
)

// Arm starts the audit of the cgroup v2 directory cgroupDir (a container's
// cgroup) and records its identity. It returns the cgroup id (the
// directory's inode). All-or-nothing: on error nothing of it stays armed.
// Idempotent: arming an armed cgroup updates its identity.
//
// Order: the cgroup programs (sysctl, and lsm_cgroup's) are attached and
// pinned first, then the identity is stored, and the id goes into
// audited_cgroups last — that is the moment events start.
func (a *Auditor) Arm(cgroupDir string, id Identity) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cgid, err := cgroups.V2ID(cgroupDir)
	if err != nil {
		return 0, fmt.Errorf("audit: arm: %w", err)
	}
	if err := a.attachCgroupProgs(cgid, cgroupDir); err != nil {
		a.removeCgroupLinks(cgid, "")
		return 0, fmt.Errorf("audit: arm cgroup %s: %w", cgroupDir, err)
	}
	fault.Point("arm:links")
	ki, long := identityToKernel(id)
	if err := a.putLongIdentity(cgid, id, long); err != nil {
		a.removeCgroupLinks(cgid, "")
		return 0, fmt.Errorf("audit: arm cgroup %s: %w", cgroupDir, err)
	}
	idm := a.maps.AuditIdentity
	if err := idm.Put(cgid, ki); err != nil {
		a.dropLongIdentity(cgid)
		a.removeCgroupLinks(cgid, "")
		return 0, fmt.Errorf("audit: arm cgroup %s: storing identity: %w", cgroupDir, err)
	}
	a.cache.put(cgid, id)
	fault.Point("arm:identity")
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) // diagnostics only
	level, err := cgroups.Level(cgroupDir)
	if err != nil {
		idm.Delete(cgid)
		a.dropLongIdentity(cgid)
		a.removeCgroupLinks(cgid, "")
		return 0, fmt.Errorf("audit: arm cgroup %s: %w", cgroupDir, err)
	}
	ac := a.maps.AuditedCgroups
	if err := ac.Put(cgid, auditAuditCgroup{ArmedAt: uint32(ts.Sec), Level: level}); err != nil {
		idm.Delete(cgid)
		a.dropLongIdentity(cgid)
		a.removeCgroupLinks(cgid, "")
		return 0, fmt.Errorf("audit: arm cgroup %s: %w", cgroupDir, err)
	}
	fault.Point("arm:audited")
	if err := a.syncLevels(); err != nil {
		ac.Delete(cgid)
		idm.Delete(cgid)
		a.dropLongIdentity(cgid)
		a.removeCgroupLinks(cgid, "")
		return 0, fmt.Errorf("audit: arm cgroup %s: %w", cgroupDir, err)
	}
	return cgid, nil
}

// Disarm stops the audit of a cgroup: no event is produced after it
// returns (records already in the ring are still read). Idempotent. The
// cgroup's loss counter stays (Lost keeps reporting it).
func (a *Auditor) Disarm(cgid uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ac, idm := a.maps.AuditedCgroups, a.maps.AuditIdentity
	var errs []error
	if err := ac.Delete(cgid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("audit: disarm %d: %w", cgid, err))
	}
	fault.Point("disarm:unaudited")
	errs = append(errs, a.syncLevels(), a.removeCgroupLinks(cgid, ""))
	fault.Point("disarm:links")
	if err := idm.Delete(cgid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("audit: disarm %d: identity: %w", cgid, err))
	}
	errs = append(errs, a.dropLongIdentity(cgid))
	// The reader may still decode records of this cgroup: keep the cached
	// identity for a grace period.
	a.cache.expire(cgid, time.Now().Add(10*time.Second))
	return errors.Join(errs...)
}

// eachArmed calls f for every entry of audited_cgroups.
func (a *Auditor) eachArmed(f func(id uint64, v auditAuditCgroup)) error {
	var (
		k uint64
		v auditAuditCgroup
	)
	it := a.maps.AuditedCgroups.Iterate()
	for it.Next(&k, &v) {
		f(k, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("listing armed cgroups: %w", err)
	}
	return nil
}

// Armed lists the armed cgroups with their identities.
func (a *Auditor) Armed() (map[uint64]Identity, error) {
	out := map[uint64]Identity{}
	err := a.eachArmed(func(k uint64, _ auditAuditCgroup) {
		var ki auditIdentity
		if err := a.maps.AuditIdentity.Lookup(k, &ki); err == nil {
			out[k] = a.identityOf(k, &ki)
		} else {
			out[k] = Identity{}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return out, nil
}

// syncLevels rewrites audit_levels, the ascending distinct levels of the
// armed cgroups, from audited_cgroups. More distinct levels than the
// programs check (8) is an error: the deeper ones would go unaudited.
func (a *Auditor) syncLevels() error {
	seen := map[uint32]bool{}
	if err := a.eachArmed(func(_ uint64, v auditAuditCgroup) { seen[v.Level] = true }); err != nil {
		return err
	}
	var out auditArmedLevels
	if len(seen) > len(out.Level) {
		return fmt.Errorf("cgroups armed at %d different depths; the programs check at most %d", len(seen), len(out.Level))
	}
	levels := make([]uint32, 0, len(seen))
	for l := range seen {
		levels = append(levels, l)
	}
	sort.Slice(levels, func(i, j int) bool { return levels[i] < levels[j] })
	out.N = uint32(copy(out.Level[:], levels))
	if err := a.maps.AuditLevels.Put(uint32(0), out); err != nil {
		return fmt.Errorf("updating armed levels: %w", err)
	}
	return nil
}

// attachCgroupProgs attaches (multi-attach links, pinned as cg_<id>_<prog>)
// the sysctl program and, in lsm_cgroup mode, the LSM programs to the
// cgroup. Links already pinned are kept.
func (a *Auditor) attachCgroupProgs(cgid uint64, dir string) error {
	type att struct {
		name string
		at   ebpf.AttachType
	}
	todo := []att{{sysctlProg, ebpf.AttachCGroupSysctl}}
	if a.mode == ModeLSMCgroup {
		for n := range a.progs {
			if strings.HasPrefix(n, "lsmc_") {
				todo = append(todo, att{n, ebpf.AttachLSMCgroup})
			}
		}
	}
	for _, t := range todo {
		pin := a.cgLinkPin(cgid, t.name)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			l.Close()
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: t.at, Program: a.progs[t.name]})
		if err != nil {
			return fmt.Errorf("attaching %s: %w", t.name, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pinning link of %s: %w", t.name, err)
		}
		l.Close()
	}
	return nil
}

// updateCgroupLinks points every pinned per-cgroup link at this build's
// program of the same name (BPF_LINK_UPDATE: the cgroup is never without).
func (a *Auditor) updateCgroupLinks() error {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), cgLinkPrefix)
		if !ok {
			continue
		}
		_, prog, ok := strings.Cut(rest, "_")
		p := a.progs[prog]
		if !ok || p == nil {
			continue
		}
		l, err := link.LoadPinnedLink(a.root.Pin(Owner, e.Name()), nil)
		if err == nil {
			err = l.Update(p)
			l.Close()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("updating link %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}

func (a *Auditor) cgLinkPin(cgid uint64, prog string) string {
	return a.root.Pin(Owner, cgLinkPrefix+strconv.FormatUint(cgid, 10)+"_"+prog)
}

// removeCgroupLinks unpins (detaching) the per-cgroup links of cgid (0 =
// every cgroup) whose program name starts with progPrefix ("" = all).
func (a *Auditor) removeCgroupLinks(cgid uint64, progPrefix string) error {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		return fmt.Errorf("audit: listing %s: %w", a.dir, err)
	}
	want := cgLinkPrefix
	if cgid != 0 {
		want += strconv.FormatUint(cgid, 10) + "_"
	}
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if !strings.HasPrefix(n, want) {
			continue
		}
		rest := strings.TrimPrefix(n, cgLinkPrefix)
		_, prog, ok := strings.Cut(rest, "_")
		if !ok || !strings.HasPrefix(prog, progPrefix) {
			continue
		}
		if err := os.Remove(a.root.Pin(Owner, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// identityToKernel fills the fixed fields of the kernel's identity with what
// fits; long reports that a field did not (it is then left empty, never cut,
// and the whole identity goes to the blob store: see longid.go).
func identityToKernel(id Identity) (k auditIdentity, long bool) {
	for _, f := range []struct {
		dst []int8
		v   string
	}{
		{k.Namespace[:], id.Namespace},
		{k.Pod[:], id.Pod},
		{k.PodUid[:], id.PodUID},
		{k.Container[:], id.Container},
		{k.ContainerId[:], id.ContainerID},
	} {
		if len(f.v) >= len(f.dst) || strings.IndexByte(f.v, 0) >= 0 {
			long = true
			continue
		}
		for i := 0; i < len(f.v); i++ {
			f.dst[i] = int8(f.v[i])
		}
	}
	return k, long
}

func identityFromKernel(k *auditIdentity) Identity {
	return Identity{
		Identity:    pods.Identity{Namespace: cstr(k.Namespace[:]), Pod: cstr(k.Pod[:]), PodUID: cstr(k.PodUid[:])},
		Container:   cstr(k.Container[:]),
		ContainerID: cstr(k.ContainerId[:]),
	}
}

func cstr(b []int8) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	buf := make([]byte, n)
	for i := 0; i < n; i++ {
		buf[i] = byte(b[i])
	}
	return string(buf)
}

// tryCgroupAttach attaches every lsm_cgroup program to a scratch cgroup and
// detaches them again: a mode that could not arm a cgroup is refused at
// Open, not at the first Arm (the kernel has room for few BPF_LSM_CGROUP
// hooks system-wide: CGROUP_LSM_NUM, 10 on Linux 6.x).
func (a *Auditor) tryCgroupAttach(cgroupRoot string, names []string) error {
	cg, err := cgroups.Scratch(cgroupRoot, "podscope-armcheck-")
	if err != nil {
		return err
	}
	defer os.Remove(cg)
	var links []link.Link
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	for _, n := range names {
		if !strings.HasPrefix(n, "lsmc_") {
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachLSMCgroup, Program: a.progs[n]})
		if err != nil {
			return fmt.Errorf("attach %s (program %d of the mode) to a cgroup: %w", n, len(links)+1, unwrapErrno(err))
		}
		links = append(links, l)
	}
	return nil
}
