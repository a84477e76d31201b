package ctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
)

// statusJSON runs `podscopectl status -o json` on root, as a user would.
func statusJSON(t *testing.T, root string) Status {
	t.Helper()
	var out, errb bytes.Buffer
	if code := Main([]string{"status", "-o", "json", "--bpffs-root", root, "--nri-socket", "/nonexistent/nri.sock"}, &out, &errb); code != 0 {
		t.Fatalf("status: exit %d: %s", code, errb.String())
	}
	var st Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("status -o json: %v: %s", err, out.String())
	}
	return st
}

func statusTable(t *testing.T, root string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := Main([]string{"status", "--bpffs-root", root, "--nri-socket", "/nonexistent/nri.sock"}, &out, &errb); code != 0 {
		t.Fatalf("status: exit %d: %s", code, errb.String())
	}
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "NetworkPolicy:") {
			return l
		}
	}
	t.Fatalf("status has no NetworkPolicy line:\n%s", out.String())
	return ""
}

// status's NetworkPolicy part on a real bpffs root: the pods and distinct
// sets the test wrote through the datapath's API, not enforced without the
// hooks, enforced with both attached (in a netns of the test's own).
func TestStatusNetworkPolicy(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	d, err := datapath.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	set := func(ingressPort uint16) *datapath.PolicySet {
		s, err := datapath.NewPolicySet(policy.Policy{Egress: policy.AllowAll(), Ingress: policy.Spec{Default: policy.Deny,
			Rules: []policy.Rule{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Protocol: "tcp",
				Ports: []policy.PortRange{{From: ingressPort, To: ingressPort}}, Action: policy.Allow}}}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	web, db := set(80), set(5432)
	for i, s := range []*datapath.PolicySet{web, web, db} {
		addr := netip.AddrFrom4([4]byte{10, 213, 0, byte(i + 1)})
		if err := d.SetNetworkPolicy(datapath.PodID(i+1), []netip.Addr{addr}, s); err != nil {
			t.Fatal(err)
		}
	}
	// A pod no policy selects holds nothing.
	if err := d.SetNetworkPolicy(4, []netip.Addr{netip.MustParseAddr("10.213.0.4")}, nil); err != nil {
		t.Fatal(err)
	}

	st := statusJSON(t, root.Path)
	np := st.NetworkPolicy
	if np == nil {
		t.Fatalf("status without its NetworkPolicy part: %+v", st)
	}
	if np.Enforced || !strings.Contains(np.Reason, "no hook attached") || len(np.Hooks) != 0 {
		t.Errorf("without hooks: %+v, want not enforced, saying no hook is attached", np)
	}
	if np.Pods != 3 || np.Sets != 2 || np.Judged != 0 || np.Error != "" {
		t.Errorf("without hooks: %+v, want the 3 selected pods, 2 distinct sets, nothing judged", np)
	}
	if l := statusTable(t, root.Path); !strings.Contains(l, "not enforced") || !strings.Contains(l, "3 pods") || !strings.Contains(l, "2 distinct policy sets") {
		t.Errorf("NetworkPolicy line: %q", l)
	}

	// The hooks, in a netns of the test's own.
	netns, err := ns.TempNetNS()
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	var supported error
	_ = netns.Do(func(ns.NetNS) error { supported = datapath.NetworkPolicySupported(); return nil })
	if errors.Is(supported, datapath.ErrNoNetfilterLink) || errors.Is(supported, datapath.ErrNoConntrack) {
		testenv.SkipKernelLacks(t, "kernel cannot enforce NetworkPolicy, as NetworkPolicySupported reports: %v", supported)
	}
	if err := netns.Do(func(ns.NetNS) error { return datapath.AttachNetworkPolicyHooks(root) }); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := datapath.DetachNetworkPolicyHooks(root); err != nil {
			t.Error(err)
		}
	}()
	if err := d.RemoveNetworkPolicy(3); err != nil {
		t.Fatal(err)
	}
	st = statusJSON(t, root.Path)
	np = st.NetworkPolicy
	if np == nil || !np.Enforced || np.Reason != "" || fmt.Sprint(np.Hooks) != "[ipv4 ipv6]" || np.Pods != 2 || np.Sets != 1 {
		t.Errorf("with both hooks, db's pod removed: %+v, want enforced by ipv4 and ipv6, 2 pods, 1 set", np)
	}
	if l := statusTable(t, root.Path); !strings.HasPrefix(strings.Fields(l)[1], "enforced") || !strings.Contains(l, "2 pods") || !strings.Contains(l, "1 distinct policy set;") {
		t.Errorf("NetworkPolicy line: %q", l)
	}
	t.Logf("with the hooks: %s", statusTable(t, root.Path))
	hooks, err := datapath.NetworkPolicyHooks(root)
	if err != nil || len(hooks) != 2 || !hooks[0].Current || !hooks[1].Current {
		t.Errorf("NetworkPolicyHooks: %+v %v, want this build's two links", hooks, err)
	}
}
