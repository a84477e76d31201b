package bench

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// TestLoadToolOverLoopback runs every load mode, direct and through the
// proxy, against a server on 127.0.0.1 and checks each measured something.
func TestLoadToolOverLoopback(t *testing.T) {
	var srv *Server
	var base netip.AddrPort
	for try := 0; try < 20 && srv == nil; try++ {
		base = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+rand.IntN(20000)))
		srv, _ = Serve(base)
	}
	if srv == nil {
		t.Fatal("no free port range for the load server")
	}
	defer srv.Close()
	for _, m := range []struct {
		mode    string
		streams int
	}{{"stream", 1}, {"stream", 2}, {"rr", 0}, {"crr", 0}, {"udp", 0}} {
		r, err := RunLoad(LoadOptions{Mode: m.mode, Streams: m.streams, Target: base, Duration: 100 * time.Millisecond})
		if err != nil {
			t.Fatalf("%s: %v", m.mode, err)
		}
		if r.Ops == 0 || r.Value <= 0 || r.Seconds < 0.1 {
			t.Errorf("%s x%d measured nothing: %+v", m.mode, m.streams, r)
		}
		if m.mode == "udp" && r.Ops > r.Sent {
			t.Errorf("udp received %d > sent %d", r.Ops, r.Sent)
		}
	}
	if _, err := RunLoad(LoadOptions{Mode: "bogus", Target: base}); err == nil {
		t.Error("unknown mode accepted")
	}

	var proxy *Proxy
	var pbase netip.AddrPort
	for try := 0; try < 20 && proxy == nil; try++ {
		pbase = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(40000+rand.IntN(20000)))
		proxy, _ = StartProxy(pbase, base)
	}
	if proxy == nil {
		t.Fatal("no free port range for the proxy")
	}
	defer proxy.Close()
	for _, mode := range []string{"stream", "rr", "crr"} {
		r, err := RunLoad(LoadOptions{Mode: mode, Streams: 1, Target: pbase, Duration: 100 * time.Millisecond})
		if err != nil {
			t.Fatalf("via proxy %s: %v", mode, err)
		}
		if r.Ops == 0 {
			t.Errorf("via proxy %s measured nothing: %+v", mode, r)
		}
	}
}

func TestDenyPrefixesNeverCoverPods(t *testing.T) {
	for _, n := range []int{10, 1000, 100000} {
		pfs := DenyPrefixes(7, n)
		if len(pfs) != n {
			t.Fatalf("DenyPrefixes(7, %d) gave %d", n, len(pfs))
		}
		seen := map[netip.Prefix]bool{}
		for _, p := range pfs {
			if seen[p] {
				t.Fatalf("duplicate prefix %s", p)
			}
			seen[p] = true
			for _, pod := range []string{"10.99.7.2", "10.99.7.3"} {
				if p.Contains(netip.MustParseAddr(pod)) {
					t.Fatalf("prefix %s covers pod %s: traffic would be denied", p, pod)
				}
			}
			if !netip.MustParsePrefix("10.0.0.0/8").Contains(p.Addr()) {
				t.Fatalf("prefix %s outside 10/8", p)
			}
		}
	}
	// Non-overlapping: an nft interval set rejects overlaps.
	pfs := DenyPrefixes(7, 100000)
	for i := 1; i < len(pfs); i++ {
		if pfs[i].Overlaps(pfs[i-1]) {
			t.Fatalf("%s overlaps %s", pfs[i], pfs[i-1])
		}
	}
}
