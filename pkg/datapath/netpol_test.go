package datapath

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
)

// bridgeNode is a node netns with a bridge (10.201.0.1/24, fd00:201::1/64)
// and pods in their own netns on it, like a bridge CNI's node; a "Service"
// is an nft DNAT rule in that node netns only.
type bridgeNode struct {
	*node
	br   string
	pods []*bridgePod
}

type bridgePod struct {
	id      PodID
	n       *node
	v4, v6  netip.Addr
	ifindex int // host side
}

const (
	clusterIP4 = "10.96.0.10"
	clusterIP6 = "fd00:96::10"
)

func newBridgeNode(t *testing.T) *bridgeNode {
	t.Helper()
	b := &bridgeNode{node: newNode(t), br: testenv.Name(t)}
	requireNetworkPolicy(t, b.node)
	var skip string
	err := b.ns.Do(func(ns.NetNS) error {
		if err := noDAD(); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: b.br}}
		if err := netlink.LinkAdd(br); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				// The qemu kernel matrix boots with only the modules its
				// suites load (no bridge): a kernel capability, like TCX.
				skip = fmt.Sprintf("this kernel cannot make a bridge (bridge module not loaded): %v", err)
				return nil
			}
			return err
		}
		if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
			skip = fmt.Sprintf("this kernel has no br_netfilter (module not loaded): %v", err)
			return nil
		}
		for _, a := range []string{"10.201.0.1/24", "fd00:201::1/64"} {
			if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: mustNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
				return err
			}
		}
		for _, s := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(s, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		t.Fatal(err)
	}
	if skip != "" {
		testenv.SkipKernelLacks(t, "%s", skip)
	}
	return b
}

// noDAD turns IPv6 duplicate address detection off in the current netns
// (for links made or moved in later): tentative link-local addresses would
// hold neighbour discovery up for a second.
func noDAD() error {
	for _, s := range []string{"all", "default"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+s+"/accept_dad", []byte("0"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// addPod makes a pod netns with 10.201.0.<n>/24 and fd00:201::<n>/64 on the
// bridge, default routes via the bridge.
func (b *bridgeNode) addPod(id PodID, n int) *bridgePod {
	t := b.t
	t.Helper()
	p := &bridgePod{id: id, n: newNode(t),
		v4: netip.MustParseAddr(fmt.Sprintf("10.201.0.%d", n)),
		v6: netip.MustParseAddr(fmt.Sprintf("fd00:201::%d", n))}
	host, idx := b.veth(0)
	p.ifindex = idx
	name := strings.TrimSuffix(host, "h")
	b.do(func() error {
		br, err := netlink.LinkByName(b.br)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: idx}}, br); err != nil {
			return err
		}
		peer, err := netlink.LinkByName(name + "p")
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(peer, int(p.n.ns.Fd()))
	})
	p.n.do(noDAD)
	p.n.do(func() error {
		peer, err := netlink.LinkByName(name + "p")
		if err != nil {
			return err
		}
		for _, a := range []string{p.v4.String() + "/24", p.v6.String() + "/64"} {
			if err := netlink.AddrAdd(peer, &netlink.Addr{IPNet: mustNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
				return err
			}
		}
		for _, l := range []netlink.Link{peer} {
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, gw := range []string{"10.201.0.1", "fd00:201::1"} {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
				return fmt.Errorf("route via %s: %w", gw, err)
			}
		}
		return nil
	})
	b.pods = append(b.pods, p)
	return p
}

// service makes clusterIP4:port and [clusterIP6]:port DNAT to backend's
// targetPort, with an nft rule in the node netns (which also makes
// conntrack active there, as kube-proxy does on a node).
func (b *bridgeNode) service(port int, backend *bridgePod, targetPort int) {
	t := b.t
	t.Helper()
	b.nft(fmt.Sprintf(`table inet pstest {
	chain pre {
		type nat hook prerouting priority -100;
		ip daddr %s tcp dport %d dnat ip to %s:%d
		ip6 daddr %s tcp dport %d dnat ip6 to [%s]:%d
	}
}
`, clusterIP4, port, backend.v4, targetPort, clusterIP6, port, backend.v6, targetPort))
}

// conntrack makes conntrack active in the node netns, as kube-proxy's NAT
// rules do on a node, without a Service.
func (b *bridgeNode) conntrack() {
	b.t.Helper()
	b.nft(`table inet pstestct {
	chain pre {
		type filter hook prerouting priority -150;
		ct state new counter
	}
}
`)
}

// nft loads rules into the node netns only.
func (b *bridgeNode) nft(rules string) {
	t := b.t
	t.Helper()
	nft := testenv.RequireTool(t, "nft")
	// Through our fd: a TempNetNS's Path names a thread that may be gone,
	// which would put the rule into the root netns.
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), b.ns.Fd())
	if st, err := os.Stat(path); err != nil || rootNetns == nil || os.SameFile(st, rootNetns) {
		t.Fatal("refusing to add nft rules to the root netns")
	}
	cmd := exec.Command("nsenter", "--net="+path, nft, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// rootNetns is the test process's netns, read before any test switches a
// thread into another.
var rootNetns = func() os.FileInfo {
	st, _ := os.Stat("/proc/self/ns/net")
	return st
}()

// listen serves TCP on the pod's addr:port, answering each connection with
// "ok", then echoing what it gets; closed at the end of the test.
func (p *bridgePod) listen(t *testing.T, a netip.Addr, port int) {
	t.Helper()
	l := in(t, p.n, func() (net.Listener, error) {
		return net.Listen("tcp", netip.AddrPortFrom(a, uint16(port)).String())
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := c.Write([]byte("ok")); err == nil {
					_, _ = io.Copy(c, c)
				}
			}()
		}
	}()
}

