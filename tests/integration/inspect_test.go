package integration

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
)

// pinnedState lists what is pinned under a bpffs root: link pins, and the
// number of entries of every pinned map that is not an array (arrays always
// have all their entries).
type pinnedState struct {
	links      []string
	mapEntries map[string]int
	programs   []string
}

func readPins(root pins.Root) (pinnedState, error) {
	st := pinnedState{mapEntries: map[string]int{}}
	err := pins.Walk(root.Path, func(p string) error {
		if prog, err := ebpf.LoadPinnedProgram(p, nil); err == nil {
			prog.Close()
			st.programs = append(st.programs, p)
			return nil
		}
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			l.Close()
			st.links = append(st.links, p)
			return nil
		}
		m, err := ebpf.LoadPinnedMap(p, nil)
		if err != nil {
			return fmt.Errorf("pin %s is neither program, link nor map: %w", p, err)
		}
		defer m.Close()
		switch m.Type() {
		case ebpf.Array, ebpf.PerCPUArray, ebpf.ProgramArray, ebpf.RingBuf:
			return nil
		}
		n := 0
		k := make([]byte, m.KeySize())
		it := m.Iterate()
		var v []byte
		if m.Type() == ebpf.PerCPUHash || m.Type() == ebpf.LRUCPUHash {
			var vs [][]byte
			for it.Next(&k, &vs) {
				n++
			}
		} else {
			for it.Next(&k, &v) {
				n++
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("iterating %s: %w", p, err)
		}
		st.mapEntries[p] = n
		return nil
	})
	return st, err
}

// nonEmptyMaps returns the maps that still hold entries.
func (s pinnedState) nonEmptyMaps() map[string]int {
	out := map[string]int{}
	for p, n := range s.mapEntries {
		if n > 0 {
			out[p] = n
		}
	}
	return out
}

// hooksOn reports what is attached to a device's TC hooks (call in the
// node netns): TCX programs per direction, cls_bpf filters, clsact present.
type hookState struct {
	tcxIngress, tcxEgress int
	tcIngress, tcEgress   int
	clsact                bool
}

func (h hookState) empty() bool {
	return h == hookState{}
}

func hooksOn(ifindex int) (hookState, error) {
	var st hookState
	for _, a := range []struct {
		at  ebpf.AttachType
		dst *int
	}{{ebpf.AttachTCXIngress, &st.tcxIngress}, {ebpf.AttachTCXEgress, &st.tcxEgress}} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: a.at})
		if err != nil {
			return st, fmt.Errorf("querying tcx programs of ifindex %d: %w", ifindex, err)
		}
		*a.dst = len(res.Programs)
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return st, err
	}
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return st, err
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			st.clsact = true
		}
	}
	if st.clsact {
		for _, f := range []struct {
			parent uint32
			dst    *int
		}{{netlink.HANDLE_MIN_INGRESS, &st.tcIngress}, {netlink.HANDLE_MIN_EGRESS, &st.tcEgress}} {
			fl, err := netlink.FilterList(l, f.parent)
			if err != nil {
				return st, err
			}
			*f.dst = len(fl)
		}
	}
	return st, nil
}

// attachmentsOf returns the datapath's attachment records of one pod.
func attachmentsOf(root pins.Root, pod datapath.PodID) ([]datapath.Attachment, error) {
	dp, err := datapath.OpenPinned(root)
	if err != nil {
		return nil, err
	}
	defer dp.Close()
	all, err := dp.Attachments()
	if err != nil {
		return nil, err
	}
	var out []datapath.Attachment
	for _, a := range all {
		if a.Pod == pod {
			out = append(out, a)
		}
	}
	return out, nil
}
