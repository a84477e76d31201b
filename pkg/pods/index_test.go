package pods

import (
	"fmt"
	"math/rand"
	"os"
	"testing"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/testenv"
)

// model is what the registry holds, kept by the test itself: the oracle
// for what ADD's Lookup must answer.
type model struct {
	byAttach map[[2]string]datapath.PodID
	used     map[datapath.PodID][2]string
}

func newModel() *model {
	return &model{byAttach: map[[2]string]datapath.PodID{}, used: map[datapath.PodID][2]string{}}
}

func (m *model) lowestFree() datapath.PodID {
	for id := datapath.PodID(1); ; id++ {
		if _, ok := m.used[id]; !ok {
			return id
		}
	}
}

// check asks Lookup for every attachment the model holds and for some it
// does not, and compares with the model.
func (m *model) check(t *testing.T, r *Registry, step string, absent ...[2]string) {
	t.Helper()
	for a, id := range m.byAttach {
		p, found, _, err := r.Lookup(a[0], a[1])
		if err != nil || !found || p.ID != id || p.ContainerID != a[0] || p.Interface != a[1] {
			t.Fatalf("%s: Lookup(%.20q, %q) = pod %d found %v err %v; want pod %d", step, a[0], a[1], p.ID, found, err, id)
		}
	}
	for _, a := range absent {
		if _, ok := m.byAttach[a]; ok {
			continue
		}
		p, found, free, err := r.Lookup(a[0], a[1])
		if err != nil || found || free != m.lowestFree() {
			t.Fatalf("%s: Lookup(%.20q, %q) = pod %d found %v free %d err %v; want not found, free %d",
				step, a[0], a[1], p.ID, found, free, err, m.lowestFree())
		}
	}
}

// openTestRegistry opens a registry under a bpffs root of the test's own,
// closed when the test ends.
func openTestRegistry(t *testing.T) (*Registry, pins.Root) {
	t.Helper()
	root := testenv.BPFFSRoot(t)
	r, err := OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, root
}

func indexedPod(id datapath.PodID, cid, ifname string, long bool) Pod {
	p := samplePod(id)
	if long {
		p = longPod(id)
	}
	p.ContainerID, p.Interface = cid, ifname
	return p
}

// ADD's lookups through the index agree with a model of the registry over
// a random run of ADDs and DELs as podscope makes them (lowest free ID,
// several interfaces per container, identities too long for the fixed
// record), and the index maps exist afterwards.
func TestIndexedLookupFollowsTheRegistry(t *testing.T) {
	r, root := openTestRegistry(t)
	m := newModel()
	rng := rand.New(rand.NewSource(12))
	attachment := func(i int) [2]string {
		cid := fmt.Sprintf("%064x", i/2)
		if i%7 == 0 {
			cid += fmt.Sprintf("-%0200d", i) // longer than the 128-byte slot
		}
		return [2]string{cid, []string{"eth0", "net1"}[i%2]}
	}
	for step := 0; step < 600; step++ {
		a := attachment(rng.Intn(300))
		if id, ok := m.byAttach[a]; ok && rng.Intn(3) == 0 {
			if err := r.Delete(id); err != nil {
				t.Fatal(err)
			}
			delete(m.byAttach, a)
			delete(m.used, id)
		} else if !ok {
			p, found, free, err := r.Lookup(a[0], a[1])
			if err != nil || found || free != m.lowestFree() {
				t.Fatalf("step %d: ADD of a new attachment: found %v (pod %d) free %d err %v; want free %d",
					step, found, p.ID, free, err, m.lowestFree())
			}
			if err := r.Put(indexedPod(free, a[0], a[1], len(a[0]) > 128)); err != nil {
				t.Fatal(err)
			}
			m.byAttach[a] = free
			m.used[free] = a
		}
		if step%50 == 0 {
			m.check(t, r, fmt.Sprintf("step %d", step), attachment(1000), attachment(1001))
		}
	}
	m.check(t, r, "end", attachment(1000), attachment(1001))
	for _, name := range []string{IndexMapName, IDsMapName} {
		if _, err := os.Stat(root.Pin(Owner, name)); err != nil {
			t.Errorf("index map %s not pinned: %v", name, err)
		}
	}
}

