package integration

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// networkPolicy is the conflist's policy: pods may open TCP to port 8080 of
// the node's pod subnets and nothing else (ICMPv6 on the subnet and
// link-local/multicast is allowed so IPv6 neighbour discovery works — the
// datapath treats ND like any ICMPv6). Ingress stays allow-all.
func networkPolicy(n *node) string {
	return fmt.Sprintf(`{"egress":{"default":"deny","rules":[
	  {"cidr":%[1]q,"protocol":"tcp","ports":["8080"],"action":"allow"},
	  {"cidr":%[2]q,"protocol":"tcp","ports":["8080"],"action":"allow"},
	  {"cidr":%[2]q,"protocol":"icmpv6","action":"allow"},
	  {"cidr":"fe80::/10","protocol":"icmpv6","action":"allow"},
	  {"cidr":"ff02::/16","protocol":"icmpv6","action":"allow"}]}}`, n.v4, n.v6)
}

func TestPolicyEnforced(t *testing.T) {
	modes(t, func(t *testing.T, mode string) {
		// The subnets are only known once the node exists: build it, then
		// rebuild its conflist with the policy.
		n := newNode(t, nodeOpts{mode: mode})
		n.setPolicy(t, networkPolicy(n))

		client := n.newPod("pol-client", nil)
		server := n.newPod("pol-server", nil)
		// Annotation: this pod's egress is allow-all, replacing the network's.
		free := n.newPod("pol-free", map[string]string{"podscope.io/egress": `{"default":"allow"}`})
		// Annotation: this pod accepts nothing (ingress default deny).
		closed := n.newPod("pol-closed", map[string]string{"podscope.io/ingress": `{"default":"deny"}`})
		for _, p := range []*pod{client, server, free, closed} {
			n.mustAdd(p)
		}
		for _, dst := range []netip.Addr{server.v4, server.v6} {
			for _, port := range []int{8080, 9090} {
				l, totals, err := tcpSink(server, dst, port)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				go func() {
					for range totals {
					}
				}()
			}
			// Allowed: client -> server:8080. The server's egress is default
			// deny too: its SYN-ACKs and data replies pass only because the
			// connection was allowed the other way (stateful).
			if err := tcpSend(client, netip.AddrPortFrom(dst, 8080), 20000, 3*time.Second); err != nil {
				t.Errorf("allowed TCP %s:8080 failed: %v", dst, err)
			}
			// Denied by the network's egress default.
			if err := tcpSend(client, netip.AddrPortFrom(dst, 9090), 10, time.Second); err == nil {
				t.Errorf("TCP %s:9090 should be denied by the network's egress policy", dst)
			}
			// The annotation replaces the network egress policy for free.
			if err := tcpSend(free, netip.AddrPortFrom(dst, 9090), 10, 3*time.Second); err != nil {
				t.Errorf("pod with egress annotation allow-all: TCP %s:9090 failed: %v", dst, err)
			}
		}
		// UDP is not in the allowed rules either.
		if got, err := udpExchange(client, server, netip.AddrPortFrom(server.v4, 9000), 1, 10); got != 0 {
			t.Errorf("denied UDP got %d echoes (%v)", got, err)
		}
		// The closed pod's ingress annotation denies even 8080.
		l, _, err := tcpSink(closed, closed.v4, 8080)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := tcpSend(free, netip.AddrPortFrom(closed.v4, 8080), 10, time.Second); err == nil {
			t.Error("pod with ingress annotation default deny accepted a connection")
		}
		if c := n.counters(client); c.DropsEgress == 0 {
			t.Errorf("client: denied packets not counted as egress drops: %+v", c)
		}
		if c := n.counters(closed); c.DropsIngress == 0 {
			t.Errorf("closed pod: denied packets not counted as ingress drops: %+v", c)
		}
		// CHECK compares the enforced policy with config + annotations.
		for _, p := range []*pod{client, free, closed} {
			if err := n.check(p); err != nil {
				t.Errorf("CHECK %s: %v", p.name, err)
			}
		}
	})
}

// A bad annotation fails ADD with code 7 naming it, and nothing is attached.
func TestBadAnnotationAttachesNothing(t *testing.T) {
	n := newNode(t, nodeOpts{})
	p := n.newPod("bad-ann", map[string]string{"podscope.io/egress": `{"default":"allow","rules":[{"cidr":"10.0.0.0/33","action":"deny"}]}`})
	err := n.add(p)
	if err == nil {
		n.t.Cleanup(func() { _ = n.del(p, p.netnsPath) })
		t.Fatal("ADD with an invalid annotation succeeded")
	}
	if !strings.Contains(err.Error(), "podscope.io/egress") {
		t.Errorf("error does not name the annotation: %v", err)
	}
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("ADD error %v (%T): want a CNI error with code %d (invalid network config)", err, err, types.ErrInvalidNetworkConfig)
	}
	t.Logf("ADD error: %v", err)
	st, err := readPins(n.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.links) != 0 || len(st.nonEmptyMaps()) != 0 {
		t.Errorf("a failed ADD left links %v / map entries %v", st.links, st.nonEmptyMaps())
	}
}
