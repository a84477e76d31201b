package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
)

// podscopeOnly is the conflist reduced to its podscope entry, to run
// podscope's DEL while the bridge's veth still exists (a chain DEL runs
// podscope first and then the bridge deletes the veth, hiding leftovers).
func (n *node) podscopeOnly() *libcni.NetworkConfigList {
	return &libcni.NetworkConfigList{Name: n.list.Name, CNIVersion: n.list.CNIVersion, Plugins: n.list.Plugins[1:]}
}

func TestDelLeavesNothingAndAccountsOnce(t *testing.T) {
	modes(t, func(t *testing.T, mode string) {
		n := newNode(t, nodeOpts{mode: mode})
		a, b := n.newPod("del-a", nil), n.newPod("del-b", nil)
		n.mustAdd(a)
		n.mustAdd(b)
		if got, err := udpExchange(a, b, netip.AddrPortFrom(b.v4, 9000), 10, 500); err != nil || got != 10 {
			t.Fatalf("UDP: %d/10, %v", got, err)
		}
		for _, p := range []*pod{a, b} {
			rp, _ := n.registered(p)
			final := n.counters(p)
			if final.TxPackets == 0 || final.RxPackets == 0 {
				t.Fatalf("%s: no traffic counted before DEL: %+v", p.name, final)
			}
			// 1. podscope's own DEL, the veth still there.
			if err := n.inNode(func() error {
				return n.cni.DelNetworkList(context.Background(), n.podscopeOnly(), n.rt(p, p.netnsPath))
			}); err != nil {
				t.Fatalf("podscope DEL %s: %v", p.name, err)
			}
			if _, ok := n.registered(p); ok {
				t.Errorf("%s still in the pod registry after DEL", p.name)
			}
			if atts, err := attachmentsOf(n.root, rp.ID); err != nil || len(atts) != 0 {
				t.Errorf("%s: attachments after DEL: %+v %v", p.name, atts, err)
			}
			var hs hookState
			if err := n.inNode(func() (err error) { hs, err = hooksOn(rp.HostIfindex); return }); err != nil {
				t.Fatal(err)
			}
			if !hs.empty() {
				t.Errorf("%s: host veth %s still has TC state after DEL: %+v", p.name, rp.HostInterface, hs)
			}
			// 2. containerd's two DELs of the whole chain: with the netns, then
			// with an empty netns (and no cached prevResult left).
			if err := n.del(p, p.netnsPath); err != nil {
				t.Fatalf("chain DEL %s: %v", p.name, err)
			}
			if err := n.del(p, ""); err != nil {
				t.Fatalf("second chain DEL %s (empty netns): %v", p.name, err)
			}
			lines := n.accountingLines(p.containerID)
			if len(lines) != 1 {
				t.Fatalf("%s: %d accounting lines after three DELs, want exactly 1: %v", p.name, len(lines), lines)
			}
			l := lines[0]
			if l["pod"] != p.name || l["namespace"] != "default" || l["podUID"] != p.uid || l["reason"] != "del" {
				t.Errorf("%s: accounting identity: %v", p.name, l)
			}
			// Counters can only have grown between the read and the DEL.
			if tx := uint64(l["txPackets"].(float64)); tx < final.TxPackets {
				t.Errorf("%s: accounting txPackets %d < %d counted before DEL", p.name, tx, final.TxPackets)
			}
			if rx := uint64(l["rxBytes"].(float64)); rx < final.RxBytes {
				t.Errorf("%s: accounting rxBytes %d < %d counted before DEL", p.name, rx, final.RxBytes)
			}
		}
		st, err := readPins(n.root)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.links) != 0 {
			t.Errorf("link pins left after every pod's DEL: %v", st.links)
		}
		if ne := st.nonEmptyMaps(); len(ne) != 0 {
			t.Errorf("map entries left after every pod's DEL: %v", ne)
		}
		if len(st.programs) == 0 || len(st.mapEntries) == 0 {
			t.Errorf("the shared programs/maps should stay pinned for the next pod: %+v", st)
		}
		t.Logf("after DEL: %d programs pinned, %d hash maps all empty, %d link pins", len(st.programs), len(st.mapEntries), len(st.links))
	})
}

