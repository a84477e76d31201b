// Package install puts podscope on a node and takes it off again: it copies
// the plugin binaries into the CNI bin dir and chains a podscope entry into
// the node's active CNI network config, recording what it changed so that
// Uninstall removes exactly that.
//
// The active config is the one containerd uses: the lexically first file
// with a .conf, .conflist or .json extension in the CNI conf dir (go-cni
// sorts libcni.ConfFiles and takes the first). Edits are splices of the
// original text (see netConf), written atomically.
package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/podscope/podscope/pkg/podstate"
)

// Defaults of the installer's flags.
const (
	DefaultCNIBinDir  = "/opt/cni/bin"
	DefaultCNIConfDir = "/etc/cni/net.d"
	// DefaultStateDir is a subdirectory of podscope's state dir.
	DefaultStateDir = podstate.DefaultDir + "/install"
)

// DefaultEntry is the podscope conflist entry chained when no config file
// is given: the plugin with all its defaults (allow-all policy).
var DefaultEntry = []byte(`{"type":"podscope"}`)

// ErrNoConfig is returned when the CNI conf dir holds no network config yet
// (the primary CNI has not written one): there is nothing to chain into.
var ErrNoConfig = errors.New("no CNI network config found")

// errChanged means a config file changed between reading and replacing it
// (its primary CNI rewrote it); the caller retries on the new content.
var errChanged = errors.New("changed while being edited")

// Config is what the installer installs and where.
type Config struct {
	CNIBinDir  string // where the runtime looks for plugin binaries
	CNIConfDir string // where the runtime looks for network configs
	StateDir   string // where the record of changes is kept
	SrcDir     string // where the binaries to copy are
	Binaries   []string
	// EntryFile holds the podscope conflist entry (a JSON object of type
	// "podscope"); it is re-read on every Install so a changed ConfigMap is
	// picked up by the watch loop. Empty: Entry, or DefaultEntry.
	EntryFile string
	Entry     []byte
	// ValidateEntry, if set, checks the entry beyond "an object of type
	// podscope" (e.g. its policy) before it goes anywhere near a conflist:
	// a bad entry there would fail every pod ADD on the node.
	ValidateEntry func(entry []byte) error
	// SupportedVersions, if set, returns the CNI spec versions the podscope
	// plugin at the given path supports; a conflist whose cniVersion is not
	// among them is refused, because the runtime would then fail every pod.
	SupportedVersions func(pluginPath string) ([]string, error)
	// AfterChain, if set, runs after podscope was written into a config
	// (a first chain, or a re-chain after the primary CNI rewrote it), with
	// the path of the config now active. Pods started while podscope was
	// not chained are adopted there.
	AfterChain func(path string)
	Logf       func(format string, args ...any)
}

// Installer installs podscope on one node.
type Installer struct {
	cfg Config
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Installer, error) {
	if cfg.CNIBinDir == "" {
		cfg.CNIBinDir = DefaultCNIBinDir
	}
	if cfg.CNIConfDir == "" {
		cfg.CNIConfDir = DefaultCNIConfDir
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	for _, b := range cfg.Binaries {
		if b == "" || strings.ContainsRune(b, '/') || b == "." || b == ".." {
			return nil, fmt.Errorf("binary name %q: want a plain file name", b)
		}
	}
	if len(cfg.Binaries) > 0 && cfg.SrcDir == "" {
		return nil, errors.New("binaries to copy but no source directory")
	}
	return &Installer{cfg: cfg}, nil
}

// Install copies the binaries and chains podscope into the active config.
// Running it again changes nothing; after a primary CNI rewrote its config
// it chains podscope into the new content.
func (in *Installer) Install() error {
	entry, err := in.entry()
	if err != nil {
		return err
	}
	st, unlock, err := in.lockState()
	if err != nil {
		return err
	}
	defer unlock()
	if err := in.copyBinaries(st); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err = in.chain(st, entry)
		if !errors.Is(err, errChanged) || attempt == 4 {
			return err
		}
		in.cfg.Logf("%v; retrying", err)
	}
}

