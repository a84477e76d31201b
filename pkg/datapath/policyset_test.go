package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
)

func mustPolicy(t testing.TB, egress, ingress string) policy.Policy {
	t.Helper()
	var p policy.Policy
	var err error
	if p.Egress, err = policy.ParseSpec([]byte(egress), "egress"); err != nil {
		t.Fatal(err)
	}
	if p.Ingress, err = policy.ParseSpec([]byte(ingress), "ingress"); err != nil {
		t.Fatal(err)
	}
	return p
}

// trieKeys counts every key of the policy trie, whoever it belongs to: the
// outside view of how much the node holds.
func trieKeys(t testing.TB, d *Datapath) map[uint32]int {
	t.Helper()
	out := map[uint32]int{}
	var k, next tcPolicyKey
	var cur any
	for {
		err := d.objs.Policy.NextKey(cur, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[next.Set]++
		k = next
		cur = &k
	}
}

func ifaceSet(t testing.TB, d *Datapath, ifindex uint32) uint32 {
	t.Helper()
	var v tcPodIface
	if err := d.objs.PodIfaces.Lookup(ifindex, &v); err != nil {
		t.Fatal(err)
	}
	return v.PolicySet
}

// Pods with the same policy share one set of entries; changing one pod's
// policy touches only that pod; the last pod to let go removes the entries.
func TestPoliciesAreSharedByContent(t *testing.T) {
	d := openForRun(t)
	shared := mustPolicy(t, `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80"],"action":"allow"},
		{"cidr":"10.1.0.0/16","action":"deny"}]}`, `{"default":"allow"}`)
	// egress: 0/0, ::/0, 10/8, 10.1/16; ingress: 0/0, ::/0.
	const perCopy = 6
	pods := []PodID{testPod, 20, 21, 22}
	for _, p := range pods {
		if err := d.SetPolicy(p, shared); err != nil {
			t.Fatal(err)
		}
	}
	keys := trieKeys(t, d)
	if len(keys) != 1 {
		t.Fatalf("4 pods with one policy: entries under %d sets, want 1: %v", len(keys), keys)
	}
	for _, n := range keys {
		if n != perCopy {
			t.Fatalf("one copy holds %d entries, want %d", n, perCopy)
		}
	}
	sharedSet := ifaceSet(t, d, testRunIfindex)
	if keys[sharedSet] != perCopy {
		t.Fatalf("the registered veth points at set %d, entries are under %v", sharedSet, keys)
	}
	sets, err := d.PolicySets()
	if err != nil || len(sets) != 1 || sets[0].Users != 4 || sets[0].Entries != perCopy || !sets[0].Complete {
		t.Fatalf("PolicySets: %+v %v", sets, err)
	}
	for _, p := range pods {
		if err := d.CheckPolicy(p, shared); err != nil {
			t.Fatalf("pod %d: %v", p, err)
		}
	}

	// The shared policy is in force for the registered pod.
	if r := run(t, d, policy.Egress, ipv4(podIP, "10.1.2.3", 6, tcpHdr(40000, 80, tcpSYN))); r != actShot {
		t.Fatalf("10.1/16 deny: %s", verdictName(r))
	}
	if r := run(t, d, policy.Egress, ipv4(podIP, "10.2.2.3", 6, tcpHdr(40000, 80, tcpSYN))); r != actNext {
		t.Fatalf("10/8 tcp 80 allow: %s", verdictName(r))
	}

	// Pod 20 changes (its annotation): a second set; the others keep theirs.
	own := mustPolicy(t, `{"default":"allow","rules":[{"cidr":"192.168.0.0/16","action":"deny"}]}`, `{"default":"allow"}`)
	if err := d.SetPolicy(20, own); err != nil {
		t.Fatal(err)
	}
	keys = trieKeys(t, d)
	if len(keys) != 2 || keys[sharedSet] != perCopy {
		t.Fatalf("after one pod changed: %v (shared set %d must be untouched)", keys, sharedSet)
	}
	if got := ifaceSet(t, d, testRunIfindex); got != sharedSet {
		t.Fatalf("another pod's change moved this pod from set %d to %d", sharedSet, got)
	}
	if err := d.CheckPolicy(20, own); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckPolicy(21, shared); err != nil {
		t.Fatal(err)
	}

	// Back to the shared policy: pod 20's own set goes.
	if err := d.SetPolicy(20, shared); err != nil {
		t.Fatal(err)
	}
	if keys = trieKeys(t, d); len(keys) != 1 || keys[sharedSet] != perCopy {
		t.Fatalf("after pod 20 went back: %v", keys)
	}

	// An allow-all policy needs no entries at all, and no lookup.
	if err := d.SetPolicy(testPod, policy.Policy{Egress: policy.AllowAll(), Ingress: policy.AllowAll()}); err != nil {
		t.Fatal(err)
	}
	if got := ifaceSet(t, d, testRunIfindex); got != 0 {
		t.Fatalf("allow-all pod points at set %d, want 0", got)
	}
	if r := run(t, d, policy.Egress, ipv4(podIP, "10.1.2.3", 6, tcpHdr(40001, 80, tcpSYN))); r != actNext {
		t.Fatalf("allow-all pod: %s", verdictName(r))
	}

	for _, p := range pods {
		if err := d.RemovePod(p); err != nil {
			t.Fatal(err)
		}
		left := trieKeys(t, d)
		if p != pods[len(pods)-1] && left[sharedSet] != perCopy {
			t.Fatalf("entries went while pods still use them: %v", left)
		}
	}
	if keys = trieKeys(t, d); len(keys) != 0 {
		t.Fatalf("entries left after every pod was removed: %v", keys)
	}
	if sets, _ := d.PolicySets(); len(sets) != 0 {
		t.Fatalf("sets left: %+v", sets)
	}

	// Ids are never reused: a set written again gets a new id, so flows
	// judged under the old one are judged again.
	if err := d.SetPolicy(testPod, shared); err != nil {
		t.Fatal(err)
	}
	if again := trieKeys(t, d); again[sharedSet] != 0 || len(again) != 1 {
		t.Fatalf("a removed set's id came back: %v (old %d)", again, sharedSet)
	}
}

// A set left half-written by a process that died is not used as is: the
// next SetPolicy of that content removes and rewrites it.
func TestHalfWrittenSetIsRewritten(t *testing.T) {
	d := openForRun(t)
	p := mustPolicy(t, `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","action":"allow"}]}`, `{"default":"allow"}`)
	s, err := NewPolicySet(p)
	if err != nil {
		t.Fatal(err)
	}
	// What a crash after the record and one entry leaves behind.
	if err := d.objs.PolicySets.Put(tcPolicySetKey{Sum: s.Sum()}, tcPolicySet{Id: 99, Entries: 5, State: setWriting}); err != nil {
		t.Fatal(err)
	}
	half := tcPolicyKey{Prefixlen: policyKeyBits, Set: 99, Family: 4}
	if err := d.objs.Policy.Put(half, tcPolicyValue{Dflt: uint8(policy.Allow)}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPolicySet(testPod, s); err != nil {
		t.Fatal(err)
	}
	keys := trieKeys(t, d)
	if keys[99] != 0 {
		t.Fatalf("the half-written set's entries survived: %v", keys)
	}
	if err := d.CheckPolicy(testPod, p); err != nil {
		t.Fatal(err)
	}
	if r := run(t, d, policy.Egress, ipv4(podIP, "192.168.1.1", 17, udpHdr(1, 53, 8))); r != actShot {
		t.Fatalf("default deny of the rewritten set: %s", verdictName(r))
	}
}

// A set that does not fit gives an error naming the limit, and nothing of
// it stays: the pod keeps its previous policy.
func TestFullPolicyMap(t *testing.T) {
	testenv.RequireRoot(t)
	const limit = 64
	testSpecHook = func(s *ebpf.CollectionSpec) { s.Maps[tcMapPolicy].MaxEntries = limit }
	t.Cleanup(func() { testSpecHook = nil })
	d := openForRun(t)
	if d.objs.Policy.MaxEntries() != limit {
		t.Fatalf("policy map holds %d", d.objs.Policy.MaxEntries())
	}
	small := mustPolicy(t, `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","action":"allow"}]}`, `{"default":"allow"}`)
	if err := d.SetPolicy(testPod, small); err != nil {
		t.Fatal(err)
	}
	before := trieKeys(t, d)
	big := policy.Policy{Egress: manyCIDRs(100), Ingress: policy.AllowAll()}
	err := d.SetPolicy(testPod, big)
	if !errors.Is(err, ErrPolicyMapFull) || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", limit)) {
		t.Fatalf("SetPolicy over the limit: %v", err)
	}
	t.Logf("error: %v", err)
	after := trieKeys(t, d)
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a failed SetPolicy left entries: before %v, after %v", before, after)
	}
	if err := d.CheckPolicy(testPod, small); err != nil {
		t.Fatalf("the pod lost its previous policy: %v", err)
	}
	if sets, _ := d.PolicySets(); len(sets) != 1 {
		t.Fatalf("sets after the failure: %+v", sets)
	}
}

