package cgroups

import (
	"errors"
	"path"
	"strings"
	"testing"
)

// FuzzRelative: a cgroups path from a container's OCI spec becomes a clean
// absolute directory that cannot climb out of the hierarchy, or an
// ErrBadPath.
func FuzzRelative(f *testing.F) {
	for _, s := range []string{
		"kubepods-besteffort-pod0f1e.slice:cri-containerd:4bd2",
		"/kubepods/besteffort/pod0f1e/4bd2",
		":cri-containerd:abc", "-.slice:x:y", "a--b.slice:p:n", "/a/../b", "x.slice:p:../..", "a.slice::n.slice", "//a//b/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rel, err := Relative(s)
		if err != nil {
			if !errors.Is(err, ErrBadPath) {
				t.Fatalf("error does not wrap ErrBadPath: %v", err)
			}
			return
		}
		if !strings.HasPrefix(rel, "/") || path.Clean(rel) != rel {
			t.Fatalf("Relative(%q) = %q: not a clean absolute path", s, rel)
		}
		for _, c := range strings.Split(rel, "/") {
			if c == ".." {
				t.Fatalf("Relative(%q) = %q climbs out", s, rel)
			}
		}
	})
}

// FuzzFindUnified: any mountinfo text gives a mount with a point and a root,
// or an error; never a panic.
func FuzzFindUnified(f *testing.F) {
	f.Add("35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
	f.Add("1 0 0:1 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n2 0 0:2 /x /mnt/with\\040space rw - cgroup2 none rw\n")
	f.Add("36 24 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
	f.Add("a b c d e - cgroup2\n - cgroup2\n\\\\\\777")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := FindUnified(strings.NewReader(s))
		if err != nil {
			return
		}
		if m.Point == "" || m.Root == "" {
			t.Fatalf("empty mount point from %q", s)
		}
	})
}
