package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"
)

func TestParseSpecBadInputs(t *testing.T) {
	cases := []struct {
		name, json, field, msg string
	}{
		{"bad json", `{"default": "allow",`, "policy.egress", "invalid JSON"},
		{"not an object", `["allow"]`, "policy.egress", "must be a JSON object"},
		{"unknown top field", `{"default":"allow","rulez":[]}`, "policy.egress.rulez", "unknown field"},
		{"unknown rule field", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","action":"deny","port":"80"}]}`, "policy.egress.rules[0].port", "unknown field"},
		{"missing default", `{"rules":[]}`, "policy.egress.default", "missing"},
		{"bad default", `{"default":"block"}`, "policy.egress.default", `"block"`},
		{"default not string", `{"default":1}`, "policy.egress.default", "must be a string"},
		{"invalid cidr", `{"default":"allow","rules":[{"cidr":"10.0.0.0/33","action":"deny"}]}`, "policy.egress.rules[0].cidr", "invalid CIDR"},
		{"garbage cidr", `{"default":"allow","rules":[{"cidr":"ten","action":"deny"}]}`, "policy.egress.rules[0].cidr", "invalid CIDR"},
		{"host bits", `{"default":"allow","rules":[{"cidr":"10.1.2.3/8","action":"deny"}]}`, "policy.egress.rules[0].cidr", `did you mean "10.0.0.0/8"`},
		{"host bits v6", `{"default":"allow","rules":[{"cidr":"fd00::1/64","action":"deny"}]}`, "policy.egress.rules[0].cidr", "host bits"},
		{"missing cidr", `{"default":"allow","rules":[{"action":"deny"}]}`, "policy.egress.rules[0].cidr", "missing"},
		{"bad protocol", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcpp","action":"deny"}]}`, "policy.egress.rules[0].protocol", "unknown protocol"},
		{"icmp on v6", `{"default":"allow","rules":[{"cidr":"fd00::/8","protocol":"icmp","action":"deny"}]}`, "policy.egress.rules[0].protocol", "icmpv6"},
		{"ports without protocol", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","ports":["80"],"action":"deny"}]}`, "policy.egress.rules[0].ports", "need protocol"},
		{"ports with icmp", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"icmp","ports":["80"],"action":"deny"}]}`, "policy.egress.rules[0].ports", "need protocol"},
		{"port 0", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["0"],"action":"deny"}]}`, "policy.egress.rules[0].ports[0]", "out of range"},
		{"port too big", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80","70000"],"action":"deny"}]}`, "policy.egress.rules[0].ports[1]", `port "70000" out of range 1-65535`},
		{"port reversed", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"udp","ports":["90-80"],"action":"deny"}]}`, "policy.egress.rules[0].ports[0]", "ends before it starts"},
		{"port words", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"udp","ports":["http"],"action":"deny"}]}`, "policy.egress.rules[0].ports[0]", "not a number"},
		{"port range upper too big", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"udp","ports":["80-65536"],"action":"deny"}]}`, "policy.egress.rules[0].ports[0]", "out of range"},
		{"bad action", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","action":"drop"}]}`, "policy.egress.rules[0].action", `"drop"`},
		{"missing action", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8"}]}`, "policy.egress.rules[0].action", "missing"},
		{"rules not a list", `{"default":"allow","rules":{}}`, "policy.egress.rules", "must be a list"},
		{"tie no ports", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","action":"deny"},{"cidr":"10.0.0.0/8","action":"allow"}]}`, "policy.egress.rules[1]", "ties with policy.egress.rules[0]"},
		{"tie same proto no ports", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","action":"deny"},{"cidr":"10.0.0.0/8","protocol":"tcp","action":"deny"}]}`, "policy.egress.rules[1]", "ties"},
		{"tie overlapping ports", `{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80","8000-8080"],"action":"deny"},{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["8080-9000"],"action":"allow"}]}`, "policy.egress.rules[1]", "overlapping ports 8000-8080 and 8080-9000"},
		{"duplicate key", `{"default":"allow","default":"deny"}`, "policy.egress.default", "given twice"},
		{"trailing data", `{"default":"allow"} {}`, "policy.egress", "trailing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(c.json), "policy.egress")
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseSpec(%s) = %v, want a *FieldError", c.json, err)
			}
			if fe.Field != c.field || !strings.Contains(fe.Msg, c.msg) {
				t.Fatalf("got field %q msg %q; want field %q msg containing %q", fe.Field, fe.Msg, c.field, c.msg)
			}
			if !strings.HasPrefix(err.Error(), c.field+": ") {
				t.Fatalf("error text %q does not start with the field path", err)
			}
		})
	}
}

