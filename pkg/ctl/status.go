package ctl

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// Program is a BPF program pinned under the root.
type Program struct {
	Name string `json:"name"`
	ID   uint32 `json:"id"`
	Type string `json:"type"`
	Pin  string `json:"pin"`
}

// Status is what `podscopectl status` reports.
type Status struct {
	BPFFSRoot        string    `json:"bpffsRoot"`
	BPFFSMounted     bool      `json:"bpffsMounted"`
	BPFFSError       string    `json:"bpffsError,omitempty"`
	PodscopeState    bool      `json:"podscopeState"`           // something of the current layout is pinned
	LayoutVersion    string    `json:"layoutVersion,omitempty"` // the layout pinned (with PodscopeState)
	StaleLayouts     []string  `json:"staleLayouts,omitempty"`
	Modes            []string  `json:"modes"`
	Programs         []Program `json:"programs"`
	PinnedLinks      int       `json:"pinnedLinks"`
	PinnedMaps       int       `json:"pinnedMaps"`
	PodsAttached     int       `json:"podsAttached"`
	AuditMode        string    `json:"auditMode"`
	NRISocket        string    `json:"nriSocket"`
	NRISocketPresent bool      `json:"nriSocketPresent"`
	Problems         []string  `json:"problems,omitempty"`
	// NetworkPolicy is Kubernetes NetworkPolicy enforcement as the pins
	// show it (nil when no datapath is pinned).
	NetworkPolicy *NetworkPolicyStatus `json:"networkPolicy,omitempty"`
}

// NetworkPolicyStatus is what the pins tell of Kubernetes NetworkPolicy:
// whether the program's hooks are attached, and what podscope-nri's
// controller wrote into the maps. How many NetworkPolicies there are, and
// why podscope-nri could not enforce them, only podscope-nri knows (its
// /metrics: podscope_networkpolicy_policies, podscope_networkpolicy_enforced).
type NetworkPolicyStatus struct {
	// Enforced: the hooks of both families are attached.
	Enforced bool   `json:"enforced"`
	Reason   string `json:"reason,omitempty"` // why not
	// Hooks are the families (ipv4, ipv6) whose hook is attached.
	Hooks []string `json:"hooks"`
	// Pods is the number of pods some NetworkPolicy selects, as written
	// by the controller; Sets the distinct policies among them.
	Pods int `json:"pods"`
	Sets int `json:"sets"`
	// Judged and Untracked are the program's node-wide counts
	// (datapath.NetworkPolicyStats).
	Judged    uint64 `json:"judged"`
	Untracked uint64 `json:"untracked"`
	Error     string `json:"error,omitempty"`
}

// gatherNetworkPolicy reads the NetworkPolicy maps and hook pins.
func gatherNetworkPolicy(root pins.Root, dp *datapath.Datapath) *NetworkPolicyStatus {
	np := &NetworkPolicyStatus{Hooks: []string{}}
	var errs []string
	hooks, err := datapath.NetworkPolicyHooks(root)
	if err != nil {
		errs = append(errs, err.Error())
	}
	fams := map[string]bool{}
	for _, h := range hooks {
		fams[h.Family] = true
	}
	np.Hooks = sortedKeys(fams)
	switch {
	case len(fams) == 0:
		np.Reason = "no hook attached (podscope-nri runs without --networkpolicy, or could not attach it: its log says why)"
	case !fams["ipv4"] || !fams["ipv6"]:
		np.Reason = "only the " + strings.Join(np.Hooks, ", ") + " hook is attached"
	default:
		np.Enforced = true
	}
	refs, err := dp.NetworkPolicies()
	if err != nil {
		errs = append(errs, err.Error())
	}
	sets := map[uint32]bool{}
	for _, r := range refs {
		np.Pods++
		sets[r.Set] = true
	}
	np.Sets = len(sets)
	if stats, err := dp.NetworkPolicyStats(); err == nil {
		np.Judged, np.Untracked = stats.Judged, stats.Untracked
	} else {
		errs = append(errs, err.Error())
	}
	np.Error = strings.Join(errs, "; ")
	return np
}

