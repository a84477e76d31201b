package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

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
	b.do(func() error {
		if err := noDAD(); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: b.br}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
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
	name := testenv.Name(t)
	b.do(func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "h"}, PeerName: name + "p"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		h, err := netlink.LinkByName(name + "h")
		if err != nil {
			return err
		}
		p.ifindex = h.Attrs().Index
		br, err := netlink.LinkByName(b.br)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(h, br); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(h); err != nil {
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
	nft := testenv.RequireTool(t, "nft")
	rules := fmt.Sprintf(`table inet pstest {
	chain pre {
		type nat hook prerouting priority -100;
		ip daddr %s tcp dport %d dnat ip to %s:%d
		ip6 daddr %s tcp dport %d dnat ip6 to [%s]:%d
	}
}
`, clusterIP4, port, backend.v4, targetPort, clusterIP6, port, backend.v6, targetPort)
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
// "ok"; closed at the end of the test.
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
			_, _ = c.Write([]byte("ok"))
			c.Close()
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
	if errors.Is(err, ErrNoNetfilterLink) {
		t.Skipf("kernel cannot enforce NetworkPolicy, as NetworkPolicySupported reports: %v", err)
	}
	if err != nil {
		t.Fatalf("NetworkPolicySupported in a fresh netns: %v", err)
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
	requireNetworkPolicy(t, b.node)
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
