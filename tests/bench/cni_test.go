package bench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
)

// scaleResults runs addScaleRows on a scale test of pods podscope ADDs
// (chain) and the bridge-alone ADDs paired with its first and last pods, and
// wraps the tables as the CNI section of a run.
func scaleResults(pods int, chain, bridge []float64) (*Results, *Table) {
	return scaleResultsExec(pods, chain, bridge, nil)
}

// scaleResultsExec is scaleResults with the podscope plugin's exec times.
func scaleResultsExec(pods int, chain, bridge, plugin []float64) (*Results, *Table) {
	scale := &Table{Title: "ADD at scale, bridge + podscope (tcx)", Unit: "ms", Baseline: "pods 1-20", Extra: []string{"p95"}}
	mem := &Table{Title: "podscope pinned map memory (memlock)", Unit: "MiB"}
	out := &cniOutput{Times: map[string]*cniTimes{"scale": {Add: chain, Plugin: plugin}, "scale-bridge": {Add: bridge}}}
	addScaleRows(scale, mem, out, pods)
	scale.ComputeRatios()
	r := &Results{Sections: []Section{{Name: "CNI ADD/DEL latency (libcni, whole chain, wall time)", Tables: []*Table{scale, mem}}}}
	return r, scale
}

func flatGoal(t *testing.T, r *Results, q string) Goal {
	t.Helper()
	return flatGoalOf(t, r, "ADD flat at scale: podscope's part of ADD "+q)
}

func flatGoalOf(t *testing.T, r *Results, q string) Goal {
	t.Helper()
	for _, g := range Goals(r) {
		if strings.HasPrefix(g.Goal, q) {
			return g
		}
	}
	t.Fatalf("no ADD flat at scale %s goal in %+v", q, Goals(r))
	return Goal{}
}

func TestScaleGoalPairsEachADDWithTheBridgeAloneADDBeforeIt(t *testing.T) {
	const pods = 100 // window 20
	chain := make([]float64, pods)
	for i := range chain {
		chain[i] = 100
	}
	bridge := make([]float64, 0, 40)
	// First 20 pods: podscope 60 ms after a 40 ms bridge-alone ADD (its
	// part 20 ms), except the first pod (200 ms: 160 ms).
	for i := 0; i < 20; i++ {
		chain[i] = 60
		bridge = append(bridge, 40)
	}
	chain[0] = 200
	// Last 20: 130 after 105 (25 ms), one pair 170 after 110 (60 ms).
	for i := pods - 20; i < pods; i++ {
		chain[i] = 130
		bridge = append(bridge, 105)
	}
	chain[pods-7], bridge[40-7] = 170, 110

	r, scale := scaleResults(pods, chain, bridge)
	first := scale.Row(ScalePartRow + "pods 1-20")
	last := scale.Row(ScalePartRow + "pods 81-100")
	if first == nil || last == nil {
		t.Fatalf("paired rows missing: %+v", scale.Rows)
	}
	// By hand: 19 x 20 and 160 -> median 20; 19 x 25 and 60 -> median 25.
	if first.Median != 20 || last.Median != 25 {
		t.Fatalf("podscope's part medians %v / %v, want 20 / 25", first.Median, last.Median)
	}
	g := flatGoal(t, r, "p50")
	if g.Met == nil || *g.Met || !strings.HasPrefix(g.Measured, "1.250") {
		t.Fatalf("p50 goal %+v, want 1.250 not met (25 ms vs 20 ms)", g)
	}
	// The same chain rows against a bridge that slowed down by as much as
	// the chain did: podscope's part is flat, 20 ms at both ends.
	for i := 20; i < 40; i++ {
		bridge[i] = 110
	}
	r, _ = scaleResults(pods, chain, bridge)
	g = flatGoal(t, r, "p50")
	if g.Met == nil || !*g.Met || !strings.HasPrefix(g.Measured, "1.000") {
		t.Fatalf("p50 goal %+v, want 1.000 met", g)
	}
}

