package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/testenv"
)

// node is a throw-away network namespace standing in for a node: every veth
// a test makes lives and dies there.
type node struct {
	t  *testing.T
	ns ns.NetNS
}

func newNode(t *testing.T) *node {
	t.Helper()
	testenv.RequireRoot(t)
	n, err := ns.TempNetNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &node{t, n}
}

// openTest opens a datapath under a bpffs root of the test's own, closed
// when the test ends.
func openTest(t testing.TB) *Datapath {
	t.Helper()
	testenv.RequireRoot(t)
	d, err := Open(testenv.BPFFSRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func (n *node) do(f func() error) {
	n.t.Helper()
	if err := n.ns.Do(func(ns.NetNS) error { return f() }); err != nil {
		n.t.Fatal(err)
	}
}

// veth makes a veth pair in the node and returns the host side's ifindex;
// index > 0 asks the kernel for that ifindex (to test reuse).
func (n *node) veth(index int) (string, int) {
	n.t.Helper()
	name := testenv.Name(n.t)
	var idx int
	n.do(func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "h", Index: index}, PeerName: name + "p"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		l, err := netlink.LinkByName(name + "h")
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return netlink.LinkSetUp(l)
	})
	return name + "h", idx
}

func (n *node) delLink(name string) {
	n.t.Helper()
	n.do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
}

// kernelView lists what the kernel has on a device's hooks: TCX programs
// (BPF_PROG_QUERY, where the kernel has TCX) and cls_bpf filters (netlink),
// whoever made them.
func (n *node) kernelView(ifindex int) (tcx []ebpf.ProgramID, filters []*netlink.BpfFilter, clsact bool) {
	n.t.Helper()
	tcxHooks := []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress}
	if !kernelHasTCX(n.t) {
		tcxHooks = nil
	}
	n.do(func() error {
		for _, at := range tcxHooks {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				tcx = append(tcx, p.ID)
			}
		}
		l, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Type() == "clsact" {
				clsact = true
			}
		}
		if !clsact {
			return nil
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				return err
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok {
					filters = append(filters, bf)
				}
			}
		}
		return nil
	})
	return tcx, filters, clsact
}

func (n *node) attach(d *Datapath, pod PodID, ifindex int, mode Mode) Mode {
	n.t.Helper()
	var got Mode
	n.do(func() error {
		var err error
		got, err = d.Attach(pod, ifindex, mode)
		return err
	})
	return got
}

func (n *node) check(d *Datapath, pod PodID, ifindex int) error {
	var err error
	n.do(func() error { err = d.Check(pod, ifindex); return nil })
	return err
}

func (n *node) detach(d *Datapath, pod PodID) {
	n.t.Helper()
	n.do(func() error { return d.Detach(pod) })
}

func podAttachments(t *testing.T, d *Datapath, pod PodID) []Attachment {
	t.Helper()
	all, err := d.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	var out []Attachment
	for _, a := range all {
		if a.Pod == pod {
			out = append(out, a)
		}
	}
	return out
}