// dial connects from the pod to addr:port and reads the answer; an error
// when no connection within the timeout.
func (p *bridgePod) dial(t *testing.T, a string, port int) error {
	t.Helper()
	var derr error
	p.n.do(func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(a, fmt.Sprint(port)), 400*time.Millisecond)
		if err != nil {
			derr = err
			return nil
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 2)
		if _, err := c.Read(buf); err != nil || string(buf) != "ok" {
			derr = fmt.Errorf("reading answer: %q %v", buf, err)
		}
		return nil
	})
	return derr
}

// requireNetworkPolicy skips the test where the kernel cannot enforce
// NetworkPolicy, after checking the datapath says so the way the product
// reports it (ErrNoNetfilterLink): the qemu matrix runs this on 6.1.
func requireNetworkPolicy(t *testing.T, n *node) {
	t.Helper()
	var err error
	n.do(func() error { err = NetworkPolicySupported(); return nil })
	skipWithoutNetfilter(t, err)
	if err != nil {
		t.Fatalf("NetworkPolicySupported in a fresh netns: %v", err)
	}
}

func skipWithoutNetfilter(t testing.TB, supported error) {
	t.Helper()
	if errors.Is(supported, ErrNoNetfilterLink) || errors.Is(supported, ErrNoConntrack) {
		testenv.SkipKernelLacks(t, "kernel cannot enforce NetworkPolicy, as NetworkPolicySupported reports: %v", supported)
	}
}