func (in *Installer) copyBinaries(st *state) error {
	if len(in.cfg.Binaries) == 0 {
		return nil
	}
	if err := os.MkdirAll(in.cfg.CNIBinDir, 0o755); err != nil {
		return fmt.Errorf("creating CNI bin dir: %w", err)
	}
	changed := false
	for _, name := range in.cfg.Binaries {
		dst := filepath.Join(in.cfg.CNIBinDir, name)
		sum, written, err := copyBinary(filepath.Join(in.cfg.SrcDir, name), dst)
		if err != nil {
			return err
		}
		if st.setBinary(binRecord{Path: dst, SHA256: sum}) {
			changed = true
		}
		if written {
			in.cfg.Logf("installed %s", dst)
		}
	}
	if !changed {
		return nil // the watch loop's rounds write nothing when nothing changed
	}
	// Recorded before any config refers to the binaries, so an uninstall
	// after a crash still knows what to remove.
	return in.saveState(st)
}

// entry returns the podscope entry as compact JSON, checked.
func (in *Installer) entry() ([]byte, error) {
	raw := in.cfg.Entry
	src := "built-in entry"
	if in.cfg.EntryFile != "" {
		b, err := os.ReadFile(in.cfg.EntryFile)
		if err != nil {
			return nil, fmt.Errorf("reading podscope config: %w", err)
		}
		raw, src = b, in.cfg.EntryFile
	}
	if raw == nil {
		raw = DefaultEntry
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("podscope config (%s) is not a JSON object: %w", src, err)
	}
	var typ string
	if err := json.Unmarshal(obj["type"], &typ); err != nil || typ != PluginType {
		return nil, fmt.Errorf(`podscope config (%s): "type" must be %q`, src, PluginType)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, fmt.Errorf("podscope config (%s): %w", src, err)
	}
	if in.cfg.ValidateEntry != nil {
		if err := in.cfg.ValidateEntry(b.Bytes()); err != nil {
			return nil, fmt.Errorf("podscope config (%s): %w", src, err)
		}
	}
	return b.Bytes(), nil
}

// configFiles lists the CNI network config files of dir in the runtime's
// order (libcni.ConfFiles, sorted): the first is the active one.
func configFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no dir yet: no config yet
	}
	if err != nil {
		return nil, fmt.Errorf("reading CNI conf dir: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if isConfigName(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	slices.Sort(out)
	return out, nil
}

func isConfigName(name string) bool {
	switch filepath.Ext(name) {
	case ".conf", ".conflist", ".json":
		return true
	}
	return false
}

// ActiveConfig returns the path of the network config the runtime uses.
func ActiveConfig(dir string) (string, error) {
	files, err := configFiles(dir)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("%w in %s: is the primary CNI (bridge, kindnet, Calico, Cilium, flannel…) installed on this node?", ErrNoConfig, dir)
	}
	return files[0], nil
}

func (in *Installer) chain(st *state, entry []byte) error {
	path, err := ActiveConfig(in.cfg.CNIConfDir)
	if err != nil {
		return err
	}
	data, mode, err := readConfig(path)
	if err != nil {
		return err
	}
	c, err := parseNetConf(path, data)
	if err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	if err := in.checkPlugin(c); err != nil {
		return err
	}
	if !c.isList {
		return in.convert(st, c, mode, entry)
	}
	after := c.withEntry(entry)
	if bytes.Equal(after, data) {
		if st.config(path) == nil {
			// Chained already, by a run whose record is gone or by hand:
			// record it so uninstall restores the file without it.
			before, err := c.withoutPodscope()
			if err != nil {
				return err
			}
			st.setConfig(confRecord{Path: path, Before: before, After: data, Mode: mode})
			return in.saveState(st)
		}
		return nil
	}
	before := data
	if rec := st.config(path); rec != nil && bytes.Equal(rec.After, data) {
		before = rec.Before // only the entry changes (new policy)
	} else if len(c.podscopeIndexes()) > 0 {
		if before, err = c.withoutPodscope(); err != nil {
			return err
		}
	}
	rec := confRecord{Path: path, Before: before, After: after, Mode: mode}
	if old := st.config(path); old != nil && old.Original != "" && bytes.Equal(old.After, data) {
		rec.Original = old.Original // still our converted file: keep the way back
		rec.Before = old.Before
	}
	// Record first: a crash between the two leaves a record whose After
	// does not match the file, which uninstall handles by removing the
	// podscope entry from whatever is there.
	st.setConfig(rec)
	if err := in.saveState(st); err != nil {
		return err
	}
	if err := replaceIfUnchanged(path, data, after, mode); err != nil {
		return err
	}
	in.cfg.Logf("chained podscope into %s", path)
	in.afterChain(path)
	return nil
}

