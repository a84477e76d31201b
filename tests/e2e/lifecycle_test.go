package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// pinFiles lists every pin under the environment's bpffs root.
func (e *env) pinFiles(t testing.TB) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(e.bpffsRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(e.bpffsRoot, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func diffPins(before, after []string) (added, removed []string) {
	for _, p := range after {
		if !slices.Contains(before, p) {
			added = append(added, p)
		}
	}
	for _, p := range before {
		if !slices.Contains(after, p) {
			removed = append(removed, p)
		}
	}
	return
}

func (e *env) checkPinsEqual(t testing.TB, before []string, what string) {
	t.Helper()
	added, removed := diffPins(before, e.pinFiles(t))
	if len(added) > 0 || len(removed) > 0 {
		t.Errorf("%s: pins left behind %v, pins lost %v", what, added, removed)
	}
}

func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}

// armedProbe writes a file in the container (through exec, which joins the
// container's cgroup) and waits for the audit event of that write.
func (e *env) armedProbe(t testing.TB, p *pod, ctrID, file string) {
	t.Helper()
	e.mustExec(t, ctrID, "touch", file)
	eventually(t, 15*time.Second, fmt.Sprintf("audit event of %s in %s/%s", file, p.Namespace, p.Name), func() error {
		for _, ev := range e.auditOf(t, p.UID) {
			if ev.ContainerID == ctrID && ev.Path == file {
				return nil
			}
		}
		return errors.New("not in the audit log")
	})
}

// TestPodRemoval: crictl stopp + rmp (containerd calls DEL twice) writes the
// pod's final counters to accounting.jsonl exactly once, and nothing of the
// pod is left: no registry row, no pins, no host veth.
func TestPodRemoval(t *testing.T) {
	e := mustEnv(t)
	e.requireCNI(t)
	srv := e.runPod(t, podSpec{Namespace: "e2e-remove", Name: "server"})
	srv.start(t, "tcp", "pstraffic", "tcp-serve", "5000")
	e.waitAttached(t, srv)
	before := e.pinFiles(t)

	gone := e.runPod(t, podSpec{Namespace: "e2e-remove", Name: "gone"})
	c := gone.start(t, "sleep", "sleep", "3600")
	row := e.waitAttached(t, gone)
	eventually(t, 10*time.Second, "gone -> server:5000", func() error {
		_, err := e.exec(c, "pstraffic", "tcp-send", srv.IP+":5000", "300000")
		return err
	})
	last := e.mustPodRow(t, gone).Counters
	gone.remove(t)

	lines := e.accounting(t, gone.UID)
	if len(lines) != 1 {
		t.Fatalf("accounting.jsonl has %d lines for pod uid %s, want exactly 1: %+v", len(lines), gone.UID, lines)
	}
	a := lines[0]
	if a.Namespace != "e2e-remove" || a.Pod != "gone" {
		t.Errorf("accounting line names %s/%s, want e2e-remove/gone", a.Namespace, a.Pod)
	}
	if a.TxBytes < last.TxBytes || a.TxBytes < 300000 || a.RxBytes < last.RxBytes {
		t.Errorf("final counters tx %d rx %d; last seen live tx %d rx %d (sent 300000)", a.TxBytes, a.RxBytes, last.TxBytes, last.RxBytes)
	}
	if _, ok := e.podRow(t, gone); ok {
		t.Error("podscopectl pods still lists the removed pod")
	}
	if _, err := e.podscopectlOut("flows", "--pod", "e2e-remove/gone", "-o", "json"); err == nil {
		t.Error("podscopectl flows --pod e2e-remove/gone still answers for a removed pod")
	}
	if linkExists(row.HostInterface) {
		t.Errorf("host veth %s still exists", row.HostInterface)
	}
	e.checkPinsEqual(t, before, "after stopp+rmp")
}

// TestRestarts: podscope-nri killed with SIGKILL while containers run, and
// restarted: Synchronize re-arms the running containers and arms those
// started while it was down. containerd restarted: podscope-nri keeps
// running and reconnects, counters continue, audit continues, nothing leaks.
func TestRestarts(t *testing.T) {
	e := mustEnv(t)
	e.requireNRI(t)
	keep := e.runPod(t, podSpec{Namespace: "e2e-restart", Name: "keep"})
	keep.start(t, "sleep", "sleep", "3600")
	e.waitAttached(t, keep)
	before := e.pinFiles(t)

	a := e.runPod(t, podSpec{Namespace: "e2e-restart", Name: "a"})
	a.start(t, "tcp", "pstraffic", "tcp-serve", "5000")
	ca := a.start(t, "sleep", "sleep", "3600")
	e.waitAttached(t, a)
	e.armedProbe(t, a, ca, "/data/probe-1")

	e.envScript(t, "stop-nri", "KILL")
	b := e.runPod(t, podSpec{Namespace: "e2e-restart", Name: "b"})
	cb := b.start(t, "sleep", "sleep", "3600")
	e.envScript(t, "start-nri")
	e.armedProbe(t, a, ca, "/data/probe-2")
	e.armedProbe(t, b, cb, "/data/probe-started-while-down")

	send := func() {
		t.Helper()
		eventually(t, 10*time.Second, "b -> a:5000", func() error {
			_, err := e.exec(cb, "pstraffic", "tcp-send", a.IP+":5000", "100000")
			return err
		})
	}
	send()
	r0 := e.mustPodRow(t, a).Counters
	if r0.RxBytes < 100000 {
		t.Fatalf("pod a rx %d after 100000 sent", r0.RxBytes)
	}
	e.envScript(t, "stop-containerd")
	e.envScript(t, "start-containerd")
	// podscope-nri keeps running while containerd is away (its audit
	// reader and metrics stay up) and reconnects by itself
	// (docs/podscope-nri.md, "Lost connection"): exiting is a failure. It is
	// restarted then only so that the checks below still run.
	time.Sleep(2 * time.Second)
	if !e.nriRunning() {
		t.Error("podscope-nri exited when containerd restarted; it must keep running and reconnect")
		e.envScript(t, "start-nri")
	}
	eventually(t, 20*time.Second, "podscope-nri connected to the restarted containerd (metric podscope_nri_connected)", func() error {
		if v, ok := e.metric(t, "podscope_nri_connected"); !ok || v != 1 {
			return fmt.Errorf("podscope_nri_connected = %v (present %v)", v, ok)
		}
		return nil
	})
	r1 := e.mustPodRow(t, a).Counters
	if r1.RxBytes < r0.RxBytes || r1.TxBytes < r0.TxBytes {
		t.Errorf("counters went back across a containerd restart: %+v -> %+v", r0, r1)
	}
	send()
	r2 := e.mustPodRow(t, a).Counters
	if r2.RxBytes < r1.RxBytes+100000 {
		t.Errorf("counters did not continue after the containerd restart: rx %d -> %d after 100000 more", r1.RxBytes, r2.RxBytes)
	}
	e.armedProbe(t, a, ca, "/data/probe-after-containerd-restart")
	c := b.start(t, "late", "sh", "-c", "echo x > /data/late; sleep 3600")
	eventually(t, 15*time.Second, "audit of a container started after the containerd restart", func() error {
		for _, ev := range e.auditOf(t, b.UID) {
			if ev.ContainerID == c && ev.Path == "/data/late" {
				return nil
			}
		}
		return errors.New("no event for /data/late")
	})

	a.remove(t)
	b.remove(t)
	e.checkPinsEqual(t, before, "after restarts and removal")
	for _, p := range []*pod{a, b} {
		if n := len(e.accounting(t, p.UID)); n != 1 {
			t.Errorf("pod %s: %d accounting lines, want 1", p.Name, n)
		}
	}
}

// TestReaper: a pod whose netns and host veth vanish without any DEL (as
// when a node's runtime state is wiped) is reaped by podscope itself: its
// counters are logged once and its attachments and pins are removed.
func TestReaper(t *testing.T) {
	e := mustEnv(t)
	e.requireNRI(t)
	keep := e.runPod(t, podSpec{Namespace: "e2e-reap", Name: "keep"})
	keep.start(t, "tcp", "pstraffic", "tcp-serve", "5000")
	e.waitAttached(t, keep)
	before := e.pinFiles(t)

	d := e.runPod(t, podSpec{Namespace: "e2e-reap", Name: "doomed"})
	c := d.start(t, "sleep", "sleep", "3600")
	row := e.waitAttached(t, d)
	eventually(t, 10*time.Second, "doomed -> keep:5000", func() error {
		_, err := e.exec(c, "pstraffic", "tcp-send", keep.IP+":5000", "100000")
		return err
	})
	// Behind podscope's back: the host veth (and with it the pod's eth0),
	// the netns mount, libcni's cached result.
	if out, err := exec.Command("ip", "link", "del", "dev", row.HostInterface).CombinedOutput(); err != nil {
		t.Fatalf("ip link del %s: %v %s", row.HostInterface, err, out)
	}
	if row.Netns != "" && strings.HasPrefix(row.Netns, e.work) {
		if out, err := exec.Command("umount", "-l", row.Netns).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s", row.Netns, err, out)
		}
		if err := os.Remove(row.Netns); err != nil {
			t.Logf("remove %s: %v", row.Netns, err)
		}
	}
	cache, _ := filepath.Glob("/var/lib/cni/results/pstest-e2e-" + d.ID + "-*")
	for _, f := range cache {
		os.Remove(f)
	}
	// A pod added afterwards gives an ADD-time reaper its chance too.
	trigger := e.runPod(t, podSpec{Namespace: "e2e-reap", Name: "trigger"})
	eventually(t, 90*time.Second, "podscope reaps the vanished pod", func() error {
		if _, ok := e.podRow(t, d); ok {
			return errors.New("still listed by podscopectl pods")
		}
		if len(e.accounting(t, d.UID)) == 0 {
			return errors.New("no accounting line yet")
		}
		return nil
	})
	lines := e.accounting(t, d.UID)
	if len(lines) != 1 || !strings.Contains(lines[0].Reason, "reap") || lines[0].TxBytes < 100000 {
		t.Errorf("accounting of the reaped pod: %+v; want one line, reason reaped, tx >= 100000", lines)
	}
	trigger.remove(t)
	// The network side is gone now; the container still runs (only its
	// network vanished), so its audit pins stay until containerd removes it.
	added, removed := diffPins(before, e.pinFiles(t))
	for _, p := range append(added, removed...) {
		if !strings.HasPrefix(p, "v1/audit/") && !strings.Contains(p, "/audit/") {
			t.Errorf("after reaping: network pin %s differs from before the pod (added %v, removed %v)", p, added, removed)
		}
	}
	// containerd's own removal afterwards (DEL without netns) is harmless,
	// does not log the pod a second time, and takes the audit pins along.
	d.remove(t)
	if n := len(e.accounting(t, d.UID)); n != 1 {
		t.Errorf("after stopp+rmp of the reaped pod: %d accounting lines, want 1", n)
	}
	e.checkPinsEqual(t, before, "after reaping and removal")
}
