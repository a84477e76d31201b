package nriplugin

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/testenv"
)

// benchSetup loads the audit (tracepoint mode) under a fresh bpffs root and
// makes n container cgroups under a per-run parent in the real hierarchy.
func benchSetup(b *testing.B, n int) (*Plugin, *api.PodSandbox, []*api.Container) {
	b.Helper()
	root := testenv.BPFFSRoot(b)
	mount, err := cgroups.FindUnifiedSelf()
	if err != nil {
		b.Fatal(err)
	}
	a, err := audit.Open(root, audit.Options{Mode: audit.ModeTracepoint, CgroupRoot: mount.Point})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	name := testenv.Name(b)
	parent := filepath.Join(mount.Point, name)
	if err := os.Mkdir(parent, 0o755); err != nil {
		b.Fatal(err)
	}
	pod := &api.PodSandbox{Id: "sb", Name: "bench", Uid: "u", Namespace: "bench"}
	var ctrs []*api.Container
	for i := range n {
		cid := fmt.Sprintf("c%04d", i)
		if err := os.Mkdir(filepath.Join(parent, cid), 0o755); err != nil {
			b.Fatal(err)
		}
		ctrs = append(ctrs, &api.Container{Id: cid, PodSandboxId: "sb", Name: cid, State: api.ContainerState_CONTAINER_RUNNING,
			Linux: &api.LinuxContainer{CgroupsPath: "/" + name + "/" + cid}})
	}
	// Cleanups run last-in first-out: disarming (below, registered later)
	// happens before the directories go.
	b.Cleanup(func() {
		for _, c := range ctrs {
			if err := os.Remove(filepath.Join(parent, c.Id)); err != nil {
				b.Errorf("removing bench cgroup: %v", err)
			}
		}
		if err := os.Remove(parent); err != nil {
			b.Errorf("removing bench cgroup parent: %v", err)
		}
	})
	res := &cgroups.Resolver{Mount: mount}
	p := New(Config{AuditDefault: true}, a, res, slog.New(slog.NewTextHandler(io.Discard, nil)))
	b.Cleanup(func() {
		for _, c := range ctrs {
			if _, err := p.StopContainer(ctx, pod, c); err != nil {
				b.Error(err)
			}
		}
	})
	return p, pod, ctrs
}

// BenchmarkStartStopContainer: the StartContainer handler (resolve the
// cgroup, attach the sysctl program, fill the maps) plus StopContainer,
// with the real Auditor in tracepoint mode.
func BenchmarkStartStopContainer(b *testing.B) {
	p, pod, ctrs := benchSetup(b, 1)
	b.ResetTimer()
	for b.Loop() {
		if err := p.StartContainer(ctx, pod, ctrs[0]); err != nil {
			b.Fatal(err)
		}
		if len(p.ArmedContainers()) != 1 {
			b.Fatal("not armed")
		}
		if _, err := p.StopContainer(ctx, pod, ctrs[0]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSynchronize200: a Synchronize that finds 200 running containers
// unarmed (podscope-nri installed on a busy node) and arms them all.
func BenchmarkSynchronize200(b *testing.B) {
	p, pod, ctrs := benchSetup(b, 200)
	p.syncBudget = time.Hour // measure the arming, not the deferral
	b.ResetTimer()
	for b.Loop() {
		if _, err := p.Synchronize(ctx, []*api.PodSandbox{pod}, ctrs); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if n := len(p.ArmedContainers()); n != 200 {
			b.Fatalf("%d armed", n)
		}
		if _, err := p.Synchronize(ctx, nil, nil); err != nil { // disarms all
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
