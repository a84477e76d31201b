package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/policy"
)

// Counters sums pod's per-CPU counters.
func (d *Datapath) Counters(pod PodID) (Counters, error) {
	var per []tcTrafficCounters
	if err := d.objs.PodCounters.Lookup(uint32(pod), &per); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Counters{}, fmt.Errorf("counters of pod %d: %w", pod, ErrUnknownPod)
		}
		return Counters{}, fmt.Errorf("counters of pod %d: %w", pod, err)
	}
	var c Counters
	eg, in := policy.Egress, policy.Ingress
	for _, v := range per {
		c.TxBytes += v.Bytes[eg]
		c.TxPackets += v.Packets[eg]
		c.RxBytes += v.Bytes[in]
		c.RxPackets += v.Packets[in]
		c.DropsEgress += v.DropPackets[eg]
		c.DropsIngress += v.DropPackets[in]
		c.DropBytesEgress += v.DropBytes[eg]
		c.DropBytesIngress += v.DropBytes[in]
	}
	var nd []tcDropCounts
	if err := d.objs.NetpolDrops.Lookup(uint32(pod), &nd); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return Counters{}, fmt.Errorf("NetworkPolicy drops of pod %d: %w", pod, err)
	}
	for _, v := range nd {
		c.NetworkPolicyDropsEgress += v.Packets[eg]
		c.NetworkPolicyDropsIngress += v.Packets[in]
	}
	return c, nil
}

func addr(family uint8, b [16]uint8) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// flowBatch is how many flow entries one batch read returns (~400 KiB).
const flowBatch = 4096

// Flows lists pod's entries of the flow table.
func (d *Datapath) Flows(pod PodID) ([]Flow, error) {
	var out []Flow
	offset := BootOffset()
	err := pins.EachEntry(d.objs.Flows, flowBatch, func(k *tcFlowKey, v *tcFlowStats) error {
		if k.Pod != uint32(pod) {
			return nil
		}
		eg, in := policy.Egress, policy.Ingress
		f := Flow{
			Proto:     policy.ProtocolName(k.Proto),
			Local:     netip.AddrPortFrom(addr(k.Family, k.Local), k.LocalPort),
			Remote:    netip.AddrPortFrom(addr(k.Family, k.Remote), k.RemotePort),
			TxBytes:   v.Bytes[eg],
			TxPackets: v.Packets[eg],
			RxBytes:   v.Bytes[in],
			RxPackets: v.Packets[in],
			Verdict:   policy.Action(v.Verdict),
			DeniedBy:  deniedBy(v.DeniedBy),
			Initiator: policy.Direction(v.Initiator),
		}
		if v.FirstSeenNs != 0 {
			f.FirstSeen = timeAt(offset, v.FirstSeenNs)
			f.LastSeen = timeAt(offset, v.LastSeenNs)
		}
		out = append(out, f)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading flows: %w", err)
	}
	return out, nil
}

// RemovePod deletes everything the datapath keeps about pod: counters,
// flows (which are also its conntrack state), policy entries, ifindex
// registrations and its NetworkPolicy (addresses and set reference). Detach it first; attachments are Detach's.
func (d *Datapath) RemovePod(pod PodID) error {
	var errs []error
	if err := d.objs.PodCounters.Delete(uint32(pod)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("deleting counters of pod %d: %w", pod, err))
	}
	if err := d.objs.NetpolDrops.Delete(uint32(pod)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("deleting NetworkPolicy drops of pod %d: %w", pod, err))
	}
	// The pod's NetworkPolicy addresses and set reference: an address left
	// behind would judge the next pod given it by this pod's policy.
	if err := d.RemoveNetworkPolicy(pod); err != nil {
		errs = append(errs, err)
	}
	var flows []tcFlowKey
	err := pins.EachEntry(d.objs.Flows, flowBatch, func(k *tcFlowKey, _ *tcFlowStats) error {
		if k.Pod == uint32(pod) {
			flows = append(flows, *k)
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("reading flows: %w", err))
	}
	if err := deleteAll(d.objs.Flows, flows); err != nil {
		errs = append(errs, fmt.Errorf("deleting flows of pod %d: %w", pod, err))
	}
	if err := d.forgetIfindexes(pod); err != nil {
		errs = append(errs, err)
	}
	// Last: the reference is how the pod's ifindex is found.
	if err := d.removePodPolicy(pod); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// PodIfindexes lists the veth ifindexes registered to pod (empty after
// Detach or RemovePod).
func (d *Datapath) PodIfindexes(pod PodID) ([]int, error) {
	ifs, err := d.podIfaces(pod)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(ifs))
	for k := range ifs {
		out = append(out, int(k))
	}
	sort.Ints(out)
	return out, nil
}

// DropReason says why the programs dropped a packet (enum drop_reason).
type DropReason uint32

const (
	DropPolicy        DropReason = 0 // a rule or a default of podscope's policy said deny
	DropOpaque        DropReason = 1 // L4 header not parsable within the datapath's limits, and the policy denies some packet it could be
	DropNetworkPolicy DropReason = 2 // the pod's Kubernetes NetworkPolicy denied a new connection (bpf/netpol.c)
)

// dropReasons lists every reason, in enum order.
var dropReasons = []DropReason{DropPolicy, DropOpaque, DropNetworkPolicy}

var dropReasonNames = [...]string{DropPolicy: "policy", DropOpaque: "opaque", DropNetworkPolicy: "networkpolicy"}

func (r DropReason) String() string {
	if int(r) < len(dropReasonNames) {
		return dropReasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}

// DropReasons returns the node-wide drop counts by reason, indexed by the
// pod's direction (policy.Egress, policy.Ingress). Every drop also counts in
// its pod's Drops*.
func (d *Datapath) DropReasons() (map[DropReason][2]uint64, error) {
	out := map[DropReason][2]uint64{}
	for _, r := range dropReasons {
		if uint32(r) >= d.objs.DropReasons.MaxEntries() {
			break // a map pinned before the reason existed (read-only open)
		}
		var per []tcDropCounts
		if err := d.objs.DropReasons.Lookup(uint32(r), &per); err != nil {
			return nil, fmt.Errorf("reading drop reasons: %w", err)
		}
		var sum [2]uint64
		for _, v := range per {
			sum[0] += v.Packets[0]
			sum[1] += v.Packets[1]
		}
		out[r] = sum
	}
	return out, nil
}