// Issue 15 item 1: tightening a policy cuts established flows whose
// opening direction the new policy no longer allows, even after a reply
// passed (connection tracking must not count as an opening).
func TestTighteningCutsEstablishedFlows(t *testing.T) {
	d := openForRun(t)
	// Ingress: a client 10.1.2.3 connects to the pod's port 80.
	setPolicy(t, d, `{"default":"allow"}`, `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80"],"action":"allow"}]}`)
	syn := ipv4("10.1.2.3", podIP, 6, tcpHdr(50000, 80, tcpSYN))
	synack := ipv4(podIP, "10.1.2.3", 6, tcpHdr(80, 50000, tcpSYN|tcpACK))
	ack := ipv4("10.1.2.3", podIP, 6, tcpHdr(50000, 80, tcpACK))
	if run(t, d, policy.Ingress, syn) != actNext || run(t, d, policy.Egress, synack) != actNext || run(t, d, policy.Ingress, ack) != actNext {
		t.Fatal("allowed ingress connection did not pass")
	}
	setPolicy(t, d, `{"default":"allow"}`, `{"default":"deny"}`)
	if r := run(t, d, policy.Ingress, ack); r != actShot {
		t.Fatalf("client's ACK after ingress became default deny: %s (the opening direction is no longer allowed)", verdictName(r))
	}

	// The mirror: the pod connects out, egress then becomes default deny.
	setPolicy(t, d, `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["443"],"action":"allow"}]}`, `{"default":"allow"}`)
	osyn := ipv4(podIP, "10.5.5.5", 6, tcpHdr(51000, 443, tcpSYN))
	osynack := ipv4("10.5.5.5", podIP, 6, tcpHdr(443, 51000, tcpSYN|tcpACK))
	oack := ipv4(podIP, "10.5.5.5", 6, tcpHdr(51000, 443, tcpACK))
	if run(t, d, policy.Egress, osyn) != actNext || run(t, d, policy.Ingress, osynack) != actNext || run(t, d, policy.Egress, oack) != actNext {
		t.Fatal("allowed egress connection did not pass")
	}
	setPolicy(t, d, `{"default":"deny"}`, `{"default":"allow"}`)
	if r := run(t, d, policy.Egress, oack); r != actShot {
		t.Fatalf("pod's ACK after egress became default deny: %s", verdictName(r))
	}
}

