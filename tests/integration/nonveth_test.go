package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/ctl"
	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/metrics"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
	"github.com/podscope/podscope/pkg/testenv"
)

// macvlanPrimary makes the node's primary CNI a macvlan on a master link in
// the node netns (one end of a veth pair: this kernel has no dummy driver):
// the pod's interface has no host veth.
func macvlanPrimary(t *testing.T) func(n *node) map[string]any {
	return func(n *node) map[string]any {
		master := testenv.Name(t)
		if err := n.inNode(func() error {
			d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: master}, PeerName: master + "p"}
			if err := netlink.LinkAdd(d); err != nil {
				return err
			}
			return netlink.LinkSetUp(d)
		}); err != nil {
			t.Fatalf("dummy master: %v", err)
		}
		return map[string]any{"type": "macvlan", "master": master, "mode": "bridge"}
	}
}

// Chained behind macvlan, podscope lets the pod start unobserved (fail-open)
// and says why in the registry, podscopectl and the metrics; DEL logs the
// pod once and leaves nothing.
func TestMacvlanPodStartsUnobserved(t *testing.T) {
	n := newNode(t, nodeOpts{primary: macvlanPrimary(t)})
	p := n.newPod("mv-0", nil)
	if err := n.add(p); err != nil {
		t.Fatalf("ADD behind macvlan failed (the pod could not start): %v", err)
	}
	if !p.v4.IsValid() {
		t.Fatalf("prevResult not passed on: %+v", p.result)
	}
	reg, ok := n.registered(p)
	if !ok || !strings.Contains(reg.Unobserved, "macvlan") || reg.HostIfindex != 0 {
		t.Fatalf("registry entry %+v, want it unobserved naming macvlan", reg)
	}
	// Nothing loaded at all is fine too: no other pod needed the datapath.
	if atts, err := attachmentsOf(n.root, reg.ID); (err != nil && !errors.Is(err, datapath.ErrNotLoaded)) || len(atts) != 0 {
		t.Fatalf("attachments of an unobserved pod: %v %v", atts, err)
	}
	if err := n.check(p); err != nil {
		t.Fatalf("CHECK of an unobserved pod: %v", err)
	}
	var out, errb bytes.Buffer
	if err := n.inNode(func() error {
		if code := ctl.Main([]string{"pods", "--bpffs-root", n.root.Path}, &out, &errb); code != 0 {
			t.Fatalf("podscopectl pods: %d %s", code, errb.String())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "unobserved") || !strings.Contains(out.String(), "macvlan") {
		t.Fatalf("podscopectl pods does not show why:\n%s", out.String())
	}
	nets, err := metrics.PinnedNetwork{Root: n.root}.PodNetwork()
	if err != nil || len(nets) != 1 || nets[0].Pod != "mv-0" || !strings.Contains(nets[0].Unobserved, "macvlan") {
		t.Fatalf("metrics source: %+v %v", nets, err)
	}
	// The reaper keeps it: the netns is there, it has no veth to lose.
	if err := n.inNode(func() error {
		reaped, err := podstate.Reap(n.root, n.stateDir, time.Second)
		if len(reaped) != 0 {
			t.Errorf("reaper removed a live unobserved pod: %+v", reaped)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.del(p, p.netnsPath); err != nil {
		t.Fatal(err)
	}
	if err := n.del(p, ""); err != nil {
		t.Fatal(err)
	}
	lines := n.accountingLines(p.containerID)
	if len(lines) != 1 || !strings.Contains(lines[0]["countersError"].(string), "not observed") {
		b, _ := json.Marshal(lines)
		t.Fatalf("accounting: %s", b)
	}
	if _, ok := n.registered(p); ok {
		t.Fatal("registry entry left after DEL")
	}
}

// With "failClosed": true the operator asks for the pod to be refused.
func TestMacvlanFailClosedRefuses(t *testing.T) {
	n := newNode(t, nodeOpts{primary: macvlanPrimary(t), extra: map[string]any{"failClosed": true}})
	p := n.newPod("mv-1", nil)
	err := n.add(p)
	if err == nil {
		n.del(p, p.netnsPath)
		t.Fatal("ADD succeeded under failClosed")
	}
	if !strings.Contains(err.Error(), "macvlan") {
		t.Fatalf("error does not say why: %v", err)
	}
	n.del(p, p.netnsPath)
	reg, err := pods.OpenPinnedRegistry(n.root)
	if errors.Is(err, pods.ErrNoRegistry) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if all, _ := reg.List(); len(all) != 0 {
		t.Fatalf("refused pod registered: %+v", all)
	}
}
