// tc mode: a clsact qdisc with a direct-action cls_bpf filter per hook.

package datapath

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tc mode: every pod's filter has handle = pod id at one fixed priority, so
// a filter is found again (and never confused with another pod's, even when
// the kernel reuses the ifindex) without a pin.
const (
	tcFilterPrio  = 49152
	tcFilterName  = "podscope"
	createdQdisc  = 1 // ATTACH_F_CREATED_QDISC
	clsactHandleM = 0xffff
)

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

// ensureClsact makes sure the device has the clsact qdisc tc mode's filters
// go on, once per Attach for both hooks. It returns the undo and the
// attachment flags: createdQdisc when podscope created it, now or (a
// record of this pod on this device says so) in an earlier Attach.
func (d *Datapath) ensureClsact(pod PodID, ifindex int) (func(), uint32, error) {
	switch err := netlink.QdiscAdd(clsact(ifindex)); {
	case err == nil:
		return func() { _ = netlink.QdiscDel(clsact(ifindex)) }, createdQdisc, nil
	case errors.Is(err, unix.EEXIST):
		// The kernel says EEXIST for any qdisc at the ingress parent.
		// Another kind there (the "ingress" qdisc the bandwidth plugin
		// adds for egress shaping) has a single filter block: both
		// filters would land on it, the egress program on the wrong hook,
		// and behind that qdisc's own redirect.
		if err := ingressSideIsClsact(ifindex); err != nil {
			return nil, 0, err
		}
		var flags uint32
		for _, h := range hooks {
			if prev, ok, _ := d.record(pod, h); ok && prev.Flags&createdQdisc != 0 &&
				int(prev.Ifindex) == ifindex && modeOf(prev.Mode) == ModeTC {
				flags |= createdQdisc
			}
		}
		return func() {}, flags, nil
	default:
		return nil, 0, fmt.Errorf("adding clsact qdisc: %w", err)
	}
}

// attachTC adds pod's filter on hook h of ifindex (whose clsact
// ensureClsact made sure of, with flags) and its record.
func (d *Datapath) attachTC(pod PodID, h hook, ifindex int, flags uint32) (func(), error) {
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
		return nil, fmt.Errorf("adding cls_bpf filter: %w", err)
	}
	undoFilter := func() { _ = netlink.FilterDel(f) }
	undoRec, err := d.putRecord(pod, h, tcAttachment{Ifindex: uint32(ifindex), Mode: modeCodeTC,
		Handle: uint32(pod), Prio: tcFilterPrio, Flags: flags})
	if err != nil {
		undoFilter()
		return nil, err
	}
	return func() { undoRec(); undoFilter() }, nil
}

// ForeignQdiscError is returned by a tc-mode Attach when the device's
// ingress side holds a qdisc other than clsact (only one can be there), e.g.
// the "ingress" qdisc of the bandwidth plugin's egress shaping. TCX mode
// (Linux 6.6+) needs no qdisc and runs before it.
type ForeignQdiscError struct {
	Kind string // the qdisc found, e.g. "ingress"
}

func (e *ForeignQdiscError) Error() string {
	return fmt.Sprintf("the device's ingress side holds an %q qdisc, not clsact: tc mode cannot attach beside it (tcx mode can, Linux 6.6+)", e.Kind)
}

// ingressSideIsClsact checks that the qdisc at the ingress parent of
// ifindex is a clsact (a *ForeignQdiscError if not).
func ingressSideIsClsact(ifindex int) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("reading the device's qdiscs: %w", err)
	}
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return fmt.Errorf("reading the device's qdiscs: %w", err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS { // = HANDLE_CLSACT
			if q.Type() == "clsact" {
				return nil
			}
			return &ForeignQdiscError{Kind: q.Type()}
		}
	}
	// Gone between the add and the list: let the filter add say what is wrong.
	return nil
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
