package bench

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ServerPort is the load server's base port inside the server pod.
const ServerPort = 5201

// backendPort is where the server listens on localhost behind the proxy.
const backendPort = 5301

// Variant is one way of putting something on the pod-to-pod path. Each
// variant gets its own node netns with its own pair of pods, so all of them
// exist at once and a round can alternate baseline and variant without
// reloading anything.
type Variant struct {
	Name string
	Note string
	// Setup puts the variant on the pair's path.
	Setup func(p *Pair) error
	// Verify runs after the measurements and proves the variant really was
	// on the path (rule counters, program run counts).
	Verify func(p *Pair) error
	// Teardown undoes Setup (the netns removal does the rest).
	Teardown func(p *Pair) error
	// Proxy: clients connect to a userspace proxy in the server pod.
	Proxy bool
	// NA: the variant cannot run here; the reason is printed in its row.
	NA string
	// Programs returns the BPF programs the variant put on the path (by
	// hook name), for the run-time profile.
	Programs func() (map[string]ebpf.ProgramID, error)

	pair    *Pair
	daemons []*daemon
}

// Workload is one kind of load.
type Workload struct {
	Title   string
	Mode    string
	Streams int
	Unit    string
}

// Workloads of the datapath section.
var Workloads = []Workload{
	{Title: "TCP_STREAM, 1 stream", Mode: "stream", Streams: 1, Unit: "Gbit/s"},
	{Title: "TCP_STREAM, 4 streams", Mode: "stream", Streams: 4, Unit: "Gbit/s"},
	{Title: "TCP_RR (1-byte request/response)", Mode: "rr", Unit: "transactions/s"},
	{Title: "TCP_CRR (connect, 1-byte request/response, close)", Mode: "crr", Unit: "connections/s"},
	{Title: "UDP, 18-byte payload (64-byte frames), received", Mode: "udp", Unit: "packets/s"},
}

// BaselineName is the no-program ceiling.
const BaselineName = "no program (ceiling)"

