package datapath

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"golang.org/x/sys/unix"
)

// Attach modes as recorded in struct attachment (enum attach_mode).
const (
	modeCodeTCX = 1
	modeCodeTC  = 2
)

func modeCode(m Mode) uint32 {
	if m == ModeTC {
		return modeCodeTC
	}
	return modeCodeTCX
}

func modeOf(code uint32) Mode {
	if code == modeCodeTC {
		return ModeTC
	}
	return ModeTCX
}

func (d *Datapath) linkPin(pod PodID, h hook) string {
	return d.root.Pin(Owner, linksDir, fmt.Sprintf("%d_%s", pod, h))
}

// Attach attaches the programs to both hooks of the host-side veth ifindex
// (in the calling thread's network namespace) for pod, and registers the
// ifindex so the programs account and enforce for the pod. It is
// all-or-nothing (a failure undoes every step done, backwards) and
// idempotent (attaching what is attached changes nothing). Pins of this pod
// or this ifindex left by a deleted veth are removed first. It returns the
// mode used.
func (d *Datapath) Attach(pod PodID, ifindex int, mode Mode) (Mode, error) {
	if pod == 0 {
		return "", errors.New("attach: pod id 0 is invalid")
	}
	if ifindex <= 0 {
		return "", fmt.Errorf("attach pod %d: invalid ifindex %d", pod, ifindex)
	}
	m, err := d.ResolveMode(mode)
	if err != nil {
		return "", err
	}
	unlock, err := lockDir(d.dir)
	if err != nil {
		return "", err
	}
	defer unlock()

	var undo []func()
	done := false
	defer func() {
		if !done {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	set, err := d.podSet(pod)
	if err != nil {
		return "", err
	}
	// Another attachment of this pod (other veth or mode) is replaced, and
	// another veth's registration goes with it.
	ifs, err := d.podIfaces(pod)
	if err != nil {
		return "", err
	}
	for k := range ifs {
		if int(k) != ifindex {
			if err := d.objs.PodIfaces.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return "", fmt.Errorf("attach pod %d: forgetting its old ifindex %d: %w", pod, k, err)
			}
		}
	}
	for _, h := range hooks {
		rec, ok, err := d.record(pod, h)
		if err != nil {
			return "", err
		}
		if ok && (int(rec.Ifindex) != ifindex || modeOf(rec.Mode) != m) {
			if err := d.detachHook(pod, h, rec); err != nil {
				return "", fmt.Errorf("attach pod %d: replacing its attachment to ifindex %d: %w", pod, rec.Ifindex, err)
			}
		}
	}
	if err := d.reapIfindex(pod, ifindex); err != nil {
		return "", err
	}

	zero := make([]tcTrafficCounters, ebpf.MustPossibleCPU())
	key := uint32(pod)
	switch err := d.objs.PodCounters.Update(key, zero, ebpf.UpdateNoExist); {
	case err == nil:
		undo = append(undo, func() { _ = d.objs.PodCounters.Delete(key) })
	case errors.Is(err, ebpf.ErrKeyExist):
	default:
		return "", fmt.Errorf("attach pod %d: creating counters: %w", pod, err)
	}

	ifkey := uint32(ifindex)
	// The pod's reference names its ifindex before the entry exists, so
	// the entry is always found from the pod (podIfaces).
	prevRef, hadRef, err := d.podRef(pod)
	if err != nil {
		return "", err
	}
	if err := d.setRefIfindex(pod, ifkey); err != nil {
		return "", err
	}
	undo = append(undo, func() {
		if hadRef {
			_ = d.objs.PodPolicy.Put(uint32(pod), prevRef)
		} else {
			_ = d.objs.PodPolicy.Delete(uint32(pod))
		}
	})
	var prev tcPodIface
	hadPrev := d.objs.PodIfaces.Lookup(ifkey, &prev) == nil
	if err := d.objs.PodIfaces.Put(ifkey, tcPodIface{Pod: uint32(pod), PolicySet: set}); err != nil {
		return "", fmt.Errorf("attach pod %d: registering ifindex %d: %w", pod, ifindex, err)
	}
	undo = append(undo, func() {
		if hadPrev {
			_ = d.objs.PodIfaces.Put(ifkey, prev)
		} else {
			_ = d.objs.PodIfaces.Delete(ifkey)
		}
	})

	var qdiscFlags uint32
	if m == ModeTC {
		u, flags, err := d.ensureClsact(pod, ifindex)
		if err != nil {
			return "", fmt.Errorf("attach pod %d to ifindex %d (%s): %w", pod, ifindex, m, err)
		}
		undo = append(undo, u)
		qdiscFlags = flags
	}
	for _, h := range hooks {
		var u func()
		var err error
		if m == ModeTCX {
			u, err = d.attachTCX(pod, h, ifindex)
		} else {
			u, err = d.attachTC(pod, h, ifindex, qdiscFlags)
		}
		if err != nil {
			return "", fmt.Errorf("attach pod %d to ifindex %d (%s, host %s hook): %w", pod, ifindex, m, h, err)
		}
		undo = append(undo, u)
	}
	done = true
	return m, nil
}

func (d *Datapath) record(pod PodID, h hook) (tcAttachment, bool, error) {
	rec, found, err := lookup[tcAttachment](d.objs.Attachments, tcAttachmentKey{Pod: uint32(pod), Hook: uint32(h)})
	if err != nil {
		return rec, false, fmt.Errorf("reading attachment record of pod %d: %w", pod, err)
	}
	return rec, found, nil
}

// putRecord stores the record of (pod, h) and returns the undo restoring
// what was there.
func (d *Datapath) putRecord(pod PodID, h hook, rec tcAttachment) (func(), error) {
	key := tcAttachmentKey{Pod: uint32(pod), Hook: uint32(h)}
	prev, had, err := d.record(pod, h)
	if err != nil {
		return nil, err
	}
	if err := d.objs.Attachments.Put(key, rec); err != nil {
		return nil, fmt.Errorf("recording attachment: %w", err)
	}
	return func() {
		if had {
			_ = d.objs.Attachments.Put(key, prev)
		} else {
			_ = d.objs.Attachments.Delete(key)
		}
	}, nil
}

func (d *Datapath) programID(h hook) (ebpf.ProgramID, error) {
	info, err := d.program(h).Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("kernel does not report program IDs")
	}
	return id, nil
}

