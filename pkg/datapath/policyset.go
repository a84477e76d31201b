package datapath

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/policy"
)

// Policy sets: the kernel's policy entries belong to a set, not to a pod.
// A set is identified by its content (the SHA-256 of the policy's canonical
// encoding), so pods whose effective policy is the same (the network's
// default, the same annotation, later the same computed NetworkPolicy)
// share one copy of its entries: map memory and ADD time grow with the
// number of distinct policies, not with pods x CIDRs.
//
// Pinned state, so that any process may die at any point:
//   - policy_sets: content sum -> {id, entries, state}; ids are never
//     reused, the all-zero sum holds the last id issued;
//   - pod_policy: pod -> set id (the pod's reference);
//   - pod_ifaces: ifindex -> {pod, set}, the copy the programs read;
//   - policy: LPM entries keyed by set id.
//
// A set's users are the pod_policy and pod_netpol entries naming it (a pod
// may hold one of each: its podscope policy and its NetworkPolicy), counted under the
// datapath lock when a pod lets go of it: nothing is counted in a process,
// so a crash can leave at most an unused set behind, which the next
// release or GCPolicySets removes, never a pod without its entries.

// PolicySet is a validated policy with its content identity, ready to be
// referenced by any number of pods. A future policy compiler (NetworkPolicy)
// builds one per distinct computed policy and hands it to SetPolicySet for
// each pod it applies to. Compiling into kernel entries is deferred until a
// node does not hold the set yet, so an ADD whose policy the node already
// holds pays only for the sum.
type PolicySet struct {
	sum    [32]byte
	policy policy.Policy
	empty  bool                          // allows everything: no entries, set id 0
	parse  func() (policy.Policy, error) // source sets: parses on first need
}

// Sum is the set's content identity.
func (s *PolicySet) Sum() [32]byte { return s.sum }

// NewPolicySet validates p (including the datapath's per-CIDR match limit)
// and computes its identity.
func NewPolicySet(p policy.Policy) (*PolicySet, error) {
	if err := p.Validate("policy"); err != nil {
		return nil, err
	}
	return &PolicySet{sum: policySum(p), policy: p, empty: isAllowAll(p)}, nil
}

// PolicySetFromSource is the set of the policy parsed from a source text
// whose sum the caller computed (e.g. the CNI config's policy bytes and the
// pod's annotations): parse runs only if the node does not hold that set
// yet, so a pod whose policy text the node already holds skips parsing and
// compiling (100,000 CIDRs: seconds) altogether. The sum must cover every
// byte the policy is parsed from and the parser's version; sets from a
// source never match sets built with NewPolicySet.
func PolicySetFromSource(sum [32]byte, parse func() (policy.Policy, error)) *PolicySet {
	return &PolicySet{sum: sum, parse: parse}
}

// HasPolicySet reports whether the node holds the complete set with sum.
func (d *Datapath) HasPolicySet(sum [32]byte) (bool, error) {
	rec, found, err := lookup[tcPolicySet](d.objs.PolicySets, tcPolicySetKey{Sum: sum})
	if err != nil {
		return false, fmt.Errorf("reading policy sets: %w", err)
	}
	return found && rec.State == setComplete, nil
}

// HasPinnedPolicySet is HasPolicySet for a caller that has not opened the
// datapath: it reads the one pinned map (false when there is none).
func HasPinnedPolicySet(root pins.Root, sum [32]byte) bool {
	m, err := ebpf.LoadPinnedMap(root.Pin(Owner, tcMapPolicySets), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return false
	}
	defer m.Close()
	var rec tcPolicySet
	return m.Lookup(tcPolicySetKey{Sum: sum}, &rec) == nil && rec.State == setComplete
}

// resolve parses a source set if it was not parsed yet.
func (s *PolicySet) resolve() error {
	if s.parse == nil {
		return nil
	}
	p, err := s.parse()
	if err != nil {
		return err
	}
	if err := p.Validate("policy"); err != nil {
		return err
	}
	s.policy, s.empty, s.parse = p, isAllowAll(p), nil
	return nil
}

// isAllowAll reports whether p lets everything through in both directions
// with no rules: such a pod needs no entries and no lookup per packet.
func isAllowAll(p policy.Policy) bool {
	return p.Egress.Default == policy.Allow && len(p.Egress.Rules) == 0 &&
		p.Ingress.Default == policy.Allow && len(p.Ingress.Rules) == 0
}