func TestAttachDetach(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			n := newNode(t)
			d, err := Open(testenv.BPFFSRoot(t))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ingID, egID, err := d.ProgramIDs()
			if err != nil {
				t.Fatal(err)
			}
			_, idx := n.veth(0)
			if mode == ModeTCX && n.tcxRefused(d, 11, idx) {
				return
			}

			if got := n.attach(d, 11, idx, mode); got != mode {
				t.Fatalf("Attach returned mode %q, want %q", got, mode)
			}
			if err := n.check(d, 11, idx); err != nil {
				t.Fatalf("Check after Attach: %v", err)
			}
			atts := podAttachments(t, d, 11)
			if len(atts) != 2 || atts[0].Ifindex != idx || atts[0].Mode != mode || atts[0].Hook != "ingress" || atts[1].Hook != "egress" {
				t.Fatalf("Attachments = %+v", atts)
			}
			tcx, filters, _ := n.kernelView(idx)
			if mode == ModeTCX {
				if len(tcx) != 2 || tcx[0] != ingID || tcx[1] != egID || len(filters) != 0 {
					t.Fatalf("kernel has tcx %v filters %d, want our programs %d/%d on tcx only", tcx, len(filters), ingID, egID)
				}
				for _, a := range atts {
					if _, err := os.Stat(a.Pin); err != nil {
						t.Fatalf("link pin: %v", err)
					}
				}
			} else {
				if len(tcx) != 0 || len(filters) != 2 || filters[0].Id != int(ingID) || filters[1].Id != int(egID) || !filters[0].DirectAction {
					t.Fatalf("kernel has tcx %v filters %+v, want two direct-action cls_bpf filters", tcx, filters)
				}
			}

			// Idempotent.
			n.attach(d, 11, idx, mode)
			if tcx2, filters2, _ := n.kernelView(idx); len(tcx2) != len(tcx) || len(filters2) != len(filters) {
				t.Fatalf("second Attach changed the kernel: tcx %v filters %d", tcx2, len(filters2))
			}

			// A second pod keeps the first.
			_, idx2 := n.veth(0)
			n.attach(d, 12, idx2, mode)
			if err := n.check(d, 11, idx); err != nil {
				t.Fatalf("first pod after attaching a second: %v", err)
			}
			if err := n.check(d, 12, idx2); err != nil {
				t.Fatal(err)
			}

			n.detach(d, 11)
			if err := n.check(d, 11, idx); err == nil {
				t.Fatal("Check passed after Detach")
			}
			tcx, filters, clsact := n.kernelView(idx)
			if len(tcx) != 0 || len(filters) != 0 || clsact {
				t.Fatalf("after Detach the device still has tcx %v filters %d clsact %v", tcx, len(filters), clsact)
			}
			if atts := podAttachments(t, d, 11); len(atts) != 0 {
				t.Fatalf("after Detach: attachments %+v", atts)
			}
			var pi tcPodIface
			if err := d.objs.PodIfaces.Lookup(uint32(idx), &pi); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("ifindex entry survived Detach: %v %+v", err, pi)
			}
			if ifs, err := d.PodIfindexes(11); err != nil || len(ifs) != 0 {
				t.Fatalf("PodIfindexes after Detach: %v %v", ifs, err)
			}
			if ifs, err := d.PodIfindexes(12); err != nil || len(ifs) != 1 || ifs[0] != idx2 {
				t.Fatalf("PodIfindexes of the second pod: %v %v, want [%d]", ifs, err, idx2)
			}
			entries, _ := os.ReadDir(filepath.Join(d.Dir(), linksDir))
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), "11_") {
					t.Fatalf("link pin %s survived Detach", e.Name())
				}
			}
			n.detach(d, 11) // idempotent
			if err := n.check(d, 12, idx2); err != nil {
				t.Fatalf("second pod after detaching the first: %v", err)
			}
		})
	}
}

func TestAttachAfterVethGone(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			n := newNode(t)
			d, err := Open(testenv.BPFFSRoot(t))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()

			// Detach after the veth is gone.
			name, idx := n.veth(0)
			if mode == ModeTCX && n.tcxRefused(d, 21, idx) {
				return
			}
			n.attach(d, 21, idx, mode)
			n.delLink(name)
			n.detach(d, 21)
			if atts := podAttachments(t, d, 21); len(atts) != 0 {
				t.Fatalf("attachments after Detach of a deleted veth: %+v", atts)
			}

			// The veth dies without a Detach; the kernel hands its ifindex
			// to a new veth of another pod: the stale pins and records do
			// not block, and the old pod's Detach does not touch the new.
			name, idx = n.veth(0)
			n.attach(d, 22, idx, mode)
			n.delLink(name)
			_, idx2 := n.veth(idx)
			if idx2 != idx {
				t.Fatalf("could not reuse ifindex %d (got %d)", idx, idx2)
			}
			n.attach(d, 23, idx, mode)
			if err := n.check(d, 23, idx); err != nil {
				t.Fatalf("pod on the reused ifindex: %v", err)
			}
			if atts := podAttachments(t, d, 22); len(atts) != 0 {
				t.Fatalf("stale attachments of the deleted veth survive: %+v", atts)
			}
			n.detach(d, 22)
			if err := n.check(d, 23, idx); err != nil {
				t.Fatalf("Detach of the old pod broke the new one: %v", err)
			}

			// Same pod id re-attached to a new veth (its old one deleted
			// without Detach): a stale pin of this pod does not block.
			name, idx = n.veth(0)
			n.attach(d, 24, idx, mode)
			n.delLink(name)
			_, idx3 := n.veth(0)
			n.attach(d, 24, idx3, mode)
			if err := n.check(d, 24, idx3); err != nil {
				t.Fatalf("re-attach after the veth was deleted: %v", err)
			}
		})
	}
}

