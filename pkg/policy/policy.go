// Package policy is podscope's per-pod network policy: the user-facing
// types, their strict JSON form, and the compilation into the longest-prefix
// entries the TC programs enforce.
//
// Semantics: for a packet in one direction of a pod, the most specific CIDR
// that contains the peer address and has a rule matching the packet wins;
// within one CIDR a rule with protocol and ports beats one with protocol only,
// which beats one with neither. If no rule of the most specific CIDR matches,
// the next less specific CIDR containing the address is tried, and finally the
// direction's default. Two rules that would tie are a configuration error.
package policy

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Action is what a rule or a default does with a packet.
type Action uint8

const (
	Allow Action = 1
	Deny  Action = 2
)

var actionText = enumText[Action]{kind: "action", names: map[Action]string{Allow: "allow", Deny: "deny"}, order: []Action{Allow, Deny}}

func (a Action) String() string { return actionText.name(a) }

// MarshalText writes "allow" or "deny".
func (a Action) MarshalText() ([]byte, error) { return actionText.marshal(a) }

// UnmarshalText reads "allow" or "deny".
func (a *Action) UnmarshalText(b []byte) error { return actionText.unmarshal(a, b) }

func parseAction(s string) (Action, error) { return actionText.parse(s) }

// Direction is seen from the pod: Egress leaves it, Ingress enters it.
type Direction uint8

const (
	Egress  Direction = 0
	Ingress Direction = 1
)

var directionText = enumText[Direction]{kind: "direction", names: map[Direction]string{Egress: "egress", Ingress: "ingress"}, order: []Direction{Egress, Ingress}}

func (d Direction) String() string { return directionText.name(d) }

// MarshalText writes "egress" or "ingress".
func (d Direction) MarshalText() ([]byte, error) { return directionText.marshal(d) }

// UnmarshalText reads "egress" or "ingress".
func (d *Direction) UnmarshalText(b []byte) error { return directionText.unmarshal(d, b) }

// enumText is the text form of a small enum (Action, Direction): one table
// for String, MarshalText and UnmarshalText and their errors.
type enumText[T ~uint8] struct {
	kind  string
	names map[T]string
	order []T // for the error message
}

func (e enumText[T]) name(v T) string {
	if n, ok := e.names[v]; ok {
		return n
	}
	return fmt.Sprintf("%s(%d)", e.kind, uint8(v))
}

func (e enumText[T]) marshal(v T) ([]byte, error) {
	n, ok := e.names[v]
	if !ok {
		return nil, fmt.Errorf("invalid %s %d", e.kind, uint8(v))
	}
	return []byte(n), nil
}

func (e enumText[T]) parse(s string) (T, error) {
	for _, v := range e.order {
		if e.names[v] == s {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%s %q is neither %q nor %q", e.kind, s, e.names[e.order[0]], e.names[e.order[1]])
}

func (e enumText[T]) unmarshal(dst *T, b []byte) error {
	v, err := e.parse(string(b))
	if err != nil {
		return err
	}
	*dst = v
	return nil
}

// PortRange is an inclusive range of L4 ports; a single port has From == To.
type PortRange struct{ From, To uint16 }

func (p PortRange) String() string {
	if p.From == p.To {
		return strconv.Itoa(int(p.From))
	}
	return fmt.Sprintf("%d-%d", p.From, p.To)
}

func (p PortRange) overlaps(q PortRange) bool { return p.From <= q.To && q.From <= p.To }

// Rule applies Action to packets whose peer address is in CIDR and, when set,
// whose protocol and destination port match. The port is always the packet's
// destination port: the remote's port for egress, the pod's own (service)
// port for ingress — the port of whoever was contacted. Replies of an allowed
// connection are let through by connection tracking, not by rules.
type Rule struct {
	CIDR     netip.Prefix
	Protocol string // "", tcp, udp, sctp, icmp, icmpv6
	Ports    []PortRange
	Action   Action
}

// Spec is the policy of one direction.
type Spec struct {
	Default Action
	Rules   []Rule
}

// Policy is a pod's policy in both directions.
type Policy struct {
	Egress, Ingress Spec
}

// AllowAll is the spec that lets everything through.
func AllowAll() Spec { return Spec{Default: Allow} }

// Spec returns the spec of direction d.
func (p Policy) Spec(d Direction) Spec {
	if d == Ingress {
		return p.Ingress
	}
	return p.Egress
}

// Protocols podscope can match, with their IP protocol numbers.
var protocolNumbers = map[string]uint8{
	"tcp":    6,
	"udp":    17,
	"sctp":   132,
	"icmp":   1,
	"icmpv6": 58,
}

// ProtocolNumber is the IP protocol number of a protocol name; "" is 0 (any).
func ProtocolNumber(name string) (uint8, bool) {
	if name == "" {
		return 0, true
	}
	n, ok := protocolNumbers[name]
	return n, ok
}

// ProtocolName is the name of an IP protocol number, or its decimal form.
func ProtocolName(n uint8) string {
	for k, v := range protocolNumbers {
		if v == n {
			return k
		}
	}
	if n == 0 {
		return ""
	}
	return strconv.Itoa(int(n))
}

func hasPorts(proto string) bool { return proto == "tcp" || proto == "udp" || proto == "sctp" }
