package pods

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/blobs"
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
	b, _, err := encode(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != valueSize {
		t.Fatalf("encoded %d bytes, want %d", len(b), valueSize)
	}
	got, err := decode(7, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != p.Name || got.ContainerID != p.ContainerID || got.UID != p.UID || got.HostIfindex != 42 ||
		!got.AttachedAt.Equal(p.AttachedAt) || got.Mode != "tcx" || len(got.IPs) != 2 || got.Network != p.Network ||
		got.IPs[0] != p.IPs[0] || got.IPs[1] != p.IPs[1] {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, p)
	}
}

// longPod has every identity field longer than its slot of the fixed
// record, and more IPs than fit: values the CRI and CNI allow.
func longPod(id datapath.PodID) Pod {
	p := samplePod(id)
	p.Namespace = strings.Repeat("s", 70)
	p.UID = "pstest-prefix-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0" // 50 bytes
	p.ContainerID = strings.Repeat("c", 200)
	p.Netns = "/var/run/netns/" + strings.Repeat("n", 300)
	p.Network = strings.Repeat("w", 100)
	for i := 0; i < 6; i++ {
		p.IPs = append(p.IPs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 32))
	}
	return p
}

func samePod(t *testing.T, got, want Pod) {
	t.Helper()
	if got.ID != want.ID || got.Namespace != want.Namespace || got.Name != want.Name || got.UID != want.UID ||
		got.ContainerID != want.ContainerID || got.Netns != want.Netns || got.Interface != want.Interface ||
		got.HostInterface != want.HostInterface || got.HostIfindex != want.HostIfindex || got.Network != want.Network ||
		got.Mode != want.Mode || !got.AttachedAt.Equal(want.AttachedAt) || !slices.Equal(got.IPs, want.IPs) {
		t.Fatalf("pod not kept exactly:\n got %+v\nwant %+v", got, want)
	}
}

// Values longer than the fixed slots go to a blob and come back exact; the
// record itself never holds a cut value.
func TestEncodeLongIdentity(t *testing.T) {
	p := longPod(3)
	rec, blob, err := encode(p)
	if err != nil {
		t.Fatal(err)
	}
	if blob == nil {
		t.Fatal("no blob for a pod that does not fit")
	}
	if bytes.Contains(rec, []byte(p.ContainerID[:128])) {
		t.Fatal("the record holds a cut container ID")
	}
	got, err := decode(3, rec, func() ([]byte, error) { return blob, nil })
	if err != nil {
		t.Fatal(err)
	}
	samePod(t, got, p)
	if _, err := decode(3, rec, func() ([]byte, error) { return nil, errors.New("gone") }); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("version 2 record without its blob: %v", err)
	}
	// A pod that fits stays version 1 with no blob (old pins read as before).
	if rec, blob, _ := encode(samplePod(1)); blob != nil || rec[0] != 1 {
		t.Fatalf("short pod: version %d, blob %v", rec[0], blob != nil)
	}
}

func TestDecodeRefusesOtherLayout(t *testing.T) {
	b, _, _ := encode(samplePod(1))
	b[0] = 9
	if _, err := decode(1, b, nil); err == nil || !strings.Contains(err.Error(), "v9") {
		t.Fatalf("err = %v", err)
	}
}

