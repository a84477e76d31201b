package netpol

import (
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podscope/podscope/pkg/policy"
)

// decide evaluates a compiled policy for a probe with pkg/policy's own
// reference of the kernel's decision (longest prefix, first match).
func decide(t testing.TB, p policy.Policy, pr probe) bool {
	t.Helper()
	return decideEntries(compileDir(t, p, pr.dir), pr)
}

// compileDir compiles one direction into the entries the datapath holds,
// with no per-CIDR limit: the semantics are under test here, not the
// datapath's capacity.
func compileDir(t testing.TB, p policy.Policy, d string) []policy.Entry {
	t.Helper()
	entries, err := policy.Compile(p.Spec(dirOf(d)), dirOf(d), "policy."+d, 1<<20)
	if err != nil {
		t.Fatalf("compiled policy does not compile: %v\n%+v", err, p.Spec(dirOf(d)))
	}
	return entries
}

func decideEntries(entries []policy.Entry, pr probe) bool {
	num, _ := policy.ProtocolNumber(map[string]string{"TCP": "tcp", "UDP": "udp", "SCTP": "sctp", "ICMP": "icmp"}[pr.proto])
	if pr.proto == "ICMP" && pr.peer.Is6() {
		num, _ = policy.ProtocolNumber("icmpv6")
	}
	pkt := policy.Packet{Peer: pr.peer, Protocol: num, Port: uint16(pr.port), HasPort: pr.proto != "ICMP"}
	return policy.Decide(entries, pkt) == policy.Allow
}

type gen struct{ r *rand.Rand }

func (g gen) pick(s ...string) string { return s[g.r.Intn(len(s))] }

func (g gen) labels(keys ...string) map[string]string {
	m := map[string]string{}
	for _, k := range keys {
		if g.r.Intn(3) > 0 {
			m[k] = g.pick("a", "b", "c")
		}
	}
	return m
}

func (g gen) selector(keys ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	switch g.r.Intn(5) {
	case 0: // empty: everything
	case 1, 2:
		s.MatchLabels = map[string]string{g.pick(keys...): g.pick("a", "b", "c")}
	case 3:
		ops := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn,
			metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}
		op := ops[g.r.Intn(len(ops))]
		req := metav1.LabelSelectorRequirement{Key: g.pick(keys...), Operator: op}
		if op == metav1.LabelSelectorOpIn || op == metav1.LabelSelectorOpNotIn {
			req.Values = []string{g.pick("a", "b"), g.pick("b", "c")}
		}
		s.MatchExpressions = []metav1.LabelSelectorRequirement{req}
	case 4:
		s.MatchLabels = map[string]string{g.pick(keys...): g.pick("a", "b")}
		s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: g.pick(keys...), Operator: metav1.LabelSelectorOpExists}}
	}
	return s
}

var (
	portNames  = []string{"http", "dns", "metrics"}
	portNums   = []int32{53, 80, 443, 8080, 9090}
	protoNames = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	cidrs4     = []string{"10.0.0.0/24", "10.0.0.0/28", "10.0.0.0/30", "10.0.0.4/30", "10.0.0.8/29", "10.0.1.0/28", "10.0.0.0/16", "0.0.0.0/0", "10.0.0.3/32", "192.168.0.0/24"}
	cidrs6     = []string{"fd00::/64", "fd00::/124", "fd00::/126", "fd00::4/126", "::/0", "fd00::3/128"}
)