func (in *Installer) afterChain(path string) {
	if in.cfg.AfterChain != nil {
		in.cfg.AfterChain(path)
	}
}

// convert replaces a single-plugin config (.conf/.json) by a conflist of the
// same base name holding the original plugin followed by podscope.
func (in *Installer) convert(st *state, c *netConf, mode os.FileMode, entry []byte) error {
	path := c.path
	newPath := strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	rec := st.config(newPath)
	if _, err := os.Lstat(newPath); err == nil && rec == nil {
		return fmt.Errorf("%s is a single-plugin config and would become %s, which exists already and was not written by podscope-install; merge them by hand", path, newPath)
	}
	files, err := configFiles(in.cfg.CNIConfDir)
	if err != nil {
		return err
	}
	for _, f := range files {
		if f != path && f != newPath && f < newPath {
			return fmt.Errorf("%s is a single-plugin config; as %s it would no longer be the active config because %s sorts before it: rename one of them", path, newPath, f)
		}
	}
	after := c.convertToList(entry)
	st.setConfig(confRecord{Path: newPath, Original: path, Before: c.raw, After: after, Mode: mode})
	if err := in.saveState(st); err != nil {
		return err
	}
	if err := writeFileAtomic(newPath, after, mode); err != nil {
		return err
	}
	// The runtime reads the .conf (it sorts first) until it is gone, and
	// then the conflist: it never sees a missing or partial network.
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("re-reading %s: %w", path, err)
	}
	if !bytes.Equal(cur, c.raw) {
		return fmt.Errorf("%s: %w", path, errChanged)
	}
	if err := removeFile(path); err != nil {
		return err
	}
	in.cfg.Logf("converted %s into %s with podscope chained", path, newPath)
	in.afterChain(newPath)
	return nil
}

func readConfig(path string) ([]byte, os.FileMode, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	return data, st.Mode().Perm(), nil
}

// replaceIfUnchanged writes data to path unless path no longer holds old: a
// primary CNI that rewrote the file in the meantime must not be overwritten
// with a chained copy of its previous content. The check runs after the
// temp file is written and synced, right before the rename; what remains
// is the few microseconds between the two, and a primary that writes its
// file in place into the inode being replaced. A primary that writes after
// the rename is seen by the watch loop and chained again.
func replaceIfUnchanged(path string, old, data []byte, mode os.FileMode) error {
	return writeFileAtomicIf(path, data, mode, func() error {
		cur, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("re-reading %s: %w", path, err)
		}
		if !bytes.Equal(cur, old) {
			return fmt.Errorf("%s: %w", path, errChanged)
		}
		return nil
	})
}

// checkPlugin refuses to chain podscope into c when the runtime could not
// run it: the binary is missing from the CNI bin dir, or does not support
// the conflist's cniVersion. Either would fail every pod ADD on the node.
func (in *Installer) checkPlugin(c *netConf) error {
	plugin := filepath.Join(in.cfg.CNIBinDir, PluginType)
	st, err := os.Stat(plugin)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is missing or not executable (%v): chaining podscope without it would fail every pod on this node; install it (--bin=podscope) first", plugin, err)
	}
	if in.cfg.SupportedVersions == nil || c.cniVersion == "" {
		return nil
	}
	versions, err := in.cfg.SupportedVersions(plugin)
	if err != nil {
		return fmt.Errorf("asking %s which CNI versions it supports: %w", plugin, err)
	}
	if !slices.Contains(versions, c.cniVersion) {
		return fmt.Errorf("%s has cniVersion %q, which %s does not support (it supports %s): chaining it would fail every pod on this node",
			c.path, c.cniVersion, plugin, strings.Join(versions, ", "))
	}
	return nil
}

