package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// FieldError is a policy error that names the offending field by its path,
// e.g. `policy.egress.rules[1].ports[0]`.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

func join(parent, child string) string {
	if parent == "" {
		return child
	}
	if strings.HasPrefix(child, "[") {
		return parent + child
	}
	return parent + "." + child
}

// object decodes a JSON object strictly: only the allowed keys, each once.
func object(data []byte, field string, allowed ...string) (map[string]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fieldErr(field, "must be a JSON object, got %s", preview(trimmed))
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if _, err := dec.Token(); err != nil {
		return nil, fieldErr(field, "invalid JSON: %v", err)
	}
	out := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fieldErr(field, "invalid JSON: %v", err)
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fieldErr(join(field, key), "invalid JSON: %v", err)
		}
		known := false
		for _, a := range allowed {
			known = known || a == key
		}
		if !known {
			return nil, fieldErr(join(field, key), "unknown field (known: %s)", strings.Join(allowed, ", "))
		}
		if _, dup := out[key]; dup {
			return nil, fieldErr(join(field, key), "given twice")
		}
		out[key] = raw
	}
	if _, err := dec.Token(); err != nil {
		return nil, fieldErr(field, "invalid JSON: %v", err)
	}
	if dec.More() {
		return nil, fieldErr(field, "invalid JSON: trailing data after the object")
	}
	if _, err := dec.Token(); err == nil {
		return nil, fieldErr(field, "invalid JSON: trailing data after the object")
	}
	return out, nil
}

func preview(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	if len(b) > 20 {
		return string(b[:20]) + "…"
	}
	return string(b)
}

func stringField(raw json.RawMessage, field string) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldErr(field, "must be a string, got %s", preview(bytes.TrimSpace(raw)))
	}
	return s, nil
}

// ParsePolicy parses {"egress": Spec, "ingress": Spec}; a missing direction
// is AllowAll. field prefixes the paths in errors (e.g. "policy").
func ParsePolicy(data []byte, field string) (Policy, error) {
	obj, err := object(data, field, "egress", "ingress")
	if err != nil {
		return Policy{}, err
	}
	p := Policy{Egress: AllowAll(), Ingress: AllowAll()}
	if raw, ok := obj["egress"]; ok {
		if p.Egress, err = ParseSpec(raw, join(field, "egress")); err != nil {
			return Policy{}, err
		}
	}
	if raw, ok := obj["ingress"]; ok {
		if p.Ingress, err = ParseSpec(raw, join(field, "ingress")); err != nil {
			return Policy{}, err
		}
	}
	return p, nil
}

// ParseSpec parses one direction's policy strictly: unknown fields, invalid
// or non-canonical CIDRs, bad protocols, ports and actions, and rules that tie
// are *FieldError naming the path below field. "default" is required: a
// policy that silently defaults is a policy nobody reviewed.
func ParseSpec(data []byte, field string) (Spec, error) {
	obj, err := object(data, field, "default", "rules")
	if err != nil {
		return Spec{}, err
	}
	var s Spec
	if s.Default, err = actionField(obj, field, "default"); err != nil {
		return Spec{}, err
	}
	if raw, ok := obj["rules"]; ok && string(bytes.TrimSpace(raw)) != "null" {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return Spec{}, fieldErr(join(field, "rules"), "must be a list of rules")
		}
		for i, item := range items {
			r, err := parseRule(item, fmt.Sprintf("%s[%d]", join(field, "rules"), i))
			if err != nil {
				return Spec{}, err
			}
			s.Rules = append(s.Rules, r)
		}
	}
	if err := s.validate(field); err != nil {
		return Spec{}, err
	}
	return s, nil
}

