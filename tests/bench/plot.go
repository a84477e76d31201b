package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

// ratioPanel draws, for each table, one bar per row: the row's ratio to
// its baseline (n/a rows get no bar), rows on the Y axis.
func ratioPanel(title, xlabel string, tables []*Table, goal float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	var withBase []*Table
	for _, t := range tables {
		if t.Baseline != "" {
			withBase = append(withBase, t)
		}
	}
	tables = withBase
	if len(tables) == 0 {
		return p, nil
	}
	var names []string
	for _, r := range tables[0].Rows {
		names = append(names, r.Variant)
	}
	w := vg.Points(60 / float64(len(tables)*len(names)+1))
	if w > vg.Points(8) {
		w = vg.Points(8)
	}
	if w < vg.Points(1.5) {
		w = vg.Points(1.5)
	}
	maxV := 1.0
	for i, t := range tables {
		vals := make(plotter.Values, len(names))
		for j, n := range names {
			r := t.Row(n)
			v := 0.0
			if r != nil && r.NA == "" && !math.IsNaN(r.Ratio) {
				v = r.Ratio
				if n == t.Baseline {
					v = 1
				}
			}
			vals[len(names)-1-j] = v
			maxV = math.Max(maxV, v)
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return nil, err
		}
		b.Horizontal = true
		b.Color = palette[i%len(palette)]
		b.LineStyle.Width = 0
		b.Offset = w * vg.Length(float64(i)-float64(len(tables)-1)/2)
		p.Add(b)
		p.Legend.Add(t.Title, b)
	}
	if goal > 0 {
		l, err := plotter.NewLine(plotter.XYs{{X: goal, Y: -0.5}, {X: goal, Y: float64(len(names)) - 0.5}})
		if err == nil {
			l.LineStyle.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
			l.LineStyle.Color = color.Gray{Y: 0x60}
			p.Add(l)
		}
	}
	rev := make([]string, len(names))
	for j, n := range names {
		rev[len(names)-1-j] = n
	}
	p.NominalY(rev...)
	p.X.Min = 0
	p.X.Max = maxV * 1.5 // room on the right for the legend
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.Y.Tick.Label.Font.Size = vg.Points(8)
	p.Add(plotter.NewGrid())
	return p, nil
}

func sectionTables(r *Results, prefix string) []*Table {
	for _, s := range r.Sections {
		if len(s.Name) >= len(prefix) && s.Name[:len(prefix)] == prefix {
			return s.Tables
		}
	}
	return nil
}

// Plot writes a PNG: datapath ratios per workload, CNI ADD latency, audit
// ratios — one panel each, ratio 1 = the baseline.
func Plot(r *Results, path string) error {
	var panels []*plot.Plot
	if ts := sectionTables(r, "Datapath"); len(ts) > 0 {
		p, err := ratioPanel("Datapath: ratio to no program (higher is better; dashed: goal 0.97)", "ratio", ts, 0.97)
		if err != nil {
			return err
		}
		panels = append(panels, p)
	}
	if ts := sectionTables(r, "CNI"); len(ts) >= 2 {
		p, err := ratioPanel("CNI: ADD/DEL median time, ratio to bridge alone (lower is better)", "ratio", ts[:2], 0)
		if err != nil {
			return err
		}
		panels = append(panels, p)
	}
	if ts := sectionTables(r, "Audit"); len(ts) >= 2 {
		p, err := ratioPanel("Audit: time per op, ratio to podscope not loaded (lower is better; dashed: 1.3)", "ratio", ts[:2], 1.3)
		if err != nil {
			return err
		}
		panels = append(panels, p)
	}
	if len(panels) == 0 {
		p := plot.New()
		p.Title.Text = "no section ran"
		panels = append(panels, p)
	}
	heights := map[int]vg.Length{}
	total := vg.Length(0)
	for i, p := range panels {
		h := vg.Points(180)
		if ax, ok := p.Y.Tick.Marker.(plot.ConstantTicks); ok {
			h = vg.Points(float64(90 + 22*len(ax)))
		}
		heights[i] = h
		total += h
	}
	width := vg.Points(900)
	img := vgimg.New(width, total)
	dc := draw.New(img)
	top := total
	for i, p := range panels {
		h := heights[i]
		c := draw.Canvas{Canvas: dc, Rectangle: vg.Rectangle{Min: vg.Point{X: 0, Y: top - h}, Max: vg.Point{X: width, Y: top}}}
		p.Draw(c)
		top -= h
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	png := vgimg.PngCanvas{Canvas: img}
	if _, err := png.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}