// policySum is the SHA-256 of p's canonical encoding. Two policies with the
// same rules in a different order get different sums: they then do not
// share, which costs memory, never correctness.
func policySum(p policy.Policy) [32]byte {
	h := sha256.New()
	h.Write([]byte("podscope policy set v1\x00"))
	var b []byte
	for _, s := range []policy.Spec{p.Egress, p.Ingress} {
		b = append(b[:0], byte(s.Default))
		b = binary.BigEndian.AppendUint32(b, uint32(len(s.Rules)))
		h.Write(b)
		for _, r := range s.Rules {
			a := r.CIDR.Addr().As16()
			b = append(b[:0], a[:]...)
			fam := byte(6)
			if r.CIDR.Addr().Is4() {
				fam = 4
			}
			proto, _ := policy.ProtocolNumber(r.Protocol)
			b = append(b, fam, byte(r.CIDR.Bits()), proto, byte(r.Action))
			b = binary.BigEndian.AppendUint16(b, uint16(len(r.Ports)))
			for _, pr := range r.Ports {
				b = binary.BigEndian.AppendUint16(b, pr.From)
				b = binary.BigEndian.AppendUint16(b, pr.To)
			}
			h.Write(b)
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// allowAllSum is the sum of the policy that allows everything (set 0).
var allowAllSum = policySum(policy.Policy{Egress: policy.AllowAll(), Ingress: policy.AllowAll()})

// compile turns p into the kernel entries of both directions, keyed with
// set 0 (the caller fills in the set id).
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

func policyKey(set uint32, e policy.Entry) tcPolicyKey {
	k := tcPolicyKey{
		Prefixlen: uint32(policyKeyBits + e.Prefix.Bits()),
		Set:       set,
		Dir:       uint8(e.Direction),
		Family:    family(e.Prefix.Addr()),
	}
	copy(k.Addr[:], e.Prefix.Addr().AsSlice())
	return k
}

// setIDKey is the policy_sets key holding the last set id issued.
var setIDKey = tcPolicySetKey{}

const (
	setWriting  = 1 // POLICY_SET_WRITING
	setComplete = 2 // POLICY_SET_COMPLETE
	// setStale is never issued: flows stamped with it are judged again.
	setStale = ^uint32(0)
)

// ErrPolicyMapFull is wrapped by SetPolicySet when the node's policy map
// cannot hold a new set's entries.
var ErrPolicyMapFull = errors.New("policy map full")

// SetPolicySet makes pod use the set s: the set is written completely if
// the node does not hold it yet (a set that does not fit is removed again
// and the pod keeps its old policy), then the pod's reference is switched
// (pod_policy, then the pod's registered veths, one atomic map update each),
// then the set the pod used before is released if no pod uses it any more.
// Changing one pod's policy touches only that pod's entries. A packet
// racing the switch is judged by the old or the new set, never a mix.
func (d *Datapath) SetPolicySet(pod PodID, s *PolicySet) error {
	if pod == 0 {
		return errors.New("set policy: pod id 0 is invalid")
	}
	unlock, err := lockDir(d.dir)
	if err != nil {
		return err
	}
	defer unlock()
	ref, _, err := d.podRef(pod)
	if err != nil {
		return err
	}
	old := ref.Set
	id, err := d.takeSet(s, old, true)
	if err != nil {
		return fmt.Errorf("set policy of pod %d: %w", pod, err)
	}
	ref.Set = id
	if err := d.objs.PodPolicy.Put(uint32(pod), ref); err != nil {
		return fmt.Errorf("set policy of pod %d: recording its policy set: %w", pod, err)
	}
	if err := d.switchIfaces(pod, id); err != nil {
		return err
	}
	if old != id {
		if err := d.releaseSet(old); err != nil {
			return fmt.Errorf("set policy of pod %d: releasing its previous policy set %d: %w", pod, old, err)
		}
	}
	return nil
}

// takeSet is the first step of a switch to s, under the datapath lock: the
// set is written if the node does not hold it, and its user count raised
// unless the reference already names it (had and old == its id). It
// returns the set's id.
func (d *Datapath) takeSet(s *PolicySet, old uint32, had bool) (uint32, error) {
	id, err := d.ensureSet(s)
	if err != nil {
		return 0, err
	}
	if !had || old != id {
		if err := d.addUsers(id, 1); err != nil {
			return 0, err
		}
	}
	return id, nil
}

// setRecord finds set id's record by its id (a scan of the sets: there are
// as many as distinct policies).
func (d *Datapath) setRecord(id uint32) (tcPolicySetKey, tcPolicySet, bool, error) {
	var k tcPolicySetKey
	var v tcPolicySet
	it := d.objs.PolicySets.Iterate()
	for it.Next(&k, &v) {
		if k != setIDKey && v.Id == id {
			return k, v, true, nil
		}
	}
	if err := it.Err(); err != nil {
		return k, v, false, fmt.Errorf("reading policy sets: %w", err)
	}
	return k, v, false, nil
}

// addUsers changes set id's user count by delta (not below 0).
func (d *Datapath) addUsers(id uint32, delta int) error {
	_, err := d.changeUsers(id, delta)
	return err
}

// changeUsers is addUsers returning the new count (1 for set 0, which has
// no record and is never removed).
func (d *Datapath) changeUsers(id uint32, delta int) (int, error) {
	if id == 0 {
		return 1, nil
	}
	k, v, ok, err := d.setRecord(id)
	if err != nil || !ok {
		return 0, err
	}
	n := int(v.Users) + delta
	if n < 0 {
		n = 0
	}
	v.Users = uint32(n)
	if err := d.objs.PolicySets.Update(k, v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("counting users of policy set %d: %w", id, err)
	}
	return n, nil
}

// switchIfaces points pod's registered veths at set id.
func (d *Datapath) switchIfaces(pod PodID, id uint32) error {
	ifs, err := d.podIfaces(pod)
	if err != nil {
		return err
	}
	for k, v := range ifs {
		if v.PolicySet == id {
			continue
		}
		v.PolicySet = id
		if err := d.objs.PodIfaces.Update(k, v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set policy of pod %d: switching ifindex %d to policy set %d: %w", pod, k, id, err)
		}
	}
	return nil
}

// podSet is the policy set pod uses, 0 for none.
func (d *Datapath) podSet(pod PodID) (uint32, error) {
	ref, _, err := d.podRef(pod)
	return ref.Set, err
}

// ensureSet returns the id of the complete set with s's content, writing
// it first if the node does not hold it. Called under the datapath lock.
func (d *Datapath) ensureSet(s *PolicySet) (uint32, error) {
	if s.empty {
		return 0, nil
	}
	key := tcPolicySetKey{Sum: s.sum}
	var rec tcPolicySet
	err := d.objs.PolicySets.Lookup(key, &rec)
	switch {
	case err == nil && rec.State == setComplete:
		return rec.Id, nil
	case err == nil:
		// Left half-written by a process that died: remove and redo.
		if err := d.removeSet(key, rec.Id); err != nil {
			return 0, err
		}
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, fmt.Errorf("reading policy sets: %w", err)
	}
	if err := s.resolve(); err != nil {
		return 0, err
	}
	if s.empty {
		return 0, nil
	}
	want, err := compile(s.policy)
	if err != nil {
		return 0, err
	}
	id, err := d.nextSetID()
	if err != nil {
		return 0, err
	}
	keys := make([]tcPolicyKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Prefixlen < keys[j].Prefixlen })
	values := make([]tcPolicyValue, len(keys))
	for i, k := range keys {
		values[i] = policyValue(want[k])
		keys[i].Set = id
	}
	rec = tcPolicySet{Id: id, Entries: uint32(len(keys)), State: setWriting}
	if err := d.objs.PolicySets.Put(key, rec); err != nil {
		return 0, fmt.Errorf("recording policy set: %w", err)
	}
	if err := putAll(d.objs.Policy, keys, values); err != nil {
		werr := err
		if errors.Is(err, ebpf.ErrKeyNotExist) || isNoSpace(err) {
			used, sets := d.policyUsage()
			werr = fmt.Errorf("%w: the policy needs %d entries, the node's policy map holds at most %d (%d in use by %d other policy sets): %v",
				ErrPolicyMapFull, len(keys), d.objs.Policy.MaxEntries(), used, sets, err)
		}
		if rerr := d.removeSet(key, id); rerr != nil {
			return 0, fmt.Errorf("%w (removing the partly written set failed too: %v)", werr, rerr)
		}
		return 0, fmt.Errorf("writing policy set: %w", werr)
	}
	rec.State = setComplete
	if err := d.objs.PolicySets.Put(key, rec); err != nil {
		return 0, fmt.Errorf("recording policy set: %w", err)
	}
	return id, nil
}

// nextSetID issues a set id never issued before on this node (ids double
// as the policy generation flows remember, so they must not come back).
func (d *Datapath) nextSetID() (uint32, error) {
	var rec tcPolicySet
	err := d.objs.PolicySets.Lookup(setIDKey, &rec)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("reading the last policy set id: %w", err)
	}
	rec.Id++
	if rec.Id == 0 || rec.Id == setStale {
		rec.Id = 1 // after 4 billion sets
	}
	rec.State = setComplete
	if err := d.objs.PolicySets.Put(setIDKey, rec); err != nil {
		return 0, fmt.Errorf("recording the last policy set id: %w", err)
	}
	return rec.Id, nil
}

// removeSet deletes a set's entries, then its record.
func (d *Datapath) removeSet(key tcPolicySetKey, id uint32) error {
	keys, err := d.setKeys(id)
	if err != nil {
		return err
	}
	if err := deleteAll(d.objs.Policy, keys); err != nil {
		return fmt.Errorf("deleting entries of policy set %d: %w", id, err)
	}
	if err := d.objs.PolicySets.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting policy set %d: %w", id, err)
	}
	return nil
}