// Issue 15 item 2: a packet with more IPv6 extension headers than the
// datapath parses must not get past a port rule.
func TestExtensionHeaderPadding(t *testing.T) {
	d := openForRun(t)
	setPolicy(t, d, `{"default":"allow","rules":[{"cidr":"::/0","protocol":"tcp","ports":["22"],"action":"deny"}]}`, `{"default":"allow"}`)
	dstopt := ext6{typ: 60, body: make([]byte, 6)}
	for n := 0; n <= 12; n++ {
		exts := make([]ext6, n)
		for i := range exts {
			exts[i] = dstopt
		}
		f := ipv6(podIP6, "fd00::9", 6, tcpHdr(40000+uint16(n), 22, tcpSYN), exts...)
		if r := run(t, d, policy.Egress, f); r != actShot {
			t.Errorf("tcp 22 behind %d extension headers: %s, want drop", n, verdictName(r))
		}
		ok := ipv6(podIP6, "fd00::9", 6, tcpHdr(40000+uint16(n), 80, tcpSYN), exts...)
		want := uint32(actNext)
		if n > 6 { // beyond the parser: could be tcp 22, so it is dropped
			want = actShot
		}
		if r := run(t, d, policy.Egress, ok); r != want {
			t.Errorf("tcp 80 behind %d extension headers: %s, want %s", n, verdictName(r), verdictName(want))
		}
	}
	reasons, err := d.DropReasons()
	if err != nil {
		t.Fatal(err)
	}
	if got := reasons[DropOpaque][policy.Egress]; got != 2*6 {
		t.Fatalf("opaque drops %d, want %d", got, 2*6)
	}
	// A pod without policy: everything passes, nothing is judged.
	setPolicy(t, d, `{"default":"allow"}`, `{"default":"allow"}`)
	exts := make([]ext6, 10)
	for i := range exts {
		exts[i] = dstopt
	}
	if r := run(t, d, policy.Egress, ipv6(podIP6, "fd00::9", 6, tcpHdr(1, 22, tcpSYN), exts...)); r != actNext {
		t.Fatalf("no policy, 10 extension headers: %s", verdictName(r))
	}
}

