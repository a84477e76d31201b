package pods

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/testenv"
)

func samplePod(id datapath.PodID) Pod {
	return Pod{
		ID: id, Namespace: "default", Name: strings.Repeat("n", 253), UID: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
		ContainerID: strings.Repeat("c", 128), Netns: "/var/run/netns/cni-1234", Interface: "eth0",
		HostInterface: "veth12345678", HostIfindex: 42,
		IPs:        []netip.Prefix{netip.MustParsePrefix("10.1.2.3/24"), netip.MustParsePrefix("fd00:1::3/64")},
		AttachedAt: time.Unix(1700000000, 123).UTC(), Mode: "tcx", Network: "k8s-pod-network",
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	p := samplePod(7)
	b, err := encode(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != valueSize {
		t.Fatalf("encoded %d bytes, want %d", len(b), valueSize)
	}
	got, err := decode(7, b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != p.Name || got.ContainerID != p.ContainerID || got.UID != p.UID || got.HostIfindex != 42 ||
		!got.AttachedAt.Equal(p.AttachedAt) || got.Mode != "tcx" || len(got.IPs) != 2 || got.Network != p.Network ||
		got.IPs[0] != p.IPs[0] || got.IPs[1] != p.IPs[1] {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, p)
	}
}

func TestEncodeRefusesWhatDoesNotFit(t *testing.T) {
	for name, mut := range map[string]func(*Pod){
		"namespace":    func(p *Pod) { p.Namespace = strings.Repeat("x", 65) },
		"container ID": func(p *Pod) { p.ContainerID = strings.Repeat("x", 129) },
		"IPs": func(p *Pod) {
			for i := 0; i < 5; i++ {
				p.IPs = append(p.IPs, netip.MustParsePrefix("10.0.0.1/32"))
			}
		},
	} {
		p := samplePod(1)
		mut(&p)
		if _, err := encode(p); err == nil || !strings.Contains(err.Error(), strings.Fields(name)[0]) {
			t.Errorf("%s: err = %v, want one naming it", name, err)
		}
	}
}

func TestDecodeRefusesOtherLayout(t *testing.T) {
	b, _ := encode(samplePod(1))
	b[0] = 9
	if _, err := decode(1, b); err == nil || !strings.Contains(err.Error(), "v9") {
		t.Fatalf("err = %v", err)
	}
}

func TestRegistryPinned(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	if _, err := OpenPinnedRegistry(root); !errors.Is(err, ErrNoRegistry) {
		t.Fatalf("OpenPinnedRegistry before any ADD: %v, want ErrNoRegistry", err)
	}
	r, err := OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := 0; i < 3; i++ {
		id, err := r.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		if id != datapath.PodID(i+1) {
			t.Fatalf("allocation %d: got %d", i, id)
		}
		p := samplePod(id)
		p.ContainerID = "ctr" + string(rune('a'+i))
		if err := r.Put(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Delete(2); err != nil {
		t.Fatal(err)
	}
	if id, _ := r.Allocate(); id != 2 {
		t.Fatalf("freed ID not reused: got %d", id)
	}
	// A second opener (podscopectl) sees the same pods through the pin.
	r2, err := OpenPinnedRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	all, err := r2.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].ID != 1 || all[1].ID != 3 {
		t.Fatalf("List = %+v", all)
	}
	p, ok, err := r2.ByContainerID("ctrc")
	if err != nil || !ok || p.ID != 3 {
		t.Fatalf("ByContainerID: %v %v %+v", ok, err, p)
	}
	if _, ok, _ := r2.ByContainerID("ctrb"); ok {
		t.Fatal("deleted pod still found")
	}
	if err := r.Delete(2); err != nil {
		t.Fatalf("deleting a missing pod: %v", err)
	}
}

// A registry pinned by another layout is refused with the map's name and
// what to do, by both openers.
func TestRegistryIncompatiblePin(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	dir, err := root.Ensure(Owner)
	if err != nil {
		t.Fatal(err)
	}
	old := spec()
	old.ValueSize = 512
	m, err := ebpf.NewMapWithOptions(old, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	for name, open := range map[string]func(pins.Root) (*Registry, error){"OpenRegistry": OpenRegistry, "OpenPinnedRegistry": OpenPinnedRegistry} {
		_, err := open(root)
		if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), MapName) || !strings.Contains(err.Error(), "podscopectl cleanup") {
			t.Errorf("%s on an old layout: %v", name, err)
		}
	}
}
