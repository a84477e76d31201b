package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"
)

// Results is everything one run measured; it is written as results.json.
type Results struct {
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Quick    bool      `json:"quick"`
	Machine  Machine   `json:"machine"`
	Sections []Section `json:"sections"`
	Summary  []Goal    `json:"summary"`
	Notes    []string  `json:"notes,omitempty"`
}

// Machine says where the numbers come from.
type Machine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpuModel"`
	Kernel   string `json:"kernel"`
	MemoryMB int    `json:"memoryMB"`
	Go       string `json:"go"`
	Commit   string `json:"commit"`
}

// Section is one part of the benchmark (datapath, CNI, audit).
type Section struct {
	Name   string   `json:"name"`
	Tables []*Table `json:"tables"`
	Notes  []string `json:"notes,omitempty"`
}

// Table is one measured quantity across variants.
type Table struct {
	Title string `json:"title"`
	Unit  string `json:"unit"`
	// HigherIsBetter: throughput and rates (true) vs latency and time per op.
	HigherIsBetter bool `json:"higherIsBetter"`
	// Baseline names the row every Ratio is relative to ("" = no ratios).
	Baseline string `json:"baseline"`
	// Columns other than median/min/max (e.g. p95, p99) per row, in order.
	Extra []string `json:"extra,omitempty"`
	Rows  []*Row   `json:"rows"`
}

// Row is one variant's samples and what was derived from them.
type Row struct {
	Variant string    `json:"variant"`
	Samples []float64 `json:"samples,omitempty"`
	Summary
	// Ratio to the baseline row: median of the paired ratios when the
	// variant was interleaved with the baseline, else median/median.
	Ratio float64            `json:"ratio"`
	Extra map[string]float64 `json:"extra,omitempty"`
	// NA is set when the variant could not run; then no number is shown.
	NA   string `json:"na,omitempty"`
	Note string `json:"note,omitempty"`
	// Paired holds per-round variant/baseline ratios (interleaved runs).
	Paired []float64 `json:"paired,omitempty"`
}

// Goal is one line of the summary table: what podscope promises, what was
// measured. Met is nil when it could not be measured.
type Goal struct {
	Goal     string `json:"goal"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      *bool  `json:"met"`
	Note     string `json:"note,omitempty"`
}

// MarshalJSON writes NaN as null (JSON has no NaN).
func (r Row) MarshalJSON() ([]byte, error) {
	type plain struct {
		Variant string             `json:"variant"`
		Samples []*float64         `json:"samples,omitempty"`
		N       int                `json:"n"`
		Median  *float64           `json:"median"`
		Min     *float64           `json:"min"`
		Max     *float64           `json:"max"`
		Ratio   *float64           `json:"ratio"`
		Extra   map[string]float64 `json:"extra,omitempty"`
		NA      string             `json:"na,omitempty"`
		Note    string             `json:"note,omitempty"`
		Paired  []*float64         `json:"paired,omitempty"`
	}
	p := plain{Variant: r.Variant, N: r.N, Median: num(r.Median), Min: num(r.Min), Max: num(r.Max),
		Ratio: num(r.Ratio), NA: r.NA, Note: r.Note, Samples: nums(r.Samples), Paired: nums(r.Paired)}
	if len(r.Extra) > 0 {
		p.Extra = map[string]float64{}
		for k, v := range r.Extra {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				p.Extra[k] = v
			}
		}
	}
	return json.Marshal(p)
}

// UnmarshalJSON reads what MarshalJSON wrote (null -> NaN).
func (r *Row) UnmarshalJSON(data []byte) error {
	var p struct {
		Variant string             `json:"variant"`
		Samples []*float64         `json:"samples"`
		N       int                `json:"n"`
		Median  *float64           `json:"median"`
		Min     *float64           `json:"min"`
		Max     *float64           `json:"max"`
		Ratio   *float64           `json:"ratio"`
		Extra   map[string]float64 `json:"extra"`
		NA      string             `json:"na"`
		Note    string             `json:"note"`
		Paired  []*float64         `json:"paired"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return err
	}
	*r = Row{Variant: p.Variant, Samples: unnums(p.Samples), Summary: Summary{N: p.N, Median: unnum(p.Median), Min: unnum(p.Min), Max: unnum(p.Max)},
		Ratio: unnum(p.Ratio), Extra: p.Extra, NA: p.NA, Note: p.Note, Paired: unnums(p.Paired)}
	return nil
}

