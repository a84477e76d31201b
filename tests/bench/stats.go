// Package bench is podscope's benchmark harness: it builds its own
// namespaces, runs each variant interleaved with its baseline, and reports
// median/min/max and ratios as tables, JSON and a PNG plot. It measures; it
// never passes or fails on a number.
package bench

import (
	"math"
	"sort"
)

// Summary describes a sample set.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns median, min and max of xs (NaN values are ignored). An
// empty set gives N == 0 and NaN statistics.
func Summarize(xs []float64) Summary {
	v := clean(xs)
	if len(v) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	sort.Float64s(v)
	return Summary{N: len(v), Median: median(v), Min: v[0], Max: v[len(v)-1]}
}

// Median of xs; NaN when empty.
func Median(xs []float64) float64 {
	v := clean(xs)
	if len(v) == 0 {
		return math.NaN()
	}
	sort.Float64s(v)
	return median(v)
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// Percentile returns the p-th percentile (0 < p <= 100) of xs by the
// nearest-rank method: the smallest sample such that at least p% of the
// samples are <= it. That is what "p99 over 200 runs" means to a reader (the
// 198th fastest run), with no interpolation between runs.
func Percentile(xs []float64, p float64) float64 {
	v := clean(xs)
	if len(v) == 0 || p <= 0 || p > 100 {
		return math.NaN()
	}
	sort.Float64s(v)
	rank := int(math.Ceil(p / 100 * float64(len(v))))
	if rank < 1 {
		rank = 1
	}
	return v[rank-1]
}

// Ratio is a/b, NaN when either is missing or b is zero.
func Ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

// PairedRatios divides each variant sample by the baseline measured around
// it: variant[i] was run between baseline[i] and baseline[i+1] (A B A B … A),
// so slow drift of the machine cancels. When baseline has only len(variant)
// samples (A B A B), the preceding baseline alone is used.
func PairedRatios(baseline, variant []float64) []float64 {
	out := make([]float64, 0, len(variant))
	for i, v := range variant {
		if i >= len(baseline) {
			break
		}
		b := baseline[i]
		if i+1 < len(baseline) && len(baseline) > len(variant) {
			nb := baseline[i+1]
			switch {
			case math.IsNaN(b):
				b = nb
			case !math.IsNaN(nb):
				b = (b + nb) / 2
			}
		}
		out = append(out, Ratio(v, b))
	}
	return out
}

func clean(xs []float64) []float64 {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	return v
}
