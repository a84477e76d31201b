package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"

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

func policyKey(pod PodID, e policy.Entry) tcPolicyKey {
	k := tcPolicyKey{
		Prefixlen: uint32(policyKeyBits + e.Prefix.Bits()),
		Pod:       uint32(pod),
		Dir:       uint8(e.Direction),
		Family:    family(e.Prefix.Addr()),
	}
	copy(k.Addr[:], e.Prefix.Addr().AsSlice())
	return k
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

func compile(p policy.Policy) (map[tcPolicyKey]policy.Entry, error) {
	want := map[tcPolicyKey]policy.Entry{}
	for _, dir := range []policy.Direction{policy.Egress, policy.Ingress} {
		entries, err := policy.Compile(p.Spec(dir), dir, "policy."+dir.String(), maxRules)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			want[policyKey(0, e)] = e
		}
	}
	return want, nil
}

// SetPolicy makes the kernel enforce p for pod: every compiled entry is
// written, then entries of the pod that p no longer has are deleted, then
// the pod's policy generation changes so that established flows are judged
// again on their next packet (a reply passes if the new policy still allows
// the direction that opened the connection). A packet racing the update sees
// either the old or the new entry of its CIDR.
func (d *Datapath) SetPolicy(pod PodID, p policy.Policy) error {
	if pod == 0 {
		return errors.New("set policy: pod id 0 is invalid")
	}
	want, err := compile(p)
	if err != nil {
		return err
	}
	keep := make(map[tcPolicyKey]bool, len(want))
	keys := make([]tcPolicyKey, 0, len(want))
	for k := range want {
		k.Pod = uint32(pod)
		keep[k] = true
		keys = append(keys, k)
	}
	// /0 entries first (see hasPolicy).
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].Prefixlen == policyKeyBits && keys[j].Prefixlen > policyKeyBits })
	values := make([]tcPolicyValue, len(keys))
	for i, k := range keys {
		k.Pod = 0
		values[i] = policyValue(want[k])
	}
	if err := putAll(d.objs.Policy, keys, values); err != nil {
		return fmt.Errorf("set policy of pod %d: %w", pod, err)
	}
	have, err := d.policyKeys(pod)
	if err != nil {
		return err
	}
	var stale []tcPolicyKey
	for _, k := range have {
		if !keep[k] {
			stale = append(stale, k)
		}
	}
	if err := deleteAll(d.objs.Policy, stale); err != nil {
		return fmt.Errorf("set policy of pod %d: deleting old entries: %w", pod, err)
	}
	return d.bumpPolicyGen(pod)
}

// podIfaces returns the ifindex entries of pod.
func (d *Datapath) podIfaces(pod PodID) (map[uint32]tcPodIface, error) {
	out := map[uint32]tcPodIface{}
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

// policyGen is the policy generation of pod's registered veth, or a new
// one when it has none.
func (d *Datapath) policyGen(pod PodID) (uint32, error) {
	ifs, err := d.podIfaces(pod)
	if err != nil {
		return 0, err
	}
	for _, v := range ifs {
		return v.PolicyGen, nil
	}
	return newPolicyGen(0), nil
}

// newPolicyGen returns a generation different from old. Generations only
// need to differ from the previous one (the kernel compares for equality),
// also between processes: the clock in microseconds does that.
func newPolicyGen(old uint32) uint32 {
	g := uint32(time.Now().UnixNano() / 1000)
	if g == old {
		g++
	}
	return g
}

// bumpPolicyGen gives pod's registered veths a new policy generation, so
// the programs judge the pod's established flows again under the new policy.
func (d *Datapath) bumpPolicyGen(pod PodID) error {
	ifs, err := d.podIfaces(pod)
	if err != nil {
		return err
	}
	for k, v := range ifs {
		v.PolicyGen = newPolicyGen(v.PolicyGen)
		if err := d.objs.PodIfaces.Update(k, v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set policy of pod %d: new policy generation: %w", pod, err)
		}
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

// hasPolicy reports whether pod has any entry in the trie, without walking
// it: SetPolicy writes a pod's /0 entries before any other and RemovePod
// deletes them last, so a pod without /0 entries has no entries at all.
func (d *Datapath) hasPolicy(pod PodID) bool {
	for _, dir := range []policy.Direction{policy.Egress, policy.Ingress} {
		for _, fam := range []uint8{4, 6} {
			k := tcPolicyKey{Prefixlen: policyKeyBits, Pod: uint32(pod), Dir: uint8(dir), Family: fam}
			var v tcPolicyValue
			if d.objs.Policy.Lookup(k, &v) == nil {
				return true
			}
		}
	}
	return false
}

// policyKeys lists the trie's keys of pod, /0 entries last. The trie cannot
// seek to one pod's keys, so this walks every key: skipped for a pod without
// policy (the common case of a CNI ADD).
func (d *Datapath) policyKeys(pod PodID) ([]tcPolicyKey, error) {
	if !d.hasPolicy(pod) {
		return nil, nil
	}
	out, err := d.walkPolicyKeys(pod)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Prefixlen > policyKeyBits && out[j].Prefixlen == policyKeyBits })
	return out, err
}

func (d *Datapath) walkPolicyKeys(pod PodID) ([]tcPolicyKey, error) {
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
		if next.Pod == uint32(pod) {
			out = append(out, next)
		}
		k = next
		cur = &k
	}
}

// PolicyEntries returns what the kernel enforces for pod, sorted by
// direction, family, address and prefix length.
func (d *Datapath) PolicyEntries(pod PodID) ([]PolicyEntry, error) {
	keys, err := d.policyKeys(pod)
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