// A registry written by a podscope without the index (a node upgraded
// with pods running) gets its index built by the first ADD, which then
// finds the pods and allocates around them.
func TestIndexBuiltForAnOlderRegistry(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	r, err := OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	m := newModel()
	for id := datapath.PodID(1); id <= 40; id++ {
		if id == 23 {
			continue
		}
		a := [2]string{fmt.Sprintf("old-%d", id), "eth0"}
		if err := r.Put(indexedPod(id, a[0], a[1], false)); err != nil {
			t.Fatal(err)
		}
		m.byAttach[a], m.used[id] = id, a
	}
	r.Close()
	if err := removeIndex(root); err != nil {
		t.Fatal(err)
	}
	r, err = OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m.check(t, r, "after upgrade", [2]string{"new", "eth0"})
	if m.lowestFree() != 23 {
		t.Fatalf("model: lowest free %d", m.lowestFree())
	}
}

// What the index's checks must catch: a pod a podscope without the index
// added or removed behind its back, an index entry whose registry record
// was never written (a kill between the two writes), and a bitmap left
// incomplete.
func TestIndexCheckedAgainstTheRegistry(t *testing.T) {
	r, _ := openTestRegistry(t)
	m := newModel()
	add := func(id datapath.PodID, cid string) {
		t.Helper()
		if err := r.Put(indexedPod(id, cid, "eth0", false)); err != nil {
			t.Fatal(err)
		}
		m.byAttach[[2]string{cid, "eth0"}], m.used[id] = id, [2]string{cid, "eth0"}
	}
	for id := datapath.PodID(1); id <= 5; id++ {
		add(id, fmt.Sprintf("c%d", id))
	}
	// An older podscope adds pod 6 and removes pod 2, writing only the
	// registry map.
	v, _, err := encode(indexedPod(6, "behind", "eth0", false))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.m.Put(uint32(6), v); err != nil {
		t.Fatal(err)
	}
	// Until the next reap, ADD does not find pod 6 by its attachment (the
	// one case the index cannot check), but never hands out its ID.
	m.used[6] = [2]string{"behind", "eth0"}
	if _, _, free, err := r.Lookup("next", "eth0"); err != nil || free != 7 {
		t.Fatalf("free ID with pod 6 unknown to the bitmap: %d %v, want 7", free, err)
	}
	if err := r.m.Delete(uint32(2)); err != nil {
		t.Fatal(err)
	}
	delete(m.byAttach, [2]string{"c2", "eth0"})
	delete(m.used, 2)
	m.check(t, r, "removed behind the index", [2]string{"c2", "eth0"})
	add(2, "c2-again")
	// The reaper's Reconcile indexes pod 6.
	all, err := r.List()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Reconcile(all); err != nil {
		t.Fatal(err)
	}
	m.byAttach[[2]string{"behind", "eth0"}] = 6
	var got uint32
	if err := r.idx.Lookup(attachmentKey("behind", "eth0"), &got); err != nil || got != 6 {
		t.Fatalf("index after Reconcile: pod %d %v, want 6", got, err)
	}
	m.check(t, r, "after Reconcile")

	// ADD killed between its index entry and its registry record.
	if err := r.indexPut(indexedPod(7, "killed", "eth0", false)); err != nil {
		t.Fatal(err)
	}
	m.check(t, r, "index entry without its record", [2]string{"killed", "eth0"})

	// A bitmap left zeroed (incomplete) is rebuilt, not trusted.
	if err := r.ids.Put(uint32(0), &idsValue{}); err != nil {
		t.Fatal(err)
	}
	m.check(t, r, "incomplete bitmap", [2]string{"fresh", "eth0"})
	var bm idsValue
	if err := r.ids.Lookup(uint32(0), &bm); err != nil || !bm.complete() || !bm.used(6) || bm.used(7) {
		t.Fatalf("bitmap after the rebuild: complete %v, 6 used %v, 7 used %v (%v)", bm.complete(), bm.used(6), bm.used(7), err)
	}
}