func parseRule(data []byte, field string) (Rule, error) {
	obj, err := object(data, field, "cidr", "protocol", "ports", "action")
	if err != nil {
		return Rule{}, err
	}
	var r Rule
	raw, ok := obj["cidr"]
	if !ok {
		return Rule{}, fieldErr(join(field, "cidr"), "missing")
	}
	c, err := stringField(raw, join(field, "cidr"))
	if err != nil {
		return Rule{}, err
	}
	if r.CIDR, err = parseCIDR(c, join(field, "cidr")); err != nil {
		return Rule{}, err
	}
	if raw, ok := obj["protocol"]; ok {
		if r.Protocol, err = stringField(raw, join(field, "protocol")); err != nil {
			return Rule{}, err
		}
	}
	if raw, ok := obj["ports"]; ok && string(bytes.TrimSpace(raw)) != "null" {
		var ports []json.RawMessage
		if err := json.Unmarshal(raw, &ports); err != nil {
			return Rule{}, fieldErr(join(field, "ports"), `must be a list of strings like "80" or "8000-8080"`)
		}
		if len(ports) == 0 {
			// [] reads like "no port" but would mean every port.
			return Rule{}, fieldErr(join(field, "ports"), `is an empty list: leave "ports" out to match every port, or list them`)
		}
		for i, p := range ports {
			pf := fmt.Sprintf("%s[%d]", join(field, "ports"), i)
			var s string
			if err := json.Unmarshal(p, &s); err != nil {
				// A bare number is a common slip; accept it as its decimal form.
				var n json.Number
				if json.Unmarshal(p, &n) != nil {
					return Rule{}, fieldErr(pf, `must be a string like "80" or "8000-8080", got %s`, preview(p))
				}
				s = n.String()
			}
			pr, err := parsePortRange(s, pf)
			if err != nil {
				return Rule{}, err
			}
			r.Ports = append(r.Ports, pr)
		}
	}
	if r.Action, err = actionField(obj, field, "action"); err != nil {
		return Rule{}, err
	}
	return r, nil
}

// actionField reads the required action obj[name]: "allow" or "deny".
func actionField(obj map[string]json.RawMessage, field, name string) (Action, error) {
	f := join(field, name)
	raw, ok := obj[name]
	if !ok {
		return 0, fieldErr(f, `missing: say "allow" or "deny"`)
	}
	s, err := stringField(raw, f)
	if err != nil {
		return 0, err
	}
	a, err := parseAction(s)
	if err != nil {
		return 0, fieldErr(f, "%v", err)
	}
	return a, nil
}

// parseCIDR refuses host bits instead of silently masking them: "10.1.2.3/8"
// is more often a typo for /32 than a wish for 10.0.0.0/8.
func parseCIDR(s, field string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fieldErr(field, "invalid CIDR %q (want e.g. \"10.0.0.0/8\" or \"fd00::/8\")", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fieldErr(field, "CIDR %q has a zone", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fieldErr(field, "CIDR %q is an IPv4-mapped IPv6 prefix: write the IPv4 CIDR", s)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fieldErr(field, "CIDR %q has host bits set (did you mean %q?)", s, m.String())
	}
	return p, nil
}

func parsePort(s, orig, field string) (uint16, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fieldErr(field, "port %q is not a number or range like \"8000-8080\"", orig)
	}
	if n < 1 || n > 65535 {
		return 0, fieldErr(field, "port %q out of range 1-65535", orig)
	}
	return uint16(n), nil
}

func parsePortRange(s, field string) (PortRange, error) {
	from, to, isRange := strings.Cut(s, "-")
	a, err := parsePort(strings.TrimSpace(from), s, field)
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{a, a}, nil
	}
	b, err := parsePort(strings.TrimSpace(to), s, field)
	if err != nil {
		return PortRange{}, err
	}
	if b < a {
		return PortRange{}, fieldErr(field, "port range %q ends before it starts", s)
	}
	return PortRange{a, b}, nil
}

// Validate checks a Spec built in Go (not parsed) with the same rules as
// ParseSpec; field prefixes the paths in errors.
func (s Spec) Validate(field string) error { return s.validate(field) }

// Validate checks both directions.
func (p Policy) Validate(field string) error {
	if err := p.Egress.validate(join(field, "egress")); err != nil {
		return err
	}
	return p.Ingress.validate(join(field, "ingress"))
}

func (s Spec) validate(field string) error {
	if err := s.validateRules(field); err != nil {
		return err
	}
	return s.checkChains(field, MaxMatches)
}

