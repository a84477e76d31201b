package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/policy"
)

// maxRules is the kernel's per-CIDR rule array length (PODSCOPE_MAX_RULES).
var maxRules = len(tcPolicyValue{}.Rules)

// policyKeyBits is the part of struct policy_key after prefixlen that every
// lookup matches exactly: pod, dir, family, pad.
const policyKeyBits = 64

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

func policyValue(e policy.Entry) tcPolicyValue {
	v := tcPolicyValue{Nrules: uint8(len(e.Rules)), Dflt: uint8(e.Default)}
	for i, r := range e.Rules {
		v.Rules[i] = tcPolicyRule{Proto: r.Protocol, Action: uint8(r.Action), SrcBits: uint8(r.From.Bits())}
		if r.HasPorts {
			v.Rules[i].HasPorts = 1
			v.Rules[i].PortFrom, v.Rules[i].PortTo = r.Ports.From, r.Ports.To
		}
	}
	return v
}

func decodeEntry(k tcPolicyKey, v tcPolicyValue) policy.Entry {
	a := addr(k.Family, k.Addr)
	e := policy.Entry{
		Direction: policy.Direction(k.Dir),
		Prefix:    netip.PrefixFrom(a, int(k.Prefixlen)-policyKeyBits),
		Default:   policy.Action(v.Dflt),
	}
	for i := 0; i < int(v.Nrules) && i < maxRules; i++ {
		r := v.Rules[i]
		from, _ := a.Prefix(int(r.SrcBits))
		cr := policy.CompiledRule{Protocol: r.Proto, Action: policy.Action(r.Action), From: from}
		if r.HasPorts != 0 {
			cr.HasPorts = true
			cr.Ports = policy.PortRange{From: r.PortFrom, To: r.PortTo}
		}
		e.Rules = append(e.Rules, cr)
	}
	return e
}

// SetPolicy makes the kernel enforce p for pod: the policy set with p's
// content is found (or written, once per node), then the pod's reference
// is switched to it, then the set the pod used before is released if no
// pod uses it any more. See SetPolicySet.
func (d *Datapath) SetPolicy(pod PodID, p policy.Policy) error {
	s, err := NewPolicySet(p)
	if err != nil {
		return err
	}
	return d.SetPolicySet(pod, s)
}

// podIfaces returns the ifindex entries of pod: the one its pod_policy
// reference names (one lookup each, whatever the number of pods), or, for
// a pod without a reference, whatever a scan of pod_ifaces finds.
func (d *Datapath) podIfaces(pod PodID) (map[uint32]tcPodIface, error) {
	out := map[uint32]tcPodIface{}
	ref, ok, err := d.podRef(pod)
	if err != nil {
		return nil, err
	}
	if ok {
		var v tcPodIface
		if ref.Ifindex != 0 && d.objs.PodIfaces.Lookup(ref.Ifindex, &v) == nil && v.Pod == uint32(pod) {
			out[ref.Ifindex] = v
		}
		return out, nil
	}
	var k uint32
	var v tcPodIface
	it := d.objs.PodIfaces.Iterate()
	for it.Next(&k, &v) {
		if v.Pod == uint32(pod) {
			out[k] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading ifindex map: %w", err)
	}
	return out, nil
}

// podRef is pod's pod_policy entry.
func (d *Datapath) podRef(pod PodID) (tcPodPolicyRef, bool, error) {
	ref, found, err := lookup[tcPodPolicyRef](d.objs.PodPolicy, uint32(pod))
	if err != nil {
		return ref, false, fmt.Errorf("reading pod %d's policy reference: %w", pod, err)
	}
	return ref, found, nil
}

// setRefIfindex records the ifindex pod is registered under (0: none).
func (d *Datapath) setRefIfindex(pod PodID, ifindex uint32) error {
	ref, _, err := d.podRef(pod)
	if err != nil {
		return err
	}
	if ref.Ifindex == ifindex {
		return nil
	}
	ref.Ifindex = ifindex
	if err := d.objs.PodPolicy.Put(uint32(pod), ref); err != nil {
		return fmt.Errorf("recording pod %d's ifindex: %w", pod, err)
	}
	return nil
}

// putAll writes keys/values with one BPF_MAP_UPDATE_BATCH where the kernel
// has it (100k CIDRs: one syscall instead of 100k), else one by one.
func putAll[K, V any](m *ebpf.Map, keys []K, values []V) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := m.BatchUpdate(keys, values, nil)
	if err == nil {
		return nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("batch update: %w", err)
	}
	for i := range keys {
		if err := m.Put(keys[i], values[i]); err != nil {
			return err
		}
	}
	return nil
}

