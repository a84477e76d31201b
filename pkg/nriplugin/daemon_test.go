package nriplugin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
	"github.com/podscope/podscope/pkg/testenv"
)

// testCgroup makes an empty cgroup v2 directory for a test "container"
// under a per-test parent in the machine's unified hierarchy.
func testCgroup(t *testing.T, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing test cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// waiter is a shell in a cgroup that runs script when released: the
// "container process" that is still `runc init` when StartContainer comes.
type waiter struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startWaiter(t *testing.T, cgroupDir, script string) *waiter {
	t.Helper()
	cmd := exec.Command("sh", "-c", "read go; "+script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Registered after the cgroup's cleanup, so it runs before it: the
	// cgroup must be empty to be removed.
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(cgroupDir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("moving pid %d into %s: %v", cmd.Process.Pid, cgroupDir, err)
	}
	return &waiter{cmd: cmd, stdin: stdin}
}

func (w *waiter) release(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(w.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Wait(); err != nil {
		t.Fatalf("container script: %v", err)
	}
}

func readAudit(t *testing.T, path string) []audit.Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("audit log line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	return out
}

func eventsOf(evs []audit.Event, containerID string) []audit.Event {
	var out []audit.Event
	for _, ev := range evs {
		if ev.ContainerID == containerID {
			out = append(out, ev)
		}
	}
	return out
}

func hasEvent(evs []audit.Event, op, path string) bool {
	for _, ev := range evs {
		if ev.Op == op && ev.Path == path {
			return true
		}
	}
	return false
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type runningDaemon struct {
	d      *Daemon
	cancel func()
	done   chan error
}

func startDaemon(t *testing.T, opt Options, logs io.Writer) *runningDaemon {
	t.Helper()
	d, err := NewDaemon(opt, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rd := &runningDaemon{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { rd.done <- d.Run(ctx) }()
	return rd
}

func (rd *runningDaemon) stop(t *testing.T) {
	t.Helper()
	rd.cancel()
	select {
	case err := <-rd.done:
		if err != nil {
			t.Errorf("daemon Run = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop")
	}
}

// TestDaemon runs podscope-nri's daemon for real — audit programs loaded
// (tracepoint mode), real cgroups, real processes — against an in-process
// NRI runtime: a container armed at StartContainer has its first writes in
// the audit log with its identity, an opted-out pod's container has none,
// metrics show the events, a stopped container is disarmed, and a restarted
// daemon adopts what is armed and keeps auditing it.
func TestDaemon(t *testing.T) {
	testenv.RequireRoot(t)
	root := testenv.BPFFSRoot(t)
	mount, err := cgroups.FindUnifiedSelf()
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.Name(t)
	parent := testCgroup(t, mount.Point, name)
	cgA := testCgroup(t, parent, "ctr-a")
	cgQ := testCgroup(t, parent, "ctr-q")
	work := t.TempDir()
	logs := &syncLog{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})

	rt := newRuntime(t)
	web := &api.PodSandbox{Id: "sb-web", Name: "web", Uid: "uid-web", Namespace: "e2e"}
	quiet := &api.PodSandbox{Id: "sb-quiet", Name: "quiet", Uid: "uid-quiet", Namespace: "e2e",
		Annotations: map[string]string{AuditAnnotation: "false"}}
	rt.start()
	defer rt.stop()

	stdout := &syncLog{}
	opt := Options{NRI: Conn{Socket: rt.socket, Name: "podscope", Index: "50"}, BPFFSRoot: root.Path,
		StateDir: filepath.Join(work, "state"), AuditLog: filepath.Join(work, "log", "audit.jsonl"),
		AuditDefault: true, AuditMode: string(audit.ModeTracepoint), MetricsAddr: "127.0.0.1:0",
		AuditStdout: true, Stdout: stdout}
	started := time.Now()
	d1 := startDaemon(t, opt, logs)
	waitFor(t, "registration", rt.registered)
	t.Logf("first start (load audit + register): %v", time.Since(started))

	dataA, dataQ := filepath.Join(work, "a"), filepath.Join(work, "q")
	for _, d := range []string{dataA, dataQ} {
		if err := os.Mkdir(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	script := func(dir string) string {
		return "echo hi > " + dir + "/f1; mkdir " + dir + "/d1; rm " + dir + "/f1"
	}
	wA := startWaiter(t, cgA, script(dataA))
	wQ := startWaiter(t, cgQ, script(dataQ))
	ctrA := &api.Container{Id: "cid-a", PodSandboxId: web.Id, Name: "app", State: api.ContainerState_CONTAINER_RUNNING,
		Pid: uint32(wA.cmd.Process.Pid), Linux: &api.LinuxContainer{CgroupsPath: "/" + name + "/ctr-a"}}
	ctrQ := &api.Container{Id: "cid-q", PodSandboxId: quiet.Id, Name: "app", State: api.ContainerState_CONTAINER_RUNNING,
		Pid: uint32(wQ.cmd.Process.Pid), Linux: &api.LinuxContainer{CgroupsPath: "/" + name + "/ctr-q"}}

	for _, c := range []struct {
		pod *api.PodSandbox
		ctr *api.Container
	}{{web, ctrA}, {quiet, ctrQ}} {
		t0 := time.Now()
		if err := rt.r.StartContainer(context.Background(), &api.StartContainerRequest{Pod: c.pod, Container: c.ctr}); err != nil {
			t.Fatal(err)
		}
		t.Logf("StartContainer of %s/%s took %v (runtime's view, includes arming)", c.pod.Name, c.ctr.Name, time.Since(t0))
	}
	wA.release(t)
	wQ.release(t)

	idA, err := cgroups.ID(cgA)
	if err != nil {
		t.Fatal(err)
	}
	var evs []audit.Event
	waitFor(t, "container a's writes in the audit log", func() bool {
		evs = eventsOf(readAudit(t, opt.AuditLog), ctrA.Id)
		return hasEvent(evs, "mkdir", dataA+"/d1") && hasEvent(evs, "unlink", dataA+"/f1") &&
			(hasEvent(evs, "create", dataA+"/f1") || hasEvent(evs, "open_write", dataA+"/f1"))
	})
	// The shell writes f1 itself; mkdir and rm are its children (same
	// cgroup, their own pid and comm).
	wantComm := map[string]string{"create": "sh", "open_write": "sh", "mkdir": "mkdir", "unlink": "rm"}
	for _, ev := range evs {
		if ev.Namespace != "e2e" || ev.Pod != "web" || ev.PodUID != "uid-web" || ev.Container != "app" || ev.CgroupID != idA {
			t.Errorf("event with wrong identity (want e2e/web/app, cgroup %d): %+v", idA, ev)
		}
		if ev.Comm != wantComm[ev.Op] || (ev.Comm == "sh" && ev.PID != uint32(wA.cmd.Process.Pid)) {
			t.Errorf("event with wrong process (want comm %q, the shell's pid %d): %+v", wantComm[ev.Op], wA.cmd.Process.Pid, ev)
		}
	}
	all := readAudit(t, opt.AuditLog)
	if q := eventsOf(all, ctrQ.Id); len(q) > 0 {
		t.Errorf("opted-out pod produced %d events: %+v", len(q), q)
	}
	for _, ev := range all {
		if strings.HasPrefix(ev.Path, dataQ) {
			t.Errorf("event of the opted-out container: %+v", ev)
		}
	}
	if got := strings.Count(stdout.String(), `"containerID":"cid-a"`); got != len(evs) {
		t.Errorf("--audit-stdout: %d lines of container a, the log has %d", got, len(evs))
	}
	if fi, err := os.Stat(opt.AuditLog); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode: %v %v", fi.Mode(), err)
	}

	m := scrape(t, d1.d.MetricsAddr())
	for _, want := range []string{
		`podscope_file_write_events_total{container="app",namespace="e2e",op="mkdir",pod="web",pod_uid="uid-web"} 1`,
		`podscope_file_write_events_total{container="app",namespace="e2e",op="unlink",pod="web",pod_uid="uid-web"} 1`,
		`podscope_audit_mode_info{mode="tracepoint"} 1`,
		`podscope_audit_armed_cgroups 1`,
		`podscope_nri_connected 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(m, `pod="quiet"`) {
		t.Error("metrics name the opted-out pod")
	}

	// Restart: the new daemon adopts the armed container (Synchronize sees
	// it running) and its writes keep being audited.
	rt.setWorld([]*api.PodSandbox{web, quiet}, []*api.Container{ctrA, ctrQ})
	d1.stop(t)
	rt.stop()
	rt.start()
	started = time.Now()
	d2 := startDaemon(t, opt, logs)
	waitFor(t, "re-registration", rt.registered)
	t.Logf("restart (reuse pins + register + synchronize): %v", time.Since(started))
	if got := d2.d.Plugin().ArmedContainers(); len(got) != 1 || got[ctrA.Id] != idA {
		t.Fatalf("after restart armed = %v, want %s on %d", got, ctrA.Id, idA)
	}
	w2 := startWaiter(t, cgA, "mkdir "+dataA+"/after-restart")
	w2.release(t)
	waitFor(t, "a write after the restart", func() bool {
		return hasEvent(eventsOf(readAudit(t, opt.AuditLog), ctrA.Id), "mkdir", dataA+"/after-restart")
	})

	// Stop disarms: a later write of that cgroup is not audited.
	if _, err := rt.r.StopContainer(context.Background(), &api.StopContainerRequest{Pod: web, Container: ctrA}); err != nil {
		t.Fatal(err)
	}
	w3 := startWaiter(t, cgA, "mkdir "+dataA+"/after-stop")
	w3.release(t)
	time.Sleep(2500 * time.Millisecond) // reader poll + log flush, twice over
	if hasEvent(readAudit(t, opt.AuditLog), "mkdir", dataA+"/after-stop") {
		t.Error("write after StopContainer was audited")
	}
	if m := scrape(t, d2.d.MetricsAddr()); !strings.Contains(m, "podscope_audit_armed_cgroups 0") {
		t.Error("armed gauge not 0 after stop")
	}
	d2.stop(t)
}

// TestDaemonWithoutBPFFS: the audit cannot load (the bpffs root is not on a
// bpffs). The daemon still registers and serves; containers start
// unaudited with a clear log line, or are refused under --fail-closed;
// /healthz says why it is unhealthy.
func TestDaemonWithoutBPFFS(t *testing.T) {
	for _, failClosed := range []bool{false, true} {
		t.Run("failClosed="+strconv.FormatBool(failClosed), func(t *testing.T) {
			work := t.TempDir()
			cgRoot := t.TempDir()
			logs := &syncLog{}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("daemon log:\n%s", logs.String())
				}
			})
			rt := newRuntime(t)
			rt.start()
			defer rt.stop()
			opt := Options{NRI: Conn{Socket: rt.socket, Name: "podscope", Index: "50"},
				BPFFSRoot: filepath.Join(work, "not-bpffs"), CgroupRoot: cgRoot, AuditLog: filepath.Join(work, "audit.jsonl"),
				StateDir:     filepath.Join(work, "state"),
				AuditDefault: true, AuditMode: string(audit.ModeTracepoint), MetricsAddr: "127.0.0.1:0", FailClosed: failClosed}
			d := startDaemon(t, opt, logs)
			defer d.stop(t)
			waitFor(t, "registration", rt.registered)

			if err := os.MkdirAll(filepath.Join(cgRoot, "kubepods", "c1"), 0o755); err != nil {
				t.Fatal(err)
			}
			pod := &api.PodSandbox{Id: "sb", Name: "p", Uid: "u", Namespace: "ns"}
			ctr := &api.Container{Id: "c1", PodSandboxId: "sb", Name: "c", Linux: &api.LinuxContainer{CgroupsPath: "/kubepods/c1"}}
			err := rt.r.StartContainer(context.Background(), &api.StartContainerRequest{Pod: pod, Container: ctr})
			if failClosed != (err != nil) {
				t.Errorf("StartContainer = %v, fail-closed %v", err, failClosed)
			}
			if !strings.Contains(logs.String(), "NOT armed") || !strings.Contains(logs.String(), "not on a bpf filesystem") {
				t.Errorf("no clear log line about the missing bpffs")
			}
			resp, err := http.Get("http://" + d.d.MetricsAddr() + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 503 || !strings.Contains(string(body), "not on a bpf filesystem") {
				t.Errorf("/healthz = %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestDaemonSingleInstance: a second podscope-nri on the same node (same
// state dir) waits, saying why, until the first exits — two readers of the
// ring buffer would each log part of the events.
func TestDaemonSingleInstance(t *testing.T) {
	work := t.TempDir()
	rt := newRuntime(t)
	rt.start()
	defer rt.stop()
	opt := Options{NRI: Conn{Socket: rt.socket, Name: "podscope", Index: "50"},
		BPFFSRoot: filepath.Join(work, "not-bpffs"), CgroupRoot: t.TempDir(), AuditLog: filepath.Join(work, "audit.jsonl"),
		StateDir: filepath.Join(work, "state"), AuditDefault: true, AuditMode: string(audit.ModeTracepoint), MetricsAddr: "127.0.0.1:0"}
	logs1, logs2 := &syncLog{}, &syncLog{}
	d1 := startDaemon(t, opt, logs1)
	waitFor(t, "first daemon up", func() bool { return d1.d.MetricsAddr() != "" })
	d2 := startDaemon(t, opt, logs2)
	waitFor(t, "second daemon to say it waits", func() bool {
		return strings.Contains(logs2.String(), "another podscope-nri runs on this node")
	})
	time.Sleep(300 * time.Millisecond)
	if d2.d.MetricsAddr() != "" {
		t.Fatal("second daemon started serving while the first runs")
	}
	d1.stop(t)
	waitFor(t, "second daemon to take over", func() bool { return d2.d.MetricsAddr() != "" })
	if !strings.Contains(logs2.String(), "instance lock acquired") {
		t.Errorf("take-over not logged:\n%s", logs2.String())
	}
	d2.stop(t)
}

// TestDaemonReaps: the daemon's reaper removes a registered pod whose host
// veth is gone (no CNI DEL came) and writes its accounting line; while it
// reaps, ADD leaves reaping to it, and once it stops ADD reaps again.
func TestDaemonReaps(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	dp, err := datapath.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	reg, err := pods.OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	gone := pods.Pod{ID: 3, Namespace: "ns", Name: "gone", UID: "u-gone", ContainerID: "c-gone",
		Interface: "eth0", HostInterface: testenv.Name(t), HostIfindex: 1 << 30}
	if err := reg.Put(gone); err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	rt := newRuntime(t)
	rt.start()
	defer rt.stop()
	logs := &syncLog{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})
	opt := Options{NRI: Conn{Socket: rt.socket, Name: "podscope", Index: "50"}, BPFFSRoot: root.Path,
		CgroupRoot: t.TempDir(), AuditLog: filepath.Join(work, "audit.jsonl"), StateDir: filepath.Join(work, "state"),
		AuditDefault: true, AuditMode: string(audit.ModeTracepoint), ReapInterval: 100 * time.Millisecond}
	d := startDaemon(t, opt, logs)
	stopped := false
	defer func() {
		if !stopped {
			d.stop(t)
		}
	}()
	acct := filepath.Join(opt.StateDir, podstate.AccountingFile)
	// The reaper writes the accounting line, removes the pod, then the
	// daemon logs it: wait for the log line.
	waitFor(t, "the stale pod reaped", func() bool { return strings.Contains(logs.String(), "reaped stale pod") })
	if b, err := os.ReadFile(acct); err != nil || strings.Count(string(b), `"u-gone"`) != 1 {
		t.Errorf("accounting log %s: want one line of the reaped pod, got %q (%v)", acct, b, err)
	}
	if _, ok, err := reg.Get(gone.ID); err != nil || ok {
		t.Errorf("reaped pod still registered (%v, %v)", ok, err)
	}
	if podstate.ReapDue(opt.StateDir, time.Now()) {
		t.Error("ADD would reap while the daemon reaps every 100ms")
	}
	d.stop(t)
	stopped = true
	if _, err := os.Stat(filepath.Join(opt.StateDir, podstate.ReapStamp)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the daemon's reap stamp after it stopped: %v, want it removed", err)
	}
	if !podstate.ReapDue(opt.StateDir, time.Now()) {
		t.Error("ADD would not reap after the daemon stopped")
	}
}
