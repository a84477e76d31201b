package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/flock"
	"github.com/podscope/podscope/pkg/pins"
)

// Program pins live next to the maps (which are pinned by their own names)
// under root.Dir(Owner). A program pin's name carries a hash of the object
// that holds it, prog_host_ingress_<hash>: an upgraded podscope with the same
// map layout finds no pin of its own, loads its programs against the pinned
// maps and moves every attachment over (link update / filter replace), so
// counters, flows and policy survive the upgrade.
const (
	progPinIngress = "prog_host_ingress"
	progPinEgress  = "prog_host_egress"
	linksDir       = "links"
)

// objectHash identifies the embedded BPF object.
var objectHash = func() string {
	sum := sha256.Sum256(_TcBytes)
	return hex.EncodeToString(sum[:6])
}()

func progPin(h hook) string {
	if h == hookHostIngress {
		return progPinIngress + "_" + objectHash
	}
	return progPinEgress + "_" + objectHash
}

// otherProgPins lists program pins of other objects (older podscopes).
func otherProgPins(root pins.Root) []string {
	var out []string
	for _, base := range []string{progPinIngress, progPinEgress} {
		matches, _ := filepath.Glob(root.Pin(Owner, base+"_*"))
		for _, m := range matches {
			if filepath.Base(m) != progPin(hookHostIngress) && filepath.Base(m) != progPin(hookHostEgress) {
				out = append(out, m)
			}
		}
	}
	return out
}

// Open loads the datapath of a node, or reuses it: the first Open on a root
// loads the programs (paying the verifier once), pins them and their maps;
// later Opens, in this or any process, load the pins. Incompatible pinned
// maps (another layout) are refused with an error naming the map.
func Open(root pins.Root) (*Datapath, error) {
	dir, err := root.Ensure(Owner)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root.Pin(Owner, linksDir), 0o700); err != nil {
		return nil, err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	d, spec, err := start(root, dir)
	if err != nil || spec == nil {
		return d, err
	}
	if testSpecHook != nil {
		testSpecHook(spec)
	}
	if err := checkLegacyPolicy(root); err != nil {
		return nil, err
	}
	carried, err := growDropReasons(root, spec)
	if err != nil {
		return nil, err
	}
	if _, err := d.openPins(pinCheck{spec: spec, mapsOnly: true}); err != nil {
		return nil, err
	}
	if allPinned(spec, root) {
		if err := d.loadPinned(spec, false); err == nil {
			return d, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	// Cold path, or a partial set of pins: load the programs against the
	// pinned maps (PinByName reuses those that exist and pins the rest), then
	// pin the programs, replacing any program pin that referred to old maps.
	if err := spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}); err != nil {
		return nil, explainLoad(err, root)
	}
	for reason, per := range carried {
		_ = d.objs.DropReasons.Put(reason, per) // node-wide counts only: best effort
	}
	for _, h := range hooks {
		if err := replacePin(d.program(h), root.Pin(Owner, progPin(h))); err != nil {
			d.Close()
			return nil, err
		}
	}
	// Attachments made with other programs (an older podscope's, or ours
	// loaded against maps that have since been re-created) move to the new
	// ones; then the older programs' pins go. An attachment that cannot be
	// moved keeps its old program (held by its link) until re-attached.
	if err := d.upgradeAttachments(); err != nil {
		d.Close()
		return nil, fmt.Errorf("moving attachments to the new programs: %w", err)
	}
	for _, p := range otherProgPins(root) {
		_ = os.Remove(p)
	}
	return d, nil
}

// OpenPinned opens what an Open pinned, for readers (podscopectl, metrics);
// it never loads or creates anything and fails with ErrNotLoaded when the
// datapath was never loaded under root.
func OpenPinned(root pins.Root) (*Datapath, error) {
	dir := root.Dir(Owner)
	if err := pins.CheckBPFFS(root.Path); err != nil {
		return nil, err
	}
	d, spec, err := start(root, dir)
	if err != nil || spec == nil {
		return d, err
	}
	if _, err := d.openPins(pinCheck{spec: spec, mapsOnly: true}); err != nil {
		return nil, err
	}
	if err := d.loadPinned(spec, true); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w under %s (no pod attached on this node yet?): %v", ErrNotLoaded, dir, err)
		}
		return nil, err
	}
	return d, nil
}

