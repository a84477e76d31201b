package datapath

import (
	"bytes"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/policy"
)

const (
	actNext = math.MaxUint32 // TC_ACT_UNSPEC (-1) == TCX_NEXT
	actShot = 2              // TC_ACT_SHOT

	testPod = PodID(7)
	podIP   = "10.0.0.2"
	podIP6  = "fd00::2"
)

// BPF_PROG_TEST_RUN runs a SCHED_CLS program on an skb of the loopback
// device of the caller's netns unless the context names another ifindex, so
// the test pod is registered under lo's ifindex, 1.
const testRunIfindex = 1

func openForRun(t testing.TB) *Datapath {
	t.Helper()
	d := openTest(t)
	// What Attach registers, without attaching: the pod's reference names
	// its ifindex, the ifindex entry names the pod.
	if err := d.objs.PodPolicy.Put(uint32(testPod), tcPodPolicyRef{Ifindex: testRunIfindex}); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.PodIfaces.Put(uint32(testRunIfindex), tcPodIface{Pod: uint32(testPod)}); err != nil {
		t.Fatal(err)
	}
	return d
}

// run passes frame through the program of the pod's direction dir and
// checks the program left the frame untouched.
func run(t testing.TB, d *Datapath, dir policy.Direction, frame []byte) uint32 {
	t.Helper()
	out := make([]byte, len(frame)+256)
	ret, err := d.program(hookFor(dir)).Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	if !bytes.Equal(out[:len(frame)], frame) {
		t.Fatalf("program modified the frame")
	}
	return ret
}

func verdictName(r uint32) string {
	switch r {
	case actNext:
		return "pass(-1)"
	case actShot:
		return "drop"
	}
	return "unexpected"
}

