package bench

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFlipOpenAndClosed(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ap := netip.MustParseAddrPort(l.Addr().String())
	before := time.Now()
	r, err := Flip(ap, true, 100*time.Millisecond, 3, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Want != "open" || r.Attempts != 3 || r.AtUnixNano < before.UnixNano() || r.AtUnixNano > time.Now().UnixNano() {
		t.Fatalf("open listener: %+v", r)
	}
	if _, err := Flip(ap, false, 100*time.Millisecond, 3, 300*time.Millisecond); err == nil {
		t.Fatal("an open listener reported closed")
	}
	l.Close()
	r, err = Flip(ap, false, 100*time.Millisecond, 2, 5*time.Second)
	if err != nil || r.Want != "closed" || r.Attempts != 2 {
		t.Fatalf("closed port: %+v, %v", r, err)
	}
}

func TestNetpolRowAndTable(t *testing.T) {
	dir := t.TempDir()
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "none", "rr.jsonl"), `{"mode":"rr","value":100}
{"mode":"rr","value":300}
{"mode":"rr","value":200}
`)
	// A B A B A: the variant's rounds between the baseline's.
	write(filepath.Join(dir, "ps", "rr.jsonl"), `{"mode":"rr","value":190}
{"mode":"rr","value":240}
`)
	write(filepath.Join(dir, "ps", "latency.txt"), "0.1\n0.3\n0.2\n0.4\n")
	write(filepath.Join(dir, "knp", "na.txt"), "nft: queue | no\nsuch file\n")
	none, err := ReadNetpolRow(filepath.Join(dir, "none"), "no policy")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := ReadNetpolRow(filepath.Join(dir, "ps"), "podscope")
	if err != nil {
		t.Fatal(err)
	}
	knp, err := ReadNetpolRow(filepath.Join(dir, "knp"), "knp")
	if err != nil {
		t.Fatal(err)
	}
	if none.Value["rr"] != 200 || len(none.Samples["rr"]) != 3 || ps.LatencySamples != 4 || ps.LatencyP50 != 0.2 || ps.LatencyP99 != 0.4 {
		t.Fatalf("rows: %+v %+v", none, ps)
	}
	if knp.NA != "nft: queue | no such file" {
		t.Fatalf("na: %q", knp.NA)
	}
	// 190 / mean(100, 300) = 0.95, 240 / mean(300, 200) = 0.96.
	tab := NetpolTable([]NetpolRow{none, ps, knp})
	for _, want := range []string{
		"| no policy | 200 | n/a | n/a | – |",
		"| podscope | 215 (ratio 0.955, 0.950–0.960) | n/a | n/a | 200 ms / 400 ms (n=4) |",
		"| knp | cannot run here: nft: queue \\| no such file | | | |",
	} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
}
