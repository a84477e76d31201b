// Command podscopectl inspects podscope on a node; see pkg/ctl.
package main

import (
	"os"

	"github.com/podscope/podscope/pkg/ctl"
)

func main() {
	os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr))
}
