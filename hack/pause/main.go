// Command pause is the sandbox ("pause") process of the end-to-end suite's
// local image: it holds the pod's namespaces, reaps zombies (it is PID 1 of
// the pod) and exits cleanly on SIGINT/SIGTERM. It exists so that the e2e
// harness and `make demo` need no registry: hack/e2e-env.sh builds it
// statically and packs it into an OCI image layout.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("podscope-pause\n")
		return
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// PID 1 of the pod inherits orphans: reap all that have exited.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
