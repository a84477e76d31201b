package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/pins"
	"golang.org/x/sys/unix"
)

// tc mode: every pod's filter has handle = pod id at one fixed priority, so
// a filter is found again (and never confused with another pod's, even when
// the kernel reuses the ifindex) without a pin.
const (
	tcFilterPrio  = 49152
	tcFilterName  = "podscope"
	modeCodeTCX   = 1 // enum attach_mode in bpf/tc.h
	modeCodeTC    = 2
	createdQdisc  = 1 // ATTACH_F_CREATED_QDISC
	clsactHandleM = 0xffff
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
	return filepath.Join(d.dir, linksDir, fmt.Sprintf("%d_%s", pod, h))
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

	gen, err := d.policyGen(pod)
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
	var prev tcPodIface
	hadPrev := d.objs.PodIfaces.Lookup(ifkey, &prev) == nil
	if err := d.objs.PodIfaces.Put(ifkey, tcPodIface{Pod: uint32(pod), PolicyGen: gen}); err != nil {
		return "", fmt.Errorf("attach pod %d: registering ifindex %d: %w", pod, ifindex, err)
	}
	undo = append(undo, func() {
		if hadPrev {
			_ = d.objs.PodIfaces.Put(ifkey, prev)
		} else {
			_ = d.objs.PodIfaces.Delete(ifkey)
		}
	})

	for _, h := range hooks {
		var u func()
		var err error
		if m == ModeTCX {
			u, err = d.attachTCX(pod, h, ifindex)
		} else {
			u, err = d.attachTC(pod, h, ifindex)
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
	var rec tcAttachment
	err := d.objs.Attachments.Lookup(tcAttachmentKey{Pod: uint32(pod), Hook: uint32(h)}, &rec)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("reading attachment record of pod %d: %w", pod, err)
	}
	return rec, true, nil
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

// removeTCXLink detaches the pinned link at path and removes its pin.
// Dropping the pin alone would detach it too, but only once the kernel frees
// the inode (after an RCU grace period), so a Detach followed by a query
// would still see the program: BPF_LINK_DETACH makes it synchronous. A link
// whose device is gone is already detached.
func removeTCXLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if err == nil {
		if derr := l.Detach(); derr != nil && !errors.Is(derr, unix.ENOLINK) && !errors.Is(derr, unix.EINVAL) {
			l.Close()
			return fmt.Errorf("detaching tcx link %s: %w", path, derr)
		}
		l.Close()
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpinning tcx link %s: %w", path, err)
	}
	return nil
}

// tcxLinkState loads the pinned link at path and reports its ifindex (0 once
// its device is gone) and program.
func tcxLinkState(path string) (ifindex uint32, prog ebpf.ProgramID, err error) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return 0, 0, err
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, 0, err
	}
	tcx := info.TCX()
	if tcx == nil {
		return 0, 0, fmt.Errorf("pin %s is a %v link, not tcx", path, info.Type)
	}
	return tcx.Ifindex, info.Program, nil
}

func (d *Datapath) attachTCX(pod PodID, h hook, ifindex int) (func(), error) {
	path := d.linkPin(pod, h)
	want, err := d.programID(h)
	if err != nil {
		return nil, err
	}
	if idx, prog, err := tcxLinkState(path); err == nil && int(idx) == ifindex && prog == want {
		// Already attached: only make sure the record is there.
		return d.putRecord(pod, h, tcAttachment{Ifindex: uint32(ifindex), Mode: modeCodeTCX})
	}
	// A pin that is not this attachment (a deleted veth's defunct link keeps
	// its pin and would block re-pinning) goes.
	if err := removeTCXLink(path); err != nil {
		return nil, fmt.Errorf("removing stale link pin: %w", err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: d.program(h), Attach: h.tcxAttach()})
	if err != nil {
		return nil, err
	}
	if err := l.Pin(path); err != nil {
		_ = l.Detach()
		l.Close()
		return nil, fmt.Errorf("pinning tcx link at %s: %w", path, err)
	}
	// The pin holds the link; dropping our fd keeps it attached.
	l.Close()
	undoRec, err := d.putRecord(pod, h, tcAttachment{Ifindex: uint32(ifindex), Mode: modeCodeTCX})
	if err != nil {
		_ = removeTCXLink(path)
		return nil, err
	}
	return func() {
		undoRec()
		_ = removeTCXLink(path)
	}, nil
}

