package datapath

import (
	"math/rand"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/podscope/podscope/pkg/policy"
)

// The documented semantics, written from docs/datapath.md without pkg/policy's
// compiler or the kernel's layout: the model a differential test compares
// the programs against.

type modelRule struct {
	cidr     netip.Prefix
	proto    uint8 // 0 any
	ports    []policy.PortRange
	action   policy.Action
	specific int // 2 protocol+ports, 1 protocol, 0 neither
}

type modelSpec struct {
	dflt  policy.Action
	rules []modelRule
}

// decide: among the rules whose CIDR contains the peer and that match the
// packet, the most specific CIDR wins, then the most specific rule kind;
// none: the default.
func (s modelSpec) decide(peer netip.Addr, proto uint8, dport uint16) policy.Action {
	best, bestBits, bestSpec := policy.Action(0), -1, -1
	for _, r := range s.rules {
		if r.cidr.Addr().Is4() != peer.Is4() || !r.cidr.Contains(peer) {
			continue
		}
		if r.proto != 0 && r.proto != proto {
			continue
		}
		if len(r.ports) > 0 {
			in := false
			for _, p := range r.ports {
				in = in || (dport >= p.From && dport <= p.To)
			}
			if !in {
				continue
			}
		}
		if r.cidr.Bits() > bestBits || (r.cidr.Bits() == bestBits && r.specific > bestSpec) {
			best, bestBits, bestSpec = r.action, r.cidr.Bits(), r.specific
		}
	}
	if best == 0 {
		return s.dflt
	}
	return best
}

type modelFlowKey struct {
	proto         uint8
	local, remote netip.AddrPort
}

type modelFlow struct {
	opening uint8 // bits 1<<dir of the directions the policy allowed
	version int   // policy version opening was judged under
}

type model struct {
	spec    [2]modelSpec // by policy.Direction
	version int
	flows   map[modelFlowKey]*modelFlow
}

// packet: a TCP/UDP packet of the pod in direction dir; local is the pod's
// side. The destination port is the remote's for egress, the pod's for
// ingress.
func (m *model) packet(dir policy.Direction, proto uint8, local, remote netip.AddrPort) policy.Action {
	judge := func(d policy.Direction) bool {
		port := remote.Port()
		if d == policy.Ingress {
			port = local.Port()
		}
		return m.spec[d].decide(remote.Addr(), proto, port) == policy.Allow
	}
	k := modelFlowKey{proto, local, remote}
	f := m.flows[k]
	if f == nil {
		f = &modelFlow{version: m.version}
		m.flows[k] = f
	}
	if f.version != m.version {
		keep := uint8(0)
		for _, d := range []policy.Direction{policy.Egress, policy.Ingress} {
			if f.opening&(1<<d) != 0 && judge(d) {
				keep |= 1 << d
			}
		}
		f.opening, f.version = keep, m.version
	}
	if f.opening != 0 {
		return policy.Allow
	}
	if judge(dir) {
		f.opening = 1 << dir
		return policy.Allow
	}
	return policy.Deny
}

var (
	diffCIDRs = []string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.1.2.128/25",
		"192.168.0.0/16", "192.168.7.0/24", "::/0", "fd00::/16", "fd00:1::/32", "fd00:1::5/128"}
	diffPeers4 = []string{"10.1.2.3", "10.1.2.4", "10.1.2.200", "10.1.9.9", "10.200.0.1", "192.168.7.7", "192.168.8.8", "172.16.0.1"}
	diffPeers6 = []string{"fd00:1::5", "fd00:1::6", "fd00:2::1", "fe80::1", "2001:db8::1"}
	diffPorts  = []uint16{22, 53, 80, 443, 1000, 8080, 40000, 65535}
	diffProtos = []struct {
		name string
		num  uint8
	}{{"", 0}, {"tcp", 6}, {"udp", 17}}
)

func randomSpec(rng *rand.Rand) (policy.Spec, modelSpec) {
	for {
		s := policy.Spec{Default: policy.Action(1 + rng.Intn(2))}
		m := modelSpec{dflt: s.Default}
		for n := rng.Intn(7); n > 0; n-- {
			c := netip.MustParsePrefix(diffCIDRs[rng.Intn(len(diffCIDRs))])
			p := diffProtos[rng.Intn(len(diffProtos))]
			r := policy.Rule{CIDR: c, Protocol: p.name, Action: policy.Action(1 + rng.Intn(2))}
			mr := modelRule{cidr: c, proto: p.num, action: r.Action}
			if p.num != 0 {
				mr.specific = 1
				if rng.Intn(2) == 0 {
					for k := 1 + rng.Intn(2); k > 0; k-- {
						a := diffPorts[rng.Intn(len(diffPorts))]
						b := a
						if rng.Intn(3) == 0 && a < 65000 {
							b = a + uint16(rng.Intn(100))
						}
						r.Ports = append(r.Ports, policy.PortRange{From: a, To: b})
					}
					mr.ports, mr.specific = r.Ports, 2
				}
			}
			s.Rules = append(s.Rules, r)
			m.rules = append(m.rules, mr)
		}
		if s.Validate("x") == nil { // ties and overlaps are config errors
			return s, m
		}
	}
}