func TestAttachIsAllOrNothing(t *testing.T) {
	n := newNode(t)
	d := openTest(t)
	_, idx := n.veth(0)
	if n.tcxRefused(d, 31, idx) {
		return // the refusal left nothing either
	}
	// Block the second hook's pin: the first hook's link must be undone.
	blocker := d.linkPin(31, hookHostEgress)
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	// bpffs holds no regular files: a pinned map makes the directory
	// non-empty, so the stale-pin removal and the pin both fail.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(blocker, "x")); err != nil {
		t.Fatal(err)
	}
	n.do(func() error {
		if _, err := d.Attach(31, idx, ModeTCX); err == nil {
			return errors.New("Attach succeeded with its pin path blocked")
		}
		return nil
	})
	n.assertNothingOf(d, 31, idx, "a failed Attach")
}

func TestOpenReusesPinnedPrograms(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	d1, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	in1, eg1, err := d1.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	d1.Close()
	d2, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	in2, eg2, err := d2.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	if in1 != in2 || eg1 != eg2 {
		t.Fatalf("re-Open loaded new programs: %d/%d then %d/%d", in1, eg1, in2, eg2)
	}
	d3, err := OpenPinned(root)
	if err != nil {
		t.Fatal(err)
	}
	in3, _, _ := d3.ProgramIDs()
	d3.Close()
	if in3 != in1 {
		t.Fatalf("OpenPinned sees program %d, want %d", in3, in1)
	}
	// Programs unpinned, maps kept: programs are reloaded against the
	// pinned maps (same map IDs).
	m1, _ := d2.objs.Flows.Info()
	id1, _ := m1.ID()
	for _, p := range []string{progPin(hookHostIngress), progPin(hookHostEgress)} {
		if err := os.Remove(filepath.Join(d2.Dir(), p)); err != nil {
			t.Fatal(err)
		}
	}
	d4, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d4.Close()
	m4, _ := d4.objs.Flows.Info()
	id4, _ := m4.ID()
	if id1 != id4 {
		t.Fatalf("reloading the programs replaced the pinned flows map (%d -> %d)", id1, id4)
	}
	if _, err := OpenPinned(testenv.BPFFSRoot(t)); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("OpenPinned of an empty root: %v, want ErrNotLoaded", err)
	}
}

func TestIncompatiblePinnedMap(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	dir, err := root.Ensure(Owner)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "flows", Type: ebpf.LRUHash, KeySize: 44, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, "flows")); err != nil {
		t.Fatal(err)
	}
	for name, open := range map[string]func() error{
		"Open": func() error {
			d, err := Open(root)
			if err == nil {
				d.Close()
			}
			return err
		},
		"OpenPinned": func() error {
			d, err := OpenPinned(root)
			if err == nil {
				d.Close()
			}
			return err
		},
	} {
		err := open()
		if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), `"flows"`) || !strings.Contains(err.Error(), "podscopectl cleanup") {
			t.Fatalf("%s with an incompatible pinned flows map: %v", name, err)
		}
	}
}

