package nriplugin

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/podscope/podscope/pkg/pods"
)

var drivers = []struct {
	name    string
	systemd bool
}{{"systemd", true}, {"cgroupfs", false}}

var ctx = context.Background()

func TestLifecycle(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			n := newNode(t, d.systemd)
			p, f, _ := newPlugin(t, Config{AuditDefault: true}, n)
			pod := n.pod("web", "0f1e_22aa", nil)
			ctr := n.container(pod, "nginx", false)

			// Create: the cgroup does not exist yet; nothing is armed.
			adj, upd, err := p.CreateContainer(ctx, pod, ctr)
			if err != nil || adj != nil || upd != nil {
				t.Fatalf("CreateContainer = %v, %v, %v", adj, upd, err)
			}
			if f.arms != 0 || len(f.m) != 0 {
				t.Fatalf("Create armed something: %d calls, %v", f.arms, f.m)
			}

			// Start: the task's cgroup exists now.
			ctr = n.container(pod, "nginx", true)
			if err := p.StartContainer(ctx, pod, ctr); err != nil {
				t.Fatal(err)
			}
			want := map[uint64]Identity{n.inode(ctr): {Identity: pods.Identity{Namespace: "ns1", Pod: "web", PodUID: "0f1e_22aa"},
				Container: "nginx", ContainerID: ctr.Id}}
			if got, _ := f.Armed(); !reflect.DeepEqual(got, want) {
				t.Fatalf("after Start armed = %v, want %v", got, want)
			}
			if got := p.ArmedContainers(); !reflect.DeepEqual(got, map[string]uint64{ctr.Id: n.inode(ctr)}) {
				t.Fatalf("plugin's view %v", got)
			}

			// Start again (a repeated event after reconnect): same state.
			if err := p.StartContainer(ctx, pod, ctr); err != nil {
				t.Fatal(err)
			}
			if got, _ := f.Armed(); !reflect.DeepEqual(got, want) {
				t.Fatalf("after second Start armed = %v, want %v", got, want)
			}

			// Stop disarms; Remove after it is a no-op.
			if _, err := p.StopContainer(ctx, pod, ctr); err != nil {
				t.Fatal(err)
			}
			if len(f.m) != 0 || len(p.ArmedContainers()) != 0 {
				t.Fatalf("after Stop still armed: %v %v", f.m, p.ArmedContainers())
			}
			disarms := f.disarms
			if err := p.RemoveContainer(ctx, pod, ctr); err != nil {
				t.Fatal(err)
			}
			if f.disarms != disarms {
				t.Errorf("Remove after Stop called Disarm again (%d -> %d)", disarms, f.disarms)
			}
		})
	}
}

func TestRemoveWithoutStop(t *testing.T) {
	n := newNode(t, true)
	p, f, _ := newPlugin(t, Config{AuditDefault: true}, n)
	pod := n.pod("web", "u1", nil)
	ctr := n.container(pod, "app", true)
	if err := p.StartContainer(ctx, pod, ctr); err != nil {
		t.Fatal(err)
	}
	if err := p.RemoveContainer(ctx, pod, ctr); err != nil {
		t.Fatal(err)
	}
	if len(f.m) != 0 {
		t.Fatalf("RemoveContainer left %v armed", f.m)
	}
}

func TestRemovePodSandbox(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			n := newNode(t, d.systemd)
			p, f, _ := newPlugin(t, Config{AuditDefault: true}, n)
			a, b := n.pod("a", "uida", nil), n.pod("b", "uidb", nil)
			a1, a2, b1 := n.container(a, "one", true), n.container(a, "two", true), n.container(b, "one", true)
			for _, c := range []struct {
				pod *api.PodSandbox
				ctr *api.Container
			}{{a, a1}, {a, a2}, {b, b1}} {
				if err := p.StartContainer(ctx, c.pod, c.ctr); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.RemovePodSandbox(ctx, a); err != nil {
				t.Fatal(err)
			}
			if got := f.containerIDs(); !reflect.DeepEqual(got, []string{b1.Id}) {
				t.Fatalf("after removing pod a armed = %v, want only %s", got, b1.Id)
			}
		})
	}
}

