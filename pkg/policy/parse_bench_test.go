package policy

import (
	"fmt"
	"strings"
	"testing"
)

func bigSpecJSON(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"default":"allow","rules":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"cidr":"%d.%d.%d.0/24","action":"deny"}`, 11+i>>16, (i>>8)&255, i&255)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// BenchmarkParseSpec measures parsing (with validation and the chain
// check) of a 100,000-CIDR spec: what every CNI ADD of a network with such
// a policy pays before the datapath sees it.
func BenchmarkParseSpec(b *testing.B) {
	data := bigSpecJSON(100000)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		if _, err := ParseSpec(data, "policy.egress"); err != nil {
			b.Fatal(err)
		}
	}
}
