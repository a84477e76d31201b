package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrGone is wrapped when the container's cgroup directory does not exist
// (any more, or not yet).
var ErrGone = errors.New("cgroup directory not found")

// Source says how a container's cgroup was found.
type Source string

const (
	FromCgroupsPath Source = "cgroups_path" // the runtime's linux.cgroupsPath
	FromPID         Source = "pid"          // /proc/<pid>/cgroup, the "0::" line
)

// Cgroup is a container's cgroup v2 directory and its id.
type Cgroup struct {
	Dir    string // absolute path under the unified mount
	ID     uint64 // the directory's inode number: what bpf_get_current_cgroup_id returns
	Source Source
	// Fallback, when Source is FromPID, says why the cgroups path was not used.
	Fallback error
}

// Resolver finds container cgroups under one unified hierarchy mount.
type Resolver struct {
	Mount Mount
	// Proc is the procfs root used for the pid fallback ("/proc" when empty).
	Proc string
}

// NewResolver returns a Resolver for the unified hierarchy at root, or, when
// root is empty, for the one found in /proc/self/mountinfo.
func NewResolver(root string) (*Resolver, error) {
	if root != "" {
		return &Resolver{Mount: Mount{Point: filepath.Clean(root), Root: "/"}}, nil
	}
	m, err := FindUnifiedSelf()
	if err != nil {
		return nil, fmt.Errorf("finding the cgroup v2 hierarchy: %w (file-write audit needs cgroup v2, pure or hybrid)", err)
	}
	return &Resolver{Mount: m}, nil
}

// Dir maps a hierarchy path ("/kubepods.slice/…") to a directory under the
// mount. A path outside a namespace- or bind-limited mount has no directory.
func (r *Resolver) Dir(rel string) (string, error) {
	rel = path.Clean("/" + rel)
	root := path.Clean("/" + r.Mount.Root)
	if root != "/" {
		if rel != root && !strings.HasPrefix(rel, root+"/") {
			return "", fmt.Errorf("cgroup %s lies outside the hierarchy visible at %s (mounted from %s)", rel, r.Mount.Point, root)
		}
		rel = strings.TrimPrefix(rel, root)
	}
	return filepath.Join(r.Mount.Point, filepath.FromSlash(rel)), nil
}

// Resolve finds a container's cgroup from its cgroups path and, when that
// fails (unparsable, or no such directory: a runtime that placed the
// container elsewhere, e.g. runc's cgroupfs driver on a hybrid host), from
// the "0::" line of /proc/<pid>/cgroup. pid 0 disables the fallback. The
// root cgroup is never returned: arming it would audit the whole node.
func (r *Resolver) Resolve(cgroupsPath string, pid uint32) (Cgroup, error) {
	cg, pathErr := r.fromCgroupsPath(cgroupsPath)
	if pathErr == nil {
		return cg, nil
	}
	if pid == 0 {
		return Cgroup{}, pathErr
	}
	cg, pidErr := r.fromPID(pid)
	if pidErr != nil {
		return Cgroup{}, fmt.Errorf("%w; fallback to pid %d: %w", pathErr, pid, pidErr)
	}
	cg.Fallback = pathErr
	return cg, nil
}

func (r *Resolver) fromCgroupsPath(cgroupsPath string) (Cgroup, error) {
	rel, err := Relative(cgroupsPath)
	if err != nil {
		return Cgroup{}, err
	}
	return r.open(rel, FromCgroupsPath, "cgroups path "+strconv.Quote(cgroupsPath))
}

func (r *Resolver) fromPID(pid uint32) (Cgroup, error) {
	proc := r.Proc
	if proc == "" {
		proc = "/proc"
	}
	file := filepath.Join(proc, strconv.FormatUint(uint64(pid), 10), "cgroup")
	f, err := os.Open(file)
	if err != nil {
		return Cgroup{}, fmt.Errorf("process gone or unreadable: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "0::")
		if !ok {
			continue
		}
		if rest == "/.." || strings.HasPrefix(rest, "/../") {
			// Shown relative to our own cgroup namespace: the process is
			// outside it, and the path cannot be mapped to a directory.
			return Cgroup{}, fmt.Errorf("%s: cgroup %s lies outside this process's cgroup namespace "+
				"(run podscope-nri in the host's cgroup namespace)", file, rest)
		}
		if strings.HasSuffix(rest, " (deleted)") {
			return Cgroup{}, fmt.Errorf("%s: cgroup %s: %w (deleted)", file, strings.TrimSuffix(rest, " (deleted)"), ErrGone)
		}
		return r.open(rest, FromPID, file)
	}
	if err := sc.Err(); err != nil {
		return Cgroup{}, fmt.Errorf("reading %s: %w", file, err)
	}
	return Cgroup{}, fmt.Errorf("%s has no cgroup v2 (\"0::\") line", file)
}

func (r *Resolver) open(rel string, src Source, from string) (Cgroup, error) {
	if path.Clean("/"+rel) == "/" {
		return Cgroup{}, fmt.Errorf("%s names the root cgroup, not a container's", from)
	}
	dir, err := r.Dir(rel)
	if err != nil {
		return Cgroup{}, fmt.Errorf("%s: %w", from, err)
	}
	id, err := ID(dir)
	if err != nil {
		return Cgroup{}, fmt.Errorf("%s: %w", from, err)
	}
	return Cgroup{Dir: dir, ID: id, Source: src}, nil
}