func netpolSet(t *testing.T, egress, ingress policy.Spec) *PolicySet {
	t.Helper()
	s, err := NewPolicySet(policy.Policy{Egress: egress, Ingress: ingress})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func allowTCP(cidr string, port uint16) policy.Rule {
	return policy.Rule{CIDR: netip.MustParsePrefix(cidr), Protocol: "tcp", Ports: []policy.PortRange{{From: port, To: port}}, Action: policy.Allow}
}

func isolated(rules ...policy.Rule) policy.Spec {
	return policy.Spec{Default: policy.Deny, Rules: rules}
}

// netpolDatapath opens a datapath on a fresh root, attaches the TC programs
// to every pod and the NetworkPolicy hooks in the node netns.
func (b *bridgeNode) netpolDatapath(t *testing.T) (*Datapath, pins.Root) {
	t.Helper()
	root := testenv.BPFFSRoot(t)
	d, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, p := range b.pods {
		b.attach(d, p.id, p.ifindex, ModeAuto)
	}
	b.do(func() error { return AttachNetworkPolicyHooks(root) })
	t.Cleanup(func() {
		if err := DetachNetworkPolicyHooks(root); err != nil {
			t.Error(err)
		}
	})
	return d, root
}

func (d *Datapath) mustSetNetpol(t *testing.T, p *bridgePod, s *PolicySet) {
	t.Helper()
	if err := d.SetNetworkPolicy(p.id, []netip.Addr{p.v4, p.v6}, s); err != nil {
		t.Fatal(err)
	}
}

func TestNetworkPolicyIngressViaService(t *testing.T) {
	b := newBridgeNode(t)
	a, srv := b.addPod(71, 2), b.addPod(72, 3)
	d, _ := b.netpolDatapath(t)
	srv.listen(t, srv.v4, 8080)
	srv.listen(t, srv.v6, 8080)
	b.service(80, srv, 8080)

	for _, dst := range []string{clusterIP4, clusterIP6} {
		if err := a.dial(t, dst, 80); err != nil {
			t.Fatalf("no policy: %s:80 -> backend: %v", dst, err)
		}
	}
	// Ingress isolated, nothing allowed: via the Service and directly.
	d.mustSetNetpol(t, srv, netpolSet(t, policy.AllowAll(), isolated()))
	for _, dst := range []string{clusterIP4, clusterIP6, srv.v4.String(), srv.v6.String()} {
		port := 8080
		if strings.Contains(dst, "96") {
			port = 80
		}
		if err := a.dial(t, dst, port); err == nil {
			t.Fatalf("ingress isolated: %s:%d connected", dst, port)
		}
	}
	c, err := d.Counters(srv.id)
	if err != nil {
		t.Fatal(err)
	}
	if c.DropsIngress == 0 {
		t.Fatalf("ingress denials not counted as the destination's drops: %+v", c)
	}
	flows, _ := d.Flows(srv.id)
	found := false
	for _, f := range flows {
		if f.Local.Port() == 8080 && f.Remote.Addr() == a.v4 && f.Verdict == policy.Deny && f.DeniedBy == DeniedByNetworkPolicy {
			found = true
		}
	}
	if !found {
		t.Fatalf("no denied flow by networkpolicy for %s -> %s:8080 in %+v", a.v4, srv.v4, flows)
	}
	// Allowed on the pod's port: the rule is on the translated port 8080,
	// not the Service's 80.
	d.mustSetNetpol(t, srv, netpolSet(t, policy.AllowAll(), isolated(allowTCP(a.v4.String()+"/32", 8080), allowTCP(a.v6.String()+"/128", 8080))))
	for _, dst := range []string{clusterIP4, clusterIP6} {
		if err := a.dial(t, dst, 80); err != nil {
			t.Fatalf("ingress allowed on 8080 from the client: %s:80: %v", dst, err)
		}
	}
	d.mustSetNetpol(t, srv, netpolSet(t, policy.AllowAll(), isolated(allowTCP(a.v4.String()+"/32", 80), allowTCP(a.v6.String()+"/128", 80))))
	for _, dst := range []string{clusterIP4, clusterIP6} {
		if err := a.dial(t, dst, 80); err == nil {
			t.Fatalf("a rule on the Service port 80 let %s:80 through to 8080", dst)
		}
	}
}

// connect opens a TCP connection from the pod and reads the server's "ok";
// the connection stays open for the caller.
func (p *bridgePod) connect(t *testing.T, a netip.Addr, port int) net.Conn {
	t.Helper()
	c := in(t, p.n, func() (net.Conn, error) {
		return net.DialTimeout("tcp", netip.AddrPortFrom(a, uint16(port)).String(), time.Second)
	})
	t.Cleanup(func() { c.Close() })
	buf := make([]byte, 2)
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading the server's answer: %v", err)
	}
	return c
}

// echo sends b on an open connection and expects it back.
func echo(c net.Conn, b string) error {
	if _, err := c.Write([]byte(b)); err != nil {
		return err
	}
	buf := make([]byte, len(b))
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != b {
		return fmt.Errorf("echo %q, want %q", buf, b)
	}
	return nil
}

