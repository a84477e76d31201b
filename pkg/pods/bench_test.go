package pods

import (
	"fmt"
	"strings"
	"testing"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/testenv"
)

// BenchmarkAddLookups measures what every CNI ADD asks the registry (is this
// attachment known, which pod ID is free) with n pods registered: the part
// of ADD that depends on the number of pods on the node.
func BenchmarkAddLookups(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			testenv.RequireRoot(b)
			r, err := OpenRegistry(testenv.BPFFSRoot(b))
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			for i := 1; i <= n; i++ {
				p := samplePod(datapath.PodID(i))
				p.Name = fmt.Sprintf("pod-%d", i)
				p.ContainerID = fmt.Sprintf("%064x", i)
				if err := r.Put(p); err != nil {
					b.Fatal(err)
				}
			}
			want := strings.Repeat("f", 64) // not registered: a new pod
			b.Run("lookup", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					_, found, free, err := r.Lookup(want, "eth0")
					if err != nil || found || int(free) != n+1 {
						b.Fatal(found, free, err)
					}
				}
			})
			b.Run("list", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					all, err := r.List()
					if err != nil || len(all) != n {
						b.Fatal(len(all), err)
					}
				}
			})
		})
	}
}
