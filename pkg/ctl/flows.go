package ctl

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// Flows is the answer of `podscopectl flows`.
type Flows struct {
	Pod   string          `json:"pod"`
	Flows []datapath.Flow `json:"flows"`
}

func gatherFlows(root pins.Root, ref string) (*Flows, error) {
	return podView(root, ref, func(p pods.Pod, dp *datapath.Datapath) (*Flows, error) {
		fl, err := dp.Flows(p.ID)
		if err != nil {
			return nil, err
		}
		if fl == nil {
			fl = []datapath.Flow{}
		}
		sort.SliceStable(fl, func(i, j int) bool { return fl[i].LastSeen.After(fl[j].LastSeen) })
		return &Flows{Pod: p.Ref(), Flows: fl}, nil
	})
}

func printFlows(w io.Writer, f *Flows) error {
	if len(f.Flows) == 0 {
		_, err := fmt.Fprintf(w, "no flows recorded for pod %s\n", f.Pod)
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tLOCAL\tREMOTE\tINITIATOR\tVERDICT\tTX BYTES\tTX PKTS\tRX BYTES\tRX PKTS\tLAST SEEN")
	for _, fl := range f.Flows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", fl.Proto, endpoint(fl.Proto, fl.Local), endpoint(fl.Proto, fl.Remote),
			fl.Initiator, verdict(fl), fl.TxBytes, fl.TxPackets, fl.RxBytes, fl.RxPackets, ago(now, fl.LastSeen))
	}
	return tw.Flush()
}

// verdict is the flow's verdict and, for a deny, which policy denied it:
// "deny (policy)" for podscope's own, "deny (networkpolicy)" for the pod's
// Kubernetes NetworkPolicy.
func verdict(fl datapath.Flow) string {
	if fl.DeniedBy == "" {
		return fl.Verdict.String()
	}
	return fmt.Sprintf("%s (%s)", fl.Verdict, fl.DeniedBy)
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

// endpoint prints address:port for protocols with ports, the bare address
// otherwise (ICMP has no port; ":0" would suggest one).
func endpoint(proto string, ap netip.AddrPort) string {
	switch proto {
	case "tcp", "udp", "sctp":
		return ap.String()
	}
	return ap.Addr().String()
}
