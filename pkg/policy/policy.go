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

func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// MarshalText writes "allow" or "deny".
func (a Action) MarshalText() ([]byte, error) {
	if a != Allow && a != Deny {
		return nil, fmt.Errorf("invalid action %d", uint8(a))
	}
	return []byte(a.String()), nil
}

// UnmarshalText reads "allow" or "deny".
func (a *Action) UnmarshalText(b []byte) error {
	v, err := parseAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

func parseAction(s string) (Action, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	}
	return 0, fmt.Errorf("action %q is neither \"allow\" nor \"deny\"", s)
}

// Direction is seen from the pod: Egress leaves it, Ingress enters it.
type Direction uint8

const (
	Egress  Direction = 0
	Ingress Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Egress:
		return "egress"
	case Ingress:
		return "ingress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// MarshalText writes "egress" or "ingress".
func (d Direction) MarshalText() ([]byte, error) {
	if d != Egress && d != Ingress {
		return nil, fmt.Errorf("invalid direction %d", uint8(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText reads "egress" or "ingress".
func (d *Direction) UnmarshalText(b []byte) error {
	switch string(b) {
	case "egress":
		*d = Egress
	case "ingress":
		*d = Ingress
	default:
		return fmt.Errorf("direction %q is neither \"egress\" nor \"ingress\"", b)
	}
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
