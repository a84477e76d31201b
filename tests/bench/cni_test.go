package bench

import (
	"strings"
	"testing"
)

// scaleResults runs addScaleRows on a scale test of pods podscope ADDs
// (chain) and the bridge-alone ADDs paired with its first and last pods, and
// wraps the tables as the CNI section of a run.
func scaleResults(pods int, chain, bridge []float64) (*Results, *Table) {
	scale := &Table{Title: "ADD at scale, bridge + podscope (tcx)", Unit: "ms", Baseline: "pods 1-20", Extra: []string{"p95"}}
	mem := &Table{Title: "podscope pinned map memory (memlock)", Unit: "MiB"}
	out := &cniOutput{Times: map[string]*cniTimes{"scale": {Add: chain}, "scale-bridge": {Add: bridge}}}
	addScaleRows(scale, mem, out, pods)
	scale.ComputeRatios()
	r := &Results{Sections: []Section{{Name: "CNI ADD/DEL latency (libcni, whole chain, wall time)", Tables: []*Table{scale, mem}}}}
	return r, scale
}

func flatGoal(t *testing.T, r *Results, q string) Goal {
	t.Helper()
	for _, g := range Goals(r) {
		if strings.HasPrefix(g.Goal, "ADD flat at scale: podscope's part of ADD "+q) {
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
