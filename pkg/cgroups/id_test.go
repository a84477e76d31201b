package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/podscope/podscope/pkg/testenv"
)

func TestV2IDRefusesOtherFilesystems(t *testing.T) {
	dir := t.TempDir() // tmpfs or disk, never cgroup2
	if _, err := ID(dir); err != nil {
		t.Fatalf("ID of a plain directory: %v", err)
	}
	if _, err := V2ID(dir); err == nil {
		t.Error("V2ID accepted a directory that is not on cgroup2")
	}
	if _, err := V2ID(filepath.Join(dir, "gone")); !errors.Is(err, ErrGone) {
		t.Errorf("V2ID of a missing directory: %v, want ErrGone", err)
	}
	f := filepath.Join(dir, "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ID(f); err == nil {
		t.Error("ID accepted a regular file")
	}
}

// Level counts the ancestors on the unified mount: its own root is level 0,
// a child 1, a grandchild 2.
func TestLevelOnTheRealHierarchy(t *testing.T) {
	testenv.RequireRoot(t)
	m, err := FindUnifiedSelf()
	if err != nil {
		t.Fatal(err)
	}
	if m.Root != "/" {
		// Inside a cgroup namespace the mount shows a subtree: the levels
		// below cannot be checked against the whole hierarchy. CI runs on a
		// host, where this must not happen.
		testenv.Missing(t, "the unified mount shows %s, not the whole tree (CI must run on the host's cgroup hierarchy)", m.Root)
	}
	child := filepath.Join(m.Point, testenv.Name(t))
	grandchild := filepath.Join(child, "leaf")
	if err := os.MkdirAll(grandchild, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(grandchild)
		if err := os.Remove(child); err != nil {
			t.Errorf("removing test cgroup: %v", err)
		}
	})
	for dir, want := range map[string]uint32{m.Point: 0, child: 1, grandchild: 2} {
		got, err := Level(dir)
		if err != nil || got != want {
			t.Errorf("Level(%s) = %d, %v; want %d", dir, got, err, want)
		}
	}
	id, err := V2ID(grandchild)
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := ID(grandchild); plain != id || id == 0 {
		t.Errorf("V2ID %d, ID %d: want the same non-zero inode", id, plain)
	}
}