// validateRules is validate without the datapath's chain limit (Compile
// checks that against the limit it is given).
func (s Spec) validateRules(field string) error {
	if s.Default != Allow && s.Default != Deny {
		return fieldErr(join(field, "default"), `must be "allow" or "deny"`)
	}
	groups := map[tieGroup][]int{}
	for i, r := range s.Rules {
		rf := fmt.Sprintf("%s[%d]", join(field, "rules"), i)
		if !r.CIDR.IsValid() {
			return fieldErr(join(rf, "cidr"), "missing or invalid")
		}
		if r.CIDR.Masked() != r.CIDR {
			return fieldErr(join(rf, "cidr"), "CIDR %q has host bits set (did you mean %q?)", r.CIDR, r.CIDR.Masked())
		}
		if r.CIDR.Addr().Is4In6() {
			return fieldErr(join(rf, "cidr"), "CIDR %q is an IPv4-mapped IPv6 prefix: write the IPv4 CIDR", r.CIDR)
		}
		if _, ok := ProtocolNumber(r.Protocol); !ok {
			return fieldErr(join(rf, "protocol"), "unknown protocol %q (known: tcp, udp, sctp, icmp, icmpv6, or leave it out)", r.Protocol)
		}
		if r.Protocol == "icmp" && r.CIDR.Addr().Is6() {
			return fieldErr(join(rf, "protocol"), "icmp never matches the IPv6 CIDR %s: use icmpv6", r.CIDR)
		}
		if r.Protocol == "icmpv6" && r.CIDR.Addr().Is4() {
			return fieldErr(join(rf, "protocol"), "icmpv6 never matches the IPv4 CIDR %s: use icmp", r.CIDR)
		}
		if len(r.Ports) > 0 && !hasPorts(r.Protocol) {
			return fieldErr(join(rf, "ports"), "ports need protocol tcp, udp or sctp (protocol is %q)", r.Protocol)
		}
		for j, p := range r.Ports {
			if p.From == 0 || p.To < p.From {
				return fieldErr(fmt.Sprintf("%s[%d]", join(rf, "ports"), j), "port range %d-%d is not within 1-65535 in order", p.From, p.To)
			}
		}
		if r.Action != Allow && r.Action != Deny {
			return fieldErr(join(rf, "action"), `must be "allow" or "deny"`)
		}
		// Only rules of the same CIDR and protocol can tie: compare within
		// that group, not with every earlier rule (100k-CIDR policies).
		g := tieGroup{r.CIDR, r.Protocol}
		for _, j := range groups[g] {
			if ties(s.Rules[j], r) {
				return fieldErr(rf, "ties with %s[%d]: same CIDR %s, same protocol %q and %s; the most specific rule must be unique",
					join(field, "rules"), j, r.CIDR, r.Protocol, overlapWords(s.Rules[j], r))
			}
		}
		groups[g] = append(groups[g], i)
	}
	return nil
}

type tieGroup struct {
	cidr  netip.Prefix
	proto string
}

func ties(a, b Rule) bool {
	if a.CIDR != b.CIDR || a.Protocol != b.Protocol {
		return false
	}
	if len(a.Ports) == 0 || len(b.Ports) == 0 {
		return len(a.Ports) == 0 && len(b.Ports) == 0
	}
	for _, p := range a.Ports {
		for _, q := range b.Ports {
			if p.overlaps(q) {
				return true
			}
		}
	}
	return false
}

func overlapWords(a, b Rule) string {
	if len(a.Ports) == 0 {
		return "neither has ports"
	}
	for _, p := range a.Ports {
		for _, q := range b.Ports {
			if p.overlaps(q) {
				return fmt.Sprintf("overlapping ports %s and %s", p, q)
			}
		}
	}
	return "overlapping ports"
}

type ruleJSON struct {
	CIDR     string   `json:"cidr"`
	Protocol string   `json:"protocol,omitempty"`
	Ports    []string `json:"ports,omitempty"`
	Action   Action   `json:"action"`
}

type specJSON struct {
	Default Action     `json:"default"`
	Rules   []ruleJSON `json:"rules"`
}

// MarshalJSON writes the form ParseSpec reads.
func (s Spec) MarshalJSON() ([]byte, error) {
	out := specJSON{Default: s.Default, Rules: []ruleJSON{}}
	for _, r := range s.Rules {
		rj := ruleJSON{CIDR: r.CIDR.String(), Protocol: r.Protocol, Action: r.Action}
		for _, p := range r.Ports {
			rj.Ports = append(rj.Ports, p.String())
		}
		out.Rules = append(out.Rules, rj)
	}
	return json.Marshal(out)
}

// UnmarshalJSON is ParseSpec with paths relative to the spec.
func (s *Spec) UnmarshalJSON(b []byte) error {
	v, err := ParseSpec(b, "")
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalJSON writes {"egress": …, "ingress": …}.
func (p Policy) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Egress  Spec `json:"egress"`
		Ingress Spec `json:"ingress"`
	}{p.Egress, p.Ingress})
}

// UnmarshalJSON is ParsePolicy with paths relative to the policy.
func (p *Policy) UnmarshalJSON(b []byte) error {
	v, err := ParsePolicy(b, "")
	if err != nil {
		return err
	}
	*p = v
	return nil
}

func rank(r Rule) int {
	switch {
	case r.Protocol != "" && len(r.Ports) > 0:
		return 0
	case r.Protocol != "":
		return 1
	}
	return 2
}
