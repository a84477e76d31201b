// Package cgroups turns the cgroups path an OCI runtime was given for a
// container into the container's directory in the cgroup v2 (unified)
// hierarchy, and that directory into the cgroup id the kernel reports
// (bpf_get_current_cgroup_id), which is the directory's inode number.
package cgroups

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// ErrBadPath is wrapped by every error about a cgroups path that cannot be
// turned into a directory.
var ErrBadPath = errors.New("unparsable cgroups path")

// Relative returns the directory of a container's cgroup relative to the root
// of the unified hierarchy (always starting with "/") for the cgroups path of
// its OCI spec (linux.cgroupsPath, NRI's linux.cgroups_path).
//
// Two forms exist, one per cgroup driver of the runtime:
//
//   - systemd: "slice:prefix:name", e.g.
//     "kubepods-besteffort-pod0f1e.slice:cri-containerd:4bd2…" names the unit
//     "cri-containerd-4bd2….scope" inside the slice "kubepods-besteffort-pod0f1e.slice",
//     which systemd nests by its dashes:
//     /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e.slice/cri-containerd-4bd2….scope
//   - cgroupfs: an absolute path such as "/kubepods/besteffort/pod0f1e/4bd2…".
func Relative(cgroupsPath string) (string, error) {
	p := cgroupsPath
	if p == "" {
		return "", fmt.Errorf("%w: empty", ErrBadPath)
	}
	if strings.HasPrefix(p, "/") {
		return cleanAbsolute(p)
	}
	parts := strings.Split(p, ":")
	if len(parts) != 3 {
		return "", fmt.Errorf("%w %q: neither an absolute cgroupfs path nor systemd's slice:prefix:name", ErrBadPath, p)
	}
	return systemdPath(parts[0], parts[1], parts[2])
}

func cleanAbsolute(p string) (string, error) {
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w %q: contains \"..\"", ErrBadPath, p)
		}
	}
	return path.Clean(p), nil
}

// systemdPath follows what runc's systemd cgroup driver asks systemd for: the
// unit is "<prefix>-<name>.scope" (or name itself when it is a slice), placed
// in the parent slice, and systemd puts a slice "a-b-c.slice" at
// /a.slice/a-b.slice/a-b-c.slice. An empty parent means systemd's default
// "system.slice" (runc's default too); "-.slice" is the root slice.
func systemdPath(slice, prefix, name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w %q: systemd form with an empty unit name", ErrBadPath, slice+":"+prefix+":"+name)
	}
	if slice == "" {
		slice = "system.slice"
	}
	dir, err := ExpandSlice(slice)
	if err != nil {
		return "", err
	}
	unit := name
	if !strings.HasSuffix(name, ".slice") {
		if prefix != "" {
			unit = prefix + "-" + name + ".scope"
		} else {
			unit = name + ".scope"
		}
	}
	if strings.Contains(unit, "/") {
		return "", fmt.Errorf("%w: systemd unit %q contains \"/\"", ErrBadPath, unit)
	}
	return path.Join(dir, unit), nil
}

// ExpandSlice returns the hierarchy path of a systemd slice unit:
// "kubepods-besteffort.slice" -> "/kubepods.slice/kubepods-besteffort.slice".
func ExpandSlice(slice string) (string, error) {
	const suffix = ".slice"
	if !strings.HasSuffix(slice, suffix) || len(slice) == len(suffix) {
		return "", fmt.Errorf("%w: %q is not a systemd slice (want NAME.slice)", ErrBadPath, slice)
	}
	if strings.Contains(slice, "/") {
		return "", fmt.Errorf("%w: slice %q contains \"/\"", ErrBadPath, slice)
	}
	if slice == "-.slice" {
		return "/", nil
	}
	base := strings.TrimSuffix(slice, suffix)
	var b strings.Builder
	prefix := ""
	for _, comp := range strings.Split(base, "-") {
		// systemd refuses "a--b.slice", "-a.slice" and "a-.slice": each dash
		// must separate two non-empty levels.
		if comp == "" {
			return "", fmt.Errorf("%w: slice %q has an empty component between dashes", ErrBadPath, slice)
		}
		b.WriteString("/")
		b.WriteString(prefix + comp + suffix)
		prefix += comp + "-"
	}
	return b.String(), nil
}