func unnum(f *float64) float64 {
	if f == nil {
		return math.NaN()
	}
	return *f
}

func unnums(fs []*float64) []float64 {
	if len(fs) == 0 {
		return nil
	}
	out := make([]float64, len(fs))
	for i, f := range fs {
		out[i] = unnum(f)
	}
	return out
}

// ReadResults loads a results.json.
func ReadResults(path string) (*Results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

func num(f float64) *float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}

func nums(fs []float64) []*float64 {
	if len(fs) == 0 {
		return nil
	}
	out := make([]*float64, len(fs))
	for i, f := range fs {
		out[i] = num(f)
	}
	return out
}

// Row returns the row named variant, or nil.
func (t *Table) Row(variant string) *Row {
	for _, r := range t.Rows {
		if r.Variant == variant {
			return r
		}
	}
	return nil
}

// Add appends a measured row (summary computed from samples).
func (t *Table) Add(variant string, samples []float64) *Row {
	r := &Row{Variant: variant, Samples: samples, Summary: Summarize(samples), Ratio: math.NaN()}
	t.Rows = append(t.Rows, r)
	return r
}

// AddNA appends a row for a variant that could not run.
func (t *Table) AddNA(variant, reason string) *Row {
	r := &Row{Variant: variant, NA: reason, Summary: Summarize(nil), Ratio: math.NaN()}
	t.Rows = append(t.Rows, r)
	return r
}

// ComputeRatios fills Ratio of every row from the baseline row: the median
// of Paired when present, else median/median.
func (t *Table) ComputeRatios() {
	base := t.Row(t.Baseline)
	for _, r := range t.Rows {
		if r.NA != "" {
			continue
		}
		if len(r.Paired) > 0 {
			r.Ratio = Median(r.Paired)
			continue
		}
		if base != nil && base.NA == "" {
			r.Ratio = Ratio(r.Median, base.Median)
		}
	}
}

// FormatValue prints a number with about four significant digits.
func FormatValue(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1e6:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// FormatRatio prints a ratio with three decimals.
func FormatRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return fmt.Sprintf("%.3f", v)
}

// cells returns the header and the rows of the table as strings.
func (t *Table) cells() ([]string, [][]string) {
	head := []string{"variant", "median", "min", "max"}
	head = append(head, t.Extra...)
	if t.Baseline != "" {
		head = append(head, "ratio")
	}
	head = append(head, "note")
	var rows [][]string
	for _, r := range t.Rows {
		row := []string{r.Variant}
		if r.NA != "" {
			for i := 0; i < 3+len(t.Extra); i++ {
				row = append(row, "n/a")
			}
			if t.Baseline != "" {
				row = append(row, "n/a")
			}
			row = append(row, "n/a: "+r.NA)
			rows = append(rows, row)
			continue
		}
		row = append(row, FormatValue(r.Median), FormatValue(r.Min), FormatValue(r.Max))
		for _, e := range t.Extra {
			v, ok := r.Extra[e]
			if !ok {
				v = math.NaN()
			}
			row = append(row, FormatValue(v))
		}
		if t.Baseline != "" {
			if r.Variant == t.Baseline {
				row = append(row, "1 (baseline)")
			} else {
				row = append(row, FormatRatio(r.Ratio))
			}
		}
		row = append(row, r.Note)
		rows = append(rows, row)
	}
	return head, rows
}