// RunDatapath measures every variant against the no-program baseline.
func RunDatapath(cfg *Config, variants []*Variant) (*Section, error) {
	sec := &Section{Name: "Datapath: pod -> veth -> bridge -> veth -> pod"}
	sec.Notes = append(sec.Notes,
		fmt.Sprintf("%d rounds; each round runs, per workload, baseline and variant alternately (A B A C A … A), %s per measurement; ratio = median over rounds of variant / mean of the two baselines around it", cfg.Rounds, cfg.Duration),
		"load: tests/bench load tool (blocking sockets, raw syscalls; netperf-like), a fresh client process per measurement in the client pod netns; client, server and proxy pinned to the same CPU (the 4-stream client unpinned): no cross-CPU wake-ups, which are VM exits here and made RR vary 2.5x",
		"every variant has its own node netns + pod pair (10.99.<n>.0/24 on a bridge); bridged IPv4 goes through the node netns' netfilter FORWARD hook (br_netfilter, per-netns bridge-nf-call-iptables=1) in every variant, baseline included")
	base := &Variant{Name: BaselineName}
	all := append([]*Variant{base}, variants...)
	defer func() {
		for _, v := range all {
			for _, d := range v.daemons {
				d.stop()
			}
			if v.pair != nil {
				if v.Teardown != nil && v.NA == "" {
					if err := v.Teardown(v.pair); err != nil {
						cfg.logf("teardown %s: %v", v.Name, err)
					}
				}
				v.pair.Delete()
			}
		}
	}()
	for i, v := range all {
		if v.NA != "" {
			continue
		}
		if err := setupVariant(cfg, v, i+1); err != nil {
			if v == base {
				return nil, fmt.Errorf("baseline: %w", err)
			}
			v.NA = "setup failed: " + firstLine(err.Error())
			cfg.logf("variant %s: %v", v.Name, err)
		}
	}

	type acc struct {
		samples []float64
		paired  []float64
		errs    []string
	}
	results := make([]map[*Variant]*acc, len(Workloads))
	for w := range Workloads {
		results[w] = map[*Variant]*acc{}
		for _, v := range all {
			results[w][v] = &acc{}
		}
	}
	active := []*Variant{}
	for _, v := range variants {
		if v.NA == "" {
			active = append(active, v)
		}
	}
	measure := func(v *Variant, w Workload) float64 {
		if v.Proxy && w.Mode == "udp" {
			return math.NaN()
		}
		o := LoadOptions{Mode: w.Mode, Streams: w.Streams, Duration: cfg.Duration,
			Target: netip.AddrPortFrom(netip.MustParseAddr(v.pair.ServerIP), ServerPort)}
		r, err := runClient(cfg.Self, v.pair.Client, o)
		if err != nil {
			a := results[indexOf(w)][v]
			a.errs = append(a.errs, firstLine(err.Error()))
			cfg.logf("  %s / %s: %v", v.Name, w.Mode, err)
			return math.NaN()
		}
		return r.Value
	}
	start := time.Now()
	for round := 0; round < cfg.Rounds && !cfg.stopped(); round++ {
		cfg.logf("datapath round %d/%d (%s elapsed)", round+1, cfg.Rounds, time.Since(start).Round(time.Second))
		// Rotate the variant order each round so no variant always runs
		// right after the same neighbour.
		order := make([]*Variant, 0, len(active))
		for i := range active {
			order = append(order, active[(i+round)%len(active)])
		}
		for wi, w := range Workloads {
			ba := results[wi][base]
			prev := measure(base, w)
			ba.samples = append(ba.samples, prev)
			for _, v := range order {
				x := measure(v, w)
				next := measure(base, w)
				ba.samples = append(ba.samples, next)
				a := results[wi][v]
				a.samples = append(a.samples, x)
				a.paired = append(a.paired, PairedRatios([]float64{prev, next}, []float64{x})...)
				prev = next
			}
		}
	}
	for wi, w := range Workloads {
		t := &Table{Title: w.Title, Unit: w.Unit, HigherIsBetter: true, Baseline: BaselineName}
		for _, v := range all {
			if v.NA != "" {
				t.AddNA(v.Name, v.NA)
				continue
			}
			if v.Proxy && w.Mode == "udp" {
				t.AddNA(v.Name, "a TCP proxy carries no UDP")
				continue
			}
			a := results[wi][v]
			if Summarize(a.samples).N == 0 {
				reason := "no sample"
				if len(a.errs) > 0 {
					reason = a.errs[0]
				}
				t.AddNA(v.Name, reason)
				continue
			}
			r := t.Add(v.Name, a.samples)
			r.Paired = a.paired
			r.Note = v.Note
			if len(a.errs) > 0 {
				r.Note = strings.TrimSpace(fmt.Sprintf("%s; %d failed runs: %s", r.Note, len(a.errs), a.errs[0]))
			}
		}
		t.ComputeRatios()
		sec.Tables = append(sec.Tables, t)
	}
	if pt := profilePrograms(cfg, active); pt != nil {
		sec.Tables = append(sec.Tables, pt)
	}
	for _, v := range variants {
		if v.NA != "" || v.Verify == nil {
			continue
		}
		if err := v.Verify(v.pair); err != nil {
			sec.Notes = append(sec.Notes, fmt.Sprintf("VERIFY FAILED for %q (its numbers do not show its cost): %v", v.Name, err))
		}
	}
	return sec, nil
}

func indexOf(w Workload) int {
	for i, x := range Workloads {
		if x == w {
			return i
		}
	}
	return -1
}

