package netpol

import (
	"sort"

	"github.com/podscope/podscope/pkg/policy"
)

// protocols NetworkPolicy ports can name, in the order rules are emitted.
var protocols = [...]string{"tcp", "udp", "sctp"}

func protoIndex(p string) int {
	for i, q := range protocols {
		if q == p {
			return i
		}
	}
	return -1
}

// services is a set of (protocol, destination port) a peer may use: all
// traffic (an empty ports list: every protocol, ICMP included), or per
// protocol every port or a set of ranges (sorted, disjoint, not adjacent).
type services struct {
	all    bool
	full   [len(protocols)]bool
	ranges [len(protocols)][]policy.PortRange
}

func allServices() *services { return &services{all: true} }

func (s *services) empty() bool {
	if s == nil {
		return true
	}
	if s.all {
		return false
	}
	for i := range protocols {
		if s.full[i] || len(s.ranges[i]) > 0 {
			return false
		}
	}
	return true
}

// addRange adds ports from..to of protocol i.
func (s *services) addRange(i int, r policy.PortRange) {
	if s.all || s.full[i] {
		return
	}
	if r.From <= 1 && r.To == 65535 {
		s.full[i], s.ranges[i] = true, nil
		return
	}
	s.ranges[i] = mergeRanges(append(s.ranges[i], r))
}

// union adds everything in o to s.
func (s *services) union(o *services) {
	if o == nil || s.all {
		return
	}
	if o.all {
		*s = services{all: true}
		return
	}
	for i := range protocols {
		if o.full[i] {
			s.full[i], s.ranges[i] = true, nil
		} else if !s.full[i] && len(o.ranges[i]) > 0 {
			s.ranges[i] = mergeRanges(append(append([]policy.PortRange(nil), s.ranges[i]...), o.ranges[i]...))
		}
	}
}

func (s *services) clone() *services {
	c := &services{all: s.all, full: s.full}
	for i := range protocols {
		c.ranges[i] = append([]policy.PortRange(nil), s.ranges[i]...)
	}
	return c
}

func (s *services) equal(o *services) bool {
	if s.empty() || o.empty() {
		return s.empty() == o.empty()
	}
	if s.all != o.all || s.full != o.full {
		return false
	}
	for i := range protocols {
		if len(s.ranges[i]) != len(o.ranges[i]) {
			return false
		}
		for j := range s.ranges[i] {
			if s.ranges[i][j] != o.ranges[i][j] {
				return false
			}
		}
	}
	return true
}

// mergeRanges sorts rs and joins overlapping and adjacent ranges.
func mergeRanges(rs []policy.PortRange) []policy.PortRange {
	sort.Slice(rs, func(i, j int) bool { return rs[i].From < rs[j].From })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && uint32(r.From) <= uint32(out[n-1].To)+1 {
			if r.To > out[n-1].To {
				out[n-1].To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}