func (g gen) cluster() State {
	var st State
	nsNames := []string{"ns0", "ns1", "ns2"}
	for _, n := range nsNames {
		st.Namespaces = append(st.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: g.labels("team", "env")}})
	}
	npods := 4 + g.r.Intn(10)
	for i := 0; i < npods; i++ {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: g.pick(nsNames...), Name: fmt.Sprintf("p%d", i),
			UID: k8stypes.UID("uid" + strconv.Itoa(i)), Labels: g.labels("app", "tier")}}
		p.Spec.NodeName = "node"
		for c := 0; c < 1+g.r.Intn(2); c++ {
			ct := corev1.Container{Name: fmt.Sprint("c", c)}
			for k := 0; k < g.r.Intn(3); k++ {
				cp := corev1.ContainerPort{Name: portNames[g.r.Intn(len(portNames))], ContainerPort: portNums[g.r.Intn(len(portNums))]}
				if g.r.Intn(2) == 0 {
					cp.Protocol = protoNames[g.r.Intn(len(protoNames))]
				}
				ct.Ports = append(ct.Ports, cp)
			}
			p.Spec.Containers = append(p.Spec.Containers, ct)
		}
		p.Status.Phase = corev1.PodRunning
		switch g.r.Intn(12) {
		case 0:
			p.Spec.HostNetwork = true
			p.Status.PodIPs = []corev1.PodIP{{IP: "192.168.0.1"}}
		case 1:
			p.Status.Phase = corev1.PodSucceeded
			p.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.0.0.%d", i)}}
		case 2: // pending: no address yet
		default:
			a := fmt.Sprintf("10.0.%d.%d", g.r.Intn(2), i)
			p.Status.PodIPs = []corev1.PodIP{{IP: a}}
			p.Status.PodIP = a
			if g.r.Intn(2) == 0 {
				p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: fmt.Sprintf("fd00::%x", i)})
			}
		}
		st.Pods = append(st.Pods, p)
	}
	npol := 1 + g.r.Intn(5)
	for i := 0; i < npol; i++ {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: g.pick(nsNames...), Name: fmt.Sprintf("np%d", i)}}
		np.Spec.PodSelector = *g.selector("app", "tier")
		switch g.r.Intn(4) {
		case 1:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 2:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		case 3:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		for k := 0; k < g.r.Intn(4); k++ {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
		}
		for k := 0; k < g.r.Intn(4); k++ {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
		}
		st.Policies = append(st.Policies, np)
	}
	return st
}

func (g gen) peers() []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for i := 0; i < g.r.Intn(3); i++ {
		var p networkingv1.NetworkPolicyPeer
		switch g.r.Intn(4) {
		case 0:
			p.PodSelector = g.selector("app", "tier")
		case 1:
			p.NamespaceSelector = g.selector("team", "env")
		case 2:
			p.PodSelector = g.selector("app", "tier")
			p.NamespaceSelector = g.selector("team", "env")
		case 3:
			p.IPBlock = g.ipBlock()
		}
		out = append(out, p)
	}
	return out
}

func (g gen) ipBlock() *networkingv1.IPBlock {
	set := cidrs4
	if g.r.Intn(3) == 0 {
		set = cidrs6
	}
	c := netip.MustParsePrefix(set[g.r.Intn(len(set))])
	b := &networkingv1.IPBlock{CIDR: c.String()}
	// Excepts strictly inside the CIDR, as the API requires.
	for i := 0; i < g.r.Intn(3); i++ {
		bits := c.Bits() + 1 + g.r.Intn(c.Addr().BitLen()-c.Bits()+1)
		if bits > c.Addr().BitLen() || c.Bits() == c.Addr().BitLen() {
			continue
		}
		// a random address inside c, near its start so pods fall in it
		a := c.Addr().As16()
		last := 15
		a[last] |= byte(g.r.Intn(16))
		addr := netip.AddrFrom16(a)
		if c.Addr().Is4() {
			addr = addr.Unmap()
			b4 := c.Addr().As4()
			b4[3] |= byte(g.r.Intn(16))
			addr = netip.AddrFrom4(b4)
		}
		x, _ := addr.Prefix(bits)
		if c.Contains(x.Addr()) {
			b.Except = append(b.Except, x.String())
		}
	}
	return b
}

func (g gen) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for i := 0; i < g.r.Intn(3); i++ {
		var p networkingv1.NetworkPolicyPort
		if g.r.Intn(3) > 0 {
			pr := protoNames[g.r.Intn(len(protoNames))]
			p.Protocol = &pr
		}
		switch g.r.Intn(4) {
		case 0: // protocol only
		case 1:
			v := intstr.FromString(portNames[g.r.Intn(len(portNames))])
			p.Port = &v
		case 2:
			v := intstr.FromInt32(portNums[g.r.Intn(len(portNums))])
			p.Port = &v
		case 3:
			from := portNums[g.r.Intn(len(portNums))]
			v := intstr.FromInt32(from)
			end := from + int32(g.r.Intn(100))
			if g.r.Intn(4) == 0 {
				end = 65535
			}
			p.Port, p.EndPort = &v, &end
		}
		out = append(out, p)
	}
	return out
}

