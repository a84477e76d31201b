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