// detachHook removes one attachment; a device that is already gone is fine.
func (d *Datapath) detachHook(pod PodID, h hook, rec tcAttachment) error {
	key := tcAttachmentKey{Pod: uint32(pod), Hook: uint32(h)}
	if modeOf(rec.Mode) == ModeTCX {
		if err := removeTCXLink(d.linkPin(pod, h)); err != nil {
			return err
		}
	} else {
		f, err := ourFilter(int(rec.Ifindex), h, rec.Handle, rec.Prio)
		if err != nil {
			return fmt.Errorf("listing tc filters of ifindex %d: %w", rec.Ifindex, err)
		}
		if f != nil {
			if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("deleting tc filter of ifindex %d: %w", rec.Ifindex, err)
			}
			if rec.Flags&createdQdisc != 0 {
				removeEmptyClsact(int(rec.Ifindex))
			}
		}
	}
	if err := d.objs.Attachments.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting attachment record: %w", err)
	}
	return nil
}

// reapIfindex removes another pod's records on ifindex whose attachment is
// no longer live (the veth they were on was deleted and the kernel reused
// the index), and refuses when another pod is really attached to this
// device. The other pod is the one pod_ifaces registers on ifindex: one
// lookup, not a scan of every record (records without that registration
// are left to the reaper).
func (d *Datapath) reapIfindex(pod PodID, ifindex int) error {
	var pi tcPodIface
	if err := d.objs.PodIfaces.Lookup(uint32(ifindex), &pi); err != nil || PodID(pi.Pod) == pod {
		return nil
	}
	other := PodID(pi.Pod)
	for _, h := range hooks {
		rec, ok, err := d.record(other, h)
		if err != nil {
			return err
		}
		if !ok || int(rec.Ifindex) != ifindex {
			continue
		}
		live := false
		if modeOf(rec.Mode) == ModeTCX {
			idx, _, err := tcxLinkState(d.linkPin(other, h))
			live = err == nil && int(idx) == ifindex
		} else {
			f, err := ourFilter(ifindex, h, rec.Handle, rec.Prio)
			live = err == nil && f != nil
		}
		if live {
			return fmt.Errorf("attach pod %d: ifindex %d is attached to pod %d; detach that pod first", pod, ifindex, other)
		}
		if err := d.detachHook(other, h, rec); err != nil {
			return fmt.Errorf("removing stale attachment of pod %d on ifindex %d: %w", other, ifindex, err)
		}
	}
	return nil
}

type recordEntry struct {
	Attachment
	hook hook
	rec  tcAttachment
}

func (d *Datapath) records() ([]recordEntry, error) {
	var out []recordEntry
	var k tcAttachmentKey
	var v tcAttachment
	it := d.objs.Attachments.Iterate()
	for it.Next(&k, &v) {
		h := hook(k.Hook)
		a := Attachment{Pod: PodID(k.Pod), Ifindex: int(v.Ifindex), Mode: modeOf(v.Mode), Hook: h.String(), Direction: h.direction()}
		if a.Mode == ModeTCX {
			a.Pin = d.linkPin(a.Pod, h)
		} else {
			a.Handle, a.Prio = v.Handle, v.Prio
		}
		out = append(out, recordEntry{a, h, v})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading attachment records: %w", err)
	}
	return out, nil
}

