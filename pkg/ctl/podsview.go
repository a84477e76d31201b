package ctl

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
)

// PodRow is one line of `podscopectl pods`.
type PodRow struct {
	pods.Pod
	Counters      datapath.Counters `json:"counters"`
	CountersError string            `json:"countersError,omitempty"`
}

func openRegistry(root pins.Root) (*pods.Registry, error) {
	reg, err := pods.OpenPinnedRegistry(root)
	if errors.Is(err, pods.ErrNoRegistry) {
		return nil, notAttachedError("no pods attached under %s (%w): is podscope chained in the node's CNI conflist, or is --bpffs-root wrong?", root.Path, err)
	}
	return reg, err
}

func gatherPods(root pins.Root) ([]PodRow, error) {
	list, err := podstate.List(root)
	if err != nil {
		return nil, err
	}
	rows := make([]PodRow, 0, len(list))
	for _, p := range list {
		r := PodRow{Pod: p.Pod, Counters: p.Counters}
		if p.CountersErr != nil {
			r.CountersError = p.CountersErr.Error()
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func printPods(w io.Writer, rows []PodRow) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "no pods attached")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tINTERFACE\tHOST VETH\tIPS\tMODE\tRX BYTES\tRX PKTS\tTX BYTES\tTX PKTS\tDROPS EG/IN\tNETPOL EG/IN")
	for _, r := range rows {
		ips := make([]string, len(r.IPs))
		for i, ip := range r.IPs {
			ips[i] = ip.Addr().String()
		}
		c := r.Counters
		counters := fmt.Sprintf("%d\t%d\t%d\t%d\t%d/%d\t%d/%d", c.RxBytes, c.RxPackets, c.TxBytes, c.TxPackets,
			c.DropsEgress, c.DropsIngress, c.NetworkPolicyDropsEgress, c.NetworkPolicyDropsIngress)
		if r.CountersError != "" {
			counters = "?\t?\t?\t?\t?\t?"
		}
		host, mode := r.HostInterface, string(r.Mode)
		if r.Unobserved != "" {
			host, mode, counters = "-", "unobserved", "-\t-\t-\t-\t-\t-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Ref(), r.Interface, host, strings.Join(ips, ","), mode, counters)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		if r.Unobserved != "" {
			if _, err := fmt.Fprintf(w, "%s unobserved: %s\n", r.Ref(), r.Unobserved); err != nil {
				return err
			}
		}
	}
	return nil
}

// findPod resolves NS/NAME (or a container ID) in the registry.
func findPod(root pins.Root, ref string) (pods.Pod, error) {
	if ref == "" {
		return pods.Pod{}, usageError("name the pod as NS/NAME")
	}
	reg, err := openRegistry(root)
	if err != nil {
		return pods.Pod{}, err
	}
	defer reg.Close()
	p, ok, err := reg.ByName(ref)
	if err != nil {
		return pods.Pod{}, err
	}
	if !ok {
		return pods.Pod{}, notAttachedError("pod %q is not attached under %s: see `podscopectl pods` for the attached ones", ref, root.Path)
	}
	return p, nil
}

// podView is a per-pod view (flows, policy): it resolves ref, opens the
// datapath that holds the pod's state and reads the view with read.
func podView[V any](root pins.Root, ref string, read func(pods.Pod, *datapath.Datapath) (V, error)) (V, error) {
	var none V
	p, err := findPod(root, ref)
	if err != nil {
		return none, err
	}
	dp, err := datapath.OpenPinned(root)
	if err != nil {
		return none, fmt.Errorf("datapath pins under %s: %w", root.Path, err)
	}
	defer dp.Close()
	return read(p, dp)
}