func TestCleanup(t *testing.T) {
	n := newNode(t)
	root := testenv.BPFFSRoot(t)
	d, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	_, idx := n.veth(0)
	_, idx2 := n.veth(0)
	// One pod in each mode the kernel has (tc only before 6.6).
	n.attach(d, 41, idx, bestMode(t))
	n.attach(d, 42, idx2, ModeTC)
	d.Close()
	n.do(func() error { return Cleanup(root) })
	for _, i := range []int{idx, idx2} {
		if tcx, filters, clsact := n.kernelView(i); len(tcx)+len(filters) != 0 || clsact {
			t.Fatalf("after Cleanup ifindex %d has tcx %v filters %d clsact %v", i, tcx, len(filters), clsact)
		}
	}
	if _, err := os.Stat(root.Dir(Owner)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pins left after Cleanup: %v", err)
	}
	n.do(func() error { return Cleanup(root) }) // idempotent
}

// An upgraded podscope (another object, same map layout) loads its own
// programs against the pinned maps and moves the running attachments to
// them, keeping counters.
func TestUpgradeMovesAttachments(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			n := newNode(t)
			root := testenv.BPFFSRoot(t)
			d, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			_, idx := n.veth(0)
			if mode == ModeTCX && n.tcxRefused(d, 51, idx) {
				d.Close()
				return
			}
			n.attach(d, 51, idx, mode)
			if err := d.objs.PodCounters.Update(uint32(51), make([]tcTrafficCounters, ebpf.MustPossibleCPU()), ebpf.UpdateExist); err != nil {
				t.Fatal(err)
			}
			oldIn, oldEg, _ := d.ProgramIDs()
			d.Close()
			// Pretend the pinned programs are an older build's.
			for _, h := range hooks {
				base := progPinIngress
				if h == hookHostEgress {
					base = progPinEgress
				}
				if err := os.Rename(filepath.Join(d.Dir(), progPin(h)), filepath.Join(d.Dir(), base+"_000000000000")); err != nil {
					t.Fatal(err)
				}
			}
			// A reader of another version still opens the pins.
			r, err := OpenPinned(root)
			if err != nil {
				t.Fatalf("OpenPinned with another build's programs: %v", err)
			}
			r.Close()

			var d2 *Datapath
			n.do(func() error { d2, err = Open(root); return err })
			defer d2.Close()
			newIn, newEg, _ := d2.ProgramIDs()
			if newIn == oldIn || newEg == oldEg {
				t.Fatal("Open reused another build's programs")
			}
			if err := n.check(d2, 51, idx); err != nil {
				t.Fatalf("attachment not moved to the new programs: %v", err)
			}
			tcx, filters, _ := n.kernelView(idx)
			if len(tcx)+len(filters) != 2 {
				t.Fatalf("after upgrade: tcx %v filters %d, want exactly 2 attachments", tcx, len(filters))
			}
			if old := otherProgPins(d2.root); len(old) != 0 {
				t.Fatalf("old program pins left: %v", old)
			}
		})
	}
}

// Parallel CNI ADDs: Opens racing on a fresh root load the programs once,
// and parallel Attaches of different pods all land.
func TestParallelOpenAndAttach(t *testing.T) {
	const pods = 12
	n := newNode(t)
	root := testenv.BPFFSRoot(t)
	idx := make([]int, pods)
	for i := range idx {
		_, idx[i] = n.veth(0)
	}
	dps := make([]*Datapath, pods)
	errs := make(chan error, pods)
	best := bestMode(t) // half the pods in it, half in tc
	for i := 0; i < pods; i++ {
		go func(i int) {
			err := n.ns.Do(func(ns.NetNS) error {
				d, err := Open(root)
				if err != nil {
					return err
				}
				dps[i] = d
				mode := best
				if i%2 == 1 {
					mode = ModeTC
				}
				_, err = d.Attach(PodID(100+i), idx[i], mode)
				return err
			})
			errs <- err
		}(i)
	}
	for i := 0; i < pods; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	in0, eg0, _ := dps[0].ProgramIDs()
	for i, d := range dps {
		defer d.Close()
		in, eg, _ := d.ProgramIDs()
		if in != in0 || eg != eg0 {
			t.Fatalf("Open %d loaded its own programs (%d/%d, first %d/%d)", i, in, eg, in0, eg0)
		}
		if err := n.check(d, PodID(100+i), idx[i]); err != nil {
			t.Fatalf("pod %d: %v", 100+i, err)
		}
	}
	atts, err := dps[0].Attachments()
	if err != nil || len(atts) != 2*pods {
		t.Fatalf("%d attachments, want %d: %v", len(atts), 2*pods, err)
	}
}

