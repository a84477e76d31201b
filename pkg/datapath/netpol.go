// Kubernetes NetworkPolicy: the pods' NetworkPolicy sets and addresses in
// the maps bpf/netpol.c reads, and its netfilter links.

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
)

// NetworkPolicyRef is what the datapath holds for one pod's NetworkPolicy:
// the addresses it is enforced on and the policy set (Set 0: the pod is
// isolated in no direction; its Sum is then that of the allow-all policy).
type NetworkPolicyRef struct {
	Addrs []netip.Addr `json:"addrs"`
	Set   uint32       `json:"set"`
	Sum   [32]byte     `json:"-"`
}

// MaxNetworkPolicyAddrs is how many addresses one pod's NetworkPolicy can
// be enforced on (PODSCOPE_MAX_NETPOL_ADDRS).
var MaxNetworkPolicyAddrs = len(tcPodNetpol{}.Addrs)

// ErrEndpointMapFull is wrapped by SetNetworkPolicy when the node's
// endpoint map cannot take the pod's addresses.
var ErrEndpointMapFull = errors.New("NetworkPolicy endpoint map full")

func endpointKey(a netip.Addr) tcEndpointKey {
	k := tcEndpointKey{Family: family(a)}
	copy(k.Addr[:], a.AsSlice())
	return k
}

// SetNetworkPolicy makes the NetworkPolicy program judge new connections
// from and to addrs (the pod's addresses) by the set s, which is built
// with NewPolicySet from the pod's computed NetworkPolicy (per direction:
// policy.AllowAll() when not isolated). s == nil means no NetworkPolicy
// selects the pod: the same as RemoveNetworkPolicy.
//
// The set is written if the node does not hold it, the pod's reference is
// raised on it, then the pod's addresses are pointed at it (one atomic map
// update per address: a connection is judged by the old or the new set,
// never a mix), addresses the pod no longer has are removed, and the set
// the pod used before is released. On an error (ErrPolicyMapFull,
// ErrEndpointMapFull) the pod keeps what it had.
func (d *Datapath) SetNetworkPolicy(pod PodID, addrs []netip.Addr, s *PolicySet) error {
	if pod == 0 {
		return errors.New("set NetworkPolicy: pod id 0 is invalid")
	}
	if s == nil {
		return d.RemoveNetworkPolicy(pod)
	}
	addrs, err := endpointAddrs(addrs)
	if err != nil {
		return fmt.Errorf("set NetworkPolicy of pod %d: %w", pod, err)
	}
	unlock, err := lockDir(d.dir)
	if err != nil {
		return err
	}
	defer unlock()
	old, had, err := d.netpolRecord(pod)
	if err != nil {
		return err
	}
	id, err := d.takeSet(s, old.Set, had)
	if err != nil {
		return fmt.Errorf("set NetworkPolicy of pod %d: %w", pod, err)
	}
	rec := tcPodNetpol{Set: id, Naddrs: uint32(len(addrs))}
	for i, a := range addrs {
		rec.Addrs[i] = endpointKey(a)
	}
	undo := func() {
		if had {
			_ = d.objs.PodNetpol.Put(uint32(pod), old)
		} else {
			_ = d.objs.PodNetpol.Delete(uint32(pod))
		}
		for _, k := range rec.Addrs[:rec.Naddrs] {
			if slices.Contains(old.Addrs[:old.Naddrs], k) {
				_ = d.objs.NetpolEndpoints.Put(k, tcEndpoint{Pod: uint32(pod), Set: old.Set})
			} else {
				d.dropEndpoint(pod, k)
			}
		}
		if old.Set != id || !had {
			_, _ = d.changeUsers(id, -1)
		}
	}
	if err := d.objs.PodNetpol.Put(uint32(pod), rec); err != nil {
		undo()
		return fmt.Errorf("set NetworkPolicy of pod %d: recording its set: %w", pod, err)
	}
	for _, k := range rec.Addrs[:rec.Naddrs] {
		if err := d.objs.NetpolEndpoints.Put(k, tcEndpoint{Pod: uint32(pod), Set: id}); err != nil {
			undo()
			if isNoSpace(err) {
				err = fmt.Errorf("%w (at most %d addresses on the node): %v", ErrEndpointMapFull, d.objs.NetpolEndpoints.MaxEntries(), err)
			}
			return fmt.Errorf("set NetworkPolicy of pod %d: %w", pod, err)
		}
	}
	for _, k := range old.Addrs[:min(int(old.Naddrs), len(old.Addrs))] {
		if !slices.Contains(rec.Addrs[:rec.Naddrs], k) {
			d.dropEndpoint(pod, k)
		}
	}
	if had && old.Set != id {
		if err := d.releaseSet(old.Set); err != nil {
			return fmt.Errorf("set NetworkPolicy of pod %d: releasing its previous set %d: %w", pod, old.Set, err)
		}
	}
	return nil
}