// Uninstall removes what Install added: the podscope entries from the
// configs it wrote (restoring them byte for byte when nobody changed them
// since), a converted .conf, and then the binaries it copied — in that
// order, so no config ever names a missing plugin.
func (in *Installer) Uninstall() error {
	st, unlock, err := in.lockState()
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	var kept []confRecord
	for i := len(st.Configs) - 1; i >= 0; i-- {
		if err := in.unchain(st.Configs[i]); err != nil {
			errs = append(errs, err)
			kept = append(kept, st.Configs[i])
		}
	}
	if len(st.Configs) == 0 {
		// No record (state lost, or chained by hand): entries of type
		// podscope are podscope's, take them out of the active config.
		if err := in.unchainActive(); err != nil {
			errs = append(errs, err)
		}
	}
	st.Configs = kept
	if len(errs) > 0 {
		// Keep the binaries: a config that still names podscope needs them.
		if err := in.saveState(st); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	for _, b := range in.binaryRecords(st) {
		data, err := os.ReadFile(b.Path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if sha256Hex(data) != b.SHA256 {
			in.cfg.Logf("leaving %s: it changed since podscope-install copied it", b.Path)
			continue
		}
		if err := removeFile(b.Path); err != nil {
			errs = append(errs, err)
			continue
		}
		in.cfg.Logf("removed %s", b.Path)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := removeFile(in.statePath()); err != nil {
		return err
	}
	// The lock file and the state dir are the installer's own too. Another
	// installer blocked on the lock gets it on the unlinked file and starts
	// from an empty record, which is what it would see a moment later.
	if err := removeFile(filepath.Join(in.cfg.StateDir, lockFileName)); err != nil {
		return err
	}
	if err := os.Remove(in.cfg.StateDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		in.cfg.Logf("keeping %s: %v", in.cfg.StateDir, err) // not empty: someone else's files
	}
	return nil
}

// binaryRecords is what to remove: the recorded binaries, and without a
// record the configured ones whose content is what would be installed.
func (in *Installer) binaryRecords(st *state) []binRecord {
	out := slices.Clone(st.Binaries)
	for _, name := range in.cfg.Binaries {
		dst := filepath.Join(in.cfg.CNIBinDir, name)
		if slices.ContainsFunc(out, func(b binRecord) bool { return b.Path == dst }) {
			continue
		}
		if data, err := readRegular(filepath.Join(in.cfg.SrcDir, name)); err == nil {
			out = append(out, binRecord{Path: dst, SHA256: sha256Hex(data)})
		}
	}
	return out
}

func (in *Installer) unchain(rec confRecord) error {
	cur, err := os.ReadFile(rec.Path)
	if errors.Is(err, os.ErrNotExist) {
		// Gone (its primary CNI replaced it): nothing of ours is left,
		// and resurrecting a converted original would be a guess.
		in.cfg.Logf("%s is gone; nothing to undo there", rec.Path)
		return nil
	}
	if err != nil {
		return err
	}
	if bytes.Equal(cur, rec.After) {
		if rec.Original != "" {
			if err := writeFileAtomic(rec.Original, rec.Before, rec.Mode); err != nil {
				return err
			}
			if err := removeFile(rec.Path); err != nil {
				return err
			}
			in.cfg.Logf("restored %s, removed %s", rec.Original, rec.Path)
			return nil
		}
		if err := replaceIfUnchanged(rec.Path, cur, rec.Before, rec.Mode); err != nil {
			return err
		}
		in.cfg.Logf("restored %s", rec.Path)
		return nil
	}
	// Rewritten since: remove the podscope entry from what is there now.
	return in.removeEntries(rec.Path, cur)
}

func (in *Installer) unchainActive() error {
	path, err := ActiveConfig(in.cfg.CNIConfDir)
	if errors.Is(err, ErrNoConfig) {
		return nil
	}
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return in.removeEntries(path, data)
}

func (in *Installer) removeEntries(path string, data []byte) error {
	c, err := parseNetConf(path, data)
	if err != nil {
		return err
	}
	if len(c.podscopeIndexes()) == 0 {
		return nil
	}
	out, err := c.withoutPodscope()
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := replaceIfUnchanged(path, data, out, st.Mode().Perm()); err != nil {
		return err
	}
	in.cfg.Logf("removed podscope from %s", path)
	return nil
}
