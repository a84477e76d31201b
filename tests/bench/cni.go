package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podscope/podscope/pkg/cniplugin"
	"github.com/podscope/podscope/pkg/datapath"
)

// cniVariant is one conflist measured by the CNI section.
type cniVariant struct {
	Name     string          `json:"name"`
	ConfList json.RawMessage `json:"confList"`
	// CapabilityArgs as a runtime passes them (bandwidth needs its
	// rates here, or it does nothing).
	CapabilityArgs map[string]any `json:"capabilityArgs,omitempty"`
	NA             string         `json:"-"`
}

// cniJob is what the harness hands to `podscope-bench cni-worker`, which
// runs inside the node netns (so bridges and forwarding change there).
type cniJob struct {
	Kind      string        `json:"kind"` // "latency" or "scale"
	Paths     []string      `json:"paths"`
	CacheDir  string        `json:"cacheDir"`
	NetnsBase string        `json:"netnsBase"`
	Runs      int           `json:"runs"`
	Variants  []*cniVariant `json:"variants"`
	// BPFFSRoot of the podscope variant (scale: pinned map memory).
	BPFFSRoot string `json:"bpffsRoot,omitempty"`
	// PolicyBPFFSRoot of the "scale-policy" variant (the same pods with a
	// large network policy), whose ADDs alternate with the plain ones.
	PolicyBPFFSRoot string `json:"policyBpffsRoot,omitempty"`
	// Window (scale): the first and the last Window podscope ADDs each
	// come right after a bridge-alone ADD on the same bridge, pairs whose
	// difference is podscope's own part of ADD at that size.
	Window int `json:"window,omitempty"`
	// TimingFile (scale): where the podscope plugin logs its ADD steps
	// (cniplugin.TimingEnv) unless the caller's environment names a file.
	TimingFile string `json:"timingFile,omitempty"`
}

type cniTimes struct {
	Add []float64 `json:"add"` // ms, in ADD order (scale: pod 1..N)
	// Plugin (scale): for each ADD in Add, the wall time of the podscope
	// plugin's own ADD exec inside the chain, as libcni timed it.
	Plugin []float64 `json:"plugin,omitempty"`
	// Own (scale): for each ADD in Add, podscope's ADD by the plugin's own
	// clock (its timing log: from reading the config to the result, no
	// process start or exit), and which of those ADDs ran the reaper.
	Own    []float64 `json:"own,omitempty"`
	Reaped []bool    `json:"reaped,omitempty"`
	ids    []string
	Del    []float64 `json:"del"`
	Errors []string  `json:"errors,omitempty"`
}

type cniOutput struct {
	Times map[string]*cniTimes `json:"times"`
	// Scale: memlock of the pinned maps after pod 1 and after pod N.
	MapBytesFirst int64 `json:"mapBytesFirst"`
	MapBytesAll   int64 `json:"mapBytesAll"`
	MapCount      int   `json:"mapCount"`
	// The same for the scale-policy variant's root.
	PolicyMapBytesFirst int64    `json:"policyMapBytesFirst"`
	PolicyMapBytesAll   int64    `json:"policyMapBytesAll"`
	Notes               []string `json:"notes,omitempty"`
}

// ScalePolicyCIDRs is the size of the network policy of the scale test's
// policy variant: every pod of the network has it (the issue's "1,000 pods
// on a node with a 100,000-CIDR network policy").
const ScalePolicyCIDRs = 100000

// scalePolicy is that network policy (the "policy" object, here written to
// the file the entry's policyFile names: inline, the runtime re-encodes
// the 4 MB entry on every ADD): egress default allow with ScalePolicyCIDRs
// deny rules outside the pods' subnet.
func scalePolicy() map[string]any {
	rules := make([]any, 0, ScalePolicyCIDRs)
	for _, pf := range DenyPrefixes(0, ScalePolicyCIDRs) {
		rules = append(rules, map[string]any{"cidr": pf.String(), "action": "deny"})
	}
	return map[string]any{"egress": map[string]any{"default": "allow", "rules": rules}}
}

func pluginPresent(paths []string, name string) bool {
	for _, p := range paths {
		if st, err := os.Stat(filepath.Join(p, name)); err == nil && st.Mode().IsRegular() {
			return true
		}
	}
	return false
}

