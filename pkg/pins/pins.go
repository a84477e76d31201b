// Package pins owns podscope's bpffs root: where state is pinned, which
// layout version it carries, and how an incompatible pin is reported.
//
// Layout: <root>/<LayoutVersion>/<owner>/<name>. Every package that pins maps
// (datapath, audit, …) gets its own owner directory through Root.Dir, so the
// version in the path moves all pins at once when a map layout changes.
package pins

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultRoot is the bpffs directory used when no bpffsRoot is configured.
const DefaultRoot = "/sys/fs/bpf/podscope"

// LayoutVersion names the on-bpffs layout of every pinned map and link.
// Bump it whenever a key or value layout changes: the old pins then live on
// under the old version directory and are found by Root.StaleLayouts.
const LayoutVersion = "v1"

// Root is a podscope bpffs root directory.
type Root struct {
	Path string
}

// New returns the root at path, or DefaultRoot when path is empty.
func New(path string) Root {
	if path == "" {
		path = DefaultRoot
	}
	return Root{Path: filepath.Clean(path)}
}

// Dir is the directory of one owner's pins under the current layout.
func (r Root) Dir(owner string) string {
	return filepath.Join(r.Path, LayoutVersion, owner)
}

// Pin is the path of one pin in owner's directory: a map, program or link
// name, or a subdirectory and a name (links/<name>), or a glob of them. It
// is the one place a pin's path is built: <root>/<LayoutVersion>/<owner>/<leaf>.
func (r Root) Pin(owner string, leaf ...string) string {
	return filepath.Join(append([]string{r.Dir(owner)}, leaf...)...)
}

// Ensure checks that the root lies on a bpffs mount and creates the owner's
// directory. The error names the mount that is missing and how to add it.
func (r Root) Ensure(owner string) (string, error) {
	if err := CheckBPFFS(r.Path); err != nil {
		return "", err
	}
	dir := r.Dir(owner)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating pin directory %s: %w", dir, err)
	}
	return dir, nil
}

// StaleLayouts lists layout version directories under the root other than
// the current one: pins left by another podscope version.
func (r Root) StaleLayouts() ([]string, error) {
	entries, err := os.ReadDir(r.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != LayoutVersion {
			out = append(out, filepath.Join(r.Path, e.Name()))
		}
	}
	return out, nil
}

// Walk calls fn with the path of every pin (every entry that is not a
// directory) under dir, in lexical order. A dir that does not exist, and a
// pin or directory removed while the walk runs (another process cleaning
// up), are passed over; an error of fn ends the walk and is returned.
func Walk(dir string, fn func(pin string) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		return fn(p)
	})
}

// ErrNotBPFFS is returned when the bpffs root is not on a bpf filesystem.
var ErrNotBPFFS = errors.New("not on a bpf filesystem")

// CheckBPFFS reports whether path (or, if it does not exist yet, its nearest
// existing parent) is on a bpffs mount. Pinning onto tmpfs "works" until the
// next reboot or the next `ip netns exec`, so it is refused here.
func CheckBPFFS(path string) error {
	p := filepath.Clean(path)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("bpffs root %s: %s is %w; mount one with `mount -t bpf bpf %s`",
					path, p, ErrNotBPFFS, mountHint(path))
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("bpffs root %s: statfs %s: %w", path, p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("bpffs root %s: no existing parent directory", path)
		}
		p = parent
	}
}

func mountHint(path string) string {
	if d := filepath.Dir(filepath.Clean(path)); d == "/sys/fs/bpf" || filepath.Clean(path) == "/sys/fs/bpf" {
		return "/sys/fs/bpf"
	}
	return "/sys/fs/bpf (or a bpffs of your own above " + path + ")"
}

// MountBPFFS mounts a bpffs at dir if nothing bpffs is mounted there yet.
// Used by set-up scripts and privileged tests, never by the plugins: a node
// without bpffs is an operator's decision to fix, not ours to paper over.
func MountBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", dir, err)
	}
	return nil
}

// Explain turns a pin error from cilium/ebpf into one that names the map and
// what the operator can do. Other errors pass through unchanged.
func Explain(err error, root Root, mapName string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("pinned map %q under %s has a layout this podscope (layout %s) does not understand: "+
			"it was pinned by another version. Detach and unpin the old state with `podscopectl cleanup --bpffs-root %s` "+
			"(counters of running pods are lost), or run the podscope version that created it: %w",
			mapName, root.Dir(""), LayoutVersion, root.Path, err)
	}
	return err
}

// UserMapSpec is the spec of a map user space keeps on its own (no BPF
// program declares it; the pod registry, the blob store): a hash map that
// allocates entries as they are added, pinned by name, for CreateMap and
// OpenMap.
func UserMapSpec(name string, keySize, valueSize, maxEntries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.Hash,
		KeySize:    keySize,
		ValueSize:  valueSize,
		MaxEntries: maxEntries,
		Flags:      unix.BPF_F_NO_PREALLOC,
		Pinning:    ebpf.PinByName,
	}
}

// CreateMap opens the map of spec (Pinning: ebpf.PinByName) pinned in
// owner's directory, creating and pinning it if absent: for maps user space
// keeps on its own (the pod registry, the blob store). what names the map in
// errors; an incompatible pin is explained.
func (r Root) CreateMap(owner string, spec *ebpf.MapSpec, what string) (*ebpf.Map, error) {
	dir, err := r.Ensure(owner)
	if err != nil {
		return nil, err
	}
	m, err := ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		return nil, Explain(fmt.Errorf("%s %s: %w", what, r.Pin(owner, spec.Name), err), r, spec.Name)
	}
	return m, nil
}

// OpenMap opens the existing pin of spec's map in owner's directory and never
// creates one: an error wrapping os.ErrNotExist when it is absent, and an
// explained ebpf.ErrMapIncompatible when its key or value size is not
// spec's (another layout).
func (r Root) OpenMap(owner string, spec *ebpf.MapSpec, what string) (*ebpf.Map, error) {
	p := r.Pin(owner, spec.Name)
	m, err := ebpf.LoadPinnedMap(p, nil)
	if err != nil {
		return nil, fmt.Errorf("opening %s %s: %w", what, p, err)
	}
	if m.KeySize() != spec.KeySize || m.ValueSize() != spec.ValueSize {
		m.Close()
		return nil, Explain(fmt.Errorf("%s %s: key/value size %d/%d: %w",
			what, p, m.KeySize(), m.ValueSize(), ebpf.ErrMapIncompatible), r, spec.Name)
	}
	return m, nil
}