func setupVariant(cfg *Config, v *Variant, idx int) error {
	p, err := NewPair(cfg.RunID, idx)
	if err != nil {
		return err
	}
	v.pair = p
	srv := []string{"serve", "--addr", fmt.Sprintf("0.0.0.0:%d", ServerPort)}
	if v.Proxy {
		srv = []string{"serve", "--addr", fmt.Sprintf("127.0.0.1:%d", backendPort)}
	}
	d, err := startDaemon(p.Server, serverCPU, cfg.Self, srv...)
	if err != nil {
		return err
	}
	v.daemons = append(v.daemons, d)
	if v.Proxy {
		d, err := startDaemon(p.Server, serverCPU, cfg.Self, "proxy", "--listen", fmt.Sprintf("0.0.0.0:%d", ServerPort),
			"--upstream", fmt.Sprintf("127.0.0.1:%d", backendPort))
		if err != nil {
			return err
		}
		v.daemons = append(v.daemons, d)
	}
	if v.Setup != nil {
		t0 := time.Now()
		if err := v.Setup(p); err != nil {
			return err
		}
		cfg.logf("variant %q set up in %s", v.Name, time.Since(t0).Round(time.Millisecond))
	}
	// Prove traffic flows before measuring (a rule that matched by mistake
	// would show up here, not as a fast zero).
	o := LoadOptions{Mode: "rr", Duration: 50 * time.Millisecond,
		Target: netip.AddrPortFrom(netip.MustParseAddr(p.ServerIP), ServerPort)}
	if _, err := runClient(cfg.Self, p.Client, o); err != nil {
		return fmt.Errorf("traffic check: %w", err)
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// profilePrograms measures, outside the A/B rounds, how long the variants'
// BPF programs run per packet: kernel run-time stats (BPF_ENABLE_STATS,
// held by an fd and off again when it closes; no sysctl is written) around
// one TCP_RR and one UDP measurement per variant. It answers "what does the
// time go to" for a ratio below the goal: BPF ns per operation against the
// operation's whole time.
func profilePrograms(cfg *Config, vs []*Variant) *Table {
	var withProgs []*Variant
	for _, v := range vs {
		if v.Programs != nil {
			withProgs = append(withProgs, v)
		}
	}
	if len(withProgs) == 0 || cfg.stopped() {
		return nil
	}
	t := &Table{Title: "BPF programs on the path: run time per operation (BPF_ENABLE_STATS, separate runs; stats add ~50 ns per run)", Unit: "ns of BPF per op",
		Extra: []string{"ns/run ingress hook", "ns/run egress hook", "runs/op", "op ns", "BPF share %"}}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.AddNA("all", "BPF_ENABLE_STATS: "+err.Error())
		return t
	}
	defer stats.Close()
	snapshot := func(ids map[string]ebpf.ProgramID) (map[string]ebpf.ProgramStats, error) {
		out := map[string]ebpf.ProgramStats{}
		for name, id := range ids {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				return nil, err
			}
			st, err := p.Stats()
			p.Close()
			if err != nil {
				return nil, err
			}
			out[name] = *st
		}
		return out, nil
	}
	for _, v := range withProgs {
		ids, err := v.Programs()
		if err != nil {
			t.AddNA(v.Name, err.Error())
			continue
		}
		names := make([]string, 0, len(ids))
		for n := range ids {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, w := range []Workload{Workloads[2], Workloads[4]} {
			label := v.Name + ", " + map[string]string{"rr": "TCP_RR", "udp": "UDP"}[w.Mode]
			before, err := snapshot(ids)
			if err != nil {
				t.AddNA(label, err.Error())
				continue
			}
			r, err := runClient(cfg.Self, v.pair.Client, LoadOptions{Mode: w.Mode, Duration: time.Second,
				Target: netip.AddrPortFrom(netip.MustParseAddr(v.pair.ServerIP), ServerPort)})
			if err != nil {
				t.AddNA(label, firstLine(err.Error()))
				continue
			}
			after, err := snapshot(ids)
			if err != nil {
				t.AddNA(label, err.Error())
				continue
			}
			var totalNs float64
			var runs uint64
			extra := map[string]float64{}
			for _, n := range names {
				dn := float64(after[n].Runtime - before[n].Runtime)
				dc := after[n].RunCount - before[n].RunCount
				totalNs += dn
				runs += dc
				if dc > 0 {
					extra["ns/run "+n+" hook"] = dn / float64(dc)
				}
			}
			if r.Ops == 0 || runs == 0 {
				t.AddNA(label, "no runs counted")
				continue
			}
			perOp := totalNs / float64(r.Ops)
			opNs := 1e9 / r.Value
			extra["runs/op"] = float64(runs) / float64(r.Ops)
			extra["op ns"] = opNs
			extra["BPF share %"] = 100 * perOp / opNs
			row := t.Add(label, []float64{perOp})
			row.Extra = extra
		}
	}
	return t
}