func TestNetworkPolicyEgressViaService(t *testing.T) {
	b := newBridgeNode(t)
	a, srv, other := b.addPod(81, 2), b.addPod(82, 3), b.addPod(83, 4)
	d, _ := b.netpolDatapath(t)
	for _, p := range []*bridgePod{srv, other} {
		p.listen(t, p.v4, 8080)
		p.listen(t, p.v6, 8080)
	}
	b.service(80, srv, 8080)

	// Egress allowed to the backend pod only: the ClusterIP is not in the
	// policy, its translation is.
	d.mustSetNetpol(t, a, netpolSet(t, isolated(allowTCP(srv.v4.String()+"/32", 8080), allowTCP(srv.v6.String()+"/128", 8080)), policy.AllowAll()))
	for _, dst := range []string{clusterIP4, clusterIP6} {
		if err := a.dial(t, dst, 80); err != nil {
			t.Fatalf("egress allowed to the backend: %s:80: %v", dst, err)
		}
	}
	for _, dst := range []string{other.v4.String(), other.v6.String()} {
		if err := a.dial(t, dst, 8080); err == nil {
			t.Fatalf("egress isolated: %s:8080 (another pod on the bridge) connected", dst)
		}
	}
	// Allowed to the ClusterIP and the Service port only: denied, since
	// the decision is on the translated destination.
	d.mustSetNetpol(t, a, netpolSet(t, isolated(allowTCP(clusterIP4+"/32", 80), allowTCP(clusterIP6+"/128", 80)), policy.AllowAll()))
	if err := a.dial(t, clusterIP4, 80); err == nil {
		t.Fatal("a rule on the ClusterIP let the connection through to the backend")
	}
	// The denial is on the flow the client's TC hook recorded, under the
	// address it sent to (the ClusterIP), and counted as the client's
	// egress drop, moved out of its transmitted packets.
	flows, err := d.Flows(a.id)
	if err != nil {
		t.Fatal(err)
	}
	var denied *Flow
	for i, f := range flows {
		if f.Remote == netip.MustParseAddrPort(clusterIP4+":80") && f.Verdict == policy.Deny {
			denied = &flows[i]
		}
	}
	if denied == nil || denied.DeniedBy != DeniedByNetworkPolicy || denied.Initiator != policy.Egress || denied.TxPackets == 0 {
		t.Fatalf("no egress flow to %s:80 denied by networkpolicy in %+v", clusterIP4, flows)
	}
	c, err := d.Counters(a.id)
	if err != nil {
		t.Fatal(err)
	}
	// Only this connection was denied to the ClusterIP since the change;
	// the earlier denials went to the other pod.
	var toOther uint64
	for _, f := range flows {
		if (f.Remote.Addr() == other.v4 || f.Remote.Addr() == other.v6) && f.DeniedBy == DeniedByNetworkPolicy {
			toOther += f.TxPackets
		}
	}
	if c.NetworkPolicyDropsEgress != denied.TxPackets+toOther || c.DropsEgress < c.NetworkPolicyDropsEgress || c.NetworkPolicyDropsIngress != 0 {
		t.Fatalf("counters %+v: want NetworkPolicy egress drops = the denied flows' %d+%d packets", c, denied.TxPackets, toOther)
	}
	drops, err := d.DropReasons()
	if err != nil {
		t.Fatal(err)
	}
	if got := drops[DropNetworkPolicy][policy.Egress]; got != c.NetworkPolicyDropsEgress {
		t.Fatalf("node-wide networkpolicy egress drops %d, the pod's %d", got, c.NetworkPolicyDropsEgress)
	}
}

// Replies of an allowed connection pass both ways whatever the policy of
// the replying side; a policy change applies to new connections only
// (established ones are not judged again).
func TestNetworkPolicyRepliesAndChanges(t *testing.T) {
	b := newBridgeNode(t)
	a, srv := b.addPod(91, 2), b.addPod(92, 3)
	d, _ := b.netpolDatapath(t)
	b.conntrack()
	for _, addr := range []netip.Addr{srv.v4, srv.v6} {
		srv.listen(t, addr, 8080)
	}
	allowA := isolated(allowTCP(a.v4.String()+"/32", 8080), allowTCP(a.v6.String()+"/128", 8080))
	// The server may open nothing (egress isolated), and takes only a.
	d.mustSetNetpol(t, srv, netpolSet(t, isolated(), allowA))
	var held []net.Conn
	for _, addr := range []netip.Addr{srv.v4, srv.v6} {
		c := a.connect(t, addr, 8080)
		if err := echo(c, "reply passes"); err != nil {
			t.Fatalf("%s: replies of an allowed connection: %v", addr, err)
		}
		held = append(held, c)
	}
	d.mustSetNetpol(t, srv, netpolSet(t, isolated(), isolated()))
	for i, addr := range []netip.Addr{srv.v4, srv.v6} {
		if err := a.dial(t, addr.String(), 8080); err == nil {
			t.Fatalf("%s: a new connection passed after ingress was closed", addr)
		}
		if err := echo(held[i], "still open"); err != nil {
			t.Fatalf("%s: an established connection was cut by the change: %v", addr, err)
		}
	}
	d.mustSetNetpol(t, srv, netpolSet(t, isolated(), allowA))
	for _, addr := range []netip.Addr{srv.v4, srv.v6} {
		if err := a.dial(t, addr.String(), 8080); err != nil {
			t.Fatalf("%s: reopened: %v", addr, err)
		}
	}
	// The server's own new connections stay denied (egress isolated).
	a.listen(t, a.v4, 9090)
	if err := srv.dial(t, a.v4.String(), 9090); err == nil {
		t.Fatal("the server opened a connection under egress isolation")
	}
}