func bridgePlugin(bridge, subnet, dataDir string) map[string]any {
	return map[string]any{
		"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
		"ipam": map[string]any{"type": "host-local", "dataDir": dataDir,
			"ranges": []any{[]any{map[string]any{"subnet": subnet}}}},
	}
}

func confList(name string, plugins ...map[string]any) json.RawMessage {
	data, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": name, "plugins": plugins})
	return data
}

// RunCNI measures whole-exec ADD/DEL wall time through libcni.
func RunCNI(cfg *Config) (*Section, error) {
	sec := &Section{Name: "CNI ADD/DEL latency (libcni, whole chain, wall time)"}
	paths := filepath.SplitList(cfg.CNIBin)
	scratch, err := os.MkdirTemp(cfg.Out, "cni-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	node := fmt.Sprintf("%s%s-cninode", RunPrefix, cfg.RunID)
	if err := AddNetns(node); err != nil {
		return nil, err
	}
	defer func() {
		if err := DelNetns(node); err != nil {
			cfg.logf("removing %s: %v", node, err)
		}
	}()
	root, rootCleanup, rootErr := benchBPFFSRoot(cfg, "cni", datapath.Cleanup)
	if rootErr == nil {
		defer rootCleanup()
	}
	ipam := func(n string) string { return filepath.Join(scratch, "ipam-"+n) }
	psPlugin := func(mode string) map[string]any {
		return map[string]any{"type": "podscope", "bpffsRoot": root, "stateDir": filepath.Join(scratch, "state-"+mode), "attachMode": mode}
	}
	bw := map[string]any{"type": "bandwidth", "capabilities": map[string]any{"bandwidth": true}}
	variants := []*cniVariant{
		{Name: "bridge alone", ConfList: confList("pstestbn-bridge", bridgePlugin("pstestbnb0", "10.60.0.0/16", ipam("b0")))},
		{Name: "bridge + podscope (tcx)", ConfList: confList("pstestbn-pstcx", bridgePlugin("pstestbnb1", "10.61.0.0/16", ipam("b1")), psPlugin("tcx"))},
		{Name: "bridge + podscope (tc)", ConfList: confList("pstestbn-pstc", bridgePlugin("pstestbnb2", "10.62.0.0/16", ipam("b2")), psPlugin("tc"))},
		{Name: "bridge + bandwidth", ConfList: confList("pstestbn-bw", bridgePlugin("pstestbnb3", "10.63.0.0/16", ipam("b3")), bw),
			CapabilityArgs: map[string]any{"bandwidth": map[string]any{
				"ingressRate": 1_000_000_000, "ingressBurst": 100_000_000, "egressRate": 1_000_000_000, "egressBurst": 100_000_000}}},
	}
	for _, need := range []string{"bridge", "host-local"} {
		if !pluginPresent(paths, need) {
			return nil, fmt.Errorf("reference plugin %s not found in %s (hack/bench.sh builds it)", need, cfg.CNIBin)
		}
	}
	for _, v := range variants[1:3] {
		switch {
		case !pluginPresent(paths, "podscope"):
			v.NA = "podscope CNI plugin not built (make build -> bin/podscope)"
		case rootErr != nil:
			v.NA = rootErr.Error()
		}
	}
	if !pluginPresent(paths, "bandwidth") {
		variants[3].NA = "bandwidth plugin not found in " + cfg.CNIBin
	}
	var run []*cniVariant
	for _, v := range variants {
		if v.NA == "" {
			run = append(run, v)
		}
	}
	job := cniJob{Kind: "latency", Paths: paths, CacheDir: filepath.Join(scratch, "cache"),
		NetnsBase: fmt.Sprintf("%s%s-cnipod", RunPrefix, cfg.RunID), Runs: cfg.CNIRuns, Variants: run}
	cfg.logf("cni: %d ADD+DEL per variant, %d variants interleaved", cfg.CNIRuns, len(run))
	out, err := runCNIWorker(cfg, node, job)
	if err != nil {
		return nil, err
	}
	addT := &Table{Title: "ADD, whole chain", Unit: "ms", Baseline: "bridge alone", Extra: []string{"p95", "p99"}}
	delT := &Table{Title: "DEL, whole chain", Unit: "ms", Baseline: "bridge alone", Extra: []string{"p95", "p99"}}
	for _, v := range variants {
		if v.NA != "" {
			addT.AddNA(v.Name, v.NA)
			delT.AddNA(v.Name, v.NA)
			continue
		}
		t := out.Times[v.Name]
		for _, x := range []struct {
			tab *Table
			s   []float64
		}{{addT, t.Add}, {delT, t.Del}} {
			if Summarize(x.s).N == 0 {
				reason := "no successful run"
				if len(t.Errors) > 0 {
					reason = t.Errors[0]
				}
				x.tab.AddNA(v.Name, reason)
				continue
			}
			r := x.tab.Add(v.Name, x.s)
			r.Extra = map[string]float64{"p95": Percentile(x.s, 95), "p99": Percentile(x.s, 99)}
			r.Note = fmt.Sprintf("%d runs", Summarize(x.s).N)
			if len(t.Errors) > 0 {
				r.Note += fmt.Sprintf("; %d errors: %s", len(t.Errors), t.Errors[0])
			}
		}
	}
	addT.ComputeRatios()
	delT.ComputeRatios()
	sec.Tables = append(sec.Tables, addT, delT)
	sec.Notes = append(sec.Notes,
		fmt.Sprintf("%d ADD+DEL per variant, variants interleaved run by run; each ADD gets a fresh pod netns; libcni in a node netns; bridge with host-local IPAM, isGateway", cfg.CNIRuns),
		"bandwidth gets real rates through capabilityArgs (1 Gbit/s both ways), so it creates its tbf qdisc and ifb device")

	// Scale: pods stay attached.
	scale := &Table{Title: fmt.Sprintf("ADD at scale, bridge + podscope (tcx), up to %d pods attached on one bridge", cfg.ScalePods), Unit: "ms",
		Baseline: fmt.Sprintf("pods 1-%d", ScaleWindow(cfg.ScalePods)), Extra: []string{"p95"}}
	mem := &Table{Title: fmt.Sprintf("podscope pinned map memory (memlock) at %d pods", cfg.ScalePods), Unit: "MiB"}
	if v := variants[1]; v.NA != "" {
		scale.AddNA(scale.Baseline, v.NA)
		mem.AddNA("all pinned maps", v.NA)
	} else if !cfg.stopped() {
		sroot, scleanup, err := benchBPFFSRoot(cfg, "scale", datapath.Cleanup)
		if err != nil {
			scale.AddNA(scale.Baseline, err.Error())
			mem.AddNA("all pinned maps", err.Error())
		} else {
			defer scleanup()
			sv := &cniVariant{Name: "scale", ConfList: confList("pstestbn-scale",
				bridgePlugin("pstestbnb9", "10.64.0.0/16", ipam("b9")),
				map[string]any{"type": "podscope", "bpffsRoot": sroot, "stateDir": filepath.Join(scratch, "state-scale"), "attachMode": "tcx"})}
			bv := &cniVariant{Name: "scale-bridge", ConfList: confList("pstestbn-scale",
				bridgePlugin("pstestbnb9", "10.64.0.0/16", ipam("b9")))}
			variants := []*cniVariant{sv, bv}
			var (
				proot    string
				pcleanup func()
				perr     = errors.New("not run (--scale-policy=false)")
			)
			if !cfg.NoScalePolicy {
				proot, pcleanup, perr = benchBPFFSRoot(cfg, "scalepol", datapath.Cleanup)
				if perr == nil {
					defer pcleanup()
				}
			}
			policyFile := filepath.Join(scratch, "network-policy.json")
			if perr == nil {
				var b []byte
				if b, perr = json.Marshal(scalePolicy()); perr == nil {
					perr = os.WriteFile(policyFile, b, 0o600)
				}
			}
			if perr == nil {
				variants = append(variants, &cniVariant{Name: "scale-policy", ConfList: confList("pstestbn-scalepol",
					bridgePlugin("pstestbnb8", "10.65.0.0/16", ipam("b8")),
					map[string]any{"type": "podscope", "bpffsRoot": proot, "stateDir": filepath.Join(scratch, "state-scalepol"), "attachMode": "tcx",
						"policyFile": policyFile})})
			} else {
				sec.Notes = append(sec.Notes, "scale with a network policy: "+perr.Error())
			}
			sjob := cniJob{Kind: "scale", Paths: paths, CacheDir: filepath.Join(scratch, "cache"),
				NetnsBase: fmt.Sprintf("%s%s-scale", RunPrefix, cfg.RunID), Runs: cfg.ScalePods, Variants: variants, BPFFSRoot: sroot, PolicyBPFFSRoot: proot,
				Window: ScaleWindow(cfg.ScalePods), TimingFile: filepath.Join(scratch, "add-timing.jsonl")}
			cfg.logf("cni: attaching %d pods for the scale test", cfg.ScalePods)
			sout, err := runCNIWorker(cfg, node, sjob)
			if err != nil {
				scale.AddNA(scale.Baseline, err.Error())
				mem.AddNA("all pinned maps", err.Error())
			} else {
				addScaleRows(scale, mem, sout, cfg.ScalePods)
				addScalePolicyRows(scale, mem, sout, cfg.ScalePods)
				sec.Notes = append(sec.Notes, sout.Notes...)
			}
		}
	}
	scale.ComputeRatios()
	sec.Tables = append(sec.Tables, scale, mem)
	return sec, nil
}

// timedExec is libcni's plugin executor that also times the ADD exec of
// one plugin binary (by name), from fork to exit as the runtime waits for
// it: that plugin's own part of the chain's ADD, measured directly instead
// of as the difference of two ADDs.
type timedExec struct {
	invoke.Exec
	name string
	now  func() time.Time
	last time.Duration // of the latest ADD exec of name; -1: none yet
}

func newTimedExec(name string) *timedExec {
	return &timedExec{
		Exec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}},
		name: name, now: time.Now, last: -1,
	}
}

