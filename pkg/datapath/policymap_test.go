package datapath

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/podscope/podscope/pkg/policy"
)

func TestPolicyEntriesCheckAndReplace(t *testing.T) {
	d := openForRun(t)
	p := setPolicy(t, d,
		`{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80","8000-8080"],"action":"allow"},
		  {"cidr":"10.1.0.0/16","protocol":"udp","action":"deny"}]}`,
		`{"default":"allow"}`)
	entries, err := d.PolicyEntries(testPod)
	if err != nil {
		t.Fatal(err)
	}
	// egress: 0/0, 10/8, 10.1/16, ::/0; ingress: 0/0, ::/0.
	if len(entries) != 6 {
		t.Fatalf("%d entries: %+v", len(entries), entries)
	}
	var sixteen *PolicyEntry
	for i := range entries {
		if entries[i].Direction == policy.Egress && entries[i].Prefix == netip.MustParsePrefix("10.1.0.0/16") {
			sixteen = &entries[i]
		}
	}
	if sixteen == nil {
		t.Fatalf("no egress 10.1.0.0/16 entry in %+v", entries)
	}
	// Its own rule, then the two port ranges inherited from 10/8 (a
	// catch-all of its own would have ended the chain: TestCatchAllEndsChain).
	if got, want := sixteen.Summary(), "udp deny (from 10.1.0.0/16); tcp 80 allow (from 10.0.0.0/8); tcp 8000-8080 allow (from 10.0.0.0/8); default deny"; got != want {
		t.Fatalf("10.1.0.0/16 holds %q, want %q", got, want)
	}
	js, err := json.Marshal(sixteen)
	if err != nil || !strings.Contains(string(js), `"cidr":"10.1.0.0/16"`) || !strings.Contains(string(js), `"ports":"8000-8080"`) {
		t.Fatalf("entry JSON %s %v", js, err)
	}
	if err := d.CheckPolicy(testPod, p); err != nil {
		t.Fatalf("CheckPolicy: %v", err)
	}

	// A different policy: CheckPolicy names the CIDR that differs.
	other := p
	other.Egress.Rules = append([]policy.Rule(nil), p.Egress.Rules...)
	other.Egress.Rules[1].Action = policy.Allow
	err = d.CheckPolicy(testPod, other)
	if err == nil || !strings.Contains(err.Error(), "egress 10.1.0.0/16") {
		t.Fatalf("CheckPolicy with a changed rule: %v", err)
	}
	fewer := p
	fewer.Egress.Rules = p.Egress.Rules[:1]
	if err := d.CheckPolicy(testPod, fewer); err == nil || !strings.Contains(err.Error(), "10.1.0.0/16") {
		t.Fatalf("CheckPolicy with a rule less: %v", err)
	}

	// SetPolicy replaces: the old /16 entry goes.
	if err := d.SetPolicy(testPod, fewer); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckPolicy(testPod, fewer); err != nil {
		t.Fatalf("after replacing: %v", err)
	}
	if r := run(t, d, policy.Egress, ipv4(podIP, "10.1.0.1", 6, tcpHdr(43000, 80, tcpSYN))); r != actNext {
		t.Fatalf("10.1.0.1:80 after the deny /16 was removed: %s", verdictName(r))
	}

	// A policy the kernel cannot hold is refused whole, naming the field.
	big := policy.Policy{Egress: policy.Spec{Default: policy.Deny}, Ingress: policy.AllowAll()}
	for port := uint16(1); port <= uint16(maxRules)+1; port++ {
		big.Egress.Rules = append(big.Egress.Rules, policy.Rule{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Protocol: "tcp",
			Ports: []policy.PortRange{{From: port, To: port}}, Action: policy.Allow})
	}
	err = d.SetPolicy(testPod, big)
	var fe *policy.FieldError
	if !errors.As(err, &fe) || !strings.HasPrefix(fe.Field, "policy.egress.rules[") {
		t.Fatalf("SetPolicy of %d rules on one CIDR: %v", maxRules+1, err)
	}
	if err := d.CheckPolicy(testPod, fewer); err != nil {
		t.Fatalf("a refused policy changed the kernel's: %v", err)
	}
}

func TestRemovePod(t *testing.T) {
	d := openForRun(t)
	other := policy.Policy{Egress: policy.Spec{Default: policy.Deny, Rules: []policy.Rule{
		{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Action: policy.Allow}}}, Ingress: policy.AllowAll()}
	if err := d.SetPolicy(testPod+1, other); err != nil {
		t.Fatal(err)
	}
	setPolicy(t, d, `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","action":"deny"}]}`, `{"default":"allow"}`)
	run(t, d, policy.Egress, ipv4(podIP, "192.168.0.1", 17, udpHdr(1000, 53, 10)))
	run(t, d, policy.Egress, ipv4(podIP, "10.0.0.1", 17, udpHdr(1000, 53, 10)))
	if f, _ := d.Flows(testPod); len(f) != 2 {
		t.Fatalf("flows before RemovePod: %+v", f)
	}
	if err := d.RemovePod(testPod); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Counters(testPod); !errors.Is(err, ErrUnknownPod) {
		t.Fatalf("counters after RemovePod: %v", err)
	}
	if f, err := d.Flows(testPod); err != nil || len(f) != 0 {
		t.Fatalf("flows after RemovePod: %+v %v", f, err)
	}
	if e, err := d.PolicyEntries(testPod); err != nil || len(e) != 0 {
		t.Fatalf("policy after RemovePod: %+v %v", e, err)
	}
	var pi tcPodIface
	if err := d.objs.PodIfaces.Lookup(uint32(testRunIfindex), &pi); err == nil {
		t.Fatal("ifindex entry survived RemovePod")
	}
	if err := d.RemovePod(testPod); err != nil {
		t.Fatalf("second RemovePod: %v", err)
	}
	if err := d.CheckPolicy(testPod+1, other); err != nil {
		t.Fatalf("RemovePod of one pod changed another's policy: %v", err)
	}
}