// detachByHand removes podscope's program from one hook the way an operator
// (or another tool) might: `bpftool link detach` of the tcx link (the pin
// stays, the link goes defunct; unpinning alone releases the link only
// asynchronously), or deleting the cls_bpf filter.
func detachByHand(t *testing.T, n *node, a datapath.Attachment) {
	t.Helper()
	if a.Mode == datapath.ModeTCX {
		l, err := link.LoadPinnedLink(a.Pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := l.Detach(); err != nil {
			t.Fatalf("detaching tcx link %s: %v", a.Pin, err)
		}
		return
	}
	err := n.inNode(func() error {
		l, err := netlink.LinkByIndex(a.Ifindex)
		if err != nil {
			return err
		}
		parent := uint32(netlink.HANDLE_MIN_INGRESS)
		if a.Hook == "egress" {
			parent = netlink.HANDLE_MIN_EGRESS
		}
		fs, err := netlink.FilterList(l, parent)
		if err != nil {
			return err
		}
		for _, f := range fs {
			if f.Attrs().Handle == a.Handle {
				return netlink.FilterDel(f)
			}
		}
		return fmt.Errorf("no filter with handle %d on %s hook", a.Handle, a.Hook)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCheckFailsAfterManualDetach(t *testing.T) {
	modes(t, func(t *testing.T, mode string) {
		n := newNode(t, nodeOpts{mode: mode})
		p := n.newPod("check-a", nil)
		n.mustAdd(p)
		if err := n.check(p); err != nil {
			t.Fatalf("CHECK of a freshly added pod: %v", err)
		}
		rp, _ := n.registered(p)
		atts, err := attachmentsOf(n.root, rp.ID)
		if err != nil || len(atts) != 2 {
			t.Fatalf("attachments: %+v %v", atts, err)
		}
		var egress datapath.Attachment
		for _, a := range atts {
			if a.Hook == "egress" {
				egress = a
			}
		}
		detachByHand(t, n, egress)
		var hs hookState
		if err := n.inNode(func() (err error) { hs, err = hooksOn(rp.HostIfindex); return }); err != nil {
			t.Fatal(err)
		}
		if hs.tcxEgress+hs.tcEgress != 0 || hs.tcxIngress+hs.tcIngress != 1 {
			t.Fatalf("manual detach did not take: %+v", hs)
		}
		err = n.check(p)
		if err == nil {
			t.Fatal("CHECK passed with the program detached from the host egress hook")
		}
		if !strings.Contains(err.Error(), "egress hook") {
			t.Errorf("CHECK error does not name the hook: %v", err)
		}
		t.Logf("CHECK after manual detach: %v", err)
	})
}

func TestCheckFailsWhenPolicyDiffers(t *testing.T) {
	n := newNode(t, nodeOpts{})
	p := n.newPod("check-pol", map[string]string{"podscope.io/egress": `{"default":"deny"}`})
	n.mustAdd(p)
	if err := n.check(p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// The runtime now hands different annotations: what the kernel enforces
	// is no longer what the config asks for.
	p.annotations = map[string]string{"podscope.io/egress": `{"default":"allow"}`}
	err := n.check(p)
	if err == nil || !strings.Contains(err.Error(), "policy") {
		t.Fatalf("CHECK with a changed policy: %v, want an error naming the policy", err)
	}
	t.Logf("CHECK with changed policy: %v", err)
}

// ADD repeated for the same container keeps its PodID and its counters.
func TestAddIsIdempotent(t *testing.T) {
	n := newNode(t, nodeOpts{})
	a, b := n.newPod("idem-a", nil), n.newPod("idem-b", nil)
	n.mustAdd(a)
	n.mustAdd(b)
	if got, err := udpExchange(a, b, netip.AddrPortFrom(b.v4, 9000), 3, 100); err != nil || got != 3 {
		t.Fatalf("UDP %d/3 %v", got, err)
	}
	before, _ := n.registered(a)
	cBefore := n.counters(a)
	out, err := n.execPodscope(a, "ADD")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), a.v4.String()) {
		t.Errorf("ADD did not pass prevResult on: %s", out)
	}
	after, _ := n.registered(a)
	if after.ID != before.ID || !after.AttachedAt.Equal(before.AttachedAt) {
		t.Fatalf("repeated ADD changed the pod: %+v -> %+v", before, after)
	}
	if c := n.counters(a); c.TxPackets < cBefore.TxPackets {
		t.Fatalf("repeated ADD reset counters: %+v -> %+v", cBefore, c)
	}
	if atts, err := attachmentsOf(n.root, after.ID); err != nil || len(atts) != 2 {
		t.Fatalf("attachments after repeated ADD: %+v %v", atts, err)
	}
	if err := n.check(a); err != nil {
		t.Fatal(err)
	}
}

// The plugin behaves the same for every spec version it claims.
func TestSpecVersions(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			n := newNode(t, nodeOpts{cniVersion: v})
			p := n.newPod("ver", nil)
			if err := n.add(p); err != nil {
				t.Fatal(err)
			}
			if _, ok := n.registered(p); !ok {
				t.Fatal("not registered")
			}
			if !strings.HasPrefix(v, "0.3.") { // CHECK exists from 0.4.0 on
				if err := n.check(p); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			if err := n.del(p, p.netnsPath); err != nil {
				t.Fatal(err)
			}
			if err := n.del(p, ""); err != nil {
				t.Fatal(err)
			}
			if l := n.accountingLines(p.containerID); len(l) != 1 {
				t.Fatalf("%d accounting lines", len(l))
			}
		})
	}
}

func TestStatus(t *testing.T) {
	n := newNode(t, nodeOpts{})
	if err := n.inNode(func() error { return n.cni.GetStatusNetworkList(context.Background(), n.list) }); err != nil {
		t.Fatalf("STATUS on a good node: %v", err)
	}
	// STATUS pre-loads the programs (first pod pays no verifier time).
	if st, err := readPins(n.root); err != nil || len(st.programs) != 2 {
		t.Fatalf("after STATUS: programs %v, %v", st.programs, err)
	}
	// A bpffsRoot that is not on bpffs: STATUS fails and says so.
	bad := *n
	conf := strings.Replace(string(n.list.Bytes), n.root.Path, t.TempDir(), 1)
	l, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	bad.list = l
	err = bad.inNode(func() error { return bad.cni.GetStatusNetworkList(context.Background(), bad.list) })
	if err == nil || !strings.Contains(err.Error(), "bpffs") {
		t.Fatalf("STATUS with bpffsRoot on tmpfs: %v, want an error naming bpffs", err)
	}
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS error %v (%T): want a CNI error with code %d (plugin not available)", err, err, types.ErrPluginNotAvailable)
	}
}