func gatherStatus(root pins.Root, nriSocket string) (*Status, error) {
	st := &Status{BPFFSRoot: root.Path, NRISocket: nriSocket,
		NRISocketPresent: fileExists(nriSocket), Modes: []string{}, Programs: []Program{}}
	st.AuditMode = auditMode(root)
	if err := pins.CheckBPFFS(root.Path); err != nil {
		st.BPFFSError = err.Error()
		st.Problems = append(st.Problems, err.Error())
		return st, nil
	}
	st.BPFFSMounted = true
	st.StaleLayouts, _ = root.StaleLayouts()
	for _, s := range st.StaleLayouts {
		st.Problems = append(st.Problems, fmt.Sprintf("pins of another podscope layout under %s: remove them with `podscopectl cleanup` after upgrading", s))
	}
	if fileExists(root.Dir("")) {
		st.PodscopeState, st.LayoutVersion = true, pins.LayoutVersion
	}
	if err := walkPins(root.Dir(""), st); err != nil {
		return nil, err
	}
	modes := map[string]bool{}
	if reg, err := pods.OpenPinnedRegistry(root); err == nil {
		list, err := reg.List()
		reg.Close()
		if err != nil {
			st.Problems = append(st.Problems, err.Error())
		}
		st.PodsAttached = len(list)
		for _, p := range list {
			if p.Mode != "" {
				modes[string(p.Mode)] = true
			}
		}
	} else if !errors.Is(err, pods.ErrNoRegistry) {
		st.Problems = append(st.Problems, err.Error())
	}
	if dp, err := datapath.OpenPinned(root); err == nil {
		if atts, err := dp.Attachments(); err == nil {
			for _, a := range atts {
				modes[string(a.Mode)] = true
			}
		}
		st.NetworkPolicy = gatherNetworkPolicy(root, dp)
		dp.Close()
	}
	st.Modes = sortedKeys(modes)
	return st, nil
}

// walkPins classifies every pin under dir as program, link or map.
func walkPins(dir string, st *Status) error {
	err := pins.Walk(dir, func(p string) error {
		if prog, err := ebpf.LoadPinnedProgram(p, nil); err == nil {
			pr := Program{Pin: p, Type: prog.Type().String()}
			if info, err := prog.Info(); err == nil {
				pr.Name = info.Name
				if id, ok := info.ID(); ok {
					pr.ID = uint32(id)
				}
			}
			prog.Close()
			st.Programs = append(st.Programs, pr)
			return nil
		}
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			l.Close()
			st.PinnedLinks++
			return nil
		}
		if m, err := ebpf.LoadPinnedMap(p, nil); err == nil {
			m.Close()
			st.PinnedMaps++
		}
		return nil
	})
	sort.Slice(st.Programs, func(i, j int) bool { return st.Programs[i].Pin < st.Programs[j].Pin })
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func printStatus(w io.Writer, st *Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rootState := "bpffs mounted: no"
	switch {
	case st.PodscopeState:
		rootState = "bpffs mounted: yes, podscope pin layout " + st.LayoutVersion
	case st.BPFFSMounted:
		rootState = "bpffs mounted: yes, nothing of podscope pinned"
	}
	fmt.Fprintf(tw, "bpffs root:\t%s (%s)\n", st.BPFFSRoot, rootState)
	modes := "none (no pod attached)"
	if len(st.Modes) > 0 {
		modes = strings.Join(st.Modes, ", ")
	}
	fmt.Fprintf(tw, "datapath mode:\t%s\n", modes)
	fmt.Fprintf(tw, "pods attached:\t%d\n", st.PodsAttached)
	fmt.Fprintf(tw, "pinned:\t%d programs, %d links, %d maps\n", len(st.Programs), st.PinnedLinks, st.PinnedMaps)
	fmt.Fprintf(tw, "audit mode:\t%s\n", st.AuditMode)
	if np := st.NetworkPolicy; np != nil {
		fmt.Fprintf(tw, "NetworkPolicy:\t%s\n", networkPolicyLine(np))
	}
	fmt.Fprintf(tw, "NRI socket:\t%s (present: %s)\n", st.NRISocket, yesNo(st.NRISocketPresent))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Programs) > 0 {
		fmt.Fprintln(w, "\nPROGRAMS")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tTYPE\tPIN")
		for _, p := range st.Programs {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.ID, p.Name, p.Type, p.Pin)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, p := range st.Problems {
		fmt.Fprintln(w, "problem:", p)
	}
	return nil
}

// networkPolicyLine is status's NetworkPolicy line.
func networkPolicyLine(np *NetworkPolicyStatus) string {
	state := "enforced (hooks " + strings.Join(np.Hooks, ", ") + ")"
	if !np.Enforced {
		state = "not enforced: " + np.Reason
	}
	line := fmt.Sprintf("%s; %d %s selected by a NetworkPolicy, %d distinct %s; %d connections judged, %d packets untracked",
		state, np.Pods, plural(np.Pods, "pod", "pods"), np.Sets, plural(np.Sets, "policy set", "policy sets"), np.Judged, np.Untracked)
	if np.Error != "" {
		line += " (reading: " + np.Error + ")"
	}
	return line
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
