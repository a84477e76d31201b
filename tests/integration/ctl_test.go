package integration

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/ctl"
)

// podscopectl against a real node: it reads only the pins.
func TestPodscopectlReadsPins(t *testing.T) {
	n := newNode(t, nodeOpts{})
	n.setPolicy(t, `{"egress":{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["9999"],"action":"deny"}]}}`)
	a, b := n.newPod("ctl-a", nil), n.newPod("ctl-b", nil)
	n.mustAdd(a)
	n.mustAdd(b)
	if got, err := udpExchange(a, b, netip.AddrPortFrom(b.v4, 9000), 5, 100); err != nil || got != 5 {
		t.Fatalf("UDP: %d/5 %v", got, err)
	}
	run := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		var code int
		err := n.inNode(func() error {
			code = ctl.Main(append(args, "--bpffs-root", n.root.Path), &out, &errb)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			return out.String(), &ctlError{errb.String()}
		}
		return out.String(), nil
	}

	out, err := run("pods", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var podsOut []struct {
		Namespace, Name string
		Counters        struct{ TxPackets, RxPackets uint64 }
	}
	if err := json.Unmarshal([]byte(out), &podsOut); err != nil {
		t.Fatalf("pods -o json: %v\n%s", err, out)
	}
	if len(podsOut) != 2 || podsOut[0].Name != "ctl-a" || podsOut[0].Counters.TxPackets < 5 || podsOut[0].Counters.RxPackets < 5 {
		t.Fatalf("pods: %+v", podsOut)
	}
	if out, err = run("pods"); err != nil || !strings.Contains(out, "default/ctl-b") {
		t.Fatalf("pods table: %v\n%s", err, out)
	}
	t.Logf("podscopectl pods:\n%s", out)
	if out, err = run("status"); err != nil {
		t.Fatal(err)
	}
	t.Logf("podscopectl status:\n%s", out)
	if out, err = run("flows", "--pod", "default/ctl-a"); err != nil {
		t.Fatal(err)
	}
	t.Logf("podscopectl flows:\n%s", out)

	out, err = run("flows", "--pod", "default/ctl-a", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var flows struct {
		Flows []struct {
			Proto     string
			Remote    string
			TxPackets uint64
		}
	}
	if err := json.Unmarshal([]byte(out), &flows); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range flows.Flows {
		if f.Proto == "udp" && f.Remote == netip.AddrPortFrom(b.v4, 9000).String() && f.TxPackets == 5 {
			found = true
		}
	}
	if !found {
		t.Fatalf("flows of ctl-a lack the UDP flow to %s:9000 with 5 packets: %s", b.v4, out)
	}

	out, err = run("policy", "show", "default/ctl-a")
	if err != nil || !strings.Contains(out, "10.0.0.0/8") || !strings.Contains(out, "tcp 9999 -> deny") {
		t.Fatalf("policy show: %v\n%s", err, out)
	}
	t.Logf("podscopectl policy show:\n%s", out)
	if _, err := run("policy", "show", "default/nope"); err == nil || !strings.Contains(err.Error(), "podscopectl pods") {
		t.Fatalf("policy show of an unknown pod: %v", err)
	}

	out, err = run("status", "-o", "json", "--nri-socket", "/nonexistent/nri.sock")
	if err != nil {
		t.Fatal(err)
	}
	var st ctl.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if !st.BPFFSMounted || st.PodsAttached != 2 || len(st.Programs) != 2 || len(st.Modes) != 1 || st.Modes[0] != "tcx" || st.NRISocketPresent {
		t.Fatalf("status: %+v", st)
	}
	for _, p := range st.Programs {
		if p.ID == 0 || p.Type != "SchedCLS" {
			t.Errorf("program %+v", p)
		}
	}

	start := time.Now()
	if out, err = run("cleanup", "--state-dir", n.stateDir); err != nil {
		t.Fatalf("cleanup: %v %s", err, out)
	}
	t.Logf("cleanup took %v: %s", time.Since(start), strings.TrimSpace(out))
	if _, err := os.Stat(n.root.Path); !os.IsNotExist(err) {
		t.Fatalf("root still there after cleanup: %v", err)
	}
	for _, p := range []*pod{a, b} {
		if l := n.accountingLines(p.containerID); len(l) != 1 || l[0]["reason"] != "cleanup" {
			t.Errorf("%s: accounting after cleanup: %v", p.name, l)
		}
		rp := p
		var hs hookState
		if err := n.inNode(func() (err error) { hs, err = hooksOn(hostIfindex(t, n, rp)); return }); err != nil {
			t.Fatal(err)
		}
		if !hs.empty() {
			t.Errorf("%s: TC state left after cleanup: %+v", p.name, hs)
		}
	}
	// DEL after cleanup (pins gone) succeeds and logs nothing twice.
	if err := n.del(a, a.netnsPath); err != nil {
		t.Fatalf("DEL after cleanup: %v", err)
	}
	if l := n.accountingLines(a.containerID); len(l) != 1 {
		t.Fatalf("%d accounting lines after DEL following cleanup", len(l))
	}
	// The test's own BPFFSRoot cleanup expects the directory.
	if err := os.MkdirAll(n.root.Path, 0o700); err != nil {
		t.Fatal(err)
	}
}

type ctlError struct{ msg string }

func (e *ctlError) Error() string { return e.msg }
