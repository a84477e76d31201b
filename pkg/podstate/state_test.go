package podstate

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// register pins a registry under root holding ps.
func register(t *testing.T, root pins.Root, ps ...pods.Pod) {
	t.Helper()
	reg, err := pods.OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	for _, p := range ps {
		if err := reg.Put(p); err != nil {
			t.Fatal(err)
		}
	}
}

func registered(t *testing.T, root pins.Root) []pods.Pod {
	t.Helper()
	reg, err := pods.OpenPinnedRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	all, err := reg.List()
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// accountingLines decodes the log as a consumer would: a map per line, so
// the field names are the file's, not this package's struct tags.
func accountingLines(t *testing.T, dir string) []map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "accounting.jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// loopback is alive in every netns (ifindex 1 is lo); 1<<30 is no link.
var (
	alive = pods.Pod{ID: 1, Namespace: "ns", Name: "alive", ContainerID: "c-alive", Interface: "eth0", HostIfindex: 1, HostInterface: "lo"}
	gone  = pods.Pod{ID: 2, Namespace: "ns", Name: "gone", ContainerID: "c-gone", Interface: "eth0", HostIfindex: 1 << 30, HostInterface: "vethgone"}
)

func TestNothingAttached(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	dir := t.TempDir()
	called := false
	if err := WithPinned(root, dir, func(*State) error { called = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if called {
		t.Error("WithPinned called fn without a registry")
	}
	list, err := List(root)
	if err != nil || list == nil || len(list) != 0 {
		t.Errorf("List of an empty root: %v, %v; want an empty, non-nil list", list, err)
	}
	if reaped, err := Reap(root, dir, time.Second); err != nil || len(reaped) != 0 {
		t.Errorf("Reap of an empty root: %v, %v", reaped, err)
	}
}

func TestListJoinsRegistryAndCounters(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	register(t, root, alive, gone)

	// No datapath pinned: every pod is listed, with the reason for its
	// missing counters.
	list, err := List(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "alive" || list[1].Name != "gone" {
		t.Fatalf("List: %+v", list)
	}
	for _, p := range list {
		if !errors.Is(p.CountersErr, datapath.ErrNotLoaded) {
			t.Errorf("pod %s without a datapath: CountersErr %v, want ErrNotLoaded", p.Ref(), p.CountersErr)
		}
	}

	// Datapath loaded, pods never attached: no counters for them.
	dp, err := datapath.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if list, err = List(root); err != nil {
		t.Fatal(err)
	}
	for _, p := range list {
		if !errors.Is(p.CountersErr, datapath.ErrUnknownPod) {
			t.Errorf("pod %s not attached: CountersErr %v, want ErrUnknownPod", p.Ref(), p.CountersErr)
		}
	}
}

func TestReapTearsDownOnlyStalePods(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	dir := t.TempDir()
	register(t, root, alive, gone)

	reaped, err := Reap(root, dir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(reaped) != 1 || reaped[0].Name != "gone" {
		t.Fatalf("reaped %+v, want only the pod whose veth is gone", reaped)
	}
	if left := registered(t, root); len(left) != 1 || left[0].Name != "alive" {
		t.Errorf("registry after reap: %+v", left)
	}
	lines := accountingLines(t, dir)
	if len(lines) != 1 {
		t.Fatalf("%d accounting lines, want 1", len(lines))
	}
	l := lines[0]
	if l["pod"] != "gone" || l["containerID"] != "c-gone" || l["podID"] != float64(2) ||
		l["reason"] != "reaped: host veth vethgone (ifindex 1073741824) gone" || l["countersError"] == nil {
		t.Errorf("accounting line %v", l)
	}
}

// ADD's reaper checks a slice of the registry per run, in pod ID order,
// starting where the last one stopped, and starts over after the last pod:
// every stale pod is reaped within one pass, no live one ever.
func TestReapSliceWalksThePodsInSlices(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	dir := t.TempDir()
	stale := map[datapath.PodID]bool{2: true, 5: true, 6: true, 9: true}
	var ps []pods.Pod
	for id := datapath.PodID(1); id <= 10; id++ {
		p := alive
		if stale[id] {
			p = gone
		}
		p.ID, p.Name, p.ContainerID = id, fmt.Sprintf("p%d", id), fmt.Sprintf("c%d", id)
		ps = append(ps, p)
	}
	register(t, root, ps...)

	// Slices of 3 over the registry as each run finds it (worked out by
	// hand): [1 2 3], [4 5 6], [7 8 9], [10], then a new pass [1 3 4].
	want := [][]datapath.PodID{{2}, {5, 6}, {9}, nil, nil}
	for run, w := range want {
		var reaped []pods.Pod
		err := WithPinned(root, dir, func(s *State) (err error) {
			reaped, err = s.ReapSlice(3, 5*time.Second)
			return err
		})
		if err != nil {
			t.Fatalf("run %d: %v", run+1, err)
		}
		var got []datapath.PodID
		for _, p := range reaped {
			got = append(got, p.ID)
		}
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("run %d reaped pods %v, want %v", run+1, got, w)
		}
	}
	left := registered(t, root)
	var ids []datapath.PodID
	for _, p := range left {
		ids = append(ids, p.ID)
	}
	if fmt.Sprint(ids) != "[1 3 4 7 8 10]" {
		t.Errorf("registry after the slices: pods %v, want the live ones [1 3 4 7 8 10]", ids)
	}
	if n := len(accountingLines(t, dir)); n != len(stale) {
		t.Errorf("%d accounting lines, want one per reaped pod (%d)", n, len(stale))
	}

	// A cursor past every pod (they went since) or unreadable starts a pass.
	for _, cur := range []string{"4000000000\n", "garbage"} {
		if err := os.WriteFile(filepath.Join(dir, ReapCursor), []byte(cur), 0o600); err != nil {
			t.Fatal(err)
		}
		register(t, root, gone) // pod 2 again, stale, at the start of a pass
		var reaped []pods.Pod
		err := WithPinned(root, dir, func(s *State) (err error) {
			reaped, err = s.ReapSlice(3, 5*time.Second)
			return err
		})
		if err != nil || len(reaped) != 1 || reaped[0].ID != 2 {
			t.Errorf("cursor %q: reaped %+v, %v; want pod 2 from a new pass", cur, reaped, err)
		}
	}
}

func TestTeardownAllLogsEveryPod(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	dir := t.TempDir()
	register(t, root, alive, gone)

	done, err := TeardownAll(root, dir, "cleanup")
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 2 {
		t.Fatalf("TeardownAll: %+v", done)
	}
	if left := registered(t, root); len(left) != 0 {
		t.Errorf("registry after TeardownAll: %+v", left)
	}
	lines := accountingLines(t, dir)
	if len(lines) != 2 || lines[0]["reason"] != "cleanup" || lines[1]["reason"] != "cleanup" ||
		lines[0]["pod"] != "alive" || lines[1]["pod"] != "gone" {
		t.Errorf("accounting lines %v", lines)
	}
}

// A pod whose accounting line cannot be written stays registered: removing
// it would lose its counters for good.
func TestTeardownKeepsPodWhenTheLogFails(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	register(t, root, gone)
	dir := t.TempDir()
	// A directory where the log file should be makes its open fail.
	if err := os.Mkdir(filepath.Join(dir, AccountingFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := TeardownAll(root, dir, "cleanup"); err == nil {
		t.Fatal("TeardownAll succeeded without an accounting log")
	}
	if left := registered(t, root); len(left) != 1 {
		t.Errorf("registry after a failed teardown: %+v, want the pod kept", left)
	}
}
