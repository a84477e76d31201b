// Package fault is podscope's crash injection for tests: at a named point
// between two steps of a multi-step change (ADD, DEL, arming a cgroup, a reconcile) the
// process kills itself with SIGKILL when the environment variable Env names
// that point, so a test can prove that the next ADD, DEL, CHECK, GC or the
// reaper brings the node back to a clean state from every step.
//
// It is off unless a test sets Env: production never sets it, and an unset
// variable costs one string comparison per point.
package fault

import (
	"os"
	"syscall"
)

// Env names the point to crash at, e.g. PODSCOPE_FAULT_POINT=add:policy.
const Env = "PODSCOPE_FAULT_POINT"

var armed = os.Getenv(Env)

// Point kills the process with SIGKILL when Env names it: no deferred
// function runs, no lock is released by hand, exactly as when the OOM
// killer or a node reboot strikes.
func Point(name string) {
	if armed == "" || armed != name {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is delivered before this thread runs again
}

// Points lists every fault point, for tests that visit them all.
var Points = struct {
	Add, Del, Arm, Disarm, Sync []string
}{
	Add:    []string{"add:locked", "add:registered", "add:policy", "add:attached", "add:recorded"},
	Del:    []string{"del:marked", "del:logged", "del:detached", "del:removed", "del:unregistered"},
	Arm:    []string{"arm:links", "arm:identity", "arm:audited"},
	Disarm: []string{"disarm:unaudited", "disarm:links"},
	// podscope-nri's Synchronize, after the first container it arms and
	// after the first stale entry it disarms: killed between two.
	Sync: []string{"sync:armed", "sync:disarmed"},
}
