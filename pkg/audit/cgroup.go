package audit

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Cgroup2Root finds the cgroup v2 (unified) mount: /sys/fs/cgroup on a pure
// v2 host, /sys/fs/cgroup/unified on a hybrid one.
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// CgroupID is the cgroup v2 id of a cgroup directory: its inode number,
// which is what bpf_get_current_cgroup_id() returns for its tasks.
func CgroupID(dir string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s is not on a cgroup v2 filesystem (the audit needs the unified hierarchy)", dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("cgroup %s is not a directory", dir)
	}
	return st.Ino, nil
}

// cgroupLevel is the depth of a cgroup v2 directory in the hierarchy (the
// root is 0): the number of its ancestors on the same cgroup2 mount. It is
// the level bpf_get_current_ancestor_cgroup_id() knows it by, as long as
// the mount shows the whole tree (the host's cgroup namespace).
func cgroupLevel(dir string) (uint32, error) {
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

func mountTracefs(dir string) error {
	return unix.Mount("tracefs", dir, "tracefs", 0, "")
}
