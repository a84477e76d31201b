package nriplugin

import (
	"context"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

// runtime is an in-process NRI runtime side (containerd's half of the
// protocol, from nri/pkg/adaptation) on a socket in a temp dir: the plugin
// talks real NRI over ttrpc to it, with no containerd and no root.
type runtime struct {
	t      *testing.T
	dir    string
	socket string

	mu    sync.Mutex
	pods  []*api.PodSandbox
	ctrs  []*api.Container
	r     *adaptation.Adaptation
	count int                        // registered plugins, as the runtime sees them
	lat   map[string][]time.Duration // plugin request latencies by operation
	conns []net.Conn                 // plugin connections, closed when the runtime "dies"
}

// dial is the plugin's dialer: it keeps the connection so stop can close it
// as a dying containerd would.
func (rt *runtime) dial(socket string) (net.Conn, error) {
	c, err := net.Dial("unix", socket)
	if err == nil {
		rt.mu.Lock()
		rt.conns = append(rt.conns, c)
		rt.mu.Unlock()
	}
	return c, err
}

func newRuntime(t *testing.T) *runtime {
	dir := t.TempDir()
	return &runtime{t: t, dir: dir, socket: filepath.Join(dir, "nri.sock")}
}

func (rt *runtime) setWorld(pods []*api.PodSandbox, ctrs []*api.Container) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.pods, rt.ctrs = pods, ctrs
}

func (rt *runtime) start() {
	rt.t.Helper()
	sync := func(ctx context.Context, cb adaptation.SyncCB) error {
		rt.mu.Lock()
		pods, ctrs := rt.pods, rt.ctrs
		rt.mu.Unlock()
		_, err := cb(ctx, pods, ctrs)
		return err
	}
	update := func(context.Context, []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) { return nil, nil }
	r, err := adaptation.New("containerd", "2.4.0-test", sync, update,
		adaptation.WithSocketPath(rt.socket),
		adaptation.WithPluginPath(filepath.Join(rt.dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(rt.dir, "conf.d")),
		adaptation.WithMetrics(rt))
	if err != nil {
		rt.t.Fatal(err)
	}
	rt.mu.Lock()
	rt.count = 0
	rt.mu.Unlock()
	if err := r.Start(); err != nil {
		rt.t.Fatal(err)
	}
	rt.r = r
}

func (rt *runtime) stop() {
	if rt.r != nil {
		rt.r.Stop()
		rt.r = nil
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, c := range rt.conns {
		c.Close()
	}
	rt.conns = nil
}

// links records the plugin's connection transitions.
type links struct {
	mu  sync.Mutex
	log []bool
}

func (l *links) set(up bool) { l.mu.Lock(); l.log = append(l.log, up); l.mu.Unlock() }

func (l *links) ups() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, up := range l.log {
		if up {
			n++
		}
	}
	return n
}

// The runtime's metrics hooks: how many plugins it has registered (set
// after a plugin's Synchronize succeeded) and how long each request took.
func (rt *runtime) RecordPluginInvocation(string, string, error) {}
func (rt *runtime) RecordPluginLatency(_, op string, d time.Duration) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.lat == nil {
		rt.lat = map[string][]time.Duration{}
	}
	rt.lat[op] = append(rt.lat[op], d)
}
func (rt *runtime) RecordPluginAdjustments(string, string, *api.ContainerAdjustment, int, int) {}
func (rt *runtime) UpdatePluginCount(n int) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.count = n
}

func (rt *runtime) registered() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.count == 1
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second) // a liveness bound for loaded CI machines, not a timing check
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasContainers(f *fakeArming, want ...string) func() bool {
	return func() bool {
		return strings.Join(f.containerIDs(), ",") == strings.Join(sortStrings(want), ",")
	}
}