func TestAuditScope(t *testing.T) {
	for _, tc := range []struct {
		name       string
		defaultOn  bool
		annotation map[string]string
		audited    bool
	}{
		{"default on, no annotation", true, nil, true},
		{"default on, opt out", true, map[string]string{AuditAnnotation: "false"}, false},
		{"default on, explicit true", true, map[string]string{AuditAnnotation: "true"}, true},
		{"default off, no annotation", false, nil, false},
		{"default off, opt in", false, map[string]string{AuditAnnotation: "true"}, true},
		{"default off, explicit false", false, map[string]string{AuditAnnotation: "false"}, false},
		{"default on, garbage keeps default", true, map[string]string{AuditAnnotation: "maybe"}, true},
		{"default off, garbage keeps default", false, map[string]string{AuditAnnotation: "maybe"}, false},
		{"other annotations ignored", false, map[string]string{"podscope.io/egress": "{}"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, false)
			p, f, _ := newPlugin(t, Config{AuditDefault: tc.defaultOn}, n)
			pod := n.pod("p", "u", tc.annotation)
			ctr := n.container(pod, "c", true)
			if err := p.StartContainer(ctx, pod, ctr); err != nil {
				t.Fatal(err)
			}
			if got := len(f.m) == 1; got != tc.audited {
				t.Errorf("armed = %v, want %v", got, tc.audited)
			}
			// Synchronize applies the same decision.
			n2 := newNode(t, false)
			p2, f2, _ := newPlugin(t, Config{AuditDefault: tc.defaultOn}, n2)
			pod2 := n2.pod("p", "u", tc.annotation)
			if _, err := p2.Synchronize(ctx, []*api.PodSandbox{pod2}, []*api.Container{n2.container(pod2, "c", true)}); err != nil {
				t.Fatal(err)
			}
			if got := len(f2.m) == 1; got != tc.audited {
				t.Errorf("Synchronize: armed = %v, want %v", got, tc.audited)
			}
		})
	}
}

// Bad input never blocks a container (unless fail-closed) and never leaves
// anything half-armed.
func TestStartErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(n *node, f *fakeArming, ctr *api.Container)
		mention string
	}{
		{"unparsable cgroups path", func(n *node, f *fakeArming, c *api.Container) { c.Linux.CgroupsPath = "not-a-path" }, "unparsable cgroups path"},
		{"no linux section", func(n *node, f *fakeArming, c *api.Container) { c.Linux = nil }, "unparsable cgroups path"},
		{"cgroup already gone", func(n *node, f *fakeArming, c *api.Container) {
			if err := os.Remove(n.dir(c)); err != nil {
				n.t.Fatal(err)
			}
		}, "cgroup directory not found"},
		{"cgroup gone, pid gone too", func(n *node, f *fakeArming, c *api.Container) {
			if err := os.Remove(n.dir(c)); err != nil {
				n.t.Fatal(err)
			}
			c.Pid = 4242
		}, "fallback to pid 4242"},
		{"missing bpffs", func(n *node, f *fakeArming, c *api.Container) {
			f.armErr = fmt.Errorf("bpffs root /sys/fs/bpf/podscope: not on a bpf filesystem")
		}, "not on a bpf filesystem"},
		{"old map layout", func(n *node, f *fakeArming, c *api.Container) {
			f.armErr = fmt.Errorf("pinned map \"audited_cgroups\" has a layout this podscope does not understand")
		}, "layout"},
		{"auditor disagrees on cgroup id", func(n *node, f *fakeArming, c *api.Container) { f.idOffset = 7 }, "but its inode is"},
	} {
		for _, failClosed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/failClosed=%v", tc.name, failClosed), func(t *testing.T) {
				n := newNode(t, true)
				p, f, logs := newPlugin(t, Config{AuditDefault: true, FailClosed: failClosed}, n)
				pod := n.pod("p", "u", nil)
				ctr := n.container(pod, "c", true)
				tc.setup(n, f, ctr)

				err := p.StartContainer(ctx, pod, ctr)
				if failClosed {
					if err == nil || !strings.Contains(err.Error(), tc.mention) || !strings.Contains(err.Error(), "--fail-closed") {
						t.Errorf("fail-closed Start error = %v, want one mentioning %q and --fail-closed", err, tc.mention)
					}
				} else if err != nil {
					t.Errorf("Start = %v, want nil: the container must still start", err)
				}
				if len(f.m) != 0 || len(p.ArmedContainers()) != 0 {
					t.Errorf("half-armed: kernel side %v, plugin %v", f.m, p.ArmedContainers())
				}
				if !strings.Contains(logs.String(), "NOT armed") || !strings.Contains(logs.String(), tc.mention) {
					t.Errorf("log does not say what failed (%q):\n%s", tc.mention, logs.String())
				}
			})
		}
	}
}

