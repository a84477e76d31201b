package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrNoUnified is returned when no cgroup2 filesystem is mounted.
var ErrNoUnified = errors.New("no cgroup v2 (unified) hierarchy mounted")

// Mount is a cgroup2 mount seen in a mountinfo table.
type Mount struct {
	Point string // where it is mounted, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified
	Root  string // the hierarchy path shown at Point ("/" unless bind- or namespace-limited)
}

// preferred are the places a distribution mounts the unified hierarchy:
// pure cgroup v2 at /sys/fs/cgroup, hybrid (v1 controllers + v2) at
// /sys/fs/cgroup/unified. Other cgroup2 mounts (bind mounts into containers,
// test mounts) are taken only when neither is present.
var preferred = []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}

// FindUnified reads a mountinfo table (proc(5)) and returns the mount of the
// unified hierarchy.
func FindUnified(mountinfo io.Reader) (Mount, error) {
	var found []Mount
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		m, ok := parseMountinfoLine(sc.Text())
		if ok {
			found = append(found, m)
		}
	}
	if err := sc.Err(); err != nil {
		return Mount{}, fmt.Errorf("reading mountinfo: %w", err)
	}
	for _, want := range preferred {
		for _, m := range found {
			if m.Point == want {
				return m, nil
			}
		}
	}
	if len(found) > 0 {
		return found[0], nil
	}
	return Mount{}, ErrNoUnified
}

// FindUnifiedSelf is FindUnified on /proc/self/mountinfo.
func FindUnifiedSelf() (Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Mount{}, err
	}
	defer f.Close()
	return FindUnified(f)
}

// Scratch creates an empty cgroup to try an attachment on: a new directory
// named prefix* under root or, when root is "", at this process's cgroup2
// mount. The caller removes it (os.Remove) when done.
func Scratch(root, prefix string) (string, error) {
	if root == "" {
		m, err := FindUnifiedSelf()
		if err != nil {
			return "", fmt.Errorf("scratch cgroup: %w", err)
		}
		root = m.Point
	}
	dir, err := os.MkdirTemp(root, prefix)
	if err != nil {
		return "", fmt.Errorf("scratch cgroup: %w", err)
	}
	return dir, nil
}

// parseMountinfoLine picks cgroup2 mounts out of one mountinfo line:
// "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
func parseMountinfoLine(line string) (Mount, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return Mount{}, false
	}
	fs := strings.Fields(post)
	if len(fs) == 0 || fs[0] != "cgroup2" {
		return Mount{}, false
	}
	f := strings.Fields(pre)
	if len(f) < 5 {
		return Mount{}, false
	}
	return Mount{Root: unescapeOctal(f[3]), Point: unescapeOctal(f[4])}, true
}

// unescapeOctal undoes the kernel's \NNN escaping of space, tab, newline and
// backslash in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