func TestParseSpecNoTies(t *testing.T) {
	// Same CIDR but different protocol, disjoint ports, or ports vs none: no tie.
	in := `{"default":"deny","rules":[
	 {"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80"],"action":"allow"},
	 {"cidr":"10.0.0.0/8","protocol":"tcp","ports":["81-90"],"action":"deny"},
	 {"cidr":"10.0.0.0/8","protocol":"tcp","action":"deny"},
	 {"cidr":"10.0.0.0/8","protocol":"udp","ports":["80"],"action":"allow"},
	 {"cidr":"10.0.0.0/8","action":"allow"},
	 {"cidr":"10.0.0.0/16","action":"deny"},
	 {"cidr":"fd00::/8","protocol":"icmpv6","action":"allow"}]}`
	s, err := ParseSpec([]byte(in), "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Rules) != 7 || s.Default != Deny || s.Rules[1].Ports[0] != (PortRange{81, 90}) {
		t.Fatalf("parsed %+v", s)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	in := `{"egress":{"default":"allow","rules":[{"cidr":"169.254.169.254/32","action":"deny"}]},` +
		`"ingress":{"default":"deny","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["80","8000-8080"],"action":"allow"}]}}`
	p, err := ParsePolicy([]byte(in), "policy")
	if err != nil {
		t.Fatal(err)
	}
	want := Policy{
		Egress: Spec{Default: Allow, Rules: []Rule{{CIDR: netip.MustParsePrefix("169.254.169.254/32"), Action: Deny}}},
		Ingress: Spec{Default: Deny, Rules: []Rule{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Protocol: "tcp",
			Ports: []PortRange{{80, 80}, {8000, 8080}}, Action: Allow}}},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("parsed %+v\nwant %+v", p, want)
	}
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Fatalf("marshal:\n%s\nwant\n%s", out, in)
	}
	var back Policy
	if err := json.Unmarshal(out, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Fatalf("unmarshal back: %+v, %v", back, err)
	}
	// A missing direction is allow-all; an error inside is still named.
	p, err = ParsePolicy([]byte(`{"egress":{"default":"deny"}}`), "policy")
	if err != nil || p.Ingress.Default != Allow || p.Egress.Default != Deny {
		t.Fatalf("partial policy: %+v %v", p, err)
	}
	_, err = ParsePolicy([]byte(`{"ingress":{"default":"deny","rules":[{"cidr":"1.2.3.4/32","action":"x"}]}}`), "policy")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "policy.ingress.rules[0].action" {
		t.Fatalf("nested error: %v", err)
	}
	_, err = ParsePolicy([]byte(`{"egres":{}}`), "policy")
	if !errors.As(err, &fe) || fe.Field != "policy.egres" {
		t.Fatalf("unknown direction: %v", err)
	}
}

