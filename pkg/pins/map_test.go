package pins_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/testenv"
)

// CreateMap pins a map once and finds it again; OpenMap never creates one
// and refuses a pin of another layout, naming the map.
func TestCreateAndOpenMap(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	spec := &ebpf.MapSpec{Name: "pstest_map", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4, Pinning: ebpf.PinByName}
	if _, err := root.OpenMap("test", spec, "test map"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenMap before CreateMap: %v, want ErrNotExist", err)
	}
	m, err := root.CreateMap("test", spec, "test map")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(1), uint64(42)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root.Pin("test", "pstest_map")); err != nil {
		t.Fatalf("no pin at Pin(owner, name): %v", err)
	}
	again, err := root.OpenMap("test", spec, "test map")
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var v uint64
	if err := again.Lookup(uint32(1), &v); err != nil || v != 42 {
		t.Fatalf("reopened map: %d, %v; want the value put through the first handle", v, err)
	}
	other := *spec
	other.ValueSize = 16
	_, err = root.OpenMap("test", &other, "test map")
	if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), "pstest_map") {
		t.Fatalf("OpenMap of another layout: %v, want ErrMapIncompatible naming the map", err)
	}
}

// EachEntry sees every entry once with its value, across many batches and
// a last partial one, and hands fn's error back as it is.
func TestEachEntry(t *testing.T) {
	testenv.RequireRoot(t)
	spec := pins.UserMapSpec("pstest_each", 4, 8, 1000)
	spec.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const n = 1000 // 15 batches of 64 and one of 40
	for k := uint32(0); k < n; k++ {
		if err := m.Put(k, uint64(k)*3+1); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint32]int{}
	err = pins.EachEntry(m, 64, func(k *uint32, v *uint64) error {
		seen[*k]++
		if *v != uint64(*k)*3+1 {
			t.Errorf("key %d: value %d, want %d", *k, *v, uint64(*k)*3+1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k := uint32(0); k < n; k++ {
		if seen[k] != 1 {
			t.Fatalf("key %d seen %d times, want once (%d keys seen)", k, seen[k], len(seen))
		}
	}
	stop := errors.New("stop")
	calls := 0
	if err := pins.EachEntry(m, 64, func(*uint32, *uint64) error { calls++; return stop }); err != stop || calls != 1 {
		t.Fatalf("fn failing: %v after %d calls, want stop after 1", err, calls)
	}
}