// Detach removes pod's links or filters from both hooks, their records and
// the ifindex registration. It is idempotent and works when the veth is
// already gone. The pod's counters, flows and policy stay (RemovePod).
func (d *Datapath) Detach(pod PodID) error {
	unlock, err := lockDir(d.dir)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	for _, h := range hooks {
		rec, ok, err := d.record(pod, h)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			if err := d.detachHook(pod, h, rec); err != nil {
				errs = append(errs, fmt.Errorf("detach pod %d host %s hook: %w", pod, h, err))
			}
		}
		// A link pin without a record (a crash between pin and record).
		if err := removeTCXLink(d.linkPin(pod, h)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.forgetIfindexes(pod); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// forgetIfindexes deletes every ifindex entry pointing at pod: the kernel
// reuses ifindexes, so a stale one would account a new veth to this pod.
func (d *Datapath) forgetIfindexes(pod PodID) error {
	ifs, err := d.podIfaces(pod)
	if err != nil {
		return err
	}
	for k := range ifs {
		if err := d.objs.PodIfaces.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting ifindex %d of pod %d: %w", k, pod, err)
		}
	}
	if _, ok, err := d.podRef(pod); err != nil || !ok {
		return err
	}
	return d.setRefIfindex(pod, 0)
}

// Attachments lists every recorded attachment, plus link pins without a
// record, sorted by pod and hook.
func (d *Datapath) Attachments() ([]Attachment, error) {
	recs, err := d.records()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []Attachment
	for _, r := range recs {
		out = append(out, r.Attachment)
		if r.Pin != "" {
			seen[r.Pin] = true
		}
	}
	entries, err := os.ReadDir(d.root.Pin(Owner, linksDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range entries {
		path := d.root.Pin(Owner, linksDir, e.Name())
		podStr, hookStr, ok := strings.Cut(e.Name(), "_")
		n, err := strconv.ParseUint(podStr, 10, 32)
		if seen[path] || !ok || err != nil {
			continue
		}
		h := hookHostIngress
		if hookStr == hookHostEgress.String() {
			h = hookHostEgress
		}
		idx, _, err := tcxLinkState(path)
		if err != nil {
			continue // not a link
		}
		out = append(out, Attachment{Pod: PodID(n), Ifindex: int(idx), Mode: ModeTCX, Hook: h.String(), Direction: h.direction(), Pin: path})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pod != out[j].Pod {
			return out[i].Pod < out[j].Pod
		}
		return out[i].Hook > out[j].Hook // ingress before egress
	})
	return out, nil
}

// Check verifies that pod is attached to ifindex on both hooks with the
// pinned programs and registered in the ifindex map; the error names the
// first thing missing.
func (d *Datapath) Check(pod PodID, ifindex int) error {
	names := []string{progPin(hookHostIngress), progPin(hookHostEgress)}
	for name := range mapFields(&d.objs.tcMaps) {
		names = append(names, name)
	}
	sort.Strings(names[2:])
	for _, name := range names {
		if _, err := os.Stat(d.root.Pin(Owner, name)); err != nil {
			return fmt.Errorf("pod %d: pin %s missing: %w", pod, d.root.Pin(Owner, name), err)
		}
	}
	var pi tcPodIface
	if err := d.objs.PodIfaces.Lookup(uint32(ifindex), &pi); err != nil {
		return fmt.Errorf("pod %d: ifindex %d not registered in the datapath: %w", pod, ifindex, err)
	}
	if PodID(pi.Pod) != pod {
		return fmt.Errorf("pod %d: ifindex %d is registered to pod %d", pod, ifindex, pi.Pod)
	}
	for _, h := range hooks {
		rec, ok, err := d.record(pod, h)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("pod %d: no program attached on the host %s hook (no attachment record)", pod, h)
		}
		if int(rec.Ifindex) != ifindex {
			return fmt.Errorf("pod %d: host %s hook is attached to ifindex %d, not %d", pod, h, rec.Ifindex, ifindex)
		}
		want, err := d.programID(h)
		if err != nil {
			return err
		}
		if modeOf(rec.Mode) == ModeTCX {
			idx, prog, err := tcxLinkState(d.linkPin(pod, h))
			switch {
			case err != nil:
				return fmt.Errorf("pod %d: host %s hook: tcx link pin %s: %w", pod, h, d.linkPin(pod, h), err)
			case int(idx) != ifindex:
				return fmt.Errorf("pod %d: host %s hook: tcx link is attached to ifindex %d, not %d (veth gone?)", pod, h, idx, ifindex)
			case prog != want:
				return fmt.Errorf("pod %d: host %s hook: tcx link runs program %d, not podscope's %d", pod, h, prog, want)
			}
			continue
		}
		f, err := ourFilter(ifindex, h, rec.Handle, rec.Prio)
		if err != nil {
			return fmt.Errorf("pod %d: host %s hook: listing tc filters: %w", pod, h, err)
		}
		if f == nil {
			return fmt.Errorf("pod %d: host %s hook: tc filter handle %d prio %d missing on ifindex %d", pod, h, rec.Handle, rec.Prio, ifindex)
		}
		if ebpf.ProgramID(f.Id) != want {
			return fmt.Errorf("pod %d: host %s hook: tc filter runs program %d, not podscope's %d", pod, h, f.Id, want)
		}
	}
	return nil
}
