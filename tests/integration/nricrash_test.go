package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/blobs"
	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/fault"
	"github.com/podscope/podscope/pkg/nriplugin"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// armerEnv makes the test binary a podscope-nri stand-in that arms (and
// disarms) one cgroup: "bpffsRoot,cgroupRoot,cgroupDir,disarm".
const armerEnv = "PSTEST_AUDIT_ARMER"

func init() {
	if spec := os.Getenv(armerEnv); spec != "" {
		os.Exit(runArmer(spec))
	}
}

func runArmer(spec string) int {
	f := strings.Split(spec, ",")
	a, err := audit.Open(pins.New(f[0]), audit.Options{CgroupRoot: f[1]})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cgid, err := a.Arm(f[2], longAuditIdentity())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if f[3] == "1" {
		if err := a.Disarm(cgid); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// longAuditIdentity does not fit struct identity, so the blob store is in
// play too.
func longAuditIdentity() audit.Identity {
	return audit.Identity{Identity: pods.Identity{Namespace: "crash", Pod: "p", PodUID: strings.Repeat("u", 48)},
		Container: "c", ContainerID: strings.Repeat("c", 200)}
}

// podscope-nri killed (SIGKILL) in the middle of arming or disarming a
// container's cgroup: the restarted daemon's Synchronize (which arms a
// running container again, or disarms one that is gone) leaves the cgroup
// exactly armed or exactly not — no link pin, identity, blob or audited
// entry of it left behind.
func TestNRICrashMidArmDisarm(t *testing.T) {
	// Load once: the killed processes and the "restarted daemon" reuse it.
	mnt, root, a := openTestAudit(t)
	for _, point := range append(append([]string{}, fault.Points.Arm...), fault.Points.Disarm...) {
		t.Run(point, func(t *testing.T) {
			dir := filepath.Join(mnt.Point, testenv.Name(t))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(dir) })
			cgid, err := cgroups.V2ID(dir)
			if err != nil {
				t.Fatal(err)
			}
			disarm := strings.HasPrefix(point, "disarm:")
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), fault.Env+"="+point,
				fmt.Sprintf("%s=%s,%s,%s,%s", armerEnv, root.Path, mnt.Point, dir, map[bool]string{true: "1", false: "0"}[disarm]))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("armer with %s: %v %s, want it killed", point, err, out)
			}
			if !disarm {
				// The container still runs: Synchronize arms it again.
				if _, err := a.Arm(dir, longAuditIdentity()); err != nil {
					t.Fatalf("re-arming after the kill: %v", err)
				}
				armed, err := a.Armed()
				if err != nil || armed[cgid] != longAuditIdentity() {
					t.Fatalf("after re-arming: %+v %v", armed[cgid], err)
				}
			}
			// The container goes (or went): Disarm, as RemoveContainer or
			// Synchronize does for one no longer in the runtime's list.
			if err := a.Disarm(cgid); err != nil {
				t.Fatalf("disarming after the kill: %v", err)
			}
			assertUnarmed(t, a, root, cgid)
		})
	}
}

func assertUnarmed(t *testing.T, a *audit.Auditor, root pins.Root, cgid uint64) {
	t.Helper()
	armed, err := a.Armed()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := armed[cgid]; ok {
		t.Errorf("cgroup %d still armed", cgid)
	}
	if links := linkPins(root, cgid); len(links) != 0 {
		t.Errorf("link pins of cgroup %d left: %v", cgid, links)
	}
	if s, err := blobs.OpenPinned(root); err == nil {
		defer s.Close()
		if ids, _ := s.IDs(blobs.KindAuditIdentity); len(ids) != 0 {
			t.Errorf("identity blobs left: %v", ids)
		}
	}
}

// syncerEnv makes the test binary a podscope-nri stand-in that runs
// nriplugin's Synchronize once over a world of containers and dies at the
// fault point: "bpffsRoot,cgroupDir,running" with running the indexes of
// the containers (under cgroupDir, "c0", "c1", ...) that still run.
const syncerEnv = "PSTEST_NRI_SYNCER"

func init() {
	if spec := os.Getenv(syncerEnv); spec != "" {
		os.Exit(runSyncer(spec))
	}
}

