package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
)

// CompiledRule is one match the datapath tries, in order. A Rule with n port
// ranges compiles to n CompiledRules.
type CompiledRule struct {
	Protocol uint8 // IP protocol number; 0 = any
	HasPorts bool
	Ports    PortRange // valid when HasPorts
	Action   Action
	From     netip.Prefix // the CIDR of the Rule this came from
}

// Entry is what the datapath stores under one prefix of one direction: the
// prefix's own rules followed by those inherited from every less specific
// prefix containing it, most specific first, then the direction's default.
// The kernel does one longest-prefix lookup and a first-match scan of Rules.
type Entry struct {
	Direction Direction
	Prefix    netip.Prefix
	Rules     []CompiledRule
	Default   Action
}

// Compile turns a validated Spec into the entries of direction d. There is
// always an entry for 0.0.0.0/0 and ::/0, so every address finds at least
// the default. maxRules bounds each entry's rule list (the kernel's array);
// an entry that needs more is a *FieldError on the rule that overflows.
func Compile(s Spec, d Direction, field string, maxRules int) ([]Entry, error) {
	if err := s.validate(field); err != nil {
		return nil, err
	}
	own := map[netip.Prefix][]Rule{}
	index := map[netip.Prefix]int{} // first rule index of a prefix, for errors
	for i, r := range s.Rules {
		if _, ok := own[r.CIDR]; !ok {
			index[r.CIDR] = i
		}
		own[r.CIDR] = append(own[r.CIDR], r)
	}
	all := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	for p := range own {
		if p.Bits() != 0 {
			all = append(all, p)
		}
	}
	// Ancestors are found by masking to each prefix length that occurs in
	// the same family: O(n × distinct lengths), not O(n²), for 100k CIDRs.
	lengths := map[bool][]int{}
	for p := range own {
		lengths[p.Addr().Is4()] = append(lengths[p.Addr().Is4()], p.Bits())
	}
	for fam, ls := range lengths {
		sort.Sort(sort.Reverse(sort.IntSlice(ls)))
		lengths[fam] = dedupe(ls)
	}
	compiled := map[netip.Prefix][]CompiledRule{}
	for p, rs := range own {
		compiled[p] = compileOwn(sortedRules(rs))
	}
	sort.Slice(all, func(i, j int) bool { return less(all[i], all[j]) })
	out := make([]Entry, 0, len(all))
	for _, p := range all {
		e := Entry{Direction: d, Prefix: p, Default: s.Default}
		e.Rules = append(e.Rules, compiled[p]...)
		for _, l := range lengths[p.Addr().Is4()] {
			if l >= p.Bits() {
				continue
			}
			anc, _ := p.Addr().Prefix(l)
			e.Rules = append(e.Rules, compiled[anc]...)
		}
		if len(e.Rules) > maxRules {
			i := index[p]
			return nil, fieldErr(fmt.Sprintf("%s[%d]", join(field, "rules"), i),
				"CIDR %s with the rules of the CIDRs containing it needs %d matches, more than the %d the datapath holds per CIDR",
				p, len(e.Rules), maxRules)
		}
		out = append(out, e)
	}
	return out, nil
}

func compileOwn(rs []Rule) []CompiledRule {
	var out []CompiledRule
	for _, r := range rs {
		proto, _ := ProtocolNumber(r.Protocol)
		if len(r.Ports) == 0 {
			out = append(out, CompiledRule{Protocol: proto, Action: r.Action, From: r.CIDR})
			continue
		}
		for _, pr := range r.Ports {
			out = append(out, CompiledRule{Protocol: proto, HasPorts: true, Ports: pr, Action: r.Action, From: r.CIDR})
		}
	}
	return out
}

func dedupe(s []int) []int {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func less(a, b netip.Prefix) bool {
	if a.Addr().Is4() != b.Addr().Is4() {
		return a.Addr().Is4()
	}
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}

// Packet is what Decide looks at: the peer address, protocol and the
// destination port (0 / HasPort false when the packet has none).
type Packet struct {
	Peer     netip.Addr
	Protocol uint8
	Port     uint16
	HasPort  bool
}

// Decide is the reference implementation of the kernel's decision over
// compiled entries: the longest prefix containing the peer, then the first
// matching rule, else the default. Tests compare the kernel against it.
func Decide(entries []Entry, pkt Packet) Action {
	var best *Entry
	for i := range entries {
		e := &entries[i]
		if e.Prefix.Addr().Is4() != pkt.Peer.Is4() || !e.Prefix.Contains(pkt.Peer) {
			continue
		}
		if best == nil || e.Prefix.Bits() > best.Prefix.Bits() {
			best = e
		}
	}
	if best == nil {
		return Allow
	}
	for _, r := range best.Rules {
		if Matches(r, pkt) {
			return r.Action
		}
	}
	return best.Default
}

// Matches reports whether one compiled rule matches a packet.
func Matches(r CompiledRule, pkt Packet) bool {
	if r.Protocol != 0 && r.Protocol != pkt.Protocol {
		return false
	}
	if r.HasPorts && (!pkt.HasPort || pkt.Port < r.Ports.From || pkt.Port > r.Ports.To) {
		return false
	}
	return true
}

func (r CompiledRule) String() string {
	s := "any"
	if r.Protocol != 0 {
		s = ProtocolName(r.Protocol)
	}
	if r.HasPorts {
		s += " " + r.Ports.String()
	}
	return fmt.Sprintf("%s %s (from %s)", s, r.Action, r.From)
}

// Summary is the entry's rule list and default in one line, e.g.
// "tcp 80 allow (from 10.0.0.0/8); default deny".
func (e Entry) Summary() string {
	s := ""
	for _, r := range e.Rules {
		s += r.String() + "; "
	}
	return s + "default " + e.Default.String()
}

type compiledRuleJSON struct {
	Protocol string `json:"protocol,omitempty"`
	Ports    string `json:"ports,omitempty"`
	Action   Action `json:"action"`
	From     string `json:"from"`
}

// MarshalJSON writes {"protocol":"tcp","ports":"80-90","action":"allow","from":"10.0.0.0/8"}.
func (r CompiledRule) MarshalJSON() ([]byte, error) {
	j := compiledRuleJSON{Protocol: ProtocolName(r.Protocol), Action: r.Action, From: r.From.String()}
	if r.HasPorts {
		j.Ports = r.Ports.String()
	}
	return json.Marshal(j)
}

// MarshalJSON writes {"direction":…,"cidr":…,"rules":[…],"default":…}.
func (e Entry) MarshalJSON() ([]byte, error) {
	rules := e.Rules
	if rules == nil {
		rules = []CompiledRule{}
	}
	return json.Marshal(struct {
		Direction Direction      `json:"direction"`
		CIDR      string         `json:"cidr"`
		Rules     []CompiledRule `json:"rules"`
		Default   Action         `json:"default"`
	}{e.Direction, e.Prefix.String(), rules, e.Default})
}
