package bench

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
)

// benchBPFFSRoot makes a fresh podscope bpffs root for one part of the run
// (never the node's real /sys/fs/bpf/podscope) and returns its remover,
// which runs cleanup (podscope's own: detach, unpin) before removing the dir.
func benchBPFFSRoot(cfg *Config, name string, cleanup func(pins.Root) error) (string, func(), error) {
	if err := pins.MountBPFFS("/sys/fs/bpf"); err != nil {
		return "", nil, fmt.Errorf("bpffs: %w", err)
	}
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("%s%s-%s", RunPrefix, cfg.RunID, name))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	return dir, func() {
		if cleanup != nil {
			if err := cleanup(pins.New(dir)); err != nil {
				cfg.logf("podscope cleanup of %s: %v", dir, err)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			cfg.logf("removing %s: %v", dir, err)
		}
	}, nil
}

// PinnedMapMemory sums the memlock of every distinct map pinned under root
// (as the kernel charges it, from /proc/self/fdinfo of an fd to the map).
func PinnedMapMemory(root string) (bytes int64, maps int, err error) {
	seen := map[ebpf.MapID]bool{}
	werr := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil // a pinned program or link
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			return err
		}
		id, ok := info.ID()
		if ok && seen[id] {
			return nil
		}
		seen[id] = true
		b, err := fdinfoMemlock(m.FD())
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		bytes += b
		maps++
		return nil
	})
	if werr != nil {
		return 0, 0, werr
	}
	if maps == 0 {
		return 0, 0, errors.New("no pinned maps under " + root)
	}
	return bytes, maps, nil
}

func fdinfoMemlock(fd int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "memlock:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no memlock in fdinfo")
}
