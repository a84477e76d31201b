package pins_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

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