func TestParallelAdd50(t *testing.T) {
	n := newNode(t, nodeOpts{})
	const count = 50
	ps := make([]*pod, count)
	for i := range ps {
		ps[i] = n.newPod(fmt.Sprintf("par-%02d", i), nil)
	}
	start := time.Now()
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.add(p)
		}()
	}
	wg.Wait()
	t.Logf("%d parallel ADDs took %v", count, time.Since(start))
	for i, err := range errs {
		if err != nil {
			t.Errorf("ADD %s: %v", ps[i].name, err)
		}
	}
	reg, err := pods.OpenPinnedRegistry(n.root)
	if err != nil {
		t.Fatal(err)
	}
	all, err := reg.List()
	reg.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != count {
		t.Fatalf("%d pods registered, want %d", len(all), count)
	}
	dp, err := datapath.OpenPinned(n.root)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ids := map[datapath.PodID]bool{}
	for _, p := range all {
		ids[p.ID] = true
		if err := n.inNode(func() error { return dp.Check(p.ID, p.HostIfindex) }); err != nil {
			t.Errorf("pod %s not attached: %v", p.Ref(), err)
		}
	}
	if len(ids) != count {
		t.Errorf("PodIDs not distinct: %d distinct of %d", len(ids), count)
	}
	atts, err := dp.Attachments()
	if err != nil || len(atts) != 2*count {
		t.Errorf("%d attachments, want %d (%v)", len(atts), 2*count, err)
	}
	// And parallel DELs leave nothing.
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.del(p, p.netnsPath)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %s: %v", ps[i].name, err)
		}
		if l := n.accountingLines(ps[i].containerID); len(l) != 1 {
			t.Errorf("%s: %d accounting lines", ps[i].name, len(l))
		}
	}
	st, err := readPins(n.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.links) != 0 || len(st.nonEmptyMaps()) != 0 {
		t.Errorf("left after 50 DELs: links %v maps %v", st.links, st.nonEmptyMaps())
	}
}

