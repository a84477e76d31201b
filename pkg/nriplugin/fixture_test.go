package nriplugin

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/podscope/podscope/pkg/cgroups"
)

// fakeArming stands in for the Auditor: it keeps an "armed cgroups map" in
// memory, takes the cgroup id from the directory's inode as the real one
// does, and can be told to fail.
type fakeArming struct {
	mu        sync.Mutex
	m         map[uint64]Identity
	arms      int
	disarms   int
	armErr    error
	disarmErr error
	armedErr  error
	idOffset  uint64        // makes Arm report a wrong id
	armDelay  time.Duration // makes Arm slow
}

func newFakeArming() *fakeArming { return &fakeArming{m: map[uint64]Identity{}} }

func (f *fakeArming) Arm(dir string, id Identity) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.arms++
	time.Sleep(f.armDelay)
	if f.armErr != nil {
		return 0, f.armErr
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, err
	}
	cgid := st.Ino + f.idOffset
	f.m[cgid] = id
	return cgid, nil
}

func (f *fakeArming) Disarm(cgid uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disarms++
	if f.disarmErr != nil {
		return f.disarmErr
	}
	delete(f.m, cgid)
	return nil
}

func (f *fakeArming) Armed() (map[uint64]Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.armedErr != nil {
		return nil, f.armedErr
	}
	out := make(map[uint64]Identity, len(f.m))
	for k, v := range f.m {
		out[k] = v
	}
	return out, nil
}

// containerIDs lists the container ids in the fake map, sorted.
func (f *fakeArming) containerIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, id := range f.m {
		out = append(out, id.ContainerID)
	}
	sort.Strings(out)
	return out
}

// node is a fake node: a temp dir standing for the unified hierarchy mount,
// in either cgroup driver's layout.
type node struct {
	t       *testing.T
	root    string
	systemd bool
	res     *cgroups.Resolver
}

func newNode(t *testing.T, systemd bool) *node {
	root := t.TempDir()
	return &node{t: t, root: root, systemd: systemd,
		res: &cgroups.Resolver{Mount: cgroups.Mount{Point: root, Root: "/"}, Proc: filepath.Join(root, "proc")}}
}

func (n *node) pod(name, uid string, annotations map[string]string) *api.PodSandbox {
	return &api.PodSandbox{Id: "sandbox-" + name, Name: name, Uid: uid, Namespace: "ns1", Annotations: annotations}
}

// container returns a container of pod whose cgroups path is in the node's
// driver form; with live, its cgroup directory exists (the task runs).
func (n *node) container(pod *api.PodSandbox, name string, live bool) *api.Container {
	id := "ctr-" + pod.Name + "-" + name
	var cgPath, dir string
	if n.systemd {
		slice := fmt.Sprintf("kubepods-besteffort-pod%s.slice", pod.Uid)
		cgPath = slice + ":cri-containerd:" + id
		dir = filepath.Join(n.root, "kubepods.slice", "kubepods-besteffort.slice", slice, "cri-containerd-"+id+".scope")
	} else {
		cgPath = "/kubepods/besteffort/pod" + pod.Uid + "/" + id
		dir = filepath.Join(n.root, "kubepods", "besteffort", "pod"+pod.Uid, id)
	}
	if live {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			n.t.Fatal(err)
		}
	}
	return &api.Container{Id: id, PodSandboxId: pod.Id, Name: name, State: api.ContainerState_CONTAINER_RUNNING,
		Pid: 0, Linux: &api.LinuxContainer{CgroupsPath: cgPath}}
}

func (n *node) dir(ctr *api.Container) string {
	cg, err := n.res.Resolve(ctr.Linux.CgroupsPath, 0)
	if err != nil {
		n.t.Fatal(err)
	}
	return cg.Dir
}

func (n *node) inode(ctr *api.Container) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(n.dir(ctr), &st); err != nil {
		n.t.Fatal(err)
	}
	return st.Ino
}

// syncLog is a goroutine-safe log buffer for slog.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newPlugin(t *testing.T, cfg Config, n *node) (*Plugin, *fakeArming, *syncLog) {
	t.Helper()
	f := newFakeArming()
	logs := &syncLog{}
	l := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log:\n%s", logs.String())
		}
	})
	return New(cfg, f, n.res, l), f, logs
}

var errInjected = errors.New("injected failure")