func (e *timedExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	t0 := e.now()
	out, err := e.Exec.ExecPlugin(ctx, pluginPath, stdinData, environ)
	if filepath.Base(pluginPath) == e.name && slices.Contains(environ, "CNI_COMMAND=ADD") {
		e.last = e.now().Sub(t0)
	}
	return out, err
}

// addOwnTimes fills t.Own and t.Reaped from the plugin's timing log (one
// JSON line per ADD, the last line of a container ID winning), in t's ADD
// order; it leaves them empty unless every ADD has its line.
func addOwnTimes(t *cniTimes, path string) {
	if t == nil {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	byID := map[string]cniplugin.Timing{}
	for _, l := range bytes.Split(data, []byte("\n")) {
		var x cniplugin.Timing
		if json.Unmarshal(l, &x) == nil && x.Container != "" {
			byID[x.Container] = x
		}
	}
	own, reaped := make([]float64, 0, len(t.ids)), make([]bool, 0, len(t.ids))
	for _, id := range t.ids {
		x, ok := byID[id]
		if !ok {
			return
		}
		own, reaped = append(own, x.TotalMs), append(reaped, x.Ran(cniplugin.StepReap))
	}
	t.Own, t.Reaped = own, reaped
}

// ScaleWindow is how many pods at each end of the scale test are timed
// against a bridge-alone ADD right before each (20 of 1,000; fewer when the
// test attaches fewer than 80 pods).
func ScaleWindow(pods int) int {
	return min(20, pods/4)
}

// PairedDiffs returns chain[i] - bridge[i]: podscope's part of each ADD
// paired with the bridge-alone ADD on the same bridge right before it.
func PairedDiffs(chain, bridge []float64) []float64 {
	d := make([]float64, min(len(chain), len(bridge)))
	for i := range d {
		d[i] = chain[i] - bridge[i]
	}
	return d
}

// addP95 adds a row of xs to the scale table with its p95 (the table's
// extra column).
func addP95(t *Table, name string, xs []float64) *Row {
	r := t.Add(name, xs)
	r.Extra = map[string]float64{"p95": Percentile(xs, 95)}
	return r
}

// addWindowRows adds prefix+first's and prefix+last's rows: one measure of
// the first and the last scale window, compared by the flat-at-scale goals.
func addWindowRows(t *Table, prefix, first, last string, firstXs, lastXs []float64, note string) {
	for _, x := range []struct {
		name string
		xs   []float64
	}{{first, firstXs}, {last, lastXs}} {
		addP95(t, prefix+x.name, x.xs).Note = note
	}
}

func addScaleRows(scale, mem *Table, out *cniOutput, pods int) {
	t := out.Times["scale"]
	add := t.Add
	w := ScaleWindow(pods)
	if w < 1 || len(add) < 2*w {
		reason := fmt.Sprintf("only %d pods attached", len(add))
		if len(t.Errors) > 0 {
			reason += ": " + t.Errors[0]
		}
		scale.AddNA(scale.Baseline, reason)
		mem.AddNA("all pinned maps", reason)
		return
	}
	n := len(add)
	lastName := fmt.Sprintf("pods %d-%d", n-w+1, n)
	addP95(scale, scale.Baseline, add[:w])
	last := addP95(scale, lastName, add[n-w:])
	if n < pods {
		last.Note = fmt.Sprintf("only %d of %d pods attached: %s", n, pods, strings.Join(t.Errors, "; "))
	}
	addP95(scale, fmt.Sprintf("all %d pods", n), add)
	switch b := out.Times["scale-bridge"]; {
	case b != nil && len(b.Add) == 2*w && n == pods:
		addP95(scale, "bridge alone, same bridge, alternating with "+scale.Baseline, b.Add[:w])
		addP95(scale, "bridge alone, same bridge, alternating with "+lastName, b.Add[w:]).Note =
			"what the bridge, IPAM and kernel add at this scale without podscope"
		addWindowRows(scale, ScalePartRow, scale.Baseline, lastName, PairedDiffs(add[:w], b.Add[:w]), PairedDiffs(add[n-w:], b.Add[w:]),
			"each ADD minus the bridge-alone ADD right before it")
	case b != nil && len(b.Errors) > 0:
		scale.AddNA("bridge alone, same bridge", b.Errors[0])
	default:
		scale.AddNA("bridge alone, same bridge", "the podscope pods did not all attach: no pairs at the last pods")
	}
	if p := t.Plugin; len(p) == n && n == pods {
		addWindowRows(scale, ScaleExecRow, scale.Baseline, lastName, p[:w], p[n-w:],
			"libcni's wall time of the podscope plugin's ADD exec inside the chain (fork to exit)")
	}
	if o := t.Own; len(o) == n && len(t.Reaped) == n && n == pods {
		note := func(reaped []bool) string {
			k := 0
			for _, b := range reaped {
				if b {
					k++
				}
			}
			return fmt.Sprintf("the plugin's timing log (%s): config read to result, no process start or exit; %d of these ADDs ran the reaper (no podscope-nri here)", cniplugin.TimingEnv, k)
		}
		addP95(scale, ScaleOwnRow+scale.Baseline, o[:w]).Note = note(t.Reaped[:w])
		addP95(scale, ScaleOwnRow+lastName, o[n-w:]).Note = note(t.Reaped[n-w:])
	}
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	r := mem.Add(fmt.Sprintf("all pinned maps (%d maps), %d pods", out.MapCount, n), []float64{mib(out.MapBytesAll)})
	r.Note = fmt.Sprintf("%.1f KiB per pod over the 1-pod footprint", float64(out.MapBytesAll-out.MapBytesFirst)/1024/float64(max(n-1, 1)))
	mem.Add("all pinned maps, 1 pod", []float64{mib(out.MapBytesFirst)})
}

// ScalePartRow starts the names of the scale table's rows of podscope's
// own part of ADD (paired differences); the goal compares the two.
const ScalePartRow = "podscope's part of ADD, "

// ScaleExecRow starts the names of the rows of the podscope plugin's own
// ADD exec inside the chain, timed by libcni (timedExec).
const ScaleExecRow = "podscope plugin's exec in the chain, "

// ScaleOwnRow starts the names of the rows of podscope's ADD by the
// plugin's own clock (its timing log); shown, not a goal: it is measured
// by the code under test.
const ScaleOwnRow = "podscope's ADD by its own clock, "

// addScalePolicyRows adds the scale-policy variant: ADD with a
// 100,000-CIDR network policy against the same chain without one (pods
// alternating), and its map memory against one copy of the policy plus the
// per-pod state.
func addScalePolicyRows(scale, mem *Table, out *cniOutput, pods int) {
	t, plain := out.Times["scale-policy"], out.Times["scale"]
	if t == nil {
		return
	}
	name := fmt.Sprintf("all pods, %d-CIDR network policy", ScalePolicyCIDRs)
	if len(t.Add) < 20 || plain == nil {
		reason := fmt.Sprintf("only %d pods attached", len(t.Add))
		if len(t.Errors) > 0 {
			reason += ": " + t.Errors[0]
		}
		scale.AddNA(name, reason)
		mem.AddNA(fmt.Sprintf("all pinned maps, %d-CIDR network policy", ScalePolicyCIDRs), reason)
		return
	}
	n := len(t.Add)
	r := addP95(scale, fmt.Sprintf("all %d pods, %d-CIDR network policy (pod 1 writes it)", n, ScalePolicyCIDRs), t.Add)
	if n < pods {
		r.Note = fmt.Sprintf("only %d of %d pods attached: %s", n, pods, strings.Join(t.Errors, "; "))
	}
	w := max(ScaleWindow(pods), 1)
	addP95(scale, fmt.Sprintf("pods %d-%d, %d-CIDR network policy", n-w+1, n, ScalePolicyCIDRs), t.Add[n-w:])
	r = scale.Add("pod 1, writing the network policy", t.Add[:1])
	r.Note = "parses and writes the policy set once; later pods find it by the policy file's identity (policyFile)"
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	mem.Add(fmt.Sprintf("all pinned maps, %d-CIDR network policy, 1 pod", ScalePolicyCIDRs), []float64{mib(out.PolicyMapBytesFirst)})
	r = mem.Add(fmt.Sprintf("all pinned maps, %d-CIDR network policy, %d pods", ScalePolicyCIDRs, n), []float64{mib(out.PolicyMapBytesAll)})
	perPod := out.MapBytesAll - out.MapBytesFirst
	r.Note = fmt.Sprintf("one copy + per-pod state would be %.1f MiB (1-pod footprint + the no-policy variant's growth)", mib(out.PolicyMapBytesFirst+perPod))
}

func runCNIWorker(cfg *Config, node string, job cniJob) (*cniOutput, error) {
	in, err := json.Marshal(job)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(cfg.context(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+NetnsPath(node), cfg.Self, "cni-worker")
	cmd.Stdin = bytes.NewReader(in)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("cni-worker: %w", err)
	}
	var out cniOutput
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return nil, fmt.Errorf("cni-worker output: %w", err)
	}
	return &out, nil
}