// TestDifferentialVerdicts runs random policies × packets (v4 and v6, TCP
// and UDP, boundary addresses and ports, replies, policy changes on live
// flows) through prog.Run and compares every verdict with the model above.
// PODSCOPE_DIFF_PACKETS sets the count (default 20,000; the long run is
// e.g. 200,000), PODSCOPE_DIFF_SEED the seed (default fixed).
func TestDifferentialVerdicts(t *testing.T) {
	packets, seed := 20000, int64(12)
	if v, err := strconv.Atoi(os.Getenv("PODSCOPE_DIFF_PACKETS")); err == nil && v > 0 {
		packets = v
	}
	if v, err := strconv.ParseInt(os.Getenv("PODSCOPE_DIFF_SEED"), 10, 64); err == nil {
		seed = v
	}
	d := openForRun(t)
	rng := rand.New(rand.NewSource(seed))
	m := &model{flows: map[modelFlowKey]*modelFlow{}}
	newPolicy := func() {
		var p policy.Policy
		p.Egress, m.spec[policy.Egress] = randomSpec(rng)
		p.Ingress, m.spec[policy.Ingress] = randomSpec(rng)
		if err := d.SetPolicy(testPod, p); err != nil {
			t.Fatal(err)
		}
		m.version++
	}
	newPolicy()
	type flow struct {
		proto         uint8
		local, remote netip.AddrPort
	}
	var recent []flow
	mismatches := 0
	for i := 0; i < packets; i++ {
		if rng.Intn(400) == 0 {
			newPolicy()
		}
		var f flow
		if len(recent) > 0 && rng.Intn(2) == 0 {
			f = recent[rng.Intn(len(recent))] // a packet of a known flow, either way
		} else {
			f.proto = []uint8{6, 17}[rng.Intn(2)]
			lp := diffPorts[rng.Intn(len(diffPorts))]
			rp := diffPorts[rng.Intn(len(diffPorts))]
			if rng.Intn(2) == 0 {
				f.local = netip.AddrPortFrom(netip.MustParseAddr(podIP), lp)
				f.remote = netip.AddrPortFrom(netip.MustParseAddr(diffPeers4[rng.Intn(len(diffPeers4))]), rp)
			} else {
				f.local = netip.AddrPortFrom(netip.MustParseAddr(podIP6), lp)
				f.remote = netip.AddrPortFrom(netip.MustParseAddr(diffPeers6[rng.Intn(len(diffPeers6))]), rp)
			}
			recent = append(recent, f)
			if len(recent) > 64 {
				recent = recent[1:]
			}
		}
		dir := policy.Direction(rng.Intn(2))
		src, dst := f.local, f.remote
		if dir == policy.Ingress {
			src, dst = f.remote, f.local
		}
		var l4 []byte
		if f.proto == 6 {
			l4 = tcpHdr(src.Port(), dst.Port(), tcpACK)
		} else {
			l4 = udpHdr(src.Port(), dst.Port(), 8)
		}
		var frame []byte
		if src.Addr().Is4() {
			frame = ipv4(src.Addr().String(), dst.Addr().String(), f.proto, l4)
		} else {
			frame = ipv6(src.Addr().String(), dst.Addr().String(), f.proto, l4)
		}
		want := m.packet(dir, f.proto, f.local, f.remote)
		got := run(t, d, dir, frame)
		if (got == actShot) != (want == policy.Deny) {
			mismatches++
			if mismatches <= 10 {
				t.Errorf("packet %d (policy version %d): %s %d %s -> %s: kernel %s, model %s",
					i, m.version, dir, f.proto, src, dst, verdictName(got), want)
			}
		}
	}
	if mismatches > 0 {
		t.Fatalf("%d of %d verdicts differ from the model (seed %d)", mismatches, packets, seed)
	}
	t.Logf("%d verdicts agree with the model (seed %d, %d policy versions)", packets, seed, m.version)
}
