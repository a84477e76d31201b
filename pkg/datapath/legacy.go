package datapath

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
)

// ErrLegacyPolicyLayout is returned by Open and OpenPinned for pinned state
// written by a podscope from before policy sets: its policy entries are
// keyed by pod and its pod_ifaces values carry a policy generation where
// this version reads a policy set id. Both maps have the same sizes as
// today's, so the kernel's layout check cannot tell; the missing
// policy_sets pin does.
// Open refuses such pins; OpenPinned (readers, DEL, cleanup) opens them
// with the maps they lack empty, so pods can still be torn down and the
// node cleaned up.
var ErrLegacyPolicyLayout = errors.New("pinned datapath state predates shared policy sets")

// addedLater are the maps older pins may lack: those added with policy
// sets, and NetworkPolicy's. Readers (OpenPinned) open them empty, so a
// new podscopectl or metrics reader works on a node whose pins an older
// podscope wrote, until the next Open creates them.
var addedLater = []string{tcMapPolicySets, tcMapPodPolicy, tcMapDropReasons,
	tcMapNetpolEndpoints, tcMapPodNetpol, tcMapNetpolDrops, tcMapNetpolStats}

// checkLegacyPolicy refuses a datapath directory with a policy pin and no
// policy_sets pin, saying what to do. Loading over it would read pod ids as
// policy set ids (some pods unprotected, others under another pod's policy).
func checkLegacyPolicy(root pins.Root) error {
	if _, err := os.Stat(root.Pin(Owner, tcMapPolicy)); err != nil {
		return nil
	}
	if _, err := os.Stat(root.Pin(Owner, tcMapPolicySets)); err == nil {
		return nil
	}
	// A policy pin without policy_sets is legacy only if it holds anything:
	// a load that died between pinning the two left empty maps.
	if empty(root.Pin(Owner, tcMapPolicy)) && empty(root.Pin(Owner, tcMapPodIfaces)) {
		return nil
	}
	return fmt.Errorf("%w under %s (written by an older podscope, whose policy entries are per pod): "+
		"run `podscopectl cleanup --bpffs-root %s` on this node (it detaches podscope from running pods, "+
		"whose counters so far are lost; each pod is attached again with its policy on its next ADD, "+
		"and new pods attach right away), or go back to the previous podscope version",
		ErrLegacyPolicyLayout, root.Dir(Owner), root.Path)
}

// empty reports whether the map pinned at path has no key (or no pin).
func empty(path string) bool {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return true
	}
	defer m.Close()
	buf := make([]byte, m.KeySize())
	return m.NextKey(nil, &buf) != nil
}
