// Command podscope-bench is the benchmark harness behind `make bench` (run)
// and the helpers it execs inside pod namespaces (serve, proxy, load,
// audit-loop). The logic lives in package bench.
package main

import (
	"fmt"
	"os"

	"github.com/podscope/podscope/tests/bench"
)

func main() {
	if err := bench.Main(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "podscope-bench:", err)
		os.Exit(1)
	}
}
