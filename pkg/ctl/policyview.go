package ctl

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/policy"
)

// PodPolicy is what the kernel enforces for one pod (read from the pinned
// policy maps, not from the config that asked for it).
type PodPolicy struct {
	Pod     string        `json:"pod"`
	Entries []PolicyEntry `json:"entries"`
}

// PolicyEntry is one prefix of one direction with its rules in match order.
type PolicyEntry struct {
	Direction string       `json:"direction"`
	Prefix    string       `json:"prefix"`
	Rules     []PolicyRule `json:"rules"`
	Default   string       `json:"default"`
}

// PolicyRule is one compiled match.
type PolicyRule struct {
	Protocol string `json:"protocol,omitempty"`
	Ports    string `json:"ports,omitempty"`
	Action   string `json:"action"`
	From     string `json:"from"`
}

func gatherPolicy(root pins.Root, ref string) (*PodPolicy, error) {
	return podView(root, ref, func(p pods.Pod, dp *datapath.Datapath) (*PodPolicy, error) {
		es, err := dp.PolicyEntries(p.ID)
		if err != nil {
			return nil, err
		}
		return &PodPolicy{Pod: p.Ref(), Entries: convertEntries(es)}, nil
	})
}

// convertEntries orders entries as the kernel decides: per direction, the
// longest prefix first (v4 before v6 at equal length).
func convertEntries(es []policy.Entry) []PolicyEntry {
	es = append([]policy.Entry(nil), es...)
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return a.Prefix.Bits() > b.Prefix.Bits()
		}
		if a.Prefix.Addr().Is4() != b.Prefix.Addr().Is4() {
			return a.Prefix.Addr().Is4()
		}
		return a.Prefix.Addr().Less(b.Prefix.Addr())
	})
	out := make([]PolicyEntry, 0, len(es))
	for _, e := range es {
		pe := PolicyEntry{Direction: e.Direction.String(), Prefix: e.Prefix.String(), Default: e.Default.String(), Rules: []PolicyRule{}}
		for _, r := range e.Rules {
			pr := PolicyRule{Action: r.Action.String(), From: r.From.String()}
			if r.Protocol != 0 {
				pr.Protocol = policy.ProtocolName(r.Protocol)
			}
			if r.HasPorts {
				pr.Ports = r.Ports.String()
			}
			pe.Rules = append(pe.Rules, pr)
		}
		out = append(out, pe)
	}
	return out
}

func printPolicy(w io.Writer, pp *PodPolicy) error {
	fmt.Fprintf(w, "policy of pod %s (as the kernel enforces it: per direction the longest matching prefix applies, its first matching rule wins, else its default)\n", pp.Pod)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DIRECTION\tPREFIX\tRULES (proto port -> action [from])\tDEFAULT")
	for _, e := range pp.Entries {
		var rs []string
		for _, r := range e.Rules {
			s := r.Protocol
			if s == "" {
				s = "any"
			}
			if r.Ports != "" {
				s += " " + r.Ports
			}
			rs = append(rs, fmt.Sprintf("%s -> %s [%s]", s, r.Action, r.From))
		}
		if len(rs) == 0 {
			rs = []string{"-"}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Direction, e.Prefix, strings.Join(rs, "; "), e.Default)
	}
	return tw.Flush()
}
