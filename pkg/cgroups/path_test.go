package cgroups

import (
	"errors"
	"strings"
	"testing"
)

func TestRelative(t *testing.T) {
	const id = "4bd2c0ffee"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"systemd besteffort", "kubepods-besteffort-pod0f1e_22aa.slice:cri-containerd:" + id,
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e_22aa.slice/cri-containerd-" + id + ".scope"},
		{"systemd guaranteed", "kubepods-pod77.slice:cri-containerd:" + id,
			"/kubepods.slice/kubepods-pod77.slice/cri-containerd-" + id + ".scope"},
		{"systemd crio prefix", "kubepods-burstable-podab.slice:crio:" + id,
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab.slice/crio-" + id + ".scope"},
		{"systemd no prefix", "system.slice::" + id, "/system.slice/" + id + ".scope"},
		{"systemd empty slice is system.slice", ":docker:" + id, "/system.slice/docker-" + id + ".scope"},
		{"systemd root slice", "-.slice:p:" + id, "/p-" + id + ".scope"},
		{"systemd name is a slice", "kubepods.slice:cri-containerd:extra.slice", "/kubepods.slice/extra.slice"},
		{"cgroupfs besteffort", "/kubepods/besteffort/pod0f1e-22aa/" + id, "/kubepods/besteffort/pod0f1e-22aa/" + id},
		{"cgroupfs guaranteed", "/kubepods/pod77/" + id, "/kubepods/pod77/" + id},
		{"cgroupfs unclean", "/kubepods//pod77/./" + id + "/", "/kubepods/pod77/" + id},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Relative(tc.in)
			if err != nil {
				t.Fatalf("Relative(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("Relative(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestRelativeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, mention string
	}{
		{"empty", "", "empty"},
		{"relative cgroupfs", "kubepods/pod1/abc", "neither"},
		{"two fields", "kubepods.slice:abc", "neither"},
		{"four fields", "a.slice:b:c:d", "neither"},
		{"dotdot", "/kubepods/../../etc", ".."},
		{"slice without suffix", "kubepods:cri-containerd:abc", "not a systemd slice"},
		{"slice double dash", "kubepods--pod1.slice:cri-containerd:abc", "empty component"},
		{"slice trailing dash", "kubepods-.slice:cri-containerd:abc", "empty component"},
		{"slice leading dash", "-kubepods.slice:cri-containerd:abc", "empty component"},
		{"bare .slice", ".slice:cri-containerd:abc", "not a systemd slice"},
		{"empty name", "kubepods.slice:cri-containerd:", "empty unit name"},
		{"slash in name", "kubepods.slice:cri-containerd:a/b", "contains"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Relative(tc.in)
			if err == nil {
				t.Fatalf("Relative(%q) = %q, want an error", tc.in, got)
			}
			if !errors.Is(err, ErrBadPath) {
				t.Errorf("error %v does not wrap ErrBadPath", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestExpandSlice(t *testing.T) {
	for in, want := range map[string]string{
		"kubepods.slice":                  "/kubepods.slice",
		"kubepods-besteffort.slice":       "/kubepods.slice/kubepods-besteffort.slice",
		"a-b-c.slice":                     "/a.slice/a-b.slice/a-b-c.slice",
		"-.slice":                         "/",
		"user-1000.slice":                 "/user.slice/user-1000.slice",
		"kubepods-burstable-pod1_2.slice": "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice",
	} {
		got, err := ExpandSlice(in)
		if err != nil || got != want {
			t.Errorf("ExpandSlice(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