// setUsers counts the references to each set: a pod's podscope policy
// (pod_policy) and its NetworkPolicy (pod_netpol) each count once.
func (d *Datapath) setUsers() (map[uint32]int, error) {
	out := map[uint32]int{}
	var k uint32
	var v tcPodPolicyRef
	it := d.objs.PodPolicy.Iterate()
	for it.Next(&k, &v) {
		out[v.Set]++
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading pod policy references: %w", err)
	}
	var n tcPodNetpol
	nit := d.objs.PodNetpol.Iterate()
	for nit.Next(&k, &n) {
		out[n.Set]++
	}
	if err := nit.Err(); err != nil {
		return nil, fmt.Errorf("reading pod NetworkPolicy references: %w", err)
	}
	return out, nil
}

// releaseSet lowers set id's user count after a pod let go of it, and
// removes the set when no pod refers to it any more: the count (which a
// crash can only leave too high) says when to look, the pod_policy entries
// confirm, so a DEL scans the pods only when a set may have lost its last
// user.
func (d *Datapath) releaseSet(id uint32) error {
	if id == 0 {
		return nil
	}
	n, err := d.changeUsers(id, -1)
	if err != nil || n > 0 {
		return err
	}
	users, err := d.setUsers()
	if err != nil {
		return err
	}
	k, v, ok, err := d.setRecord(id)
	if err != nil || !ok {
		return err
	}
	if users[id] > 0 {
		v.Users = uint32(users[id]) // repair
		return d.objs.PolicySets.Update(k, v, ebpf.UpdateExist)
	}
	return d.removeSet(k, id)
}