func TestScaleGoalNotMeasuredWithoutAllPods(t *testing.T) {
	// The chain stopped at pod 90 of 100: the last pods were never paired.
	chain := make([]float64, 90)
	bridge := make([]float64, 20)
	for i := range chain {
		chain[i] = 60
	}
	for i := range bridge {
		bridge[i] = 40
	}
	r, scale := scaleResults(100, chain, bridge)
	if scale.Row(ScalePartRow+"pods 1-20") != nil {
		t.Fatalf("paired rows from an incomplete run: %+v", scale.Rows)
	}
	if g := flatGoal(t, r, "p50"); g.Met != nil || g.Measured != "n/a" {
		t.Fatalf("goal %+v from an incomplete run, want n/a", g)
	}
}

// The plugin's own exec, timed inside the chain: rows for the first and the
// last pods, compared by p50 and p95, with values worked out by hand.
func TestScaleGoalOnThePluginsExecInTheChain(t *testing.T) {
	const pods = 100 // window 20
	chain := make([]float64, pods)
	plugin := make([]float64, pods)
	bridge := make([]float64, 40)
	for i := range chain {
		chain[i], plugin[i] = 100, 20
	}
	for i := range bridge {
		bridge[i] = 80
	}
	// Last 20: 22 ms, two of them 60 and 70 ms (p95 by nearest rank of 20
	// values is the 19th smallest: 60).
	for i := pods - 20; i < pods; i++ {
		plugin[i] = 22
	}
	plugin[pods-3], plugin[pods-9] = 60, 70
	r, scale := scaleResultsExec(pods, chain, bridge, plugin)
	first, last := scale.Row(ScaleExecRow+"pods 1-20"), scale.Row(ScaleExecRow+"pods 81-100")
	if first == nil || last == nil {
		t.Fatalf("exec rows missing: %+v", scale.Rows)
	}
	if first.Median != 20 || last.Median != 22 {
		t.Fatalf("exec medians %v / %v, want 20 / 22", first.Median, last.Median)
	}
	g := flatGoalOf(t, r, "ADD flat at scale: podscope plugin's exec in the chain p50")
	if g.Met == nil || !*g.Met || !strings.HasPrefix(g.Measured, "1.100") {
		t.Fatalf("p50 goal %+v, want 1.100 met", g)
	}
	g = flatGoalOf(t, r, "ADD flat at scale: podscope plugin's exec in the chain p95")
	if g.Met == nil || *g.Met || !strings.HasPrefix(g.Measured, "3.000") {
		t.Fatalf("p95 goal %+v, want 3.000 (60 / 20) not met", g)
	}
	// Without exec times (an older worker) the rows are absent and the
	// goal says so.
	r, scale = scaleResultsExec(pods, chain, bridge, plugin[:50])
	if scale.Row(ScaleExecRow+"pods 1-20") != nil {
		t.Fatal("exec rows from exec times that do not cover every pod")
	}
	if g := flatGoalOf(t, r, "ADD flat at scale: podscope plugin's exec in the chain p50"); g.Met != nil || g.Measured != "n/a" {
		t.Fatalf("goal %+v without exec times, want n/a", g)
	}
}

// fakeExec runs no plugin: each exec advances a fake clock by the time
// given for the plugin and command.
type fakeExec struct {
	invoke.Exec
	clock *time.Time
	cost  map[string]time.Duration // "<plugin> <command>"
}

func (f *fakeExec) ExecPlugin(_ context.Context, path string, _ []byte, environ []string) ([]byte, error) {
	cmd := ""
	for _, e := range environ {
		if v, ok := strings.CutPrefix(e, "CNI_COMMAND="); ok {
			cmd = v
		}
	}
	*f.clock = f.clock.Add(f.cost[path[strings.LastIndex(path, "/")+1:]+" "+cmd])
	return nil, nil
}