// cmdCNIWorker runs inside the node netns: ADD/DEL through libcni.
func cmdCNIWorker(args []string) error {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var job cniJob
	if err := json.Unmarshal(data, &job); err != nil {
		return err
	}
	texec := newTimedExec("podscope")
	cni := libcni.NewCNIConfigWithCacheDir(job.Paths, job.CacheDir, texec)
	lists := map[string]*libcni.NetworkConfigList{}
	for _, v := range job.Variants {
		l, err := libcni.ConfListFromBytes(v.ConfList)
		if err != nil {
			return fmt.Errorf("%s: %w", v.Name, err)
		}
		lists[v.Name] = l
	}
	out := &cniOutput{Times: map[string]*cniTimes{}}
	for _, v := range job.Variants {
		out.Times[v.Name] = &cniTimes{}
	}
	ctx := context.Background()
	rtFor := func(v *cniVariant, i int) (*libcni.RuntimeConf, string) {
		ns := fmt.Sprintf("%s%d-%d", job.NetnsBase, indexOfVariant(job.Variants, v), i)
		id := fmt.Sprintf("pstestbn%08x%04x", i, indexOfVariant(job.Variants, v))
		return &libcni.RuntimeConf{ContainerID: id, NetNS: NetnsPath(ns), IfName: "eth0",
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "bench"},
				{"K8S_POD_NAME", fmt.Sprintf("pod-%d", i)}, {"K8S_POD_UID", fmt.Sprintf("00000000-0000-0000-0000-%012d", i)},
				{"K8S_POD_INFRA_CONTAINER_ID", id}},
			CapabilityArgs: v.CapabilityArgs}, ns
	}
	add := func(v *cniVariant, i int) (string, *libcni.RuntimeConf, error) {
		rt, ns := rtFor(v, i)
		if err := AddNetns(ns); err != nil {
			return "", nil, err
		}
		texec.last = -1
		t0 := time.Now()
		_, err := cni.AddNetworkList(ctx, lists[v.Name], rt)
		el := time.Since(t0)
		if err != nil {
			return ns, rt, err
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		out.Times[v.Name].Add = append(out.Times[v.Name].Add, ms(el))
		out.Times[v.Name].ids = append(out.Times[v.Name].ids, rt.ContainerID)
		if job.Kind == "scale" && texec.last >= 0 {
			out.Times[v.Name].Plugin = append(out.Times[v.Name].Plugin, ms(texec.last))
		}
		return ns, rt, nil
	}
	fail := func(v *cniVariant, err error) {
		t := out.Times[v.Name]
		if len(t.Errors) < 5 {
			t.Errors = append(t.Errors, firstLine(err.Error()))
		}
	}
	switch job.Kind {
	case "latency":
		for i := 0; i < job.Runs; i++ {
			for k := range job.Variants {
				v := job.Variants[(k+i)%len(job.Variants)]
				ns, rt, err := add(v, i)
				if err != nil {
					fail(v, fmt.Errorf("ADD: %w", err))
				}
				if rt != nil {
					t0 := time.Now()
					derr := cni.DelNetworkList(ctx, lists[v.Name], rt)
					el := time.Since(t0)
					if derr != nil {
						fail(v, fmt.Errorf("DEL: %w", derr))
					} else if err == nil {
						out.Times[v.Name].Del = append(out.Times[v.Name].Del, float64(el.Microseconds())/1000)
					}
				}
				if ns != "" {
					_ = DelNetns(ns)
				}
			}
		}
	case "scale":
		timing := os.Getenv(cniplugin.TimingEnv)
		if timing == "" && job.TimingFile != "" {
			timing = job.TimingFile
			os.Setenv(cniplugin.TimingEnv, timing)
		}
		// Variants[0] is bridge + podscope, Variants[1] the same bridge
		// and IPAM without podscope: in the first and the last
		// job.Window pods, each podscope ADD comes right after a
		// bridge-only ADD, so each pair sees the same bridge and the same
		// moment of the machine, and their difference is podscope's part.
		v := job.Variants[0]
		var nss []string
		defer func() {
			// Removing the netns removes the veths; the bench's bpffs root
			// (and with it every pin) is removed by the harness.
			for _, ns := range nss {
				_ = DelNetns(ns)
			}
		}()
		addOne := func(v *cniVariant, i int) error {
			ns, _, err := add(v, i)
			if ns != "" {
				nss = append(nss, ns)
			}
			if err != nil {
				fail(v, fmt.Errorf("ADD pod %d: %w", len(nss), err))
			}
			return err
		}
		var bridge *cniVariant
		if len(job.Variants) > 1 {
			bridge = job.Variants[1]
		}
		bridgeOK, bridgeRuns := bridge != nil, 0
		// With a policy variant, its pods alternate with the plain ones
		// (pod i of each, then pod i+1 …), so both see the same machine.
		var pv *cniVariant
		if len(job.Variants) > 2 {
			pv = job.Variants[2]
		}
		policyOK := pv != nil
		memory := func(root string, dst *int64) {
			b, _, err := PinnedMapMemory(root)
			if err != nil {
				out.Notes = append(out.Notes, "map memory: "+err.Error())
			}
			*dst = b
		}
		for i := 0; i < job.Runs; i++ {
			// The bridge-alone pod goes once its pair is timed: a Linux
			// bridge has at most 1,023 ports, and the chain's pods are the
			// ones the test is about.
			alone := ""
			if bridgeOK && (i < job.Window || i >= job.Runs-job.Window) {
				ns, _, err := add(bridge, bridgeRuns)
				if err != nil {
					fail(bridge, fmt.Errorf("ADD bridge-alone pod %d: %w", bridgeRuns+1, err))
					bridgeOK = false
				}
				alone = ns
				bridgeRuns++
			}
			err := addOne(v, i)
			if alone != "" {
				_ = DelNetns(alone)
			}
			if err != nil {
				break
			}
			if policyOK && addOne(pv, i) != nil {
				policyOK = false
			}
			if i == 0 {
				memory(job.BPFFSRoot, &out.MapBytesFirst)
				if policyOK {
					memory(job.PolicyBPFFSRoot, &out.PolicyMapBytesFirst)
				}
			}
		}
		out.MapBytesAll, out.MapCount, err = PinnedMapMemory(job.BPFFSRoot)
		if err != nil {
			out.Notes = append(out.Notes, "map memory: "+err.Error())
		}
		if pv != nil {
			memory(job.PolicyBPFFSRoot, &out.PolicyMapBytesAll)
		}
		if timing != "" {
			addOwnTimes(out.Times["scale"], timing)
		}
	default:
		return fmt.Errorf("unknown job kind %q", job.Kind)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func indexOfVariant(vs []*cniVariant, v *cniVariant) int {
	for i, x := range vs {
		if x == v {
			return i
		}
	}
	return -1
}

// context returns the run's context (Background when unset, in tests).
func (c *Config) context() context.Context {
	if c.ctx == nil {
		return context.Background()
	}
	return c.ctx
}
