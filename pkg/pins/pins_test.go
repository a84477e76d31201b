package pins

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

func TestDirCarriesLayoutVersion(t *testing.T) {
	r := New("/x/y/")
	if got, want := r.Dir("datapath"), "/x/y/"+LayoutVersion+"/datapath"; got != want {
		t.Fatalf("Dir = %q, want %q", got, want)
	}
	if New("").Path != DefaultRoot {
		t.Fatalf("empty path does not default to %s", DefaultRoot)
	}
}

func TestCheckBPFFSRefusesTmp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "there")
	err := CheckBPFFS(dir)
	if !errors.Is(err, ErrNotBPFFS) {
		t.Fatalf("CheckBPFFS(%s) = %v, want ErrNotBPFFS", dir, err)
	}
	if !strings.Contains(err.Error(), "mount -t bpf") {
		t.Fatalf("error does not say how to fix it: %v", err)
	}
}

func TestExplainNamesMap(t *testing.T) {
	err := Explain(fmt.Errorf("load: %w", ebpf.ErrMapIncompatible), New("/sys/fs/bpf/t"), "pod_counters")
	if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), `"pod_counters"`) ||
		!strings.Contains(err.Error(), "podscopectl cleanup") {
		t.Fatalf("Explain lost the map name, the fix or the chain: %v", err)
	}
	other := os.ErrPermission
	if Explain(other, New(""), "m") != other {
		t.Fatal("Explain changed an unrelated error")
	}
}

func TestStaleLayouts(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{LayoutVersion, "v0"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	stale, err := New(root).StaleLayouts()
	if err != nil || len(stale) != 1 || filepath.Base(stale[0]) != "v0" {
		t.Fatalf("StaleLayouts = %v, %v; want just v0", stale, err)
	}
}

func TestPinPath(t *testing.T) {
	r := New("/x/y/")
	for _, tc := range []struct {
		owner string
		leaf  []string
		want  string
	}{
		{"datapath", []string{"pod_counters"}, "/x/y/" + LayoutVersion + "/datapath/pod_counters"},
		{"datapath", []string{"links", "3_ingress"}, "/x/y/" + LayoutVersion + "/datapath/links/3_ingress"},
		{"audit", []string{"prog_*"}, "/x/y/" + LayoutVersion + "/audit/prog_*"},
		{"pods", nil, "/x/y/" + LayoutVersion + "/pods"},
	} {
		if got := r.Pin(tc.owner, tc.leaf...); got != tc.want {
			t.Errorf("Pin(%q, %q) = %q, want %q", tc.owner, tc.leaf, got, tc.want)
		}
	}
}

func TestWalkListsPinsNotDirectories(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"b/link", "a/map1", "a/map2", "top"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := Walk(dir, func(p string) error {
		got = append(got, strings.TrimPrefix(p, dir+"/"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := "a/map1 a/map2 b/link top"; strings.Join(got, " ") != want {
		t.Fatalf("Walk visited %q, want %s", got, want)
	}

	// A root that does not exist holds no pins; fn's error ends the walk.
	if err := Walk(filepath.Join(dir, "nope"), func(string) error { t.Fatal("called"); return nil }); err != nil {
		t.Fatalf("Walk of a missing dir: %v", err)
	}
	stop := errors.New("stop")
	n := 0
	if err := Walk(dir, func(string) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Walk with a failing fn: %v after %d calls, want stop after 1", err, n)
	}
}
