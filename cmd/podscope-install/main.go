// Command podscope-install copies the podscope plugins into the CNI bin dir
// and chains podscope into the node's active CNI config (or undoes it); see
// pkg/install.
package main

import (
	"os"

	"github.com/podscope/podscope/pkg/install"
)

func main() {
	os.Exit(install.Main(os.Args[1:], os.Stderr, install.CheckEntry))
}
