package metrics

import (
	"errors"
	"fmt"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// PinnedNetwork reads the pod registry and the datapath's counters from the
// pins under Root at every call. Both are opened per scrape and closed
// again: the CNI plugin creates them at the first pod and `podscopectl
// cleanup` may replace them, and a handle kept across scrapes would keep
// reading a map nobody writes any more.
type PinnedNetwork struct {
	Root pins.Root
}

var _ NetworkSource = PinnedNetwork{}

// PodNetwork implements NetworkSource. Nothing attached yet (no registry or
// no datapath pinned) is an empty list.
func (s PinnedNetwork) PodNetwork() ([]PodNetwork, error) {
	reg, err := pods.OpenPinnedRegistry(s.Root)
	if errors.Is(err, pods.ErrNoRegistry) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	list, err := reg.List()
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, nil
	}
	out := make([]PodNetwork, 0, len(list))
	observed := list[:0:0]
	for _, p := range list {
		if p.Unobserved == "" {
			observed = append(observed, p)
			continue
		}
		out = append(out, PodNetwork{Namespace: p.Namespace, Pod: displayName(p), PodUID: p.UID, Interface: p.Interface, Unobserved: p.Unobserved})
	}
	if len(observed) == 0 {
		return out, nil
	}
	dp, err := datapath.OpenPinned(s.Root)
	if errors.Is(err, datapath.ErrNotLoaded) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	defer dp.Close()

	for _, p := range observed {
		c, err := dp.Counters(p.ID)
		if errors.Is(err, datapath.ErrUnknownPod) {
			continue // registered but counters already removed: a DEL in progress
		}
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", p.Ref(), err)
		}
		out = append(out, PodNetwork{
			Namespace: p.Namespace, Pod: displayName(p), PodUID: p.UID, Interface: p.Interface,
			RxBytes: c.RxBytes, RxPackets: c.RxPackets, TxBytes: c.TxBytes, TxPackets: c.TxPackets,
			DropsEgress: c.DropsEgress, DropsIngress: c.DropsIngress,
		})
	}
	return out, nil
}

// displayName is the pod label: outside Kubernetes the container ID stands in.
func displayName(p pods.Pod) string {
	if p.Namespace == "" && p.Name == "" {
		return p.ContainerID
	}
	return p.Name
}