// Issue 15 item 3: an IPv6 packet is judged by the IPv6 rules only, also
// when its peer is an IPv4-mapped address (::ffff:a.b.c.d): on the wire
// that is an IPv6 address like any other (Linux does not route it as IPv4,
// and drops it as a source), and a v4-mapped CIDR cannot be written.
func TestV4MappedPeerIsIPv6(t *testing.T) {
	d := openForRun(t)
	setPolicy(t, d, `{"default":"allow","rules":[{"cidr":"10.1.2.3/32","action":"deny"}]}`,
		`{"default":"allow","rules":[{"cidr":"::/0","protocol":"udp","action":"deny"}]}`)
	if r := run(t, d, policy.Egress, ipv4(podIP, "10.1.2.3", 17, udpHdr(1000, 53, 8))); r != actShot {
		t.Fatalf("v4 peer under its v4 deny: %s", verdictName(r))
	}
	if r := run(t, d, policy.Egress, ipv6(podIP6, "::ffff:10.1.2.3", 17, udpHdr(1000, 53, 8))); r != actNext {
		t.Fatalf("v6 packet to ::ffff:10.1.2.3 under a v4 deny only: %s (v4 rules do not apply to IPv6)", verdictName(r))
	}
	if r := run(t, d, policy.Ingress, ipv6("::ffff:10.9.9.9", podIP6, 17, udpHdr(53, 1001, 8))); r != actShot {
		t.Fatalf("v6 packet from ::ffff:10.9.9.9 under the v6 udp deny: %s", verdictName(r))
	}
	p := policy.Rule{CIDR: netip.MustParsePrefix("::ffff:10.1.2.3/128"), Action: policy.Deny}
	if err := (policy.Spec{Default: policy.Allow, Rules: []policy.Rule{p}}).Validate("egress"); err == nil {
		t.Fatal("a v4-mapped CIDR was accepted")
	}
}

// A set built from a source text is parsed only when the node does not
// hold it: pods 2..n of a network with a large policy skip parsing.
func TestSourceSetParsesOnce(t *testing.T) {
	d := openForRun(t)
	p := mustPolicy(t, `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","action":"allow"}]}`, `{"default":"allow"}`)
	sum := [32]byte{1, 2, 3}
	parses := 0
	parse := func() (policy.Policy, error) { parses++; return p, nil }
	if ok, err := d.HasPolicySet(sum); err != nil || ok {
		t.Fatalf("HasPolicySet before: %v %v", ok, err)
	}
	for _, pod := range []PodID{testPod, 30, 31} {
		if err := d.SetPolicySet(pod, PolicySetFromSource(sum, parse)); err != nil {
			t.Fatal(err)
		}
	}
	if parses != 1 {
		t.Fatalf("parsed %d times for 3 pods, want 1", parses)
	}
	if !HasPinnedPolicySet(d.root, sum) {
		t.Fatal("HasPinnedPolicySet does not see the set")
	}
	for _, pod := range []PodID{testPod, 30, 31} {
		if err := d.CheckPolicy(pod, p); err != nil {
			t.Fatal(err)
		}
	}
	// A parse error is returned and nothing is written.
	bad := PolicySetFromSource([32]byte{9}, func() (policy.Policy, error) { return policy.Policy{}, errors.New("bad text") })
	if err := d.SetPolicySet(40, bad); err == nil || !strings.Contains(err.Error(), "bad text") {
		t.Fatalf("SetPolicySet with a bad source: %v", err)
	}
	if keys := trieKeys(t, d); len(keys) != 1 {
		t.Fatalf("a failed parse wrote entries: %v", keys)
	}
}