func counters(t testing.TB, d *Datapath) Counters {
	t.Helper()
	c, err := d.Counters(testPod)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func setPolicy(t testing.TB, d *Datapath, egress, ingress string) policy.Policy {
	t.Helper()
	var p policy.Policy
	var err error
	if p.Egress, err = policy.ParseSpec([]byte(egress), "egress"); err != nil {
		t.Fatal(err)
	}
	if p.Ingress, err = policy.ParseSpec([]byte(ingress), "ingress"); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPolicy(testPod, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHookMapping(t *testing.T) {
	if hookFor(policy.Egress) != hookHostIngress || hookFor(policy.Ingress) != hookHostEgress {
		t.Fatal("pod egress must be the host veth's ingress hook and pod ingress its egress hook")
	}
	for _, h := range hooks {
		if hookFor(h.direction()) != h {
			t.Fatalf("hook %s: direction() is not hookFor's inverse", h)
		}
	}
}

func TestCountersAreFrameBytes(t *testing.T) {
	d := openForRun(t)
	frames := []struct {
		dir   policy.Direction
		frame []byte
	}{
		{policy.Egress, ipv4(podIP, "10.9.0.1", 6, tcpHdr(40000, 80, tcpSYN))},
		{policy.Egress, ipv4(podIP, "10.9.0.1", 17, udpHdr(40001, 53, 100))},
		{policy.Ingress, ipv4("10.9.0.1", podIP, 6, tcpHdr(80, 40000, tcpSYN|tcpACK))},
		{policy.Ingress, ipv6("fd00::9", podIP6, 58, icmpEcho(129, 1, 1))},
		{policy.Egress, ipv6(podIP6, "fd00::9", 58, icmpEcho(128, 1, 1))},
		{policy.Ingress, arp()},
	}
	var want Counters
	for _, f := range frames {
		if r := run(t, d, f.dir, f.frame); r != actNext {
			t.Fatalf("no policy: got %s, want pass(-1)", verdictName(r))
		}
		if f.dir == policy.Egress {
			want.TxBytes += uint64(len(f.frame))
			want.TxPackets++
		} else {
			want.RxBytes += uint64(len(f.frame))
			want.RxPackets++
		}
	}
	if got := counters(t, d); got != want {
		t.Fatalf("counters %+v, want %+v (skb->len = whole L2 frame)", got, want)
	}
	// A veth that is not a pod's is neither counted nor judged.
	if err := d.objs.PodIfaces.Delete(uint32(testRunIfindex)); err != nil {
		t.Fatal(err)
	}
	run(t, d, policy.Egress, ipv4(podIP, "10.9.0.1", 6, tcpHdr(40000, 80, tcpSYN)))
	if got := counters(t, d); got != want {
		t.Fatalf("unregistered ifindex was counted: %+v", got)
	}
}

func TestUnderstoodNothingPassesUntouched(t *testing.T) {
	d := openForRun(t)
	setPolicy(t, d, `{"default":"deny"}`, `{"default":"deny"}`)
	full := ipv4("10.9.0.1", podIP, 6, tcpHdr(80, 40000, tcpSYN))
	full6 := ipv6("fd00::9", podIP6, 6, tcpHdr(80, 40000, tcpSYN))
	// BPF_PROG_TEST_RUN itself refuses IP frames shorter than the fixed IP
	// header (EINVAL), so truncation is tested past it: L4 cut short, an
	// IPv4 header length beyond the frame, an IPv6 extension header cut.
	longIHL := append([]byte{}, full...)
	longIHL[14] = 0x4f
	// Not IP as far as the datapath understands: passes untouched.
	cases := map[string][]byte{
		"arp":               arp(),
		"other ethertype":   ether(0x88cc, make([]byte, 40)),
		"ipv4 bad version":  append(append([]byte{}, full[:14]...), append([]byte{0x65}, full[15:]...)...),
		"ipv4 short header": append(append([]byte{}, full[:14]...), append([]byte{0x44}, full[15:]...)...),
	}
	// IP with addresses but no readable L4 header: it could be any packet
	// between these addresses, so it gets the strictest verdict the peer's
	// policy entry can give (here: deny), counted as an opaque drop.
	opaque := map[string][]byte{
		"truncated tcp":      full[:14+20+2],
		"ihl past the end":   longIHL,
		"truncated ipv6 tcp": full6[:14+40+3],
		"truncated ipv6 ext": ipv6("fd00::9", podIP6, 6, tcpHdr(80, 40000, tcpSYN), ext6{0, make([]byte, 6)})[:14+40+4],
	}
	var bytes, dropBytes uint64
	for name, f := range cases {
		if r := run(t, d, policy.Ingress, f); r != actNext {
			t.Errorf("%s under default deny: got %s, want pass(-1)", name, verdictName(r))
		}
		bytes += uint64(len(f))
	}
	for name, f := range opaque {
		if r := run(t, d, policy.Ingress, f); r != actShot {
			t.Errorf("%s under default deny: got %s, want drop", name, verdictName(r))
		}
		dropBytes += uint64(len(f))
	}
	// The same full frame is dropped: the policy is really in force.
	if r := run(t, d, policy.Ingress, full); r != actShot {
		t.Fatalf("full frame under default deny: %s", verdictName(r))
	}
	dropBytes += uint64(len(full))
	c := counters(t, d)
	if c.RxBytes != bytes || c.RxPackets != uint64(len(cases)) || c.DropsIngress != uint64(len(opaque)+1) || c.DropBytesIngress != dropBytes {
		t.Fatalf("counters %+v: want rx %d bytes / %d packets and %d drops of %d bytes", c, bytes, len(cases), len(opaque)+1, dropBytes)
	}
	reasons, err := d.DropReasons()
	if err != nil {
		t.Fatal(err)
	}
	if got := reasons[DropOpaque][policy.Ingress]; got != uint64(len(opaque)) {
		t.Fatalf("opaque drops %d, want %d (%+v)", got, len(opaque), reasons)
	}
	if got := reasons[DropPolicy][policy.Ingress]; got != 1 {
		t.Fatalf("policy drops %d, want 1 (%+v)", got, reasons)
	}

	// Under a policy that denies nothing for the peer, an opaque packet
	// passes: the strictest verdict it could get is allow.
	setPolicy(t, d, `{"default":"allow"}`, `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"udp","action":"allow"}]}`)
	for name, f := range opaque {
		if r := run(t, d, policy.Ingress, f); r != actNext {
			t.Errorf("%s under allow-only policy: got %s, want pass(-1)", name, verdictName(r))
		}
	}
}

type verdictCase struct {
	name  string
	dir   policy.Direction
	frame []byte
	want  uint32
	pkt   policy.Packet // for the reference decision
}

func TestPolicyVerdicts(t *testing.T) {
	d := openForRun(t)
	p := setPolicy(t, d,
		`{"default":"deny","rules":[
		  {"cidr":"10.0.0.0/8","action":"allow"},
		  {"cidr":"10.1.0.0/16","protocol":"tcp","ports":["80","8000-8080"],"action":"allow"},
		  {"cidr":"10.1.0.0/16","protocol":"tcp","action":"deny"},
		  {"cidr":"10.1.2.0/24","protocol":"udp","ports":["53"],"action":"deny"},
		  {"cidr":"10.1.2.3/32","protocol":"icmp","action":"deny"},
		  {"cidr":"fd00:1::/32","protocol":"tcp","ports":["443"],"action":"allow"},
		  {"cidr":"::/0","protocol":"icmpv6","action":"allow"}]}`,
		`{"default":"allow","rules":[
		  {"cidr":"192.168.0.0/16","protocol":"tcp","ports":["22"],"action":"deny"},
		  {"cidr":"fd00:2::/32","action":"deny"}]}`)
	port := uint16(30000)
	eg := func(name, dst string, proto byte, dport uint16, want uint32) verdictCase {
		port++ // a fresh local port per case: no conntrack between cases
		var l4 []byte
		switch proto {
		case 6:
			l4 = tcpHdr(port, dport, tcpSYN)
		case 17:
			l4 = udpHdr(port, dport, 10)
		case 1:
			l4 = icmpEcho(8, port, 1)
		case 58:
			l4 = icmpEcho(128, port, 1)
		}
		var f []byte
		if netip.MustParseAddr(dst).Is4() {
			f = ipv4(podIP, dst, proto, l4)
		} else {
			f = ipv6(podIP6, dst, proto, l4)
		}
		return verdictCase{name, policy.Egress, f, want, policy.Packet{Peer: netip.MustParseAddr(dst), Protocol: proto, Port: dport, HasPort: proto == 6 || proto == 17}}
	}
	in := func(name, src string, proto byte, dport uint16, want uint32) verdictCase {
		port++
		var f []byte
		if netip.MustParseAddr(src).Is4() {
			f = ipv4(src, podIP, proto, tcpHdr(port, dport, tcpSYN))
		} else {
			f = ipv6(src, podIP6, proto, tcpHdr(port, dport, tcpSYN))
		}
		return verdictCase{name, policy.Ingress, f, want, policy.Packet{Peer: netip.MustParseAddr(src), Protocol: proto, Port: dport, HasPort: true}}
	}
	cases := []verdictCase{
		eg("default deny", "192.168.1.1", 6, 80, actShot),
		eg("10/8 any-protocol rule", "10.9.9.9", 6, 22, actNext),
		eg("/16 proto+port beats /16 proto", "10.1.9.9", 6, 80, actNext),
		eg("port range start", "10.1.9.9", 6, 8000, actNext),
		eg("port range end", "10.1.9.9", 6, 8080, actNext),
		eg("past the range: /16 proto-only deny", "10.1.9.9", 6, 8081, actShot),
		eg("/16 has no udp rule: falls back to /8", "10.1.9.9", 17, 53, actNext),
		eg("most specific /24 udp 53", "10.1.2.9", 17, 53, actShot),
		eg("/24 miss, /16 miss, /8 allow", "10.1.2.9", 17, 54, actNext),
		eg("/24 miss, /16 tcp 80", "10.1.2.9", 6, 80, actNext),
		eg("/32 icmp deny", "10.1.2.3", 1, 0, actShot),
		eg("/32 tcp falls to /16 proto deny", "10.1.2.3", 6, 9000, actShot),
		eg("icmp elsewhere in 10/8", "10.1.2.4", 1, 0, actNext),
		eg("v6 proto+port", "fd00:1::9", 6, 443, actNext),
		eg("v6 other port: default", "fd00:1::9", 6, 444, actShot),
		eg("v6 icmpv6 from ::/0", "2001:db8::1", 58, 0, actNext),
		eg("v6 icmpv6 inherited by fd00:1::/32", "fd00:1::9", 58, 0, actNext),
		eg("v6 udp default", "2001:db8::1", 17, 53, actShot),
		in("ingress default allow", "172.16.0.1", 6, 22, actNext),
		in("ingress tcp 22 denied", "192.168.3.4", 6, 22, actShot),
		in("ingress tcp 23 allowed", "192.168.3.4", 6, 23, actNext),
		in("ingress v6 deny CIDR", "fd00:2::5", 6, 80, actShot),
		in("ingress v6 other", "fd00:3::5", 6, 80, actNext),
	}
	entries := map[policy.Direction][]policy.Entry{}
	for _, dir := range []policy.Direction{policy.Egress, policy.Ingress} {
		var err error
		if entries[dir], err = policy.Compile(p.Spec(dir), dir, "", maxRules); err != nil {
			t.Fatal(err)
		}
	}
	var drops [2]uint64
	for _, c := range cases {
		got := run(t, d, c.dir, c.frame)
		if got != c.want {
			t.Errorf("%s (%s): got %s, want %s", c.name, c.dir, verdictName(got), verdictName(c.want))
		}
		ref := policy.Decide(entries[c.dir], c.pkt)
		if (ref == policy.Deny) != (c.want == actShot) {
			t.Errorf("%s: the reference decision %s disagrees with the test's expectation", c.name, ref)
		}
		if got == actShot {
			drops[c.dir]++
		}
	}
	c := counters(t, d)
	if c.DropsEgress != drops[policy.Egress] || c.DropsIngress != drops[policy.Ingress] {
		t.Fatalf("drops %d/%d, want %d/%d", c.DropsEgress, c.DropsIngress, drops[0], drops[1])
	}
	if err := d.CheckPolicy(testPod, p); err != nil {
		t.Fatalf("CheckPolicy after SetPolicy: %v", err)
	}
}

func TestStatefulReplies(t *testing.T) {
	d := openForRun(t)
	setPolicy(t, d,
		`{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80"],"action":"allow"},
		  {"cidr":"fd00::/16","protocol":"udp","ports":["53"],"action":"allow"}]}`,
		`{"default":"deny"}`)
	syn := ipv4(podIP, "10.1.2.3", 6, tcpHdr(41000, 80, tcpSYN))
	synack := ipv4("10.1.2.3", podIP, 6, tcpHdr(80, 41000, tcpSYN|tcpACK))
	unsolicited := ipv4("10.1.2.3", podIP, 6, tcpHdr(80, 41001, tcpSYN|tcpACK))
	if r := run(t, d, policy.Ingress, synack); r != actShot {
		t.Fatalf("SYN-ACK before any SYN under ingress default deny: %s", verdictName(r))
	}
	if r := run(t, d, policy.Egress, syn); r != actNext {
		t.Fatalf("allowed egress SYN: %s", verdictName(r))
	}
	if r := run(t, d, policy.Ingress, synack); r != actNext {
		t.Fatalf("reply of an allowed connection under ingress default deny: %s", verdictName(r))
	}
	if r := run(t, d, policy.Ingress, unsolicited); r != actShot {
		t.Fatalf("unsolicited ingress to another port: %s", verdictName(r))
	}
	if r := run(t, d, policy.Egress, ipv4(podIP, "10.1.2.3", 6, tcpHdr(41000, 80, tcpACK))); r != actNext {
		t.Fatalf("ACK of the established connection: %s", verdictName(r))
	}
	// v6 UDP: a DNS query and its answer.
	q := ipv6(podIP6, "fd00::53", 17, udpHdr(5353, 53, 30))
	a := ipv6("fd00::53", podIP6, 17, udpHdr(53, 5353, 80))
	if r := run(t, d, policy.Egress, q); r != actNext {
		t.Fatalf("v6 udp query: %s", verdictName(r))
	}
	if r := run(t, d, policy.Ingress, a); r != actNext {
		t.Fatalf("v6 udp answer: %s", verdictName(r))
	}
	c := counters(t, d)
	if c.DropsIngress != 2 || c.DropsEgress != 0 {
		t.Fatalf("drops %+v, want 2 ingress", c)
	}

	flows, err := d.Flows(testPod)
	if err != nil {
		t.Fatal(err)
	}
	var tcp *Flow
	for i := range flows {
		if flows[i].Local == netip.MustParseAddrPort(podIP+":41000") {
			tcp = &flows[i]
		}
	}
	if tcp == nil {
		t.Fatalf("no flow for %s:41000 in %+v", podIP, flows)
	}
	if tcp.Proto != "tcp" || tcp.Remote != netip.MustParseAddrPort("10.1.2.3:80") ||
		tcp.TxPackets != 2 || tcp.TxBytes != uint64(2*len(syn)) || tcp.RxPackets != 2 || tcp.RxBytes != uint64(2*len(synack)) ||
		tcp.Verdict != policy.Allow || tcp.Initiator != policy.Ingress || tcp.FirstSeen.IsZero() || tcp.LastSeen.Before(tcp.FirstSeen) {
		// The unsolicited SYN-ACK came first, so ingress initiated this flow.
		t.Fatalf("tcp flow %+v", *tcp)
	}
	if len(flows) != 3 {
		t.Fatalf("%d flows, want 3 (tcp 41000, tcp 41001, udp): %+v", len(flows), flows)
	}
}

func TestFragments(t *testing.T) {
	d := openForRun(t)
	setPolicy(t, d,
		`{"default":"deny","rules":[{"cidr":"10.1.0.0/16","protocol":"tcp","ports":["80"],"action":"allow"},
		  {"cidr":"10.2.0.0/16","protocol":"udp","action":"allow"},
		  {"cidr":"fd00:1::/32","protocol":"udp","action":"allow"}]}`,
		`{"default":"allow"}`)
	cases := []struct {
		name  string
		frame []byte
		want  uint32
	}{
		{"v4 first fragment has ports", ipv4Frag(podIP, "10.1.0.1", 6, tcpHdr(42000, 80, tcpSYN), 0, true), actNext},
		{"v4 non-first fragment: port rule cannot match", ipv4Frag(podIP, "10.1.0.1", 6, make([]byte, 64), 185, false), actShot},
		{"v4 non-first fragment: protocol-only rule matches", ipv4Frag(podIP, "10.2.0.1", 17, make([]byte, 64), 185, true), actNext},
		{"v6 first fragment", ipv6(podIP6, "fd00:1::1", 17, udpHdr(42001, 9, 10), frag6(0, true)), actNext},
		{"v6 non-first fragment, protocol-only rule", ipv6(podIP6, "fd00:1::1", 17, make([]byte, 64), frag6(100, false)), actNext},
		{"v6 non-first fragment, default", ipv6(podIP6, "fd00:9::1", 17, make([]byte, 64), frag6(100, false)), actShot},
		{"v6 hop-by-hop + dstopts then tcp", ipv6(podIP6, "fd00:9::1", 6, tcpHdr(42002, 80, tcpSYN),
			ext6{0, make([]byte, 6)}, ext6{60, make([]byte, 14)}), actShot},
		{"v6 hop-by-hop then udp allowed", ipv6(podIP6, "fd00:1::1", 17, udpHdr(42003, 9, 4),
			ext6{0, make([]byte, 6)}), actNext},
	}
	for _, c := range cases {
		if r := run(t, d, policy.Egress, c.frame); r != c.want {
			t.Errorf("%s: got %s, want %s", c.name, verdictName(r), verdictName(c.want))
		}
	}
	// Non-first fragments have no ports: they make no flow entries.
	flows, err := d.Flows(testPod)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Local.Port() == 0 {
			t.Errorf("flow without ports from a fragment: %+v", f)
		}
	}
}

func TestICMPErrorsAndNDP(t *testing.T) {
	d := openForRun(t)
	setPolicy(t, d,
		`{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["443"],"action":"allow"},
		  {"cidr":"fd00:1::/32","protocol":"tcp","ports":["443"],"action":"allow"}]}`,
		`{"default":"deny"}`)
	// Neighbour discovery and MLD pass both ways under default deny.
	for _, typ := range []byte{133, 134, 135, 136, 137, 130, 143} {
		if r := run(t, d, policy.Egress, ipv6(podIP6, "ff02::1:ff00:1", 58, ndp(typ))); r != actNext {
			t.Errorf("egress ICMPv6 type %d under default deny: %s", typ, verdictName(r))
		}
		if r := run(t, d, policy.Ingress, ipv6("fe80::1", podIP6, 58, ndp(typ))); r != actNext {
			t.Errorf("ingress ICMPv6 type %d under default deny: %s", typ, verdictName(r))
		}
	}
	// An echo request is not link control: denied.
	if r := run(t, d, policy.Ingress, ipv6("fe80::1", podIP6, 58, icmpEcho(128, 1, 1))); r != actShot {
		t.Fatalf("ingress echo request under default deny: %s", verdictName(r))
	}

	// v4: fragmentation needed from a router about the pod's allowed
	// connection passes; about a connection never allowed it is dropped.
	syn := ipv4(podIP, "10.1.2.3", 6, tcpHdr(44000, 443, tcpSYN))
	if r := run(t, d, policy.Egress, syn); r != actNext {
		t.Fatalf("allowed SYN: %s", verdictName(r))
	}
	fragNeeded := ipv4("10.9.9.1", podIP, 1, icmpError(3, 4, syn[14:14+28]))
	if r := run(t, d, policy.Ingress, fragNeeded); r != actNext {
		t.Fatalf("ICMP fragmentation needed about an allowed connection: %s", verdictName(r))
	}
	other := ipv4(podIP, "10.1.2.3", 6, tcpHdr(44001, 443, tcpSYN)) // never sent
	if r := run(t, d, policy.Ingress, ipv4("10.9.9.1", podIP, 1, icmpError(3, 4, other[14:14+28]))); r != actShot {
		t.Fatalf("ICMP error about an unknown connection: %s", verdictName(r))
	}
	// v6: packet too big.
	syn6 := ipv6(podIP6, "fd00:1::9", 6, tcpHdr(44002, 443, tcpSYN))
	if r := run(t, d, policy.Egress, syn6); r != actNext {
		t.Fatalf("allowed v6 SYN: %s", verdictName(r))
	}
	if r := run(t, d, policy.Ingress, ipv6("fd00:9::1", podIP6, 58, icmpError(2, 0, syn6[14:14+48]))); r != actNext {
		t.Fatalf("ICMPv6 packet too big about an allowed connection: %s", verdictName(r))
	}
	if r := run(t, d, policy.Ingress, ipv6("fd00:9::1", podIP6, 58, icmpError(1, 4, syn6[14:14+43]))); r != actShot {
		t.Fatalf("ICMPv6 error quoting a truncated header: %s", verdictName(r))
	}
}

// A policy change judges established flows again: a connection the new
// policy no longer allows stops (both ways); one it still allows keeps its
// replies even before the pod sends again.
func TestPolicyChangeRejudgesFlows(t *testing.T) {
	d := openForRun(t)
	allow := `{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80"],"action":"allow"}]}`
	setPolicy(t, d, allow, `{"default":"deny"}`)
	syn := ipv4(podIP, "10.1.2.3", 6, tcpHdr(45000, 80, tcpSYN))
	reply := ipv4("10.1.2.3", podIP, 6, tcpHdr(80, 45000, tcpSYN|tcpACK))
	ack := ipv4(podIP, "10.1.2.3", 6, tcpHdr(45000, 80, tcpACK))
	if run(t, d, policy.Egress, syn) != actNext || run(t, d, policy.Ingress, reply) != actNext {
		t.Fatal("allowed connection did not pass")
	}

	// Same policy again (a new generation): the reply still passes first.
	setPolicy(t, d, allow, `{"default":"deny"}`)
	if r := run(t, d, policy.Ingress, reply); r != actNext {
		t.Fatalf("reply after re-applying the same policy: %s", verdictName(r))
	}

	// Tightened: the established connection is cut both ways.
	setPolicy(t, d, `{"default":"deny"}`, `{"default":"deny"}`)
	if r := run(t, d, policy.Ingress, reply); r != actShot {
		t.Fatalf("reply after the allow rule was removed: %s", verdictName(r))
	}
	if r := run(t, d, policy.Egress, ack); r != actShot {
		t.Fatalf("pod's packet after the allow rule was removed: %s", verdictName(r))
	}

	// Loosened again: the pod's next packet re-opens it.
	setPolicy(t, d, allow, `{"default":"deny"}`)
	if r := run(t, d, policy.Ingress, reply); r != actShot {
		t.Fatalf("reply before the pod sent again under the new policy: %s", verdictName(r))
	}
	if run(t, d, policy.Egress, ack) != actNext || run(t, d, policy.Ingress, reply) != actNext {
		t.Fatal("connection did not pass again after the allow rule came back")
	}
}

// Flows' first and last seen are the coarse clock (the kernel tick) of the
// moment the packet passed. The oracle is the kernel's
// CLOCK_MONOTONIC_COARSE read by this process around each run (its
// resolution is the tick, allowed as slack below); a value taken from
// another clock, kept from an earlier packet or never written falls
// outside.
func TestFlowTimesFollowTheCoarseClock(t *testing.T) {
	d := openForRun(t)
	var res unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &res); err != nil {
		t.Fatal(err)
	}
	tick := uint64(res.Nano())
	coarse := func() uint64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
			t.Fatal(err)
		}
		return uint64(ts.Nano())
	}
	flow := func() tcFlowStats {
		var found []tcFlowStats
		err := pins.EachEntry(d.objs.Flows, flowBatch, func(k *tcFlowKey, v *tcFlowStats) error {
			if k.Pod == uint32(testPod) {
				found = append(found, *v)
			}
			return nil
		})
		if err != nil || len(found) != 1 {
			t.Fatalf("flows of the pod: %d, %v; want 1", len(found), err)
		}
		return found[0]
	}
	frame := ipv4(podIP, "10.1.2.3", 17, udpHdr(40000, 53, 20))
	var first, prev uint64
	for i := 0; i < 6; i++ {
		before := coarse()
		if r := run(t, d, policy.Egress, frame); r != actNext {
			t.Fatalf("packet %d: %s", i, verdictName(r))
		}
		after := coarse()
		f := flow()
		if f.LastSeenNs+tick < before || f.LastSeenNs > after {
			t.Fatalf("packet %d: last seen %d, clock read %d before and %d after the run (tick %d ns)",
				i, f.LastSeenNs, before, after, tick)
		}
		if i == 0 {
			first = f.FirstSeenNs
		}
		if f.FirstSeenNs != first || f.Packets[policy.Egress] != uint64(i+1) {
			t.Fatalf("packet %d: first seen %d (was %d), %d packets", i, f.FirstSeenNs, first, f.Packets[policy.Egress])
		}
		if i > 0 && f.LastSeenNs <= prev {
			t.Fatalf("packet %d, three ticks after the last: last seen stayed %d", i, f.LastSeenNs)
		}
		prev = f.LastSeenNs
		time.Sleep(3 * time.Duration(tick))
	}
}