// WriteText prints the table with aligned columns for a terminal.
func (t *Table) WriteText(w io.Writer) error {
	head, rows := t.cells()
	widths := make([]int, len(head))
	for i, h := range head {
		widths[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			if n := len([]rune(c)); n > widths[i] {
				widths[i] = n
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s [%s, %s]\n", t.Title, t.Unit, betterWord(t.HigherIsBetter))
	line := func(cs []string) {
		for i, c := range cs {
			if i == len(cs)-1 {
				b.WriteString(c)
				break
			}
			pad := widths[i] - len([]rune(c))
			if i == 0 {
				b.WriteString(c + strings.Repeat(" ", pad))
			} else {
				b.WriteString(strings.Repeat(" ", pad) + c)
			}
			b.WriteString("  ")
		}
		b.WriteString("\n")
	}
	line(head)
	for _, r := range rows {
		line(r)
	}
	_, err := io.WriteString(w, strings.TrimRight(b.String(), " ")+"\n")
	return err
}

// WriteMarkdown prints the table as GitHub markdown.
func (t *Table) WriteMarkdown(w io.Writer) error {
	head, rows := t.cells()
	var b strings.Builder
	fmt.Fprintf(&b, "**%s** (%s, %s)\n\n", t.Title, t.Unit, betterWord(t.HigherIsBetter))
	b.WriteString("| " + strings.Join(head, " | ") + " |\n")
	b.WriteString("|" + strings.Repeat(" --- |", len(head)) + "\n")
	for _, r := range rows {
		for i := range r {
			r[i] = strings.ReplaceAll(r[i], "|", "\\|")
		}
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func betterWord(higher bool) string {
	if higher {
		return "higher is better"
	}
	return "lower is better"
}

// GoalCells formats the summary table.
func goalCells(goals []Goal) [][]string {
	var rows [][]string
	for _, g := range goals {
		met := "n/a"
		if g.Met != nil {
			met = "no"
			if *g.Met {
				met = "yes"
			}
		}
		rows = append(rows, []string{g.Goal, g.Target, g.Measured, met, g.Note})
	}
	return rows
}

// WriteSummaryText prints the goal table for a terminal.
func WriteSummaryText(w io.Writer, goals []Goal) error {
	t := &Table{Title: "Summary: goals vs measured", Unit: "ratios", HigherIsBetter: true}
	head := []string{"goal", "target", "measured", "met", "note"}
	rows := goalCells(goals)
	widths := make([]int, len(head))
	for i, h := range head {
		widths[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			if n := len([]rune(c)); n > widths[i] {
				widths[i] = n
			}
		}
	}
	var b strings.Builder
	b.WriteString(t.Title + "\n")
	for _, r := range append([][]string{head}, rows...) {
		for i, c := range r {
			if i == len(r)-1 {
				b.WriteString(c)
				continue
			}
			b.WriteString(c + strings.Repeat(" ", widths[i]-len([]rune(c))) + "  ")
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteSummaryMarkdown prints the goal table as markdown.
func WriteSummaryMarkdown(w io.Writer, goals []Goal) error {
	var b strings.Builder
	b.WriteString("| goal | target | measured | met | note |\n| --- | --- | --- | --- | --- |\n")
	for _, r := range goalCells(goals) {
		for i := range r {
			r[i] = strings.ReplaceAll(r[i], "|", "\\|")
		}
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteText prints every section's tables and the summary.
func (r *Results) WriteText(w io.Writer) error {
	for _, s := range r.Sections {
		fmt.Fprintf(w, "\n=== %s ===\n", s.Name)
		for _, n := range s.Notes {
			fmt.Fprintf(w, "note: %s\n", n)
		}
		for _, t := range s.Tables {
			fmt.Fprintln(w)
			if err := t.WriteText(w); err != nil {
				return err
			}
		}
	}
	fmt.Fprintln(w)
	return WriteSummaryText(w, r.Summary)
}

// WriteMarkdown renders the whole run as markdown (bench/latest.md).
func (r *Results) WriteMarkdown(w io.Writer) error {
	fmt.Fprintf(w, "# podscope benchmark results\n\n")
	m := r.Machine
	fmt.Fprintf(w, "Run %s (%s, %.0f s%s) on %d CPUs (%s), %d MB RAM, Linux %s, %s, commit %s.\n\n",
		r.Started.UTC().Format(time.RFC3339), runKind(r.Quick), r.Seconds, "", m.CPUs, m.CPUModel, m.MemoryMB, m.Kernel, m.Go, m.Commit)
	fmt.Fprintf(w, "## Summary\n\n")
	if err := WriteSummaryMarkdown(w, r.Summary); err != nil {
		return err
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\n- %s", n)
	}
	fmt.Fprintln(w)
	for _, s := range r.Sections {
		fmt.Fprintf(w, "\n## %s\n\n", s.Name)
		for _, n := range s.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		if len(s.Notes) > 0 {
			fmt.Fprintln(w)
		}
		for _, t := range s.Tables {
			if err := t.WriteMarkdown(w); err != nil {
				return err
			}
		}
	}
	return nil
}

func runKind(quick bool) string {
	if quick {
		return "bench-quick"
	}
	return "full bench"
}

// WriteJSON writes the results to path.
func (r *Results) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
