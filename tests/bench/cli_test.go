package bench

import (
	"strings"
	"testing"
)

func TestFilterVariantsTakesAlternatives(t *testing.T) {
	vs := []*Variant{{Name: "empty TCX program (hook cost)"}, {Name: "podscope, accounting only"},
		{Name: "podscope, 10 policy cidrs"}, {Name: "nftables, 10 rules"}}
	names := func(vs []*Variant) string {
		var n []string
		for _, v := range vs {
			n = append(n, v.Name)
		}
		return strings.Join(n, "; ")
	}
	for spec, want := range map[string]string{
		"accounting only":       "podscope, accounting only",
		"accounting only|empty": "empty TCX program (hook cost); podscope, accounting only",
		"10 |":                  "podscope, 10 policy cidrs; nftables, 10 rules",
		"nothing like it":       "",
	} {
		if got := names(FilterVariants(vs, spec)); got != want {
			t.Errorf("FilterVariants(%q) = %q, want %q", spec, got, want)
		}
	}
}