// start is where Open and OpenPinned begin: the fast path over this
// object's own pins (a Datapath and no spec), else the object's spec for
// the full path (no Datapath holding anything yet).
func start(root pins.Root, dir string) (*Datapath, *ebpf.CollectionSpec, error) {
	d := &Datapath{root: root, dir: dir}
	if d.loadOwnPins() {
		return d, nil, nil
	}
	spec, err := loadTc()
	if err != nil {
		return nil, nil, err
	}
	return d, spec, nil
}

// testSpecHook lets a test shrink a map (e.g. the policy trie, to fill it)
// before the first Open of its own root. Nil outside tests.
var testSpecHook func(*ebpf.CollectionSpec)

// findProgPin is this object's program pin, or another version's if only
// that exists (a reader of another version still reads the maps).
func findProgPin(root pins.Root, h hook) string {
	own := root.Pin(Owner, progPin(h))
	if _, err := os.Stat(own); err == nil {
		return own
	}
	base := progPinIngress
	if h == hookHostEgress {
		base = progPinEgress
	}
	if m, _ := filepath.Glob(root.Pin(Owner, base+"_*")); len(m) > 0 {
		return m[0]
	}
	return own
}

// loadPinned loads every pin, checked against spec; readOnly accepts
// another version's programs.
func (d *Datapath) loadPinned(spec *ebpf.CollectionSpec, readOnly bool) error {
	objs, err := d.openPins(pinCheck{spec: spec, anyProgs: readOnly})
	if err != nil {
		return err
	}
	d.objs = objs
	return nil
}

func allPinned(spec *ebpf.CollectionSpec, root pins.Root) bool {
	names := []string{progPin(hookHostIngress), progPin(hookHostEgress)}
	for name := range spec.Maps {
		names = append(names, name)
	}
	for _, n := range names {
		if _, err := os.Stat(root.Pin(Owner, n)); err != nil {
			return false
		}
	}
	return true
}

func explainLoad(err error, root pins.Root) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("loading TC programs: %w (verifier log: %+v)", err, ve)
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return pins.Explain(err, root, "(see error)")
	}
	return fmt.Errorf("loading TC programs: %w", err)
}

// replacePin pins p at path, atomically replacing what was there: pin under
// a temporary name, then rename over the old pin (bpffs supports rename).
func replacePin(p *ebpf.Program, path string) error {
	tmp := path + "_new" // bpffs refuses names with a dot
	_ = os.Remove(tmp)
	if err := p.Pin(tmp); err != nil {
		return fmt.Errorf("pinning program at %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = p.Unpin()
		return fmt.Errorf("pinning program at %s: %w", path, err)
	}
	return nil
}

// lockDir takes an exclusive flock on the datapath directory: loading,
// attaching and detaching from parallel CNI invocations are serialised per
// node, so two ADDs never both load programs or race on one pod's pins.
func lockDir(dir string) (func(), error) { return flock.Dir(dir) }

// growDropReasons makes room for drop reasons added since the pinned
// drop_reasons map was created (DROP_NETPOL): a smaller pinned map is read
// and unpinned, so the load creates it at its new size, and its counts are
// returned to be written into the new one. The programs still attached keep
// the old map until they are moved to the new programs; drops they count
// in between, and the counts if the process dies before writing them back,
// are lost (node-wide totals; every pod's own drop counters are kept).
func growDropReasons(root pins.Root, spec *ebpf.CollectionSpec) (map[uint32][]tcDropCounts, error) {
	path := root.Pin(Owner, tcMapDropReasons)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pinned map %s: %w", path, err)
	}
	defer m.Close()
	want := spec.Maps[tcMapDropReasons]
	if m.MaxEntries() >= want.MaxEntries || m.Type() != want.Type || m.KeySize() != want.KeySize || m.ValueSize() != want.ValueSize {
		return nil, nil // current, or another layout the load check explains
	}
	out := map[uint32][]tcDropCounts{}
	for k := uint32(0); k < m.MaxEntries(); k++ {
		var per []tcDropCounts
		if err := m.Lookup(k, &per); err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		out[k] = per
	}
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("replacing %s with a larger map: %w", path, err)
	}
	return out, nil
}