// timedExec keeps the time of the named plugin's ADD exec only: not the
// other plugins of the chain, not its other commands.
func TestTimedExecTimesOnlyThePluginsADD(t *testing.T) {
	clock := time.Unix(1000, 0)
	e := newTimedExec("podscope")
	e.Exec = &fakeExec{clock: &clock, cost: map[string]time.Duration{
		"bridge ADD": 50 * time.Millisecond, "podscope ADD": 7 * time.Millisecond,
		"podscope DEL": 3 * time.Millisecond, "podscope-nri ADD": 9 * time.Millisecond,
	}}
	e.now = func() time.Time { return clock }
	run := func(path, cmd string) {
		if _, err := e.ExecPlugin(context.Background(), path, nil, []string{"PATH=/bin", "CNI_COMMAND=" + cmd}); err != nil {
			t.Fatal(err)
		}
	}
	run("/opt/cni/bin/bridge", "ADD")
	if e.last != -1 {
		t.Fatalf("after the bridge alone: %v, want -1 (no podscope exec)", e.last)
	}
	run("/opt/cni/bin/podscope", "ADD")
	run("/opt/cni/bin/podscope-nri", "ADD")
	run("/opt/cni/bin/podscope", "DEL")
	if e.last != 7*time.Millisecond {
		t.Fatalf("timed %v, want 7ms (podscope's ADD only)", e.last)
	}
}

// The plugin's timing log is matched to the ADDs by container ID (the
// last line of an ID wins: a log the caller reuses across runs), and the
// rows say how many ADDs of each window ran the reaper.
func TestOwnTimesFromThePluginsLog(t *testing.T) {
	path := t.TempDir() + "/timing.jsonl"
	log := `{"container":"a","steps":[["config",0.5]],"totalMs":99}
{"container":"a","steps":[["config",0.5],["reap",40]],"totalMs":45}
{"container":"b","steps":[["lookup",0.3]],"totalMs":6}
not json
{"container":"other","steps":[],"totalMs":1}
`
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	tm := &cniTimes{Add: []float64{60, 30}, ids: []string{"a", "b"}}
	addOwnTimes(tm, path)
	if len(tm.Own) != 2 || tm.Own[0] != 45 || tm.Own[1] != 6 || !tm.Reaped[0] || tm.Reaped[1] {
		t.Fatalf("own %v reaped %v, want [45 6] [true false]", tm.Own, tm.Reaped)
	}
	// An ADD without its line: no own times at all, never misaligned ones.
	tm = &cniTimes{Add: []float64{60, 30, 20}, ids: []string{"a", "b", "c"}}
	addOwnTimes(tm, path)
	if tm.Own != nil || tm.Reaped != nil {
		t.Fatalf("own %v reaped %v from an incomplete log, want none", tm.Own, tm.Reaped)
	}

	const pods = 100
	chain, bridge := make([]float64, pods), make([]float64, 40)
	own, reaped := make([]float64, pods), make([]bool, pods)
	for i := range own {
		own[i] = 7
	}
	own[pods-1], reaped[pods-1], reaped[pods-2] = 60, true, true
	scale := &Table{Title: "ADD at scale", Unit: "ms", Baseline: "pods 1-20", Extra: []string{"p95"}}
	mem := &Table{Title: "memory", Unit: "MiB"}
	addScaleRows(scale, mem, &cniOutput{Times: map[string]*cniTimes{"scale": {Add: chain, Own: own, Reaped: reaped}, "scale-bridge": {Add: bridge}}}, pods)
	first, last := scale.Row(ScaleOwnRow+"pods 1-20"), scale.Row(ScaleOwnRow+"pods 81-100")
	if first == nil || last == nil {
		t.Fatalf("own-clock rows missing: %+v", scale.Rows)
	}
	if first.Median != 7 || last.Median != 7 || last.Extra["p95"] != 7 || !strings.Contains(last.Note, "2 of these ADDs ran the reaper") ||
		!strings.Contains(first.Note, "0 of these ADDs ran the reaper") {
		t.Fatalf("rows %+v / %+v", first, last)
	}
}