func mustSpec(t *testing.T, js string) Spec {
	t.Helper()
	s, err := ParseSpec([]byte(js), "t")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pkt(addr string, proto uint8, port uint16) Packet {
	return Packet{Peer: netip.MustParseAddr(addr), Protocol: proto, Port: port, HasPort: port != 0}
}

func TestCompileSemantics(t *testing.T) {
	s := mustSpec(t, `{"default":"deny","rules":[
	 {"cidr":"10.0.0.0/8","action":"allow"},
	 {"cidr":"10.1.0.0/16","protocol":"tcp","ports":["80","8000-8080"],"action":"allow"},
	 {"cidr":"10.1.0.0/16","protocol":"tcp","action":"deny"},
	 {"cidr":"10.1.2.0/24","protocol":"udp","ports":["53"],"action":"deny"},
	 {"cidr":"10.1.2.3/32","protocol":"icmp","action":"deny"},
	 {"cidr":"fd00::/8","protocol":"tcp","ports":["443"],"action":"allow"},
	 {"cidr":"::/0","protocol":"icmpv6","action":"allow"}]}`)
	entries, err := Compile(s, Egress, "t", 32)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 7 { // 0.0.0.0/0 and 4 v4 CIDRs, ::/0 and fd00::/8
		t.Fatalf("%d entries: %+v", len(entries), entries)
	}
	cases := []struct {
		p    Packet
		want Action
	}{
		{pkt("192.168.1.1", 6, 80), Deny},                                  // default
		{pkt("10.9.9.9", 6, 22), Allow},                                    // 10/8 none-rule
		{pkt("10.1.9.9", 6, 80), Allow},                                    // /16 proto+port beats /16 proto
		{pkt("10.1.9.9", 6, 8080), Allow},                                  // range end
		{pkt("10.1.9.9", 6, 8081), Deny},                                   // /16 proto only
		{pkt("10.1.9.9", 17, 53), Allow},                                   // /16 has no udp rule: falls back to 10/8
		{pkt("10.1.2.9", 17, 53), Deny},                                    // /24 udp 53
		{pkt("10.1.2.9", 17, 54), Allow},                                   // /24 no match -> /16 no udp -> /8 allow
		{pkt("10.1.2.9", 6, 80), Allow},                                    // /24 -> /16 tcp 80
		{pkt("10.1.2.3", 1, 0), Deny},                                      // /32 icmp
		{pkt("10.1.2.3", 6, 9000), Deny},                                   // /32 -> /24 -> /16 tcp deny
		{pkt("fd00::1", 6, 443), Allow},                                    // v6
		{pkt("fd00::1", 6, 444), Deny},                                     // v6 default
		{pkt("2001:db8::1", 58, 0), Allow},                                 // ::/0 rule
		{pkt("fd00::1", 58, 0), Allow},                                     // inherited from ::/0
		{Packet{Peer: netip.MustParseAddr("10.1.9.9"), Protocol: 6}, Deny}, // fragment: no port, tcp proto-only rule
	}
	for _, c := range cases {
		if got := Decide(entries, c.p); got != c.want {
			t.Errorf("Decide(%+v) = %v, want %v", c.p, got, c.want)
		}
	}
	// The /24 entry carries its own rule first, then the /16's in priority
	// order, then the /8's.
	for _, e := range entries {
		if e.Prefix == netip.MustParsePrefix("10.1.2.0/24") {
			var from []string
			for _, r := range e.Rules {
				from = append(from, r.From.String())
			}
			want := []string{"10.1.2.0/24", "10.1.0.0/16", "10.1.0.0/16", "10.1.0.0/16", "10.0.0.0/8"}
			if !reflect.DeepEqual(from, want) || e.Default != Deny {
				t.Fatalf("10.1.2.0/24 rules from %v, want %v", from, want)
			}
		}
	}
	if _, err := Compile(s, Egress, "t", 4); err == nil {
		t.Fatal("Compile with room for 4 rules per CIDR accepted a chain of 5")
	}
}

func TestCompileAllowAll(t *testing.T) {
	e, err := Compile(AllowAll(), Ingress, "t", 4)
	if err != nil || len(e) != 2 || e[0].Default != Allow || len(e[0].Rules) != 0 || e[1].Direction != Ingress {
		t.Fatalf("AllowAll compiles to %+v, %v", e, err)
	}
}

func TestValidateGoBuiltSpec(t *testing.T) {
	s := Spec{Default: Allow, Rules: []Rule{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Action: 7}}}
	var fe *FieldError
	if err := s.Validate("x"); !errors.As(err, &fe) || fe.Field != "x.rules[0].action" {
		t.Fatalf("Validate = %v", err)
	}
	p := Policy{Egress: AllowAll(), Ingress: Spec{}}
	if err := p.Validate("policy"); !errors.As(err, &fe) || fe.Field != "policy.ingress.default" {
		t.Fatalf("Validate = %v", err)
	}
}

// Issue 15: `"ports": []` reads like "no port" but would match every port.
func TestEmptyPortListRefused(t *testing.T) {
	_, err := ParseSpec([]byte(`{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":[],"action":"deny"}]}`), "policy.egress")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "policy.egress.rules[0].ports" || !strings.Contains(fe.Msg, "empty list") {
		t.Fatalf("ParseSpec with ports [] = %v", err)
	}
	// null and a missing key still mean every port.
	for _, in := range []string{`{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":null,"action":"deny"}]}`,
		`{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","action":"deny"}]}`} {
		if _, err := ParseSpec([]byte(in), "x"); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
	}
}

