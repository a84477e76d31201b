package cgroups

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ID returns the cgroup id of a cgroup directory: its inode number, which is
// what bpf_get_current_cgroup_id() returns for its tasks. It does not look
// at the filesystem (the resolver's tests use plain directories); V2ID does.
func ID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("%s: %w", dir, ErrGone)
		}
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("%s is not a directory", dir)
	}
	return st.Ino, nil
}

// V2ID is ID for a directory that must be on a cgroup v2 filesystem: the
// audit arms cgroup v2 ids only (a v1 directory's inode is no cgroup id).
func V2ID(dir string) (uint64, error) {
	id, err := ID(dir)
	if err != nil {
		return 0, fmt.Errorf("cgroup %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s is not on a cgroup v2 filesystem (the audit needs the unified hierarchy)", dir)
	}
	return id, nil
}

// Level is the depth of a cgroup v2 directory in the hierarchy (the root is
// 0): the number of its ancestors on the same cgroup2 mount. It is the level
// bpf_get_current_ancestor_cgroup_id() knows it by, as long as the mount
// shows the whole tree (the host's cgroup namespace).
func Level(dir string) (uint32, error) {
	p := filepath.Clean(dir)
	var level uint32
	for {
		parent := filepath.Dir(p)
		if parent == p {
			return 0, fmt.Errorf("cgroup %s: no cgroup2 mount above it", dir)
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(parent, &fs); err != nil {
			return 0, fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if fs.Type != unix.CGROUP2_SUPER_MAGIC {
			return level, nil
		}
		var a, b unix.Stat_t
		if err := unix.Stat(parent, &a); err != nil {
			return 0, err
		}
		if err := unix.Stat(p, &b); err != nil {
			return 0, err
		}
		if a.Dev != b.Dev {
			return level, nil // another cgroup2 mount above this one
		}
		level++
		p = parent
	}
}
