package datapath

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
)

// manyCIDRs returns n distinct /32s in 10.0.0.0/8 with alternating actions,
// and one /8 above them, so lookups walk a deep trie.
func manyCIDRs(n int) policy.Spec {
	s := policy.Spec{Default: policy.Deny}
	s.Rules = append(s.Rules, policy.Rule{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Protocol: "tcp", Ports: []policy.PortRange{{From: 443, To: 443}}, Action: policy.Allow})
	for i := 0; len(s.Rules) < n; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		act := policy.Deny
		if i%2 == 0 {
			act = policy.Allow
		}
		s.Rules = append(s.Rules, policy.Rule{CIDR: netip.PrefixFrom(a, 32), Protocol: "udp", Ports: []policy.PortRange{{From: 53, To: 53}}, Action: act})
	}
	return s
}

// BenchmarkProgRun measures the program per packet (BPF_PROG_TEST_RUN, the
// kernel's own timing) with 10 and 100,000 CIDRs in the pod's egress policy:
// "policy" runs a packet that is denied, so every run does the LPM lookup and
// the rule scan; "established" runs a packet of an allowed flow (conntrack
// hit, no policy lookup); both also update the flow table and counters.
func BenchmarkProgRun(b *testing.B) {
	for _, n := range []int{0, 10, 100000} {
		b.Run(fmt.Sprintf("cidrs=%d", n), func(b *testing.B) {
			testenv.RequireRoot(b)
			d := openForRun(b)
			spec := manyCIDRs(n)
			start := time.Now()
			if n == 0 {
				spec = policy.AllowAll() // accounting only: no policy set, no lookup
			}
			if err := d.SetPolicy(testPod, policy.Policy{Egress: spec, Ingress: policy.AllowAll()}); err != nil {
				b.Fatal(err)
			}
			b.Logf("SetPolicy with %d CIDRs: %v", n, time.Since(start))
			denied := ipv4(podIP, "10.0.0.3", 17, udpHdr(40000, 53, 64)) // odd /32: deny
			allowed := ipv4(podIP, "10.0.0.4", 17, udpHdr(40000, 53, 64))
			for name, frame := range map[string][]byte{"policy": denied, "established": allowed} {
				b.Run(name, func(b *testing.B) {
					want := uint32(actShot)
					if name == "established" || n == 0 {
						want = actNext
					}
					ret, per, err := d.program(hookHostIngress).Benchmark(frame, b.N, b.ResetTimer)
					if err != nil {
						b.Fatal(err)
					}
					if ret != want {
						b.Fatalf("verdict %s, want %s", verdictName(ret), verdictName(want))
					}
					b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
				})
			}
		})
	}
}

// BenchmarkOpen measures loading the programs (verifier included) on an
// empty root against reusing the pinned programs of a loaded one.
func BenchmarkOpen(b *testing.B) {
	b.Run("cold", func(b *testing.B) {
		root := testenv.BPFFSRoot(b)
		for i := 0; i < b.N; i++ {
			d, err := Open(root)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			d.Close()
			if err := Cleanup(root); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("pinned", func(b *testing.B) {
		root := testenv.BPFFSRoot(b)
		d, err := Open(root)
		if err != nil {
			b.Fatal(err)
		}
		d.Close()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			d, err := Open(root)
			if err != nil {
				b.Fatal(err)
			}
			d.Close()
		}
	})
}

// BenchmarkAttachDetach measures one Attach + Detach of a pod on a veth in a
// throw-away netns, per mode, alone and with another pod attached the whole
// time ("resident"): the first program on any TCX or clsact hook of the
// machine switches the kernel's static key for that hook type on (code
// patching, expensive in a VM) and the last one off again, which an ADD
// pays only on a node with no other pod attached.
func BenchmarkAttachDetach(b *testing.B) {
	for _, c := range []struct {
		mode     Mode
		resident bool
	}{{ModeTCX, false}, {ModeTC, false}, {ModeTCX, true}, {ModeTC, true}} {
		mode := c.mode
		name := string(mode)
		if c.resident {
			name += "-resident"
		}
		b.Run(name, func(b *testing.B) {
			testenv.RequireRoot(b)
			if mode == ModeTCX && !kernelHasTCX(b) {
				b.Skip("the kernel has no TCX (before 6.6): only tc is measured")
			}
			nsn, err := ns.TempNetNS()
			if err != nil {
				b.Fatal(err)
			}
			defer nsn.Close()
			d, err := Open(testenv.BPFFSRoot(b))
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			name := testenv.Name(b)
			err = nsn.Do(func(ns.NetNS) error {
				if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "h"}, PeerName: name + "p"}); err != nil {
					return err
				}
				l, err := netlink.LinkByName(name + "h")
				if err != nil {
					return err
				}
				if c.resident {
					if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "r"}, PeerName: name + "q"}); err != nil {
						return err
					}
					r, err := netlink.LinkByName(name + "r")
					if err != nil {
						return err
					}
					if _, err := d.Attach(72, r.Attrs().Index, mode); err != nil {
						return err
					}
					defer d.Detach(72)
				}
				var attach, detach time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					if _, err := d.Attach(71, l.Attrs().Index, mode); err != nil {
						return err
					}
					t1 := time.Now()
					if err := d.Detach(71); err != nil {
						return err
					}
					attach += t1.Sub(t0)
					detach += time.Since(t1)
				}
				b.ReportMetric(float64(attach.Nanoseconds())/float64(b.N), "ns/attach")
				b.ReportMetric(float64(detach.Nanoseconds())/float64(b.N), "ns/detach")
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkRemovePod measures RemovePod (every DEL) with other pods' flows
// in the flow table: finding the pod's flows reads the whole table.
func BenchmarkRemovePod(b *testing.B) {
	for _, n := range []int{10, 20000} {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			d := openForRun(b)
			keys := make([]tcFlowKey, n)
			vals := make([]tcFlowStats, n)
			for i := range keys {
				keys[i] = tcFlowKey{Pod: uint32(1000 + i%500), Family: 4, Proto: 6, LocalPort: uint16(i), RemotePort: 80}
				vals[i].Packets[0] = 1
			}
			if err := putAll(d.objs.Flows, keys, vals); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := d.RemovePod(PodID(90000 + i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