func tcParent(h hook) uint32 {
	if h == hookHostIngress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(clsactHandleM, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}

func (d *Datapath) attachTC(pod PodID, h hook, ifindex int) (func(), error) {
	var undo []func()
	runUndo := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	var flags uint32
	switch err := netlink.QdiscAdd(clsact(ifindex)); {
	case err == nil:
		flags |= createdQdisc
		undo = append(undo, func() { _ = netlink.QdiscDel(clsact(ifindex)) })
	case errors.Is(err, unix.EEXIST):
		// Ours if a record of this pod on this device says so (a repeated
		// Attach, or the other hook of this one).
		for _, other := range hooks {
			if prev, ok, _ := d.record(pod, other); ok && prev.Flags&createdQdisc != 0 &&
				int(prev.Ifindex) == ifindex && modeOf(prev.Mode) == ModeTC {
				flags |= createdQdisc
			}
		}
	default:
		return nil, fmt.Errorf("adding clsact qdisc: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    tcParent(h),
			Handle:    uint32(pod),
			Priority:  tcFilterPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           d.program(h).FD(),
		Name:         tcFilterName + "_" + h.String(),
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		runUndo()
		return nil, fmt.Errorf("adding cls_bpf filter: %w", err)
	}
	undo = append(undo, func() { _ = netlink.FilterDel(f) })
	undoRec, err := d.putRecord(pod, h, tcAttachment{Ifindex: uint32(ifindex), Mode: modeCodeTC,
		Handle: uint32(pod), Prio: tcFilterPrio, Flags: flags})
	if err != nil {
		runUndo()
		return nil, err
	}
	undo = append(undo, undoRec)
	return runUndo, nil
}

// ourFilter finds pod's filter on one hook of ifindex; nil when the device
// or the filter is gone.
func ourFilter(ifindex int, h hook, handle, prio uint32) (*netlink.BpfFilter, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, nil
		}
		return nil, err
	}
	filters, err := netlink.FilterList(l, tcParent(h))
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) { // no clsact qdisc
			return nil, nil
		}
		return nil, err
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Handle == handle && uint32(bf.Priority) == prio {
			return bf, nil
		}
	}
	return nil, nil
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

// removeEmptyClsact deletes the clsact qdisc podscope created once no filter
// is left on either of its hooks (another user's filters keep it).
func removeEmptyClsact(ifindex int) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		if fs, err := netlink.FilterList(l, parent); err != nil || len(fs) > 0 {
			return
		}
	}
	_ = netlink.QdiscDel(clsact(ifindex))
}

// reapIfindex removes other pods' records on ifindex whose attachment is no
// longer live (the veth they were on was deleted and the kernel reused the
// index), and refuses when another pod is really attached to this device.
func (d *Datapath) reapIfindex(pod PodID, ifindex int) error {
	recs, err := d.records()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.Pod == pod || r.Ifindex != ifindex {
			continue
		}
		live := false
		if r.Mode == ModeTCX {
			idx, _, err := tcxLinkState(r.Pin)
			live = err == nil && int(idx) == ifindex
		} else {
			f, err := ourFilter(ifindex, r.hook, r.Handle, r.Prio)
			live = err == nil && f != nil
		}
		if live {
			return fmt.Errorf("attach pod %d: ifindex %d is attached to pod %d; detach that pod first", pod, ifindex, r.Pod)
		}
		if err := d.detachHook(r.Pod, r.hook, r.rec); err != nil {
			return fmt.Errorf("removing stale attachment of pod %d on ifindex %d: %w", r.Pod, ifindex, err)
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
	return nil
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
	entries, err := os.ReadDir(filepath.Join(d.dir, linksDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range entries {
		path := filepath.Join(d.dir, linksDir, e.Name())
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
	for _, name := range []string{progPin(hookHostIngress), progPin(hookHostEgress), tcMapPodIfaces, tcMapPodCounters, tcMapFlows, tcMapPolicy, tcMapAttachments} {
		if _, err := os.Stat(filepath.Join(d.dir, name)); err != nil {
			return fmt.Errorf("pod %d: pin %s missing: %w", pod, filepath.Join(d.dir, name), err)
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

// upgradeAttachments points every recorded attachment at this Datapath's
// programs: tcx links atomically (BPF_LINK_UPDATE), tc filters by replacing
// them in place. Devices not visible from here (gone, or in another netns)
// are skipped.
func (d *Datapath) upgradeAttachments() error {
	recs, err := d.records()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if r.Mode == ModeTCX {
			l, err := link.LoadPinnedLink(r.Pin, nil)
			if err != nil {
				continue
			}
			if err := l.Update(d.program(r.hook)); err != nil && !errors.Is(err, unix.ENOLINK) {
				errs = append(errs, fmt.Errorf("pod %d host %s hook: %w", r.Pod, r.hook, err))
			}
			l.Close()
			continue
		}
		f, err := ourFilter(r.Ifindex, r.hook, r.Handle, r.Prio)
		if err != nil || f == nil {
			continue
		}
		f.Fd = d.program(r.hook).FD()
		f.Name = tcFilterName + "_" + r.hook.String()
		f.DirectAction = true
		if err := netlink.FilterReplace(f); err != nil {
			errs = append(errs, fmt.Errorf("pod %d host %s hook: %w", r.Pod, r.hook, err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup detaches every pod of the datapath under root and removes all its
// pins. Run it in the network namespace of the veths (the node's).
func Cleanup(root pins.Root) error {
	dir := root.Dir(Owner)
	d, err := OpenPinned(root)
	var errs []error
	if err == nil {
		atts, err := d.Attachments()
		if err != nil {
			errs = append(errs, err)
		}
		done := map[PodID]bool{}
		for _, a := range atts {
			if !done[a.Pod] {
				done[a.Pod] = true
				if err := d.Detach(a.Pod); err != nil {
					errs = append(errs, err)
				}
			}
		}
		d.Close()
	} else if !errors.Is(err, ErrNotLoaded) {
		errs = append(errs, err)
	}
	// Removing the pins releases any link left (its last reference).
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
	}
	return errors.Join(errs...)
}
