// TCX mode: BPF links on the device's TCX hooks, pinned per pod and hook.

package datapath

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

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
	// First on the hook: a program that ends processing (another CNI's
	// TCX_PASS or redirect) would otherwise hide the pod's packets. Ours
	// returns TCX_NEXT for what it lets through, so the others still run.
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: d.program(h), Attach: h.tcxAttach(), Anchor: link.Head()})
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
