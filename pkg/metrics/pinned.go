package metrics

import (
	"errors"
	"fmt"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/podstate"
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
	list, err := podstate.List(s.Root)
	if err != nil {
		return nil, err
	}
	out := make([]PodNetwork, 0, len(list))
	for _, p := range list {
		switch err := p.CountersErr; {
		case errors.Is(err, podstate.ErrUnobserved):
			id := p.Identity()
			if id.Namespace == "" && id.Pod == "" {
				id.Pod = p.ContainerID
			}
			out = append(out, PodNetwork{Identity: id, Interface: p.Interface, Unobserved: p.Unobserved})
			continue
		case errors.Is(err, datapath.ErrNotLoaded):
			continue // registered, but the datapath is not pinned (any more)
		case errors.Is(err, datapath.ErrUnknownPod):
			continue // registered but counters already removed: a DEL in progress
		case err != nil:
			return nil, fmt.Errorf("pod %s: %w", p.Ref(), err)
		}
		c := p.Counters
		id := p.Identity()
		if id.Namespace == "" && id.Pod == "" {
			id.Pod = p.ContainerID // outside Kubernetes the container id stands in
		}
		out = append(out, PodNetwork{
			Identity: id, Interface: p.Interface,
			RxBytes: c.RxBytes, RxPackets: c.RxPackets, TxBytes: c.TxBytes, TxPackets: c.TxPackets,
			DropsEgress: c.DropsEgress, DropsIngress: c.DropsIngress,
			NetworkPolicyDropsEgress: c.NetworkPolicyDropsEgress, NetworkPolicyDropsIngress: c.NetworkPolicyDropsIngress,
		})
	}
	return out, nil
}