// probes are every pod address plus CIDR boundaries and strangers, with
// every protocol and boundary ports.
func (g gen) probes(st State) ([]netip.Addr, []int) {
	seen := map[netip.Addr]bool{}
	var addrs []netip.Addr
	add := func(a netip.Addr) {
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	for _, p := range st.Pods {
		for _, a := range PodAddrs(p) {
			add(a)
		}
	}
	for _, s := range append(append([]string{}, cidrs4...), cidrs6...) {
		c := netip.MustParsePrefix(s)
		add(c.Addr())
		add(lastAddr(c))
		if n := c.Addr().Next(); n.IsValid() && c.Contains(n) {
			add(n)
		}
	}
	for _, s := range []string{"8.8.8.8", "10.0.0.2", "10.0.0.5", "10.0.0.9", "10.0.0.14", "10.0.0.200", "10.1.0.1", "2001:db8::1", "fd00::2", "fd00::6", "fd00::1:0"} {
		add(netip.MustParseAddr(s))
	}
	ports := []int{1, 52, 53, 54, 79, 80, 81, 443, 8080, 8179, 9090, 9189, 65535}
	for i := 0; i < 3; i++ {
		ports = append(ports, 1+g.r.Intn(65535))
	}
	return addrs, ports
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As16()
	off := 0
	if p.Addr().Is4() {
		off = 96
	}
	for i := p.Bits() + off; i < 128; i++ {
		a[i/8] |= 1 << (7 - i%8)
	}
	out := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		return out.Unmap()
	}
	return out
}

// TestDifferential compares the compiled policies against the oracle on
// random cluster states. PODSCOPE_NETPOL_STATES=n runs n states (default
// 100); PODSCOPE_NETPOL_SEED fixes another seed (0: a random one).
func TestDifferential(t *testing.T) {
	states := 100
	if s := os.Getenv("PODSCOPE_NETPOL_STATES"); s != "" {
		states, _ = strconv.Atoi(s)
	}
	seed := int64(13)
	if s := os.Getenv("PODSCOPE_NETPOL_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
		if seed == 0 {
			seed = time.Now().UnixNano()
		}
	}
	t.Logf("seed %d, %d states", seed, states)
	g := gen{rand.New(rand.NewSource(seed))}
	checked, allowedN := 0, 0
	for n := 0; n < states; n++ {
		st := g.cluster()
		c := NewCompiler(st)
		o := oracle{st}
		addrs, ports := g.probes(st)
		for _, pod := range st.Pods {
			pol := c.PolicyFor(pod)
			if err := pol.Egress.Validate("egress"); err != nil && !isChainLimit(err) {
				t.Fatalf("state %d pod %s: egress does not validate: %v", n, pod.Name, err)
			}
			for _, dir := range []string{"ingress", "egress"} {
				entries := compileDir(t, pol, dir)
				for _, a := range addrs {
					for _, proto := range []string{"TCP", "UDP", "SCTP", "ICMP"} {
						for _, port := range ports {
							if proto == "ICMP" {
								if port != 1 {
									continue
								}
								port = 0
							}
							pr := probe{pod: pod, dir: dir, peer: a, proto: proto, port: port}
							want := o.allowed(pr)
							got := decideEntries(entries, pr)
							checked++
							if want {
								allowedN++
							}
							if got != want {
								t.Fatalf("state %d (seed %d): %s %s of %s/%s, peer %s %s/%d: oracle %v, compiled %v\n%s\npolicy: %+v",
									n, seed, dir, pr.proto, pod.Namespace, pod.Name, a, proto, port, want, got, dump(st), pol.Spec(dirOf(dir)))
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d probes, %d allowed", checked, allowedN)
	if allowedN == 0 || allowedN == checked {
		t.Fatalf("degenerate generator: %d of %d probes allowed", allowedN, checked)
	}
}

func isChainLimit(err error) bool {
	return err != nil && containsStr(err.Error(), "matches, more than")
}

func containsStr(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func dirOf(s string) policy.Direction {
	if s == "ingress" {
		return policy.Ingress
	}
	return policy.Egress
}

func dump(st State) string {
	s := ""
	for _, ns := range st.Namespaces {
		s += fmt.Sprintf("ns %s %v\n", ns.Name, ns.Labels)
	}
	for _, p := range st.Pods {
		s += fmt.Sprintf("pod %s/%s %v host=%v phase=%s ips=%v ports=%v\n", p.Namespace, p.Name, p.Labels, p.Spec.HostNetwork, p.Status.Phase, PodAddrs(p), p.Spec.Containers)
	}
	for _, np := range st.Policies {
		s += fmt.Sprintf("np %s/%s %s\n", np.Namespace, np.Name, np.Spec.String())
	}
	return s
}
