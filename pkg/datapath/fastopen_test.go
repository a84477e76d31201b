package datapath

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/testenv"
)

// After the first Open, Open and OpenPinned take the pins of this object
// without parsing the ELF; a map pin that the pinned programs do not use
// (replaced behind their back) sends them back to the full path.
func TestOpenReusesOwnPinsWithoutSpec(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	first, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	wantIn, wantEg, err := first.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	first.Close()

	d := &Datapath{root: root, dir: root.Dir(Owner)}
	if !d.loadOwnPins() {
		t.Fatal("fast path refused a loaded root")
	}
	gotIn, gotEg, err := d.ProgramIDs()
	d.Close()
	if err != nil || gotIn != wantIn || gotEg != wantEg {
		t.Fatalf("fast path loaded programs %d/%d (%v), want the pinned %d/%d", gotIn, gotEg, err, wantIn, wantEg)
	}
	for _, open := range []func(*testing.T) *Datapath{
		func(t *testing.T) *Datapath { d, err := Open(root); must(t, err); return d },
		func(t *testing.T) *Datapath { d, err := OpenPinned(root); must(t, err); return d },
	} {
		d := open(t)
		if _, err := d.Counters(1); err != nil && !errors.Is(err, ErrUnknownPod) {
			t.Fatalf("reading through the fast path: %v", err)
		}
		d.Close()
	}

	// Replace the pod_counters pin by a map of the same layout that the
	// programs do not use: the fast path must refuse it.
	spec, err := loadTc()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps[tcMapPodCounters].Copy()
	ms.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pin := filepath.Join(root.Dir(Owner), tcMapPodCounters)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(pin); err != nil {
		t.Fatal(err)
	}
	d = &Datapath{root: root, dir: root.Dir(Owner)}
	if d.loadOwnPins() {
		d.Close()
		t.Fatal("fast path accepted a map its programs do not use")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