func TestStartPIDFallback(t *testing.T) {
	n := newNode(t, true)
	p, f, logs := newPlugin(t, Config{AuditDefault: true}, n)
	pod := n.pod("p", "u", nil)
	ctr := n.container(pod, "c", false)
	other := n.container(n.pod("q", "v", nil), "c", true) // where the pid really is
	procDir := n.res.Proc + "/77"
	if err := os.MkdirAll(procDir, 0o755); err != nil {
		t.Fatal(err)
	}
	rel := strings.TrimPrefix(n.dir(other), n.root)
	if err := os.WriteFile(procDir+"/cgroup", []byte("0::"+rel+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctr.Pid = 77
	if err := p.StartContainer(ctx, pod, ctr); err != nil {
		t.Fatal(err)
	}
	if id, ok := f.m[n.inode(other)]; !ok || id.ContainerID != ctr.Id {
		t.Fatalf("armed %v, want %s on the pid's cgroup", f.m, ctr.Id)
	}
	if !strings.Contains(logs.String(), "found the cgroup through the container's pid") {
		t.Errorf("fallback not logged:\n%s", logs.String())
	}
}

func TestCreateWarnsEarly(t *testing.T) {
	n := newNode(t, false)
	p, f, logs := newPlugin(t, Config{AuditDefault: true, FailClosed: true}, n)
	pod := n.pod("p", "u", nil)
	ctr := n.container(pod, "c", false)
	ctr.Linux.CgroupsPath = "relative/path"
	// Even fail-closed: at create the pid fallback is still possible.
	if _, _, err := p.CreateContainer(ctx, pod, ctr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "cgroups path is not understood") || f.arms != 0 {
		t.Errorf("arms=%d log:\n%s", f.arms, logs.String())
	}
}

func TestDisarmFailureIsRetried(t *testing.T) {
	n := newNode(t, false)
	p, f, logs := newPlugin(t, Config{AuditDefault: true}, n)
	pod := n.pod("p", "u", nil)
	ctr := n.container(pod, "c", true)
	if err := p.StartContainer(ctx, pod, ctr); err != nil {
		t.Fatal(err)
	}
	f.disarmErr = errInjected
	if _, err := p.StopContainer(ctx, pod, ctr); err != nil {
		t.Fatalf("StopContainer must not fail the runtime: %v", err)
	}
	if len(p.ArmedContainers()) != 1 || !strings.Contains(logs.String(), "will retry") {
		t.Fatalf("failed disarm forgotten: %v\n%s", p.ArmedContainers(), logs.String())
	}
	f.disarmErr = nil
	if err := p.RemoveContainer(ctx, pod, ctr); err != nil {
		t.Fatal(err)
	}
	if len(f.m) != 0 || len(p.ArmedContainers()) != 0 {
		t.Fatalf("retry did not disarm: %v %v", f.m, p.ArmedContainers())
	}
}

func TestSynchronize(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			n := newNode(t, d.systemd)
			p, f, _ := newPlugin(t, Config{AuditDefault: true}, n)

			web := n.pod("web", "uweb", nil)
			quiet := n.pod("quiet", "uquiet", map[string]string{AuditAnnotation: "false"})
			running := n.container(web, "app", true)   // running, not armed: arm
			adopted := n.container(web, "side", true)  // running, armed by a previous podscope-nri: keep
			stopped := n.container(web, "init", true)  // stopped but still pinned: disarm
			created := n.container(web, "later", true) // created, not started: leave to StartContainer
			optout := n.container(quiet, "x", true)    // pinned, pod opted out since: disarm
			stopped.State = api.ContainerState_CONTAINER_STOPPED
			created.State = api.ContainerState_CONTAINER_CREATED
			gone := n.container(n.pod("gone", "ugone", nil), "old", true) // pinned, unknown to the runtime

			// What a previous podscope-nri left in the pins.
			for _, c := range []struct {
				ctr *api.Container
				pod string
			}{{adopted, "web"}, {stopped, "web"}, {optout, "quiet"}, {gone, "gone"}} {
				f.m[n.inode(c.ctr)] = Identity{Identity: pods.Identity{Namespace: "ns1", Pod: c.pod}, Container: c.ctr.Name, ContainerID: c.ctr.Id}
			}

			upd, err := p.Synchronize(ctx, []*api.PodSandbox{web, quiet},
				[]*api.Container{running, adopted, stopped, created, optout})
			if err != nil || upd != nil {
				t.Fatalf("Synchronize = %v, %v", upd, err)
			}
			want := []string{running.Id, adopted.Id}
			if got := f.containerIDs(); !reflect.DeepEqual(got, sortStrings(want)) {
				t.Fatalf("armed after Synchronize = %v, want %v", got, want)
			}
			if f.arms != 1 {
				t.Errorf("Arm called %d times, want 1 (the adopted container is not re-armed)", f.arms)
			}
			// The adopted container is tracked: its stop disarms it, and a
			// pod removal finds it through the sandbox id.
			if _, err := p.StopContainer(ctx, web, adopted); err != nil {
				t.Fatal(err)
			}
			if _, ok := f.m[n.inode(adopted)]; ok {
				t.Error("Stop of an adopted container did not disarm it")
			}
			if err := p.RemovePodSandbox(ctx, web); err != nil {
				t.Fatal(err)
			}
			if len(f.m) != 0 {
				t.Errorf("after RemovePodSandbox armed = %v", f.m)
			}

			// A second Synchronize (reconnect) with the same world is a no-op
			// for the kernel side.
			arms, disarms := f.arms, f.disarms
			if _, err := p.Synchronize(ctx, nil, nil); err != nil {
				t.Fatal(err)
			}
			if f.arms != arms || f.disarms != disarms {
				t.Errorf("empty resync touched the kernel: arms %d->%d disarms %d->%d", arms, f.arms, disarms, f.disarms)
			}
		})
	}
}