// PolicySetInfo describes one policy set the node holds.
type PolicySetInfo struct {
	ID       uint32   `json:"id"`
	Sum      [32]byte `json:"-"`
	Entries  int      `json:"entries"`
	Users    int      `json:"users"`
	Complete bool     `json:"complete"`
}

func (d *Datapath) sets() ([]PolicySetInfo, error) {
	var out []PolicySetInfo
	var k tcPolicySetKey
	var v tcPolicySet
	it := d.objs.PolicySets.Iterate()
	for it.Next(&k, &v) {
		if k == setIDKey {
			continue
		}
		out = append(out, PolicySetInfo{ID: v.Id, Sum: k.Sum, Entries: int(v.Entries), Complete: v.State == setComplete})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading policy sets: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// PolicySets lists the policy sets the node holds with their number of
// entries and of pods using them.
func (d *Datapath) PolicySets() ([]PolicySetInfo, error) {
	sets, err := d.sets()
	if err != nil {
		return nil, err
	}
	users, err := d.setUsers()
	if err != nil {
		return nil, err
	}
	for i := range sets {
		sets[i].Users = users[sets[i].ID]
	}
	return sets, nil
}

// GCPolicySets removes sets no pod uses (left by a process that died
// between switching a pod away and releasing) and half-written ones.
func (d *Datapath) GCPolicySets() (int, error) {
	unlock, err := lockDir(d.dir)
	if err != nil {
		return 0, err
	}
	defer unlock()
	sets, err := d.PolicySets()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range sets {
		k := tcPolicySetKey{Sum: s.Sum}
		var v tcPolicySet
		if d.objs.PolicySets.Lookup(k, &v) == nil && int(v.Users) != s.Users {
			v.Users = uint32(s.Users) // repair a count a crash left high
			_ = d.objs.PolicySets.Update(k, v, ebpf.UpdateExist)
		}
		if s.Users == 0 || !s.Complete {
			if err := d.removeSet(tcPolicySetKey{Sum: s.Sum}, s.ID); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// policyUsage is the number of entries in the policy map and of sets.
func (d *Datapath) policyUsage() (entries, sets int) {
	ss, _ := d.sets()
	for _, s := range ss {
		entries += s.Entries
	}
	return entries, len(ss)
}

// removePodPolicy drops pod's reference and releases its set.
func (d *Datapath) removePodPolicy(pod PodID) error {
	unlock, err := lockDir(d.dir)
	if err != nil {
		return err
	}
	defer unlock()
	id, err := d.podSet(pod)
	if err != nil {
		return err
	}
	if err := d.objs.PodPolicy.Delete(uint32(pod)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting policy reference of pod %d: %w", pod, err)
	}
	return d.releaseSet(id)
}