func TestGCRemovesInvalidAttachments(t *testing.T) {
	n := newNode(t, nodeOpts{})
	keep, drop1, drop2 := n.newPod("gc-keep", nil), n.newPod("gc-drop1", nil), n.newPod("gc-drop2", nil)
	for _, p := range []*pod{keep, drop1, drop2} {
		n.mustAdd(p)
	}
	// A pod of another network sharing the bpffs root: not this GC's to remove.
	main := n.list
	var err error
	n.list, err = libcni.ConfListFromBytes([]byte(strings.Replace(string(main.Bytes), `"name":"`+main.Name+`"`, `"name":"`+main.Name+`x"`, 1)))
	if err != nil || n.list.Name != main.Name+"x" {
		t.Fatalf("other network: %v %q", err, n.list.Name)
	}
	foreign := n.newPod("gc-foreign", nil)
	n.mustAdd(foreign)
	n.list = main
	// A runtime's GC with no cached attachments (as after a reboot of the
	// runtime's state): libcni sends only the GC verb, so what is removed is
	// podscope's own GC's doing, not a DEL.
	gcCNI := libcni.NewCNIConfigWithCacheDir(n.cni.Path, t.TempDir(), nil)
	err = n.inNode(func() error {
		return gcCNI.GCNetworkList(context.Background(), n.list, &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: keep.containerID, IfName: "eth0"}},
		})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, ok := n.registered(keep); !ok {
		t.Fatal("GC removed the valid attachment")
	}
	if err := n.check(keep); err != nil {
		t.Errorf("valid pod no longer passes CHECK after GC: %v", err)
	}
	if rp, ok := n.registered(foreign); !ok || rp.Network != main.Name+"x" {
		t.Errorf("GC of network %s removed (or mislabelled) a pod of another network: %v %+v", main.Name, ok, rp)
	}
	for _, p := range []*pod{drop1, drop2} {
		if _, ok := n.registered(p); ok {
			t.Errorf("GC left %s registered", p.name)
		}
		lines := n.accountingLines(p.containerID)
		if len(lines) != 1 || lines[0]["reason"] != "gc" {
			t.Errorf("%s: accounting lines %v, want one with reason gc", p.name, lines)
		}
	}
	st, err := readPins(n.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.links) != 4 {
		t.Errorf("link pins after GC: %v, want the kept and the foreign pod's two each", st.links)
	}
}

