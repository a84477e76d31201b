package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/blobs"
	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/fault"
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
	testenv.RequireRoot(t)
	mnt, err := cgroups.FindUnifiedSelf()
	if err != nil {
		t.Fatal(err)
	}
	root := testenv.BPFFSRoot(t)
	// Load once: the killed processes and the "restarted daemon" reuse it.
	a, err := audit.Open(root, audit.Options{CgroupRoot: mnt.Point})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); audit.Cleanup(root) })
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
	links, _ := filepath.Glob(filepath.Join(root.Dir(audit.Owner), "cg_"+strconv.FormatUint(cgid, 10)+"_*"))
	if len(links) != 0 {
		t.Errorf("link pins of cgroup %d left: %v", cgid, links)
	}
	if s, err := blobs.OpenPinned(root); err == nil {
		defer s.Close()
		if ids, _ := s.IDs(blobs.KindAuditIdentity); len(ids) != 0 {
			t.Errorf("identity blobs left: %v", ids)
		}
	}
}