// endpointAddrs checks and deduplicates a pod's addresses.
func endpointAddrs(addrs []netip.Addr) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range addrs {
		if !a.IsValid() {
			return nil, errors.New("invalid address")
		}
		a = a.WithZone("")
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if len(out) > MaxNetworkPolicyAddrs {
		return nil, fmt.Errorf("%d addresses, at most %d", len(out), MaxNetworkPolicyAddrs)
	}
	return out, nil
}

// dropEndpoint deletes the endpoint entry k if it is still pod's (an
// address may have gone to another pod meanwhile).
func (d *Datapath) dropEndpoint(pod PodID, k tcEndpointKey) {
	var v tcEndpoint
	if d.objs.NetpolEndpoints.Lookup(k, &v) == nil && v.Pod == uint32(pod) {
		_ = d.objs.NetpolEndpoints.Delete(k)
	}
}

func (d *Datapath) netpolRecord(pod PodID) (tcPodNetpol, bool, error) {
	rec, found, err := lookup[tcPodNetpol](d.objs.PodNetpol, uint32(pod))
	if err != nil {
		return rec, false, fmt.Errorf("reading NetworkPolicy of pod %d: %w", pod, err)
	}
	if int(rec.Naddrs) > len(rec.Addrs) {
		rec.Naddrs = uint32(len(rec.Addrs))
	}
	return rec, found, nil
}

// RemoveNetworkPolicy stops judging pod's connections by NetworkPolicy:
// its addresses go, then its reference, then its set if no pod uses it.
// Removing a pod that has none is fine.
func (d *Datapath) RemoveNetworkPolicy(pod PodID) error {
	unlock, err := lockDir(d.dir)
	if err != nil {
		return err
	}
	defer unlock()
	rec, ok, err := d.netpolRecord(pod)
	if err != nil || !ok {
		return err
	}
	for _, k := range rec.Addrs[:rec.Naddrs] {
		d.dropEndpoint(pod, k)
	}
	if err := d.objs.PodNetpol.Delete(uint32(pod)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting NetworkPolicy reference of pod %d: %w", pod, err)
	}
	return d.releaseSet(rec.Set)
}

// NetworkPolicies returns every pod's NetworkPolicy as the datapath holds
// it, for a controller to reconcile against after a restart.
func (d *Datapath) NetworkPolicies() (map[PodID]NetworkPolicyRef, error) {
	sums := map[uint32][32]byte{0: allowAllSum}
	sets, err := d.sets()
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		sums[s.ID] = s.Sum
	}
	out := map[PodID]NetworkPolicyRef{}
	var k uint32
	var v tcPodNetpol
	it := d.objs.PodNetpol.Iterate()
	for it.Next(&k, &v) {
		ref := NetworkPolicyRef{Set: v.Set, Sum: sums[v.Set]}
		for _, a := range v.Addrs[:min(int(v.Naddrs), len(v.Addrs))] {
			ref.Addrs = append(ref.Addrs, addr(a.Family, a.Addr))
		}
		sort.Slice(ref.Addrs, func(i, j int) bool { return ref.Addrs[i].Less(ref.Addrs[j]) })
		out[PodID(k)] = ref
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading NetworkPolicy references: %w", err)
	}
	return out, nil
}

// NetworkPolicyStats are the NetworkPolicy program's node-wide counts.
type NetworkPolicyStats struct {
	// Judged is the number of new connections with a NetworkPolicy
	// endpoint on either side that were judged.
	Judged uint64 `json:"judged"`
	// Untracked is the number of packets that passed without being judged
	// because they had no conntrack entry: conntrack is not active in the
	// node's netns (nothing there asked for it; kube-proxy's NAT rules do),
	// or packets conntrack found invalid. A count that grows with every
	// connection while NetworkPolicies are set means they are not
	// enforced. (Packets a notrack rule marked pass uncounted.)
	Untracked uint64 `json:"untracked"`
}

// NetworkPolicyStats sums the NetworkPolicy program's per-CPU counts.
func (d *Datapath) NetworkPolicyStats() (NetworkPolicyStats, error) {
	var per []tcNetpolStats
	if err := d.objs.NetpolStats.Lookup(uint32(0), &per); err != nil {
		return NetworkPolicyStats{}, fmt.Errorf("reading NetworkPolicy stats: %w", err)
	}
	var s NetworkPolicyStats
	for _, v := range per {
		s.Judged += v.Judged
		s.Untracked += v.Untracked
	}
	return s, nil
}
