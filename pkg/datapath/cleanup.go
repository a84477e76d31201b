package datapath

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/pins"
)

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

// Cleanup detaches every pod of the datapath under root and the
// NetworkPolicy hooks, and removes all its pins. Run it in the network namespace of the veths (the node's).
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
	// The NetworkPolicy links first and synchronously: a pin removal alone
	// releases them only after an RCU grace period.
	if err := DetachNetworkPolicyHooks(root); err != nil {
		errs = append(errs, err)
	}
	// Removing the pins releases any link left (its last reference).
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
	}
	return errors.Join(errs...)
}
