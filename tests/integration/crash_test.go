package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/fault"
	"github.com/podscope/podscope/pkg/podstate"
)

// crashAt runs f with the plugin set to SIGKILL itself at fault point
// point (libcni passes the test's environment to the plugins it runs).
func crashAt(t *testing.T, point string, f func() error) error {
	t.Helper()
	os.Setenv(fault.Env, point)
	defer os.Unsetenv(fault.Env)
	return f()
}

// assertClean: no registry entry, no link pin, no map entry, and each of
// the pods accounted exactly want times.
func (n *node) assertClean(t *testing.T, want map[*pod]int) {
	t.Helper()
	st, err := readPins(n.root)
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, l := range st.links {
		// podscope-nri's node-wide audit programs are not pod state.
		if !strings.Contains(l, "/audit/link_tp") {
			links = append(links, l)
		}
	}
	if len(links) != 0 {
		t.Errorf("link pins left: %v", links)
	}
	if ne := st.nonEmptyMaps(); len(ne) != 0 {
		t.Errorf("map entries left: %v", ne)
	}
	for p, w := range want {
		if got := len(n.accountingLines(p.containerID)); got != w {
			t.Errorf("%s: %d accounting lines, want %d", p.name, got, w)
		}
	}
}

// Killed (SIGKILL) after each step of ADD: the runtime's DEL after the
// failed ADD, or the reaper when no DEL comes, brings the node back to
// clean, and a pod registered before the kill is accounted exactly once.
func TestCrashAtEveryStepOfAdd(t *testing.T) {
	n := newNode(t, nodeOpts{})
	for _, point := range fault.Points.Add {
		t.Run(point, func(t *testing.T) {
			// The runtime answers a failed ADD with DEL.
			a := n.newPod("crash-a", nil)
			if err := crashAt(t, point, func() error { return n.add(a) }); err == nil || !strings.Contains(err.Error(), "signal: killed") {
				t.Fatalf("ADD with %s=%s: %v, want the plugin killed", fault.Env, point, err)
			}
			registered := n.isRegistered(a)
			if err := n.del(a, a.netnsPath); err != nil {
				t.Fatalf("DEL after the killed ADD: %v", err)
			}
			want := 0
			if registered {
				want = 1
			}
			n.assertClean(t, map[*pod]int{a: want})

			// Or no DEL comes (the runtime gave up on the sandbox): the
			// reaper of podscope-nri removes what the killed ADD left.
			b := n.newPod("crash-b", nil)
			if err := crashAt(t, point, func() error { return n.add(b) }); err == nil {
				t.Fatal("ADD not killed")
			}
			registered = n.isRegistered(b)
			n.destroySandbox(t, b)
			n.reapUntilGone(t, b)
			want = 0
			if registered {
				want = 1
			}
			n.assertClean(t, map[*pod]int{b: want})
		})
	}
}

// Killed after each step of DEL: the retried DEL, or (the pod gone without
// one) the reaper, finishes the teardown, and the pod is accounted exactly
// once although the line may have been written before the kill.
func TestCrashAtEveryStepOfDel(t *testing.T) {
	n := newNode(t, nodeOpts{})
	for _, point := range fault.Points.Del {
		t.Run(point, func(t *testing.T) {
			a := n.newPod("crash-a", nil)
			n.mustAdd(a)
			if err := crashAt(t, point, func() error { return n.del(a, a.netnsPath) }); err == nil || !strings.Contains(err.Error(), "signal: killed") {
				t.Fatalf("DEL with %s=%s: %v, want the plugin killed", fault.Env, point, err)
			}
			if err := n.del(a, a.netnsPath); err != nil {
				t.Fatalf("retried DEL: %v", err)
			}
			if err := n.del(a, ""); err != nil {
				t.Fatal(err)
			}
			n.assertClean(t, map[*pod]int{a: 1})

			// No retry: the pod's netns goes (the sandbox is destroyed), the
			// reaper of podscope-nri finishes the teardown.
			b := n.newPod("crash-b", nil)
			if err := n.add(b); err != nil {
				t.Fatal(err)
			}
			if err := crashAt(t, point, func() error { return n.del(b, b.netnsPath) }); err == nil {
				t.Fatal("DEL not killed")
			}
			n.destroySandbox(t, b)
			n.reapUntilGone(t, b)
			n.assertClean(t, map[*pod]int{b: 1})
		})
	}
}

// isRegistered is registered that tolerates a registry never created.
func (n *node) isRegistered(p *pod) bool {
	if _, err := os.Stat(filepath.Join(n.root.Dir("pods"), "podscope_pods")); err != nil {
		return false
	}
	_, ok := n.registered(p)
	return ok
}

// destroySandbox removes the pod's netns as the runtime does when it
// destroys a sandbox without a DEL reaching podscope: the netns and its
// veth go once the last reference is dropped. The path is created again
// (empty) afterwards for the test's cleanup.
func (n *node) destroySandbox(t *testing.T, p *pod) {
	t.Helper()
	p.ns.Close()
	name := filepath.Base(p.netnsPath)
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "add", name).Run() })
}

// reapUntilGone runs the reaper (as podscope-nri does) until p is no longer
// registered; the kernel destroys a netns and its veths asynchronously.
func (n *node) reapUntilGone(t *testing.T, p *pod) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for n.isRegistered(p) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still registered 20 s after its sandbox went", p.name)
		}
		if err := n.inNode(func() error {
			_, err := podstate.Reap(n.root, n.stateDir, time.Second)
			return err
		}); err != nil {
			t.Fatalf("reaper: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