func TestAttachBadInput(t *testing.T) {
	n := newNode(t)
	d, err := Open(testenv.BPFFSRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	n.do(func() error {
		if _, err := d.Attach(0, 1, ModeTC); err == nil {
			return errors.New("Attach of pod 0 succeeded")
		}
		if _, err := d.Attach(5, 1, "xdp"); err == nil || !strings.Contains(err.Error(), `"xdp"`) {
			return fmt.Errorf("Attach with an unknown mode: %v", err)
		}
		for _, mode := range []Mode{ModeTCX, ModeTC} {
			if _, err := d.Attach(5, 999999, mode); err == nil {
				return fmt.Errorf("%s Attach to a missing ifindex succeeded", mode)
			}
		}
		return nil
	})
	if atts := podAttachments(t, d, 5); len(atts) != 0 {
		t.Fatalf("failed Attaches left %+v", atts)
	}
	if ifs, _ := d.PodIfindexes(5); len(ifs) != 0 {
		t.Fatalf("failed Attaches left ifindexes %v", ifs)
	}
}

// A device whose ingress side holds an "ingress" qdisc (the bandwidth
// plugin's egress shaping puts one there, with a redirect to an ifb) has no
// place for clsact: the kernel answers the clsact add with EEXIST and files
// every filter, the egress one too, in that qdisc's single block. tc mode
// refuses such a device, naming the qdisc, and leaves nothing; tcx attaches.
func TestTCModeRefusesForeignIngressQdisc(t *testing.T) {
	n := newNode(t)
	d := openTest(t)
	_, idx := n.veth(0)
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	n.do(func() error { return netlink.QdiscAdd(ingress) })
	const pod = PodID(41)
	n.do(func() error {
		_, err := d.Attach(pod, idx, ModeTC)
		var foreign *ForeignQdiscError
		if !errors.As(err, &foreign) || foreign.Kind != "ingress" {
			return fmt.Errorf("tc Attach beside an ingress qdisc: %v, want a ForeignQdiscError naming \"ingress\"", err)
		}
		return nil
	})
	n.assertNothingOf(d, pod, idx, "a refused tc Attach")
	n.do(func() error {
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			return err
		}
		fs, err := netlink.FilterList(l, netlink.MakeHandle(0xffff, 0))
		if err != nil {
			return err
		}
		if len(fs) != 0 {
			return fmt.Errorf("filters left in the ingress qdisc's block: %+v", fs)
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Type() == "ingress" {
				return nil
			}
		}
		return errors.New("the other plugin's ingress qdisc is gone")
	})
	if !kernelHasTCX(t) {
		// Auto is tc on this kernel: refused the same way.
		t.Setenv(ModeEnv, "")
		n.do(func() error {
			_, err := d.Attach(pod, idx, ModeAuto)
			if foreign := (*ForeignQdiscError)(nil); !errors.As(err, &foreign) {
				return fmt.Errorf("auto Attach without TCX beside an ingress qdisc: %v, want a ForeignQdiscError", err)
			}
			return nil
		})
		n.assertNothingOf(d, pod, idx, "a refused auto Attach")
		return
	}
	if got := n.attach(d, pod, idx, ModeTCX); got != ModeTCX {
		t.Fatalf("tcx Attach beside an ingress qdisc: mode %q", got)
	}
	if tcx, _, _ := n.kernelView(idx); len(tcx) != 2 {
		t.Fatalf("tcx programs on the device: %v, want 2", tcx)
	}
	n.detach(d, pod)
}