// TestRunOverNRI runs the plugin through the real NRI stub against an
// in-process runtime: registration + Synchronize, Create/Start/Stop/Remove,
// fail-closed surfacing as a failed start, and reconnect after the runtime
// restarts, with a resync that catches what happened meanwhile.
func TestRunOverNRI(t *testing.T) {
	n := newNode(t, true)
	p, f, logs := newPlugin(t, Config{AuditDefault: true}, n)
	rt := newRuntime(t)

	web := n.pod("web", "uweb", nil)
	early := n.container(web, "early", true) // running before podscope-nri connects
	rt.setWorld([]*api.PodSandbox{web}, []*api.Container{early})
	rt.start()
	defer rt.stop()

	ln := &links{}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.Run(runCtx, Conn{Socket: rt.socket, Name: "podscope", Index: "50",
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			Dial: rt.dial, Connected: ln.set})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	}()

	waitFor(t, "registration", rt.registered)
	if !hasContainers(f, early.Id)() {
		t.Fatalf("after Synchronize armed = %v, want %s", f.containerIDs(), early.Id)
	}

	// A new container goes through the lifecycle over the wire.
	late := n.container(web, "late", true)
	if _, err := rt.r.CreateContainer(ctx, &api.CreateContainerRequest{Pod: web, Container: late}); err != nil {
		t.Fatal(err)
	}
	if err := rt.r.StartContainer(ctx, &api.StartContainerRequest{Pod: web, Container: late}); err != nil {
		t.Fatal(err)
	}
	if got := f.containerIDs(); strings.Join(got, ",") != strings.Join(sortStrings([]string{early.Id, late.Id}), ",") {
		t.Fatalf("after StartContainer returned, armed = %v: arming must be done before the start proceeds", got)
	}
	if _, err := rt.r.StopContainer(ctx, &api.StopContainerRequest{Pod: web, Container: late}); err != nil {
		t.Fatal(err)
	}
	if err := rt.r.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: web, Container: late}); err != nil {
		t.Fatal(err)
	}
	if !hasContainers(f, early.Id)() {
		t.Fatalf("after Stop/Remove armed = %v", f.containerIDs())
	}

	// The runtime restarts. Meanwhile "early" exits and "fresh" starts.
	rt.stop()
	fresh := n.container(web, "fresh", true)
	stoppedEarly := n.container(web, "early", true)
	stoppedEarly.State = api.ContainerState_CONTAINER_STOPPED
	rt.setWorld([]*api.PodSandbox{web}, []*api.Container{stoppedEarly, fresh})
	waitFor(t, "the plugin to see the connection drop", func() bool {
		ln.mu.Lock()
		defer ln.mu.Unlock()
		return len(ln.log) > 0 && !ln.log[len(ln.log)-1]
	})
	time.Sleep(100 * time.Millisecond) // a few failed dials with the socket gone
	rt.start()
	waitFor(t, "re-registration", rt.registered)
	if !hasContainers(f, fresh.Id)() {
		t.Fatalf("after resync armed = %v, want only %s", f.containerIDs(), fresh.Id)
	}
	if !strings.Contains(logs.String(), "retrying") {
		t.Errorf("reconnect not logged:\n%s", logs.String())
	}
	// A requested resync re-registers and reconciles again: "fresh" was
	// disarmed behind the plugin's back (as if the audit had been reloaded).
	delete(f.m, n.inode(fresh))
	rt.mu.Lock()
	rt.count = 0
	rt.mu.Unlock()
	p.Resync()
	waitFor(t, "re-registration after Resync", rt.registered)
	if !hasContainers(f, fresh.Id)() {
		t.Fatalf("after Resync armed = %v, want %s", f.containerIDs(), fresh.Id)
	}

	rt.mu.Lock()
	for op, ds := range rt.lat {
		t.Logf("runtime-measured plugin latency %s: %v", op, ds)
	}
	rt.mu.Unlock()
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if want := []bool{true, false, true, false, true}; !reflect.DeepEqual(ln.log, want) {
		t.Errorf("connection transitions %v, want %v", ln.log, want)
	}
}

func TestFailClosedOverNRI(t *testing.T) {
	n := newNode(t, false)
	p, f, _ := newPlugin(t, Config{AuditDefault: true, FailClosed: true}, n)
	rt := newRuntime(t)
	rt.start()
	defer rt.stop()
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln := &links{}
	go func() {
		if err := p.Run(runCtx, Conn{Socket: rt.socket, Name: "podscope", Index: "50", FailRequest: true,
			Dial: rt.dial, Connected: ln.set}); err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	waitFor(t, "registration", rt.registered)

	pod := n.pod("p", "u", nil)
	ctr := n.container(pod, "c", false) // cgroup missing, no pid: cannot arm
	err := rt.r.StartContainer(ctx, &api.StartContainerRequest{Pod: pod, Container: ctr})
	if err == nil || !strings.Contains(err.Error(), "--fail-closed") {
		t.Fatalf("runtime's StartContainer = %v, want the plugin's fail-closed refusal", err)
	}
	if len(f.m) != 0 {
		t.Errorf("armed %v", f.m)
	}
}
