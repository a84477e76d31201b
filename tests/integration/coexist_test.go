package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// bandwidthPlugin is the reference bandwidth plugin as the kubelet's
// kubernetes.io/{ingress,egress}-bandwidth annotations use it: limits come
// as runtime capability arguments. For a pod with an egress limit it puts
// an "ingress" qdisc with a redirect to an ifb device on the pod's host
// veth; for an ingress limit, a tbf qdisc as the veth's root.
var bandwidthPlugin = map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}}

// hostVethStats reads the kernel's own counters of p's host veth: what
// the pod sent is the veth's rx, what it received its tx.
func hostVethStats(t *testing.T, n *node, p *pod) (podTx, podRx uint64) {
	t.Helper()
	idx := hostIfindex(t, n, p)
	if err := n.inNode(func() error {
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			return err
		}
		s := l.Attrs().Statistics
		podTx, podRx = s.RxPackets, s.TxPackets
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return podTx, podRx
}

// Chained behind the bandwidth plugin with limits both ways: in tcx mode
// podscope counts every packet of the shaped pod, judged by the kernel's
// counters of the host veth; in tc mode, where the bandwidth plugin's
// "ingress" qdisc leaves no place for clsact, the pod starts unobserved with
// the reason, or is refused under failClosed. Never registered as observed
// while blind (what tc mode did before: 0 of 40 packets each way).
func TestBehindBandwidthPlugin(t *testing.T) {
	// 1 Gbit/s with a large burst: shaped (the qdiscs exist) but never
	// limiting this test's few packets.
	limits := map[string]any{"bandwidth": map[string]any{
		"ingressRate": 1_000_000_000, "ingressBurst": 100_000_000,
		"egressRate": 1_000_000_000, "egressBurst": 100_000_000,
	}}
	modes(t, func(t *testing.T, mode string) {
		n := newNode(t, nodeOpts{mode: mode, between: []map[string]any{bandwidthPlugin}})
		a, b := n.newPod("bw-a", nil), n.newPod("bw-b", nil)
		a.capArgs = limits
		n.mustAdd(a)
		n.mustAdd(b)
		reg, ok := n.registered(a)
		if !ok {
			t.Fatal("pod bw-a not registered")
		}
		if mode == "tc" {
			if !strings.Contains(reg.Unobserved, `"ingress" qdisc`) || reg.Mode != "" {
				t.Fatalf("tc mode behind an egress limit: registered %+v, want unobserved naming the \"ingress\" qdisc", reg)
			}
			// A repeated ADD (the runtime may retry) keeps it so, under the
			// same pod ID, with nothing in the datapath.
			if _, err := n.execPodscope(a, "ADD"); err != nil {
				t.Fatalf("repeated ADD: %v", err)
			}
			if again, ok := n.registered(a); !ok || again.ID != reg.ID || again.Unobserved == "" {
				t.Fatalf("after a repeated ADD: %+v, was %+v", again, reg)
			}
			if atts, err := attachmentsOf(n.root, reg.ID); err != nil || len(atts) != 0 {
				t.Fatalf("attachments of the unobserved pod: %+v %v", atts, err)
			}
			// The unshaped pod of the same node is observed as usual.
			if rb, ok := n.registered(b); !ok || rb.Unobserved != "" || string(rb.Mode) != "tc" {
				t.Fatalf("unshaped pod: %+v", rb)
			}
			return
		}
		if reg.Unobserved != "" || string(reg.Mode) != mode {
			t.Fatalf("bw-a registered %+v, want observed in mode %q", reg, mode)
		}
		const count, size = 40, 500
		if got, err := udpExchange(a, b, netip.AddrPortFrom(b.v4, 9100), 2, 10); err != nil || got != 2 {
			t.Fatalf("UDP warm-up: %d echoes, %v", got, err)
		}
		// Background IPv6 (MLD, router solicitations) can land between the
		// two reads of either side: a mismatch is retried twice.
		var msg string
		for attempt := 0; attempt < 3; attempt++ {
			before := n.counters(a)
			ktx0, krx0 := hostVethStats(t, n, a)
			got, err := udpExchange(a, b, netip.AddrPortFrom(b.v4, 9101), count, size)
			if err != nil || got != count {
				t.Fatalf("UDP: %d/%d echoes, err %v", got, count, err)
			}
			after := n.counters(a)
			ktx1, krx1 := hostVethStats(t, n, a)
			ours := [2]uint64{after.TxPackets - before.TxPackets, after.RxPackets - before.RxPackets}
			kernel := [2]uint64{ktx1 - ktx0, krx1 - krx0}
			if ours == kernel && ours[0] >= count && ours[1] >= count {
				msg = ""
				break
			}
			msg = fmt.Sprintf("pod bw-a sent/received %v packets by podscope, %v by the kernel's host veth counters (%d echoed datagrams)", ours, kernel, count)
			t.Log(msg)
		}
		if msg != "" {
			t.Error(msg)
		}
	})
}

// Under failClosed, tc mode behind an egress limit refuses the pod, naming
// the qdisc, and leaves no registry entry.
func TestBehindBandwidthPluginFailClosed(t *testing.T) {
	n := newNode(t, nodeOpts{mode: "tc", between: []map[string]any{bandwidthPlugin}, extra: map[string]any{"failClosed": true}})
	a := n.newPod("bw-fc", nil)
	a.capArgs = map[string]any{"bandwidth": map[string]any{"egressRate": 1_000_000_000, "egressBurst": 100_000_000}}
	err := n.add(a)
	defer n.del(a, a.netnsPath)
	if err == nil || !strings.Contains(err.Error(), `"ingress" qdisc`) {
		t.Fatalf("ADD under failClosed: %v, want a refusal naming the \"ingress\" qdisc", err)
	}
	if reg, ok := n.registered(a); ok {
		t.Fatalf("refused pod left registered: %+v", reg)
	}
}