// A crash between raising a set's user count and switching the pod leaves
// the count too high: the set then outlives its last user until
// GCPolicySets, which counts the pods and removes it. Never too low: a set
// in use is never removed.
func TestUserCountErrsHigh(t *testing.T) {
	d := openForRun(t)
	p := mustPolicy(t, `{"default":"deny"}`, `{"default":"allow"}`)
	if err := d.SetPolicy(testPod, p); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPolicy(50, p); err != nil {
		t.Fatal(err)
	}
	id := ifaceSet(t, d, testRunIfindex)
	if err := d.addUsers(id, 3); err != nil { // three crashed switches
		t.Fatal(err)
	}
	for _, pod := range []PodID{testPod, 50} {
		if err := d.RemovePod(pod); err != nil {
			t.Fatal(err)
		}
	}
	if keys := trieKeys(t, d); keys[id] == 0 {
		t.Fatal("with a count left high, the set went anyway")
	}
	n, err := d.GCPolicySets()
	if err != nil || n != 1 {
		t.Fatalf("GCPolicySets removed %d: %v", n, err)
	}
	if keys := trieKeys(t, d); len(keys) != 0 {
		t.Fatalf("entries after GC: %v", keys)
	}
	// A count left at 0 while a pod uses the set: the release confirms by
	// counting, repairs the count and keeps the set.
	if err := d.SetPolicy(testPod, p); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPolicy(51, p); err != nil {
		t.Fatal(err)
	}
	if id, err = d.podSet(testPod); err != nil {
		t.Fatal(err)
	}
	if err := d.addUsers(id, -10); err != nil {
		t.Fatal(err)
	}
	if err := d.RemovePod(51); err != nil {
		t.Fatal(err)
	}
	if keys := trieKeys(t, d); keys[id] == 0 {
		t.Fatal("a set in use was removed")
	}
	if err := d.CheckPolicy(testPod, p); err != nil {
		t.Fatalf("policy of the remaining pod: %v", err)
	}
}

// Pins of a podscope from before policy sets (policy entries keyed by pod,
// no policy_sets pin, programs of another object) are refused with what
// to do, not read with pod ids taken for set ids.
func TestLegacyPolicyLayoutRefused(t *testing.T) {
	testenv.RequireRoot(t)
	root := testenv.BPFFSRoot(t)
	d, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	// What the old layout holds: an entry keyed by pod 7.
	if err := d.objs.Policy.Put(tcPolicyKey{Prefixlen: policyKeyBits, Set: 7, Family: 4}, tcPolicyValue{Dflt: uint8(policy.Deny)}); err != nil {
		t.Fatal(err)
	}
	dir := d.Dir()
	d.Close()
	for _, name := range []string{tcMapPolicySets, tcMapPodPolicy, tcMapDropReasons} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	// The older object's programs.
	for _, base := range []string{progPinIngress, progPinEgress} {
		if err := os.Rename(filepath.Join(dir, base+"_"+objectHash), filepath.Join(dir, base+"_000000000000")); err != nil {
			t.Fatal(err)
		}
	}
	_, err = Open(root)
	if !errors.Is(err, ErrLegacyPolicyLayout) || !strings.Contains(err.Error(), "podscopectl cleanup --bpffs-root "+root.Path) {
		t.Fatalf("Open over the old layout: %v", err)
	}
	// Readers, DEL and cleanup still open it.
	r, err := OpenPinned(root)
	if err != nil {
		t.Fatalf("OpenPinned over the old layout: %v", err)
	}
	if err := r.RemovePod(7); err != nil {
		t.Fatalf("RemovePod over the old layout: %v", err)
	}
	r.Close()
	// After the cleanup it says, a fresh load works.
	if err := Cleanup(root); err != nil {
		t.Fatal(err)
	}
	d, err = Open(root)
	if err != nil {
		t.Fatalf("Open after cleanup: %v", err)
	}
	d.Close()
}