// Without a conntrack entry nothing is judged (see bpf/netpol.c): the
// packets pass and are counted as untracked, so a node whose netns has no
// conntrack shows it instead of silently enforcing nothing.
func TestNetworkPolicyUntrackedPasses(t *testing.T) {
	b := newBridgeNode(t)
	a, srv := b.addPod(101, 2), b.addPod(102, 3)
	d, _ := b.netpolDatapath(t)
	srv.listen(t, srv.v4, 8080)
	d.mustSetNetpol(t, srv, netpolSet(t, policy.AllowAll(), isolated()))
	if err := a.dial(t, srv.v4.String(), 8080); err != nil {
		t.Fatalf("without conntrack in the netns: %v", err)
	}
	st, err := d.NetworkPolicyStats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Untracked == 0 || st.Judged != 0 {
		t.Fatalf("stats %+v: want untracked packets and nothing judged", st)
	}
	b.conntrack()
	if err := a.dial(t, srv.v4.String(), 8080); err == nil {
		t.Fatal("with conntrack active the isolated pod was reached")
	}
	if st, _ := d.NetworkPolicyStats(); st.Judged == 0 {
		t.Fatalf("stats %+v: nothing judged", st)
	}
}

// The maps behind the API, without traffic: endpoints, references, shared
// sets counted over both kinds of users, reuse of an address, RemovePod.
func TestNetworkPolicyState(t *testing.T) {
	d, err := Open(testenv.BPFFSRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const podA, podB = PodID(111), PodID(112)
	ipA4, ipA6 := netip.MustParseAddr("10.202.0.2"), netip.MustParseAddr("fd00:202::2")
	pol := policy.Policy{Egress: policy.AllowAll(), Ingress: isolated(allowTCP("10.0.0.0/8", 80))}
	s, err := NewPolicySet(pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetNetworkPolicy(podA, []netip.Addr{ipA4, ipA6, ipA4}, s); err != nil {
		t.Fatal(err)
	}
	// The same content as podscope policy of pod B: one set, two users.
	if err := d.SetPolicy(podB, pol); err != nil {
		t.Fatal(err)
	}
	sets, err := d.PolicySets()
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 1 || sets[0].Users != 2 {
		t.Fatalf("sets %+v: want one set used by A's NetworkPolicy and B's policy", sets)
	}
	refs, err := d.NetworkPolicies()
	if err != nil {
		t.Fatal(err)
	}
	want := NetworkPolicyRef{Addrs: []netip.Addr{ipA4, ipA6}, Set: sets[0].ID, Sum: s.Sum()}
	if got := refs[podA]; len(refs) != 1 || got.Set != want.Set || got.Sum != want.Sum || fmt.Sprint(got.Addrs) != fmt.Sprint(want.Addrs) {
		t.Fatalf("NetworkPolicies = %+v, want {%v: %+v}", refs, podA, want)
	}
	endpoint := func(a netip.Addr) (tcEndpoint, bool) {
		var v tcEndpoint
		err := d.objs.NetpolEndpoints.Lookup(endpointKey(a), &v)
		return v, err == nil
	}
	if v, ok := endpoint(ipA6); !ok || v.Pod != uint32(podA) || v.Set != sets[0].ID {
		t.Fatalf("endpoint %s = %+v %v", ipA6, v, ok)
	}
	// Pod B gets A's IPv4 address (A's removal not seen yet), with no
	// isolation (set 0); then A changes to only its IPv6 address.
	allow, _ := NewPolicySet(policy.Policy{Egress: policy.AllowAll(), Ingress: policy.AllowAll()})
	if err := d.SetNetworkPolicy(podB, []netip.Addr{ipA4}, allow); err != nil {
		t.Fatal(err)
	}
	if err := d.SetNetworkPolicy(podA, []netip.Addr{ipA6}, s); err != nil {
		t.Fatal(err)
	}
	if v, ok := endpoint(ipA4); !ok || v.Pod != uint32(podB) || v.Set != 0 {
		t.Fatalf("A's address change took B's endpoint: %+v %v", v, ok)
	}
	if refs, _ := d.NetworkPolicies(); refs[podB].Sum != allow.Sum() {
		t.Fatalf("B's ref %+v: the allow-all set reports its sum", refs[podB])
	}
	// A's pod goes (CNI DEL): its endpoint and reference go, the set stays
	// for B's policy; then B's policy goes and the set with it.
	if err := d.RemovePod(podA); err != nil {
		t.Fatal(err)
	}
	if _, ok := endpoint(ipA6); ok {
		t.Fatal("RemovePod left the pod's NetworkPolicy endpoint")
	}
	if sets, _ := d.PolicySets(); len(sets) != 1 || sets[0].Users != 1 {
		t.Fatalf("after A: sets %+v", sets)
	}
	if err := d.RemovePod(podB); err != nil {
		t.Fatal(err)
	}
	if sets, _ := d.PolicySets(); len(sets) != 0 {
		t.Fatalf("after B: sets %+v", sets)
	}
	if _, ok := endpoint(ipA4); ok {
		t.Fatal("RemovePod left B's endpoint")
	}
	if refs, _ := d.NetworkPolicies(); len(refs) != 0 {
		t.Fatalf("references left: %+v", refs)
	}
	// nil: not selected.
	if err := d.SetNetworkPolicy(podA, []netip.Addr{ipA4}, s); err != nil {
		t.Fatal(err)
	}
	if err := d.SetNetworkPolicy(podA, nil, nil); err != nil {
		t.Fatal(err)
	}
	if sets, _ := d.PolicySets(); len(sets) != 0 {
		t.Fatalf("a nil set left %+v", sets)
	}
}

// A full endpoint map is a clear error and the pod keeps what it had.
func TestNetworkPolicyEndpointMapFull(t *testing.T) {
	testSpecHook = func(spec *ebpf.CollectionSpec) { spec.Maps[tcMapNetpolEndpoints].MaxEntries = 3 }
	defer func() { testSpecHook = nil }()
	d, err := Open(testenv.BPFFSRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s := netpolSet(t, policy.AllowAll(), isolated())
	addrs := []netip.Addr{netip.MustParseAddr("10.203.0.1"), netip.MustParseAddr("10.203.0.2")}
	if err := d.SetNetworkPolicy(1, addrs, s); err != nil {
		t.Fatal(err)
	}
	err = d.SetNetworkPolicy(2, []netip.Addr{netip.MustParseAddr("10.203.0.3"), netip.MustParseAddr("10.203.0.4")}, s)
	if !errors.Is(err, ErrEndpointMapFull) {
		t.Fatalf("4 addresses into a map of 3: %v", err)
	}
	refs, _ := d.NetworkPolicies()
	if _, ok := refs[2]; ok || len(refs) != 1 {
		t.Fatalf("references after the failure: %+v", refs)
	}
	if sets, _ := d.PolicySets(); len(sets) != 1 || sets[0].Users != 1 {
		t.Fatalf("sets after the failure: %+v", sets)
	}
	n := 0
	var k tcEndpointKey
	var v tcEndpoint
	for it := d.objs.NetpolEndpoints.Iterate(); it.Next(&k, &v); n++ {
		if v.Pod != 1 {
			t.Fatalf("the failed pod left endpoint %+v", v)
		}
	}
	if n != 2 {
		t.Fatalf("%d endpoints, want pod 1's 2", n)
	}
}

// Attach is idempotent and keeps its pinned links; detach removes them;
// Cleanup detaches them too.
func TestNetworkPolicyHooksPinned(t *testing.T) {
	n := newNode(t)
	requireNetworkPolicy(t, n)
	root := testenv.BPFFSRoot(t)
	ids := func() []link.ID {
		m, _ := netpolLinkPins(root, "")
		var out []link.ID
		for _, p := range m {
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				t.Fatal(err)
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, info.ID)
		}
		return out
	}
	n.do(func() error { return AttachNetworkPolicyHooks(root) })
	first := ids()
	if len(first) != 2 {
		t.Fatalf("links %v, want ipv4 and ipv6", first)
	}
	n.do(func() error { return AttachNetworkPolicyHooks(root) })
	if again := ids(); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Fatalf("a second attach replaced the links: %v -> %v", first, again)
	}
	n.do(func() error { return DetachNetworkPolicyHooks(root) })
	if left := ids(); len(left) != 0 {
		t.Fatalf("links left after detach: %v", left)
	}
	// The kernel frees a link's id from a work queue after its last
	// reference: give it a moment.
	for _, id := range first {
		for i := 0; ; i++ {
			l, err := link.NewFromID(id)
			if err != nil {
				break
			}
			l.Close()
			if i == 50 {
				t.Fatalf("link %d still exists a second after detach", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	n.do(func() error { return AttachNetworkPolicyHooks(root) })
	if err := Cleanup(root); err != nil {
		t.Fatal(err)
	}
	if left := ids(); len(left) != 0 {
		t.Fatalf("links left after cleanup: %v", left)
	}
}

// netpolProg loads the NetworkPolicy program against d's maps, or skips
// where the kernel has no netfilter programs (NetworkPolicySupported says
// why, as the product reports it).
func netpolProg(t testing.TB, d *Datapath) *ebpf.Program {
	t.Helper()
	skipWithoutNetfilter(t, NetworkPolicySupported())
	p, err := d.loadNetpol()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// BPF_PROG_TEST_RUN gives a netfilter program an skb without a conntrack
// entry (it cannot carry one), so prog.Run exercises the untracked path:
// the packet passes and is counted; even a pod isolated in both directions
// is not judged there. The judging itself is tested on real traffic.
func TestNetpolProgRunUntracked(t *testing.T) {
	d := openForRun(t)
	prog := netpolProg(t, d)
	s := netpolSet(t, isolated(), isolated())
	if err := d.SetNetworkPolicy(testPod, []netip.Addr{netip.MustParseAddr(podIP)}, s); err != nil {
		t.Fatal(err)
	}
	pkt := ipv4(podIP, "10.0.0.4", 17, udpHdr(40000, 53, 64))[14:] // LOCAL_OUT: no Ethernet header
	for i := 0; i < 3; i++ {
		ret, err := prog.Run(&ebpf.RunOptions{Data: pkt})
		if err != nil {
			t.Fatal(err)
		}
		if ret != 1 { // NF_ACCEPT
			t.Fatalf("untracked packet: verdict %d, want NF_ACCEPT", ret)
		}
	}
	if st, err := d.NetworkPolicyStats(); err != nil || st.Untracked != 3 || st.Judged != 0 {
		t.Fatalf("stats %+v %v: want 3 untracked, none judged", st, err)
	}
}

// BenchmarkNetpolProgRun is the NetworkPolicy program's cost on a packet
// that is not judged, the path of every established packet crossing
// PREROUTING. BPF_PROG_TEST_RUN cannot attach a conntrack entry, so this is
// the untracked path: the same two loads (ctx->skb, skb->_nfct) and branch
// as an established packet, plus one per-CPU counter update: an upper
// bound of the established path.
func BenchmarkNetpolProgRun(b *testing.B) {
	d := openForRun(b)
	prog := netpolProg(b, d)
	pkt := ipv4(podIP, "10.0.0.4", 6, udpHdr(40000, 443, 64))[14:]
	ret, per, err := prog.Benchmark(pkt, b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	if ret != 1 {
		b.Fatalf("verdict %d, want NF_ACCEPT", ret)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
}

// NetworkPolicySupported agrees with cilium/ebpf's own probe of the program
// type (the outside oracle): on a kernel without netfilter programs (6.1 in
// the qemu matrix) it names the reason and attaching fails with the same
// error; otherwise, in a fresh netns (bridge-nf-call-* default 1), it is nil.
func TestNetworkPolicySupported(t *testing.T) {
	n := newNode(t)
	var supported, attach error
	root := testenv.BPFFSRoot(t)
	n.do(func() error {
		supported = NetworkPolicySupported()
		attach = AttachNetworkPolicyHooks(root)
		return nil
	})
	defer func() { _ = DetachNetworkPolicyHooks(root) }()
	if err := features.HaveProgramType(ebpf.Netfilter); err != nil {
		if !errors.Is(err, ebpf.ErrNotSupported) {
			t.Fatalf("cilium/ebpf's probe: %v", err)
		}
		if !errors.Is(supported, ErrNoNetfilterLink) || !errors.Is(attach, ErrNoNetfilterLink) {
			t.Fatalf("kernel without netfilter programs: NetworkPolicySupported = %v, AttachNetworkPolicyHooks = %v; want ErrNoNetfilterLink", supported, attach)
		}
		t.Logf("as expected on this kernel: %v", supported)
		return
	}
	// Conntrack's types where the kernel keeps them: vmlinux, or the
	// module (the qemu matrix boots without nf_conntrack loaded).
	k, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var conn *btf.Struct
	if k.TypeByName("nf_conn", &conn) != nil {
		if _, err := btf.LoadKernelModuleSpec("nf_conntrack"); err != nil {
			if !errors.Is(supported, ErrNoConntrack) || !errors.Is(attach, ErrNoConntrack) {
				t.Fatalf("kernel without conntrack types: NetworkPolicySupported = %v, AttachNetworkPolicyHooks = %v; want ErrNoConntrack", supported, attach)
			}
			t.Logf("as expected on this kernel: %v", supported)
			return
		}
	}
	if supported != nil || attach != nil {
		t.Fatalf("kernel with netfilter programs: NetworkPolicySupported = %v, AttachNetworkPolicyHooks = %v", supported, attach)
	}
	// br_netfilter off for IPv6 in this netns: reported.
	var noBrNetfilter error
	n.do(func() error {
		path := "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
		if _, err := os.Stat(path); err != nil {
			noBrNetfilter = err
			return nil
		}
		if err := os.WriteFile(path, []byte("0"), 0o644); err != nil {
			return err
		}
		if err := NetworkPolicySupported(); !errors.Is(err, ErrBridgeNotFiltered) || !strings.Contains(err.Error(), "ip6tables") {
			t.Errorf("bridge-nf-call-ip6tables=0: %v", err)
		}
		return nil
	})
	if noBrNetfilter != nil {
		t.Logf("no br_netfilter in this kernel to turn off: %v", noBrNetfilter)
	}
}

// A node upgraded from a podscope whose drop_reasons had 2 entries (no
// DROP_NETPOL): the next Open by this build grows it, keeping the counts.
func TestDropReasonsGrowOnUpgrade(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	testSpecHook = func(spec *ebpf.CollectionSpec) { spec.Maps[tcMapDropReasons].MaxEntries = 2 }
	old, err := Open(root)
	testSpecHook = nil
	if err != nil {
		t.Fatal(err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	per := make([]tcDropCounts, ncpu)
	per[0].Packets = [2]uint64{5, 7}
	if err := old.objs.DropReasons.Put(uint32(DropOpaque), per); err != nil {
		t.Fatal(err)
	}
	old.Close()
	// Another build's programs: this build finds no program pin of its own.
	for _, h := range hooks {
		if err := os.Rename(root.Pin(Owner, progPin(h)), root.Pin(Owner, progPin(h)+"x")); err != nil {
			t.Fatal(err)
		}
	}
	// A reader of this build reads the old map as it is.
	r, err := OpenPinned(root)
	if err != nil {
		t.Fatalf("reader on the old drop_reasons: %v", err)
	}
	got, err := r.DropReasons()
	r.Close()
	if err != nil || got[DropOpaque] != [2]uint64{5, 7} {
		t.Fatalf("reader: %v %v", got, err)
	}
	d, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if n := d.objs.DropReasons.MaxEntries(); n != 3 {
		t.Fatalf("drop_reasons holds %d reasons after the upgrade, want 3", n)
	}
	got, err = d.DropReasons()
	if err != nil || got[DropOpaque] != [2]uint64{5, 7} || got[DropNetworkPolicy] != [2]uint64{} {
		t.Fatalf("after the upgrade: %v %v", got, err)
	}
}

// Pins written by a podscope from before NetworkPolicy (no netpol maps):
// a reader of this build still opens them, with those maps empty; the
// next Open creates them.
func TestReaderOnPinsWithoutNetworkPolicyMaps(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	d, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, m := range []string{tcMapNetpolEndpoints, tcMapPodNetpol, tcMapNetpolDrops, tcMapNetpolStats} {
		if err := os.Remove(root.Pin(Owner, m)); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range hooks { // another build's programs
		if err := os.Rename(root.Pin(Owner, progPin(h)), root.Pin(Owner, progPin(h)+"x")); err != nil {
			t.Fatal(err)
		}
	}
	r, err := OpenPinned(root)
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	refs, err := r.NetworkPolicies()
	r.Close()
	if err != nil || len(refs) != 0 {
		t.Fatalf("reader's NetworkPolicies: %v %v", refs, err)
	}
	d, err = Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := os.Stat(root.Pin(Owner, tcMapNetpolEndpoints)); err != nil {
		t.Fatalf("Open did not create the NetworkPolicy maps: %v", err)
	}
}
