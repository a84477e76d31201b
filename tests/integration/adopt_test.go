package integration

import (
	"encoding/json"
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podscope/podscope/pkg/cniplugin"
	"github.com/podscope/podscope/pkg/pods"
)

// Pods started before podscope was chained are adopted from the runtime's
// CNI cache, without restarting them.
func TestAdoptRunningPods(t *testing.T) {
	n := newNode(t, nodeOpts{})
	full := n.list
	// The node's conflist before podscope-install chained podscope.
	bridgeOnly, err := json.Marshal(map[string]any{"cniVersion": full.CNIVersion, "name": full.Name,
		"plugins": []json.RawMessage{full.Plugins[0].Bytes}})
	if err != nil {
		t.Fatal(err)
	}
	if n.list, err = libcni.ConfListFromBytes(bridgeOnly); err != nil {
		t.Fatal(err)
	}
	a := n.newPod("old-a", map[string]string{"podscope.io/egress": `{"default":"deny"}`})
	b := n.newPod("old-b", nil)
	n.mustAdd(a)
	n.mustAdd(b)
	if _, err := os.Stat(pods.Path(n.root)); !os.IsNotExist(err) {
		t.Fatalf("pod registry exists before podscope ran: %v", err)
	}

	n.list = full // podscope chained now
	var adopted []cniplugin.Adopted
	adopt := func() {
		t.Helper()
		if err := n.inNode(func() (err error) { adopted, err = cniplugin.Adopt(full.Bytes, n.cacheDir); return }); err != nil {
			t.Fatal(err)
		}
		if len(adopted) != 2 {
			t.Fatalf("adopted %+v, want both pods", adopted)
		}
		for _, ad := range adopted {
			if ad.Err != nil {
				t.Fatalf("adopting %s: %v", ad.ContainerID, ad.Err)
			}
		}
	}
	adopt()
	ra, ok := n.registered(a)
	if !ok || ra.Name != "old-a" || ra.Namespace != "default" || ra.UID != a.uid || ra.IPs[0].Addr() != a.v4 {
		t.Fatalf("adopted identity: %+v", ra)
	}
	for _, p := range []*pod{a, b} {
		if err := n.check(p); err != nil {
			t.Errorf("CHECK of adopted %s: %v", p.name, err)
		}
	}
	// The cached annotation applies: a's egress is denied now, b's is not.
	if got, _ := udpExchange(a, b, netip.AddrPortFrom(b.v4, 9000), 1, 10); got != 0 {
		t.Error("adopted pod's annotation policy (egress deny) not enforced")
	}
	// b -> a is allowed (b's egress, a's ingress); a's echoes pass its
	// egress deny as replies of an allowed flow (stateful).
	if got, err := udpExchange(b, a, netip.AddrPortFrom(a.v4, 9000), 3, 10); err != nil || got != 3 {
		t.Errorf("b -> a UDP with replies: %d/3 (%v)", got, err)
	}
	if c := n.counters(b); c.TxPackets == 0 {
		t.Errorf("adopted pod's traffic not counted: %+v", c)
	}
	// Adopting again changes nothing.
	adopt()
	if ra2, _ := n.registered(a); ra2.ID != ra.ID || !ra2.AttachedAt.Equal(ra.AttachedAt) {
		t.Fatalf("second adoption changed the pod: %+v -> %+v", ra, ra2)
	}
	if err := n.del(a, a.netnsPath); err != nil {
		t.Fatal(err)
	}
	if l := n.accountingLines(a.containerID); len(l) != 1 {
		t.Fatalf("%d accounting lines for adopted pod after DEL", len(l))
	}
}