// Issue 15: a chain that needs more than MaxMatches is refused when the
// policy is parsed (code 7 at config parse, not at every pod's ADD), and
// the error names the rule that brings it past the limit, not the chain's
// first rule.
func TestChainLimitAtParse(t *testing.T) {
	// rules[0]: 10.1.2.0/24 one match (icmp: not a catch-all, which would
	// end the chain, TestCatchAllEndsChain); rules[1]: 10.1.0.0/16 with 30 port
	// ranges; rules[2]: 10.0.0.0/8 with 2 port ranges. The /24's chain is
	// 1 + 30 + 2 = 33: its 33rd match is the /8's second range.
	ports := func(n, base int) string {
		var s []string
		for i := 0; i < n; i++ {
			s = append(s, fmt.Sprintf(`"%d"`, base+i))
		}
		return strings.Join(s, ",")
	}
	in := fmt.Sprintf(`{"default":"deny","rules":[
		{"cidr":"10.1.2.0/24","protocol":"icmp","action":"allow"},
		{"cidr":"10.1.0.0/16","protocol":"tcp","ports":[%s],"action":"allow"},
		{"cidr":"10.0.0.0/8","protocol":"udp","ports":[%s],"action":"allow"}]}`, ports(30, 1000), ports(2, 53))
	_, err := ParseSpec([]byte(in), "policy.egress")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "policy.egress.rules[2]" || !strings.Contains(fe.Msg, "33 matches") || !strings.Contains(fe.Msg, "10.1.2.0/24") {
		t.Fatalf("ParseSpec of a 33-match chain = %v; want the error on rules[2] (the /8 whose second range is the 33rd match)", err)
	}
	// The same through Validate (a Go-built policy) and Compile.
	s, _ := ParseSpec([]byte(strings.Replace(in, ports(2, 53), ports(1, 53), 1)), "x") // 32: fits
	if s.Rules == nil {
		t.Fatal("a 32-match chain was refused")
	}
	s.Rules[2].Ports = append(s.Rules[2].Ports, PortRange{54, 54})
	if err := s.Validate("policy.egress"); !errors.As(err, &fe) || fe.Field != "policy.egress.rules[2]" {
		t.Fatalf("Validate = %v", err)
	}
	if _, err := Compile(s, Egress, "policy.egress", MaxMatches); !errors.As(err, &fe) || fe.Field != "policy.egress.rules[2]" {
		t.Fatalf("Compile = %v", err)
	}
	// Overflow inside the CIDR's own rules names its own rule.
	own := Spec{Default: Allow, Rules: []Rule{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Action: Deny},
		{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Protocol: "tcp", Action: Deny}}}
	for i := 0; i < 33; i++ {
		own.Rules[1].Ports = append(own.Rules[1].Ports, PortRange{uint16(100 + 2*i), uint16(100 + 2*i)})
	}
	if err := own.Validate("e"); !errors.As(err, &fe) || fe.Field != "e.rules[1]" {
		t.Fatalf("Validate of a CIDR with 34 own matches = %v, want e.rules[1] (its ports sort first)", err)
	}
}

// A catch-all rule (no protocol, no ports) at a CIDR matches every packet,
// so the rules of less specific CIDRs can never be reached from it: its
// chain ends there. That is how a compiled NetworkPolicy looks (allows at
// a CIDR, a catch-all deny at an ipBlock's except) and it must not count
// against the per-CIDR limit. Judged against a direct reading of the
// semantics (most specific CIDR with a matching rule, rank order, default).
func TestCatchAllEndsChain(t *testing.T) {
	var rules []Rule
	allowPorts := func(cidr string, from, n int) {
		for i := 0; i < n; i++ {
			rules = append(rules, Rule{CIDR: netip.MustParsePrefix(cidr), Protocol: "tcp",
				Ports: []PortRange{{uint16(from + i), uint16(from + i)}}, Action: Allow})
		}
	}
	allowPorts("0.0.0.0/0", 1000, 20)
	allowPorts("10.0.0.0/8", 2000, 20)
	rules = append(rules, Rule{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Action: Deny})
	allowPorts("10.1.0.0/16", 3000, 20)
	rules = append(rules, Rule{CIDR: netip.MustParsePrefix("10.1.0.0/16"), Action: Deny})
	allowPorts("10.1.2.0/24", 4000, 5)
	s := Spec{Default: Deny, Rules: rules}
	// Without the cut the /24's chain would be 5 + 21 + 21 + 20 = 67.
	if err := s.Validate("e"); err != nil {
		t.Fatalf("a chain ending at catch-alls was refused: %v", err)
	}
	entries, err := Compile(s, Egress, "e", MaxMatches)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Prefix == netip.MustParsePrefix("10.1.2.0/24") && len(e.Rules) != 5+21 {
			t.Fatalf("the /24 holds %d matches, want its 5 and the /16's 21 (up to its catch-all)", len(e.Rules))
		}
	}
	direct := func(pkt Packet) Action {
		for bits := 32; bits >= 0; bits-- {
			p, _ := pkt.Peer.Prefix(bits)
			var at []Rule
			for _, r := range s.Rules {
				if r.CIDR == p {
					at = append(at, r)
				}
			}
			sort.SliceStable(at, func(i, j int) bool { return rank(at[i]) < rank(at[j]) })
			for _, r := range at {
				for _, cr := range compileOwn([]Rule{r}) {
					if Matches(cr, pkt) {
						return r.Action
					}
				}
			}
		}
		return s.Default
	}
	for _, peer := range []string{"10.1.2.3", "10.1.9.9", "10.9.9.9", "192.0.2.1"} {
		for _, port := range []uint16{1005, 2005, 3005, 4002, 5000} {
			pkt := Packet{Peer: netip.MustParseAddr(peer), Protocol: 6, Port: port, HasPort: true}
			if got, want := Decide(entries, pkt), direct(pkt); got != want {
				t.Errorf("%s:%d: compiled %s, semantics %s", peer, port, got, want)
			}
		}
	}
}
