package metrics

import (
	"reflect"
	"testing"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

type fakeMaps struct {
	armed map[uint64]audit.Identity
	lost  map[uint64]uint64
}

func (f *fakeMaps) Mode() audit.Mode                          { return audit.ModeTracepoint }
func (f *fakeMaps) Lost() (map[uint64]uint64, error)          { return f.lost, nil }
func (f *fakeMaps) Armed() (map[uint64]audit.Identity, error) { return f.armed, nil }

func TestAuditSource(t *testing.T) {
	nginx := audit.Identity{Identity: pods.Identity{Namespace: "default", Pod: "web", PodUID: "u"}, Container: "nginx", ContainerID: "c1"}
	side := audit.Identity{Identity: pods.Identity{Namespace: "default", Pod: "web", PodUID: "u"}, Container: "side", ContainerID: "c2"}
	f := &fakeMaps{armed: map[uint64]audit.Identity{10: nginx, 11: side}, lost: map[uint64]uint64{10: 4}}
	var available AuditMaps // nil until the auditor "loads"
	src := &Audit{Maps: func() AuditMaps { return available }, Root: pins.New(t.TempDir()), Writes: &WriteCounter{}}

	// Unavailable: no mode pinned, nothing armed, no losses; no errors.
	if m, err := src.Mode(); m != "" || err != nil {
		t.Errorf("Mode before load = %q, %v", m, err)
	}
	if n, err := src.Armed(); n != 0 || err != nil {
		t.Errorf("Armed before load = %d, %v", n, err)
	}

	available = f
	if m, _ := src.Mode(); m != "tracepoint" {
		t.Errorf("Mode = %q", m)
	}
	if n, _ := src.Armed(); n != 2 {
		t.Errorf("Armed = %d, want 2", n)
	}
	// side is disarmed, its losses stay; cgroup 99 was never seen armed,
	// key 0 collects overflow: both go under empty labels.
	delete(f.armed, 11)
	f.lost = map[uint64]uint64{10: 4, 11: 6, 99: 1, 0: 2}
	if _, err := src.Armed(); err != nil {
		t.Fatal(err)
	}
	got, err := src.Lost()
	if err != nil {
		t.Fatal(err)
	}
	want := map[Container]uint64{ContainerOf(nginx): 4, ContainerOf(side): 6, {}: 3}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Lost = %v, want %v", got, want)
	}

	// A container armed (Remember at arm time) and gone again without
	// losses is forgotten at the next scrape; names with losses stay.
	src.Remember(12, Container{Identity: pods.Identity{Namespace: "default", Pod: "short"}, Container: "job"})
	if _, err := src.Armed(); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Lost(); err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	names := len(src.names)
	_, kept := src.names[11]
	src.mu.Unlock()
	if names != 2 || !kept {
		t.Errorf("after pruning %d names (side kept: %v), want nginx (armed) and side (losses)", names, kept)
	}
}