func TestSynchronizeRearmsAfterCleanup(t *testing.T) {
	n := newNode(t, false)
	p, f, _ := newPlugin(t, Config{AuditDefault: true}, n)
	pod := n.pod("p", "u", nil)
	ctr := n.container(pod, "c", true)
	if err := p.StartContainer(ctx, pod, ctr); err != nil {
		t.Fatal(err)
	}
	f.m = map[uint64]Identity{} // `podscopectl cleanup` emptied the pins
	if _, err := p.Synchronize(ctx, []*api.PodSandbox{pod}, []*api.Container{ctr}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.m[n.inode(ctr)]; !ok {
		t.Fatalf("not re-armed after the pins were emptied: %v", f.m)
	}
}

func TestSynchronizeArmedUnreadable(t *testing.T) {
	n := newNode(t, false)
	p, f, logs := newPlugin(t, Config{AuditDefault: true}, n)
	pod := n.pod("p", "u", nil)
	ctr := n.container(pod, "c", true)
	f.armedErr = errInjected
	if _, err := p.Synchronize(ctx, []*api.PodSandbox{pod}, []*api.Container{ctr}); err != nil {
		t.Fatalf("Synchronize must not fail the registration: %v", err)
	}
	if len(f.m) != 1 || !strings.Contains(logs.String(), "stale entries are not removed") {
		t.Errorf("armed %v; log:\n%s", f.m, logs.String())
	}
}

func sortStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// A Synchronize with more arming than fits its budget replies in time and
// arms the rest in the background; a container stopped before its turn is
// not armed.
func TestSynchronizeDefersSlowArming(t *testing.T) {
	n := newNode(t, true)
	p, f, _ := newPlugin(t, Config{AuditDefault: true}, n)
	p.syncBudget = 100 * time.Millisecond
	f.armDelay = 20 * time.Millisecond
	pod := n.pod("big", "ubig", nil)
	var ctrs []*api.Container
	var ids []string
	for i := range 20 {
		c := n.container(pod, fmt.Sprintf("c%02d", i), true)
		ctrs = append(ctrs, c)
		ids = append(ids, c.Id)
	}
	start := time.Now()
	if _, err := p.Synchronize(ctx, []*api.PodSandbox{pod}, ctrs); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	p.mu.Lock()
	deferred := len(p.pending)
	var stopped *api.Container
	for _, c := range ctrs {
		if _, ok := p.pending[c.Id]; ok {
			stopped = c
			break
		}
	}
	p.mu.Unlock()
	t.Logf("Synchronize returned after %v with %d of 20 deferred", took, deferred)
	if deferred == 0 || stopped == nil {
		t.Fatalf("nothing deferred although 20 arms × 20ms exceed the 100ms budget (took %v)", took)
	}
	if _, err := p.StopContainer(ctx, pod, stopped); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, id := range ids {
		if id != stopped.Id {
			want = append(want, id)
		}
	}
	waitFor(t, "the deferred containers armed", hasContainers(f, want...))
	p.mu.Lock()
	running := p.pendingRunning
	p.mu.Unlock()
	waitFor(t, "the worker to finish", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.pendingRunning
	})
	if got := f.containerIDs(); !reflect.DeepEqual(got, sortStrings(want)) {
		t.Errorf("armed %v (worker running %v)", got, running)
	}
}