func TestReaperRemovesPodsWhoseVethIsGone(t *testing.T) {
	n := newNode(t, nodeOpts{})
	gone, alive := n.newPod("reap-gone", nil), n.newPod("reap-alive", nil)
	n.mustAdd(gone)
	n.mustAdd(alive)
	rp, _ := n.registered(gone)
	// The veth disappears without any DEL (a runtime crash, a node agent
	// deleting it).
	if err := n.inNode(func() error {
		l, err := netlink.LinkByIndex(rp.HostIfindex)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	var reaped []pods.Pod
	err := n.inNode(func() (err error) {
		reaped, err = podstate.Reap(n.root, n.stateDir, time.Second)
		return
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(reaped) != 1 || reaped[0].ContainerID != gone.containerID {
		t.Fatalf("reaped %+v, want only %s", reaped, gone.name)
	}
	lines := n.accountingLines(gone.containerID)
	if len(lines) != 1 || !strings.HasPrefix(lines[0]["reason"].(string), "reaped: host veth") {
		t.Fatalf("accounting lines %v", lines)
	}
	if _, ok := n.registered(alive); !ok {
		t.Fatal("reaper removed a live pod")
	}
	if atts, _ := attachmentsOf(n.root, rp.ID); len(atts) != 0 {
		t.Fatalf("reaped pod still has attachments %+v", atts)
	}
	// DELs for the reaped pod find nothing and succeed, writing no second line.
	if err := n.del(gone, gone.netnsPath); err != nil {
		t.Fatal(err)
	}
	if l := n.accountingLines(gone.containerID); len(l) != 1 {
		t.Fatalf("%d accounting lines after DEL of a reaped pod", len(l))
	}
}

// An ADD whose attach fails undoes everything it did: here a second
// container claims pod a's veth, which the datapath refuses.
func TestFailedAttachLeavesNothing(t *testing.T) {
	n := newNode(t, nodeOpts{})
	a := n.newPod("owner", nil)
	n.mustAdd(a)
	before, err := readPins(n.root)
	if err != nil {
		t.Fatal(err)
	}
	intruder := &pod{name: "intruder", uid: "intruder-uid", containerID: strings.Repeat("f", 64),
		netnsPath: a.netnsPath, result: a.result}
	_, err = n.execPodscope(intruder, "ADD")
	if err == nil {
		t.Fatal("ADD of a second pod on an attached veth succeeded")
	}
	t.Logf("ADD error: %v", err)
	if _, ok := n.registered(intruder); ok {
		t.Error("failed ADD left a registry entry")
	}
	after, err := readPins(n.root)
	if err != nil {
		t.Fatal(err)
	}
	// The flow table moves with background traffic (IPv6 ND, MLD): compare
	// every other map.
	for _, st := range []pinnedState{before, after} {
		for p := range st.mapEntries {
			if strings.HasSuffix(p, "/flows") {
				delete(st.mapEntries, p)
			}
		}
	}
	if fmt.Sprint(before.mapEntries) != fmt.Sprint(after.mapEntries) || len(before.links) != len(after.links) {
		t.Errorf("failed ADD changed the pins:\nbefore %+v\nafter  %+v", before, after)
	}
	if err := n.check(a); err != nil {
		t.Errorf("the owner pod is no longer intact: %v", err)
	}
}

// PODSCOPE_ATTACH_MODE in the plugin's environment overrides the config's
// attachMode (how an operator forces the clsact fallback on a TCX kernel).
func TestAttachModeFromEnvironment(t *testing.T) {
	t.Setenv(datapath.ModeEnv, "tc")
	n := newNode(t, nodeOpts{mode: "tcx"})
	p := n.newPod("envmode", nil)
	n.mustAdd(p)
	rp, _ := n.registered(p)
	if rp.Mode != datapath.ModeTC {
		t.Fatalf("mode %q, want tc from the environment", rp.Mode)
	}
	var hs hookState
	if err := n.inNode(func() (err error) { hs, err = hooksOn(rp.HostIfindex); return }); err != nil {
		t.Fatal(err)
	}
	if hs.tcIngress != 1 || hs.tcEgress != 1 || hs.tcxIngress+hs.tcxEgress != 0 {
		t.Fatalf("hooks %+v, want one cls_bpf filter per direction and no tcx", hs)
	}
}
