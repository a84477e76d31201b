package integration

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// modes runs f once per attach mode, each on its own node.
func modes(t *testing.T, f func(t *testing.T, mode string)) {
	for _, m := range []string{"tcx", "tc"} {
		t.Run(m, func(t *testing.T) { f(t, m) })
	}
}

// Per-packet overhead podscope counts: the whole L2 frame as TC sees it on
// the host veth (skb->len) = Ethernet header 14 + IP header (20 v4, 40 v6)
// + L4 header (8 UDP) + payload.
const (
	ethHdr  = 14
	udp4Hdr = 20 + 8
	udp6Hdr = 40 + 8
)

func TestTwoPodsExchangeAndCounters(t *testing.T) {
	modes(t, func(t *testing.T, mode string) {
		n := newNode(t, nodeOpts{mode: mode})
		a, b := n.newPod("pod-a", nil), n.newPod("pod-b", nil)
		n.mustAdd(a)
		n.mustAdd(b)
		if ra, ok := n.registered(a); !ok || string(ra.Mode) != mode {
			t.Fatalf("pod-a registered %v with mode %q, want %q", ok, ra.Mode, mode)
		}

		// TCP over v4 and v6, b -> a, and the answer back.
		for _, dst := range []netip.Addr{a.v4, a.v6} {
			l, totals, err := tcpSink(a, dst, 8080)
			if err != nil {
				t.Fatal(err)
			}
			if err := tcpSend(b, netip.AddrPortFrom(dst, 8080), 100000, 3*time.Second); err != nil {
				t.Fatalf("TCP %s: %v", dst, err)
			}
			if got := <-totals; got != 100000 {
				t.Fatalf("TCP %s: sink got %d bytes, want 100000", dst, got)
			}
			l.Close()
		}
		// UDP over v4 and v6, a -> b with echo; exact counter deltas.
		for _, tc := range []struct {
			dst netip.Addr
			hdr int
		}{{b.v4, udp4Hdr}, {b.v6, udp6Hdr}} {
			const count, size = 50, 1000
			// Warm neighbour caches so no ARP/ND lands inside the measured window.
			if got, err := udpExchange(a, b, netip.AddrPortFrom(tc.dst, 9000), 2, 10); err != nil || got != 2 {
				t.Fatalf("UDP warm-up %s: %d echoes, %v", tc.dst, got, err)
			}
			// Exact per-flow counts from the flow table.
			got, local, err := udpExchangeLocal(a, b, netip.AddrPortFrom(tc.dst, 9001), count, size)
			if err != nil || got != count {
				t.Fatalf("UDP %s: %d/%d echoes, err %v", tc.dst, got, count, err)
			}
			frame := uint64(ethHdr + tc.hdr + size)
			fl := n.flow(a, "udp", local, netip.AddrPortFrom(tc.dst, 9001))
			if fl == nil {
				t.Fatalf("UDP %s: no flow %s -> %s:9001 in pod-a's flow table", tc.dst, local, tc.dst)
			}
			if fl.TxPackets != count || fl.TxBytes != count*frame || fl.RxPackets != count || fl.RxBytes != count*frame {
				t.Errorf("UDP %s flow: tx %d pkts %d bytes, rx %d pkts %d bytes; want %d pkts %d bytes (= %d-byte frames) each way",
					tc.dst, fl.TxPackets, fl.TxBytes, fl.RxPackets, fl.RxBytes, count, count*frame, frame)
			}
			// Pod totals: the same exact deltas. Background IPv6 (MLD, router
			// solicitations) can land in the window, so a mismatch is retried
			// twice; a counting error fails every attempt.
			var msg string
			for attempt := 0; attempt < 3; attempt++ {
				before := n.counters(a)
				got, err := udpExchange(a, b, netip.AddrPortFrom(tc.dst, 9002), count, size)
				if err != nil || got != count {
					t.Fatalf("UDP %s: %d/%d echoes, err %v", tc.dst, got, count, err)
				}
				after := n.counters(a)
				d := [4]uint64{after.TxPackets - before.TxPackets, after.TxBytes - before.TxBytes,
					after.RxPackets - before.RxPackets, after.RxBytes - before.RxBytes}
				want := [4]uint64{count, count * frame, count, count * frame}
				if d == want {
					msg = ""
					break
				}
				msg = fmt.Sprintf("UDP %s: pod counter deltas tx %d pkts %d bytes, rx %d pkts %d bytes; want %v", tc.dst, d[0], d[1], d[2], d[3], want)
				t.Log(msg)
			}
			if msg != "" {
				t.Error(msg)
			}
		}
	})
}

// The harness itself, without podscope: bridge + host-local pods talk. If
// this fails, every podscope test below would fail for a reason not ours.
func TestBridgeAloneBaseline(t *testing.T) {
	n := newNode(t, nodeOpts{noPodscope: true})
	a, b := n.newPod("base-a", nil), n.newPod("base-b", nil)
	n.mustAdd(a)
	n.mustAdd(b)
	if !a.v4.Is4() || !a.v6.Is6() {
		t.Fatalf("pod-a got %v / %v, want a v4 and a v6 address", a.v4, a.v6)
	}
	l, totals, err := tcpSink(a, a.v6, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := tcpSend(b, netip.AddrPortFrom(a.v6, 8080), 1000, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := <-totals; got != 1000 {
		t.Fatalf("got %d bytes", got)
	}
	if got, err := udpExchange(b, a, netip.AddrPortFrom(a.v4, 9000), 5, 100); err != nil || got != 5 {
		t.Fatalf("UDP: %d/5 echoes, %v", got, err)
	}
}
