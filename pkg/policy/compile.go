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

// MaxMatches is how many matches the datapath holds per CIDR: a CIDR's own
// rules (one per port range) plus those of every less specific CIDR of the
// same direction containing it. A spec that needs more anywhere is refused
// when it is parsed or validated, naming the rule that overflows.
const MaxMatches = 32

// Compile turns a validated Spec into the entries of direction d. There is
// always an entry for 0.0.0.0/0 and ::/0, so every address finds at least
// the default. maxRules bounds each entry's rule list (the kernel's array);
// an entry that needs more is a *FieldError on the rule that overflows.
func Compile(s Spec, d Direction, field string, maxRules int) ([]Entry, error) {
	if err := s.validateRules(field); err != nil {
		return nil, err
	}
	c := newChains(s)
	sort.Slice(c.all, func(i, j int) bool { return PrefixLess(c.all[i], c.all[j]) })
	out := make([]Entry, 0, len(c.all))
	for _, p := range c.all {
		rules, src := c.chain(p)
		if len(rules) > maxRules {
			return nil, c.overflow(field, p, len(rules), src[maxRules], maxRules)
		}
		out = append(out, Entry{Direction: d, Prefix: p, Default: s.Default, Rules: rules})
	}
	return out, nil
}

// chains holds a spec's rules by CIDR, compiled in priority order, with the
// index in Spec.Rules each compiled rule came from.
type chains struct {
	spec     Spec
	all      []netip.Prefix // /0 of both families and every CIDR with rules
	compiled map[netip.Prefix][]CompiledRule
	src      map[netip.Prefix][]int
	lengths  map[bool][]int // distinct prefix lengths per family (Is4), longest first
}

func newChains(s Spec) *chains {
	c := &chains{spec: s, compiled: map[netip.Prefix][]CompiledRule{}, src: map[netip.Prefix][]int{}, lengths: map[bool][]int{}}
	own := map[netip.Prefix][]int{}
	for i, r := range s.Rules {
		own[r.CIDR] = append(own[r.CIDR], i)
	}
	c.all = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	for p, idx := range own {
		if p.Bits() != 0 {
			c.all = append(c.all, p)
		}
		c.lengths[p.Addr().Is4()] = append(c.lengths[p.Addr().Is4()], p.Bits())
		// Priority order within one CIDR: protocol+ports, protocol, neither.
		sort.SliceStable(idx, func(a, b int) bool { return rank(s.Rules[idx[a]]) < rank(s.Rules[idx[b]]) })
		for _, i := range idx {
			for _, cr := range compileOwn([]Rule{s.Rules[i]}) {
				c.compiled[p] = append(c.compiled[p], cr)
				c.src[p] = append(c.src[p], i)
			}
		}
	}
	// Ancestors are found by masking to each prefix length that occurs in
	// the same family: O(n × distinct lengths), not O(n²), for 100k CIDRs.
	for fam, ls := range c.lengths {
		sort.Sort(sort.Reverse(sort.IntSlice(ls)))
		c.lengths[fam] = dedupe(ls)
	}
	return c
}

// chain is p's own rules followed by those of every less specific CIDR
// containing it, most specific first, with their source indexes. It ends
// at the first CIDR with a catch-all rule (no protocol, no ports): that
// rule matches every packet, so no rule after it could ever be reached.
// A compiled NetworkPolicy (allows at a CIDR, then a catch-all deny there
// for an ipBlock's except) thus never carries its ancestors' rules.
func (c *chains) chain(p netip.Prefix) ([]CompiledRule, []int) {
	rules := append([]CompiledRule(nil), c.compiled[p]...)
	src := append([]int(nil), c.src[p]...)
	c.ancestors(p, func(anc netip.Prefix) {
		rules = append(rules, c.compiled[anc]...)
		src = append(src, c.src[anc]...)
	})
	return rules, src
}

// ancestors calls f for each less specific CIDR with rules whose rules
// belong to p's chain, most specific first.
func (c *chains) ancestors(p netip.Prefix, f func(netip.Prefix)) {
	if hasCatchAll(c.compiled[p]) {
		return
	}
	for _, l := range c.lengths[p.Addr().Is4()] {
		if l >= p.Bits() {
			continue
		}
		anc, _ := p.Addr().Prefix(l)
		f(anc)
		if hasCatchAll(c.compiled[anc]) {
			return
		}
	}
}

// length is len(chain(p)) without building it.
func (c *chains) length(p netip.Prefix) int {
	n := len(c.compiled[p])
	c.ancestors(p, func(anc netip.Prefix) { n += len(c.compiled[anc]) })
	return n
}

func hasCatchAll(rs []CompiledRule) bool {
	for _, r := range rs {
		if r.Protocol == 0 && !r.HasPorts {
			return true
		}
	}
	return false
}

func (c *chains) overflow(field string, p netip.Prefix, n, rule, max int) error {
	r := c.spec.Rules[rule]
	what := "its match"
	if len(r.Ports) > 1 {
		what = "its port ranges"
	}
	return fieldErr(fmt.Sprintf("%s[%d]", join(field, "rules"), rule),
		"CIDR %s with the rules of the CIDRs containing it needs %d matches, more than the %d the datapath holds per CIDR: "+
			"this rule (CIDR %s) brings %s past the limit; merge port ranges or rules of the CIDRs on that chain",
		p, n, max, r.CIDR, what)
}

// checkChains refuses a spec whose chain of some CIDR needs more than max
// matches, naming the rule that brings the first such chain past max. It
// only counts (one map of ints); the chains are built only to name the rule
// of a spec that overflows.
func (s Spec) checkChains(field string, max int) error {
	if len(s.Rules) == 0 {
		return nil
	}
	count := make(map[netip.Prefix]int, len(s.Rules))
	catchAll := map[netip.Prefix]bool{}
	seen := map[bool]map[int]bool{true: {}, false: {}}
	lengths := map[bool][]int{}
	for _, r := range s.Rules {
		n := len(r.Ports)
		if n == 0 {
			n = 1
		}
		count[r.CIDR] += n
		if r.Protocol == "" && len(r.Ports) == 0 {
			catchAll[r.CIDR] = true
		}
		fam := r.CIDR.Addr().Is4()
		if !seen[fam][r.CIDR.Bits()] {
			seen[fam][r.CIDR.Bits()] = true
			lengths[fam] = append(lengths[fam], r.CIDR.Bits())
		}
	}
	for _, ls := range lengths {
		sort.Sort(sort.Reverse(sort.IntSlice(ls)))
	}
	over := false
	for p, n := range count {
		// The same walk as chains.ancestors: most specific first, up to
		// the first catch-all.
		for _, l := range lengths[p.Addr().Is4()] {
			if catchAll[p] {
				break
			}
			if l < p.Bits() {
				anc, _ := p.Addr().Prefix(l)
				n += count[anc]
				if catchAll[anc] {
					break
				}
			}
		}
		if n > max {
			over = true
			break
		}
	}
	if !over {
		return nil
	}
	c := newChains(s)
	var worst []netip.Prefix
	for _, p := range c.all {
		if c.length(p) > max {
			worst = append(worst, p)
		}
	}
	sort.Slice(worst, func(i, j int) bool { return PrefixLess(worst[i], worst[j]) })
	rules, src := c.chain(worst[0])
	return c.overflow(field, worst[0], len(rules), src[max], max)
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

// PrefixLess orders prefixes IPv4 first, then by address, then shorter
// first: the order compiled rules are listed in.
func PrefixLess(a, b netip.Prefix) bool {
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