func runSyncer(spec string) int {
	f := strings.Split(spec, ",")
	mnt, err := cgroups.FindUnifiedSelf()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	a, err := audit.Open(pins.New(f[0]), audit.Options{CgroupRoot: mnt.Point})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var idx []int
	for _, s := range strings.Fields(f[2]) {
		i, _ := strconv.Atoi(s)
		idx = append(idx, i)
	}
	p := nriplugin.New(nriplugin.Config{AuditDefault: true}, a, &cgroups.Resolver{Mount: mnt}, nil)
	pods, ctrs := syncWorld(mnt, f[1], idx)
	if _, err := p.Synchronize(context.Background(), pods, ctrs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// syncWorld is what the runtime tells a (re)connecting podscope-nri: one
// pod with the running containers idx, each in its cgroup dir/c<i>.
func syncWorld(mnt cgroups.Mount, dir string, idx []int) ([]*api.PodSandbox, []*api.Container) {
	pod := &api.PodSandbox{Id: "sandbox-sync", Name: "sync", Uid: "00000000-0000-0000-0000-00000000sync", Namespace: "crash"}
	rel, _ := filepath.Rel(mnt.Point, dir)
	var ctrs []*api.Container
	for _, i := range idx {
		id := fmt.Sprintf("sync%060d", i)
		ctrs = append(ctrs, &api.Container{Id: id, PodSandboxId: pod.Id, Name: fmt.Sprintf("c%d", i),
			State: api.ContainerState_CONTAINER_RUNNING,
			Linux: &api.LinuxContainer{CgroupsPath: filepath.Join(mnt.Root, rel, fmt.Sprintf("c%d", i))}})
	}
	return []*api.PodSandbox{pod}, ctrs
}

// podscope-nri killed (SIGKILL) in the middle of Synchronize's loop —
// after arming the first of several running containers, or after disarming
// the first of several stale entries: the restarted daemon's Synchronize
// (the same code, run again over the same world) leaves every running
// container armed exactly once, with its own cgroup and identity and the
// link pins of one arming, and nothing of the gone ones; a last Synchronize
// with nothing running leaves nothing at all.
func TestNRICrashMidSynchronize(t *testing.T) {
	mnt, root, a := openTestAudit(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	const n = 4
	all := []int{0, 1, 2, 3}
	for _, tc := range []struct {
		point          string
		before, during []int // running before the crash (armed cleanly), and at the crashed Synchronize
	}{
		{"sync:armed", nil, all},            // a (re)start on a node with 4 running containers
		{"sync:disarmed", all, []int{0, 2}}, // 1 and 3 went while podscope-nri was down
	} {
		t.Run(tc.point, func(t *testing.T) {
			dir := filepath.Join(mnt.Point, testenv.Name(t))
			cgid := map[int]uint64{}
			for i := 0; i < n; i++ {
				d := filepath.Join(dir, fmt.Sprintf("c%d", i))
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				id, err := cgroups.V2ID(d)
				if err != nil {
					t.Fatal(err)
				}
				cgid[i] = id
			}
			t.Cleanup(func() {
				for i := 0; i < n; i++ {
					os.Remove(filepath.Join(dir, fmt.Sprintf("c%d", i)))
				}
				os.Remove(dir)
			})
			sync := func(idx []int) {
				t.Helper()
				p := nriplugin.New(nriplugin.Config{AuditDefault: true}, a, &cgroups.Resolver{Mount: mnt}, quiet)
				pods, ctrs := syncWorld(mnt, dir, idx)
				if _, err := p.Synchronize(context.Background(), pods, ctrs); err != nil {
					t.Fatal(err)
				}
			}
			// One cleanly armed cgroup's link pins: the count every armed
			// container must have, no more (armed twice) and no fewer.
			sync([]int{0})
			perCgroup := len(linkPins(root, cgid[0]))
			if perCgroup == 0 {
				t.Fatal("an armed cgroup has no link pins")
			}
			sync(tc.before)

			var running []string
			for _, i := range tc.during {
				running = append(running, strconv.Itoa(i))
			}
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), fault.Env+"="+tc.point,
				fmt.Sprintf("%s=%s,%s,%s", syncerEnv, root.Path, dir, strings.Join(running, " ")))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("Synchronize with %s: %v %s, want it killed", tc.point, err, out)
			}
			// The kill left a mix: some armed, some not (else the point is
			// not between two containers).
			armed, err := a.Armed()
			if err != nil {
				t.Fatal(err)
			}
			if tc.point == "sync:armed" && len(armed) != 1 {
				t.Fatalf("killed after the first arming: %d armed, want 1", len(armed))
			}
			if tc.point == "sync:disarmed" && len(armed) != n-1 {
				t.Fatalf("killed after the first stale disarming: %d armed, want %d", len(armed), n-1)
			}

			// The restarted daemon.
			sync(tc.during)
			armed, err = a.Armed()
			if err != nil {
				t.Fatal(err)
			}
			want := map[uint64]string{}
			for _, i := range tc.during {
				want[cgid[i]] = fmt.Sprintf("sync%060d", i)
			}
			if len(armed) != len(want) {
				t.Errorf("after the restarted Synchronize %d cgroups armed, want %d: %+v", len(armed), len(want), armed)
			}
			for id, ctr := range want {
				if armed[id].ContainerID != ctr {
					t.Errorf("cgroup %d armed as %q, want %q", id, armed[id].ContainerID, ctr)
				}
				if got := len(linkPins(root, id)); got != perCgroup {
					t.Errorf("cgroup %d (%s): %d link pins, one arming has %d", id, ctr, got, perCgroup)
				}
			}
			for i := 0; i < n; i++ {
				if _, ok := want[cgid[i]]; !ok {
					if got := linkPins(root, cgid[i]); len(got) != 0 {
						t.Errorf("gone container c%d: link pins left %v", i, got)
					}
				}
			}
			// Nothing runs any more: nothing is left.
			sync(nil)
			for i := 0; i < n; i++ {
				assertUnarmed(t, a, root, cgid[i])
			}
		})
	}
}

func linkPins(root pins.Root, cgid uint64) []string {
	l, _ := filepath.Glob(filepath.Join(root.Dir(audit.Owner), "cg_"+strconv.FormatUint(cgid, 10)+"_*"))
	return l
}

// openTestAudit loads the audit once under a throw-away bpffs root (a crash
// test's killed processes and "restarted daemon" reuse it; the load test
// reads it).
func openTestAudit(t *testing.T) (cgroups.Mount, pins.Root, *audit.Auditor) {
	t.Helper()
	testenv.RequireRoot(t)
	mnt, err := cgroups.FindUnifiedSelf()
	if err != nil {
		t.Fatal(err)
	}
	root := testenv.BPFFSRoot(t)
	a, err := audit.Open(root, audit.Options{CgroupRoot: mnt.Point})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); audit.Cleanup(root) })
	return mnt, root, a
}