// lookup reads key's value in m: found is false, and err nil, when the
// key is absent.
func lookup[V any](m *ebpf.Map, key any) (v V, found bool, err error) {
	err = m.Lookup(key, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false, nil
	}
	return v, err == nil, err
}

// deleteAll deletes keys (those already gone are fine).
func deleteAll[K any](m *ebpf.Map, keys []K) error {
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchDelete(keys, nil); err == nil {
		return nil
	}
	// Unsupported, or a key already gone (deleted by the LRU or another
	// process) stopped the batch: finish one by one.
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// setKeys lists the trie's keys of policy set id. The trie cannot seek to
// one set's keys, so this walks every key.
func (d *Datapath) setKeys(id uint32) ([]tcPolicyKey, error) {
	var out []tcPolicyKey
	var k, next tcPolicyKey
	var cur any // nil: first key
	for {
		err := d.objs.Policy.NextKey(cur, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading policy keys: %w", err)
		}
		if next.Set == id {
			out = append(out, next)
		}
		k = next
		cur = &k
	}
}

// PolicyEntries returns what the kernel enforces for pod, sorted by
// direction, family, address and prefix length.
func (d *Datapath) PolicyEntries(pod PodID) ([]PolicyEntry, error) {
	id, err := d.podSet(pod)
	if err != nil || id == 0 {
		return nil, err
	}
	keys, err := d.setKeys(id)
	if err != nil {
		return nil, err
	}
	out := make([]PolicyEntry, 0, len(keys))
	for _, k := range keys {
		var v tcPolicyValue
		if err := d.objs.Policy.Lookup(k, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return nil, fmt.Errorf("reading policy entry: %w", err)
		}
		out = append(out, decodeEntry(k, v))
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.Prefix.Addr().Is4() != b.Prefix.Addr().Is4() {
			return a.Prefix.Addr().Is4()
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c < 0
		}
		return a.Prefix.Bits() < b.Prefix.Bits()
	})
	return out, nil
}

// CheckPolicy compares what the kernel enforces for pod with p; the error
// names the first direction and CIDR that differ.
func (d *Datapath) CheckPolicy(pod PodID, p policy.Policy) error {
	want, err := compile(p)
	if err != nil {
		return err
	}
	if isAllowAll(p) {
		want = nil // no set: nothing in the kernel, everything passes
	}
	have, err := d.PolicyEntries(pod)
	if err != nil {
		return err
	}
	seen := map[tcPolicyKey]bool{}
	for _, h := range have {
		k := policyKey(0, h)
		seen[k] = true
		w, ok := want[k]
		if !ok {
			return fmt.Errorf("policy of pod %d differs: the kernel has %s %s (%s) which the policy does not", pod, h.Direction, h.Prefix, h.Summary())
		}
		if w.Summary() != h.Summary() {
			return fmt.Errorf("policy of pod %d differs at %s %s: the kernel has %s, the policy wants %s", pod, h.Direction, h.Prefix, h.Summary(), w.Summary())
		}
	}
	for k, w := range want {
		if !seen[k] {
			return fmt.Errorf("policy of pod %d differs: %s %s (%s) is missing in the kernel", pod, w.Direction, w.Prefix, w.Summary())
		}
	}
	return nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM)
}
