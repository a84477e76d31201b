package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSummarize(t *testing.T) {
	cases := []struct {
		in            []float64
		med, min, max float64
		n             int
	}{
		{[]float64{3, 1, 2}, 2, 1, 3, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4, 4},
		{[]float64{5}, 5, 5, 5, 1},
		{[]float64{math.NaN(), 7, 9}, 8, 7, 9, 2},
	}
	for _, c := range cases {
		s := Summarize(c.in)
		if s.N != c.n || !near(s.Median, c.med) || !near(s.Min, c.min) || !near(s.Max, c.max) {
			t.Errorf("Summarize(%v) = %+v, want n=%d median=%v min=%v max=%v", c.in, s, c.n, c.med, c.min, c.max)
		}
	}
	if s := Summarize(nil); s.N != 0 || !math.IsNaN(s.Median) {
		t.Errorf("Summarize(nil) = %+v, want N=0 and NaN median", s)
	}
	in := []float64{3, 1, 2}
	Summarize(in)
	if in[0] != 3 || in[1] != 1 {
		t.Errorf("Summarize reordered its input: %v", in)
	}
}

func TestPercentileNearestRank(t *testing.T) {
	var xs []float64
	for i := 200; i >= 1; i-- { // 1..200, reversed
		xs = append(xs, float64(i))
	}
	for _, c := range []struct{ p, want float64 }{{50, 100}, {95, 190}, {99, 198}, {100, 200}, {0.1, 1}} {
		if got := Percentile(xs, c.p); got != c.want {
			t.Errorf("Percentile(1..200, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile([]float64{10, 20, 30}, 50); got != 20 {
		t.Errorf("p50 of 10,20,30 = %v, want 20", got)
	}
	if !math.IsNaN(Percentile(nil, 50)) || !math.IsNaN(Percentile(xs, 0)) || !math.IsNaN(Percentile(xs, 101)) {
		t.Error("Percentile of empty input or p outside (0,100] must be NaN")
	}
}

func TestRatioAndPairedRatios(t *testing.T) {
	if got := Ratio(9, 10); !near(got, 0.9) {
		t.Errorf("Ratio(9,10) = %v", got)
	}
	if !math.IsNaN(Ratio(1, 0)) || !math.IsNaN(Ratio(math.NaN(), 1)) {
		t.Error("Ratio by zero or of NaN must be NaN")
	}
	// A B A B A: each B against the mean of the A's around it.
	got := PairedRatios([]float64{10, 12, 8}, []float64{11, 5})
	want := []float64{1.0, 0.5}
	if len(got) != len(want) || !near(got[0], want[0]) || !near(got[1], want[1]) {
		t.Errorf("PairedRatios bracketed = %v, want %v", got, want)
	}
	// A B A B: each B against the A before it.
	got = PairedRatios([]float64{10, 20}, []float64{5, 30})
	if len(got) != 2 || !near(got[0], 0.5) || !near(got[1], 1.5) {
		t.Errorf("PairedRatios alternating = %v, want [0.5 1.5]", got)
	}
	// A missing baseline falls back to the other neighbour.
	got = PairedRatios([]float64{math.NaN(), 4}, []float64{2})
	if len(got) != 1 || !near(got[0], 0.5) {
		t.Errorf("PairedRatios with a NaN neighbour = %v, want [0.5]", got)
	}
}

func sampleTable() *Table {
	tb := &Table{Title: "TCP_RR", Unit: "transactions/s", HigherIsBetter: true, Baseline: "none"}
	tb.Add("none", []float64{100, 110, 90})
	r := tb.Add("podscope", []float64{95, 99, 97})
	r.Paired = []float64{0.95, 0.97, 0.99}
	tb.Add("iptables", []float64{50, 55, 45})
	tb.AddNA("nft", "nft not installed")
	tb.ComputeRatios()
	return tb
}

func TestTableRatios(t *testing.T) {
	tb := sampleTable()
	if r := tb.Row("podscope").Ratio; !near(r, 0.97) {
		t.Errorf("paired ratio = %v, want median of paired 0.97", r)
	}
	if r := tb.Row("iptables").Ratio; !near(r, 0.5) {
		t.Errorf("unpaired ratio = %v, want 50/100", r)
	}
	if r := tb.Row("none").Ratio; !near(r, 1) {
		t.Errorf("baseline ratio = %v, want 1", r)
	}
	if r := tb.Row("nft").Ratio; !math.IsNaN(r) {
		t.Errorf("n/a row got ratio %v", r)
	}
}

func TestTableText(t *testing.T) {
	var b bytes.Buffer
	if err := sampleTable().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("want title, header and 4 rows, got %d lines:\n%s", len(lines), b.String())
	}
	if !strings.HasPrefix(lines[0], "TCP_RR [transactions/s, higher is better]") {
		t.Errorf("title line %q", lines[0])
	}
	// Columns line up: "median" header ends where the numbers end.
	hdr := lines[1]
	end := strings.Index(hdr, "median") + len("median")
	for _, l := range lines[2:5] {
		if len(l) < end || l[end-1] == ' ' {
			t.Errorf("median column not right-aligned at %d in %q", end, l)
		}
	}
	for _, want := range []string{"1 (baseline)", "0.970", "0.500", "n/a: nft not installed", "100", "97.0"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestTableMarkdown(t *testing.T) {
	var b bytes.Buffer
	if err := sampleTable().WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.Contains(out, "| variant | median | min | max | ratio | note |") {
		t.Errorf("markdown header missing:\n%s", out)
	}
	if !strings.Contains(out, "| podscope | 97.0 | 95.0 | 99.0 | 0.970 |  |") {
		t.Errorf("podscope row wrong:\n%s", out)
	}
	if !strings.Contains(out, "| nft | n/a | n/a | n/a | n/a | n/a: nft not installed |") {
		t.Errorf("n/a row wrong:\n%s", out)
	}
}

func TestFormatValue(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{{43311.4, "43311"}, {15.52, "15.5"}, {1.234, "1.23"}, {0.01234, "0.0123"}, {0, "0"}, {math.NaN(), "-"}} {
		if got := FormatValue(c.v); got != c.want {
			t.Errorf("FormatValue(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestJSONHasNoNaN(t *testing.T) {
	res := &Results{Sections: []Section{{Name: "x", Tables: []*Table{sampleTable()}}}}
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatalf("marshal with NaN rows: %v", err)
	}
	var back struct {
		Sections []struct {
			Tables []struct {
				Rows []struct {
					Variant string   `json:"variant"`
					Median  *float64 `json:"median"`
					Ratio   *float64 `json:"ratio"`
					NA      string   `json:"na"`
				} `json:"rows"`
			} `json:"tables"`
		} `json:"sections"`
	}
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	rows := back.Sections[0].Tables[0].Rows
	if rows[3].Median != nil || rows[3].NA == "" {
		t.Errorf("n/a row must have null median and a reason: %+v", rows[3])
	}
	if rows[1].Ratio == nil || !near(*rows[1].Ratio, 0.97) {
		t.Errorf("podscope ratio lost in JSON: %s", data)
	}
}

func TestKeepClean(t *testing.T) {
	got := keepClean([]float64{1, 2, 3, 4}, []bool{true, false, true, false})
	if len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Errorf("keepClean = %v, want [1 3]", got)
	}
}

func TestResultsRoundTrip(t *testing.T) {
	res := &Results{Sections: []Section{{Name: "Datapath: x", Tables: []*Table{sampleTable()}}}}
	path := t.TempDir() + "/r.json"
	if err := res.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	tb := back.Sections[0].Tables[0]
	if r := tb.Row("podscope"); r == nil || !near(r.Ratio, 0.97) || !near(r.Median, 97) || len(r.Paired) != 3 {
		t.Errorf("podscope row after round trip: %+v", r)
	}
	if r := tb.Row("nft"); r == nil || r.NA == "" || !math.IsNaN(r.Median) || !math.IsNaN(r.Ratio) {
		t.Errorf("n/a row after round trip must keep NaN and the reason: %+v", r)
	}
}
