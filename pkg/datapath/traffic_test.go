package datapath

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
)

// podNet is a node netns and a pod netns joined by a veth: the host side
// (10.200.0.1) in the node, the pod side (10.200.0.2) in the pod.
type podNet struct {
	node, pod *node
	ifindex   int
}

func newPodNet(t *testing.T) *podNet {
	t.Helper()
	n, p := newNode(t), newNode(t)
	name := testenv.Name(t)
	var idx int
	n.do(func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "h"}, PeerName: name + "p"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		h, err := netlink.LinkByName(name + "h")
		if err != nil {
			return err
		}
		idx = h.Attrs().Index
		if err := netlink.AddrAdd(h, &netlink.Addr{IPNet: mustNet("10.200.0.1/24")}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(h); err != nil {
			return err
		}
		peer, err := netlink.LinkByName(name + "p")
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(peer, int(p.ns.Fd()))
	})
	p.do(func() error {
		peer, err := netlink.LinkByName(name + "p")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(peer, &netlink.Addr{IPNet: mustNet("10.200.0.2/24")}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return &podNet{node: n, pod: p, ifindex: idx}
}

func mustNet(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

// in runs f with sockets created in ns (they stay bound to it afterwards).
func in[T any](t *testing.T, n *node, f func() (T, error)) T {
	t.Helper()
	var v T
	if err := n.ns.Do(func(ns.NetNS) error {
		var err error
		v, err = f()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// sendUDP sends count datagrams of size bytes from the node to the pod's
// port and returns how many the pod received and the sender's port.
func (pn *podNet) sendUDP(t *testing.T, port, count, size int) (int, uint16) {
	t.Helper()
	return sendUDPTo(t, pn.node, pn.pod, "10.200.0.2", port, count, size)
}

// sendUDPTo sends count datagrams of size bytes from a socket in from to
// addr:port, listened on in to, and returns how many arrived and the
// sender's port.
func sendUDPTo(t *testing.T, from, to *node, addr string, port, count, size int) (int, uint16) {
	t.Helper()
	dst := net.JoinHostPort(addr, strconv.Itoa(port))
	l := in(t, to, func() (net.PacketConn, error) { return net.ListenPacket("udp4", dst) })
	defer l.Close()
	c := in(t, from, func() (net.Conn, error) { return net.Dial("udp4", dst) })
	defer c.Close()
	buf := make([]byte, size)
	for i := 0; i < count; i++ {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	rb := make([]byte, 65536)
	for got < count {
		_ = l.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, _, err := l.ReadFrom(rb); err != nil {
			break
		}
		got++
	}
	return got, uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func TestRealTraffic(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			pn := newPodNet(t)
			d := openTest(t)
			const pod = PodID(61)
			pol := policy.Policy{
				// Egress: only what conntrack lets out (replies), nothing new.
				Egress: policy.Spec{Default: policy.Deny},
				Ingress: policy.Spec{Default: policy.Allow, Rules: []policy.Rule{
					{CIDR: netip.MustParsePrefix("10.200.0.0/24"), Protocol: "udp", Ports: []policy.PortRange{{From: 5001, To: 5001}}, Action: policy.Deny},
				}},
			}
			if err := d.SetPolicy(pod, pol); err != nil {
				t.Fatal(err)
			}
			if mode == ModeTCX && pn.node.tcxRefused(d, pod, pn.ifindex) {
				return
			}
			pn.node.attach(d, pod, pn.ifindex, mode)

			// UDP into the pod: counted per flow to the byte (14 Ethernet +
			// 20 IPv4 + 8 UDP + payload per datagram).
			got, sport := pn.sendUDP(t, 5000, 10, 100)
			if got != 10 {
				t.Fatalf("pod received %d of 10 allowed datagrams", got)
			}
			var flow *Flow
			flows, err := d.Flows(pod)
			if err != nil {
				t.Fatal(err)
			}
			for i := range flows {
				if flows[i].Proto == "udp" && flows[i].Local == netip.MustParseAddrPort("10.200.0.2:5000") {
					flow = &flows[i]
				}
			}
			if flow == nil || flow.Remote != netip.AddrPortFrom(netip.MustParseAddr("10.200.0.1"), sport) ||
				flow.RxPackets != 10 || flow.RxBytes != 10*(14+20+8+100) || flow.Initiator != policy.Ingress || flow.Verdict != policy.Allow {
				t.Fatalf("udp flow %+v in %+v", flow, flows)
			}
			c, err := d.Counters(pod)
			if err != nil {
				t.Fatal(err)
			}
			if c.RxPackets < 10 || c.RxBytes < flow.RxBytes {
				t.Fatalf("counters %+v below the flow's %d bytes", c, flow.RxBytes)
			}

			// Denied port: nothing arrives, every datagram is a counted drop.
			before := c.DropsIngress
			if got, _ := pn.sendUDP(t, 5001, 3, 50); got != 0 {
				t.Fatalf("pod received %d datagrams on a denied port", got)
			}
			c, _ = d.Counters(pod)
			if c.DropsIngress-before != 3 {
				t.Fatalf("ingress drops went %d -> %d, want +3", before, c.DropsIngress)
			}

			// TCP into the pod under egress default deny: the replies pass.
			l := in(t, pn.pod, func() (net.Listener, error) { return net.Listen("tcp4", "10.200.0.2:8080") })
			defer l.Close()
			go func() {
				s, err := l.Accept()
				if err == nil {
					_, _ = s.Write([]byte("hello from the pod"))
					s.Close()
				}
			}()
			conn := in(t, pn.node, func() (net.Conn, error) { return net.DialTimeout("tcp4", "10.200.0.2:8080", 2*time.Second) })
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 64)
			nr, err := conn.Read(buf)
			conn.Close()
			if err != nil || string(buf[:nr]) != "hello from the pod" {
				t.Fatalf("reply of an allowed connection: %q %v", buf[:nr], err)
			}

			// A connection the pod opens is denied by egress default deny.
			nl := in(t, pn.node, func() (net.Listener, error) { return net.Listen("tcp4", "10.200.0.1:9090") })
			defer nl.Close()
			var dialErr error
			pn.pod.do(func() error {
				c, err := net.DialTimeout("tcp4", "10.200.0.1:9090", 300*time.Millisecond)
				if err == nil {
					c.Close()
				}
				dialErr = err
				return nil
			})
			if dialErr == nil {
				t.Fatal("the pod connected out under egress default deny")
			}
			if c, _ := d.Counters(pod); c.DropsEgress == 0 {
				t.Fatal("the pod's SYN was not counted as an egress drop")
			}
		})
	}
}

// Another CNI's TCX program on the pod's veth (Cilium in chaining mode
// attaches with TCX on 6.6+) that ends processing (TCX_PASS, which is
// TC_ACT_OK) must not hide the pod's packets from podscope: podscope's links
// go first on each hook, also when the other program was there before.
func TestTCXRunsBeforeOtherTCXPrograms(t *testing.T) {
	pn := newPodNet(t)
	d := openTest(t)
	const pod = PodID(62)
	if pn.node.tcxRefused(d, pod, pn.ifindex) {
		return
	}
	other, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pstest_pass", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, // TCX_PASS
	})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		pn.node.do(func() error {
			l, err := link.AttachTCX(link.TCXOptions{Interface: pn.ifindex, Program: other, Attach: at})
			if err == nil {
				t.Cleanup(func() { l.Close() })
			}
			return err
		})
	}
	pn.node.attach(d, pod, pn.ifindex, ModeTCX)
	ing, eg, err := d.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		at   ebpf.AttachType
		ours ebpf.ProgramID
	}{{ebpf.AttachTCXIngress, ing}, {ebpf.AttachTCXEgress, eg}} {
		var res *link.QueryResult
		pn.node.do(func() error {
			var err error
			res, err = link.QueryPrograms(link.QueryOptions{Target: pn.ifindex, Attach: x.at})
			return err
		})
		if len(res.Programs) != 2 || res.Programs[0].ID != x.ours {
			t.Fatalf("%v hook runs %+v, want podscope's program %d first of 2", x.at, res.Programs, x.ours)
		}
	}
	// Into the pod (host egress hook) and out of it (host ingress hook).
	if got, _ := pn.sendUDP(t, 5300, 10, 100); got != 10 {
		t.Fatalf("pod received %d of 10 datagrams", got)
	}
	if got, _ := sendUDPTo(t, pn.pod, pn.node, "10.200.0.1", 5301, 7, 100); got != 7 {
		t.Fatalf("node received %d of 7 datagrams", got)
	}
	flows, err := d.Flows(pod)
	if err != nil {
		t.Fatal(err)
	}
	var in5300, out5301 uint64
	for _, f := range flows {
		switch {
		case f.Proto == "udp" && f.Local.Port() == 5300:
			in5300 = f.RxPackets
		case f.Proto == "udp" && f.Remote.Port() == 5301:
			out5301 = f.TxPackets
		}
	}
	if in5300 != 10 || out5301 != 7 {
		t.Fatalf("podscope counted %d of 10 datagrams into the pod and %d of 7 out of it, behind a program that passes them", in5300, out5301)
	}
}