// Through the pins: a long pod is stored, found by its exact container ID
// (as DEL looks it up), listed by a second opener, replaced by a short pod
// under the same ID (blob removed), and deleted with nothing left.
func TestRegistryLongIdentity(t *testing.T) {
	r, root := openTestRegistry(t)
	long := longPod(5)
	if err := r.Put(long); err != nil {
		t.Fatal(err)
	}
	other := samplePod(6)
	other.ContainerID = "other"
	if err := r.Put(other); err != nil {
		t.Fatal(err)
	}
	r2, err := OpenPinnedRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	got, ok, err := r2.ByAttachment(long.ContainerID, "eth0")
	if err != nil || !ok {
		t.Fatalf("ByAttachment with the full container ID: %v %v", ok, err)
	}
	samePod(t, got, long)
	if _, ok, _ := r2.ByContainerID(long.ContainerID[:128]); ok {
		t.Fatal("a cut container ID matched")
	}
	all, err := r2.List()
	if err != nil || len(all) != 2 {
		t.Fatalf("List: %d pods, %v", len(all), err)
	}
	bs, err := blobs.OpenPinned(root)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	short := samplePod(5)
	if err := r.Put(short); err != nil {
		t.Fatal(err)
	}
	if n, _ := bs.Len(); n != 0 {
		t.Fatalf("%d blob chunks left after the pod became short", n)
	}
	if err := r.Put(long); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(5); err != nil {
		t.Fatal(err)
	}
	if n, _ := bs.Len(); n != 0 {
		t.Fatalf("%d blob chunks left after Delete", n)
	}
	// An orphan (a process died between record and blob removal) is pruned.
	if err := bs.Put(blobs.KindPod, 77, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if n, err := r.PruneBlobs(); n != 1 || err != nil {
		t.Fatalf("PruneBlobs: %d %v", n, err)
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

// The hand-written decoder reads every field where binary.Read (the
// layout's definition through the record struct) does.
func TestUnmarshalMatchesBinaryRead(t *testing.T) {
	b := make([]byte, valueSize)
	for i := range b {
		b[i] = byte(i*7 + i/256) // every byte distinct from its neighbours
	}
	var want, got record
	if err := binary.Read(bytes.NewReader(b), binary.LittleEndian, &want); err != nil {
		t.Fatal(err)
	}
	got.unmarshal(b)
	if got != want {
		t.Fatalf("unmarshal differs from binary.Read:\n got %+v\nwant %+v", got, want)
	}
	enc, _, err := encode(samplePod(3))
	if err != nil {
		t.Fatal(err)
	}
	want, got = record{}, record{}
	if err := binary.Read(bytes.NewReader(enc), binary.LittleEndian, &want); err != nil {
		t.Fatal(err)
	}
	got.unmarshal(enc)
	if got != want {
		t.Fatalf("unmarshal of an encoded pod differs from binary.Read")
	}
}

// Lookup (ADD's one read of the registry) finds the attachment by container
// ID and interface, the lowest PodID when several match, a long identity
// kept in the blob store, and otherwise the lowest free PodID: the same
// answers as List + FindAttachment + FreeID, checked against hand-built
// expectations over a registry with holes in its IDs and more pods than
// one batch read holds.
func TestLookup(t *testing.T) {
	r, err := OpenRegistry(testenv.BPFFSRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	put := func(id datapath.PodID, cid, ifname string) {
		t.Helper()
		p := samplePod(id)
		p.ContainerID, p.Interface = cid, ifname
		if err := r.Put(p); err != nil {
			t.Fatal(err)
		}
	}
	for id := datapath.PodID(1); id <= 600; id++ {
		if id == 17 || id == 300 {
			continue // holes: 17 is the lowest free ID
		}
		put(id, fmt.Sprintf("c%d", id), "eth0")
	}
	put(700, "dup", "eth1")
	put(650, "dup", "eth1") // lower ID, same attachment: found first
	put(651, "dup", "net1")
	long := longPod(800)
	if err := r.Put(long); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cid, ifname string
		want        datapath.PodID // 0: not found
	}{
		{"c5", "eth0", 5}, {"c599", "eth0", 599}, {"c5", "eth1", 0}, {"c5", "", 5},
		{"c17", "eth0", 0}, {"dup", "eth1", 650}, {"dup", "net1", 651}, {"dup", "", 650},
		{long.ContainerID, "eth0", 800}, {long.ContainerID[:128], "eth0", 0}, {"", "eth0", 0},
	} {
		p, found, free, err := r.Lookup(c.cid, c.ifname)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case c.want == 0 && (found || free != 17):
			t.Errorf("Lookup(%q, %q): found %v pod %d, free %d; want not found, free 17", c.cid, c.ifname, found, p.ID, free)
		case c.want != 0 && (!found || p.ID != c.want || p.ContainerID != c.cid):
			t.Errorf("Lookup(%q, %q): found %v pod %d (%q); want pod %d", c.cid, c.ifname, found, p.ID, p.ContainerID, c.want)
		}
		q, ok, err := r.ByAttachment(c.cid, c.ifname)
		if err != nil || ok != (c.want != 0) || (ok && q.ID != c.want) {
			t.Errorf("ByAttachment(%q, %q): %v pod %d %v; want pod %d", c.cid, c.ifname, ok, q.ID, err, c.want)
		}
	}
	if id, err := r.Allocate(); err != nil || id != 17 {
		t.Fatalf("Allocate: %d %v, want 17", id, err)
	}
	all, err := r.List()
	if err != nil || len(all) != 598+3+1 {
		t.Fatalf("List: %d pods, %v", len(all), err)
	}
}
