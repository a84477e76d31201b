package datapath

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/testenv"
)

// The tests run on any kernel (this machine's, and the older ones of `make
// test-kernels`): what a kernel offers is asked of the kernel, never assumed,
// and a kernel without TCX (before 6.6) is held to what the product does
// there instead: auto falls back to tc, a forced tcx is refused.

var tcxOracle struct {
	once sync.Once
	has  bool
	err  error
}

// kernelHasTCX is the tests' own answer to "does this kernel have TCX",
// independent of the product's probe (a link_create on a missing device):
// BPF_PROG_QUERY on loopback's TCX ingress hook is answered by a kernel
// with TCX (an empty list) and refused with EINVAL (unknown attach type) by
// one without. Any other answer fails the test.
func kernelHasTCX(t testing.TB) bool {
	t.Helper()
	testenv.RequireRoot(t)
	tcxOracle.once.Do(func() {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			tcxOracle.err = err
			return
		}
		_, err = link.QueryPrograms(link.QueryOptions{Target: lo.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		switch {
		case err == nil:
			tcxOracle.has = true
		case errors.Is(err, unix.EINVAL):
			tcxOracle.has = false
		default:
			tcxOracle.err = err
		}
	})
	if tcxOracle.err != nil {
		t.Fatalf("asking the kernel whether it has TCX: %v", tcxOracle.err)
	}
	return tcxOracle.has
}

// bestMode is the mode the product should prefer on this kernel.
func bestMode(t testing.TB) Mode {
	if kernelHasTCX(t) {
		return ModeTCX
	}
	return ModeTC
}

// tcxRefused reports whether this kernel lacks TCX; if so it first asserts
// what the product does there, with pod on the host veth ifindex: a forced
// tcx Attach is refused with an error naming the way out (mode "tc") and
// leaves nothing behind, and an auto Attach falls back to tc, works and
// detaches cleanly. A tcx subtest returns when it is true.
func (n *node) tcxRefused(d *Datapath, pod PodID, ifindex int) bool {
	t := n.t
	t.Helper()
	if kernelHasTCX(t) {
		return false
	}
	var err error
	n.do(func() error { _, err = d.Attach(pod, ifindex, ModeTCX); return nil })
	if err == nil || !strings.Contains(err.Error(), "tcx") || !strings.Contains(err.Error(), `"tc"`) {
		t.Fatalf("forced tcx Attach on a kernel without TCX: %v, want a refusal naming mode \"tc\"", err)
	}
	n.assertNothingOf(d, pod, ifindex, "a refused tcx Attach")

	t.Setenv(ModeEnv, "")
	if got := n.attach(d, pod, ifindex, ModeAuto); got != ModeTC {
		t.Fatalf("auto Attach on a kernel without TCX used %q, want tc", got)
	}
	if err := n.check(d, pod, ifindex); err != nil {
		t.Fatalf("auto (tc) Attach on a kernel without TCX: %v", err)
	}
	if _, filters, _ := n.kernelView(ifindex); len(filters) != 2 {
		t.Fatalf("auto (tc) Attach: the device has %d cls_bpf filters, want 2", len(filters))
	}
	n.detach(d, pod)
	if _, filters, clsact := n.kernelView(ifindex); len(filters) != 0 || clsact {
		t.Fatalf("after Detach the device still has filters %d clsact %v", len(filters), clsact)
	}
	t.Logf("kernel has no TCX: forced tcx refused (%v); auto attached with tc", err)
	return true
}

// assertNothingOf fails unless pod has no attachment, ifindex entry or
// counters and the device no program of any kind.
func (n *node) assertNothingOf(d *Datapath, pod PodID, ifindex int, what string) {
	t := n.t
	t.Helper()
	if tcx, filters, clsact := n.kernelView(ifindex); len(tcx)+len(filters) != 0 || clsact {
		t.Fatalf("%s left tcx %v filters %d clsact %v on the device", what, tcx, len(filters), clsact)
	}
	if atts := podAttachments(t, d, pod); len(atts) != 0 {
		t.Fatalf("%s left records %+v", what, atts)
	}
	var pi tcPodIface
	if err := d.objs.PodIfaces.Lookup(uint32(ifindex), &pi); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("%s left the ifindex entry: %v", what, err)
	}
	if _, err := d.Counters(pod); !errors.Is(err, ErrUnknownPod) {
		t.Fatalf("%s left counters: %v", what, err)
	}
}

// The product's probe agrees with the kernel: auto is tcx exactly where the
// kernel has TCX, a forced tcx is refused exactly where it has not, tc is
// always available.
func TestProbeAgreesWithKernel(t *testing.T) {
	testenv.RequireRoot(t)
	d, err := Open(testenv.BPFFSRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	t.Setenv(ModeEnv, "")
	has := kernelHasTCX(t)
	if got, err := d.ResolveMode(ModeAuto); err != nil || got != bestMode(t) {
		t.Fatalf("auto resolves to %q (%v); the kernel has TCX: %v", got, err, has)
	}
	got, err := d.ResolveMode(ModeTCX)
	if has && (err != nil || got != ModeTCX) {
		t.Fatalf("forced tcx on a kernel with TCX: %q %v", got, err)
	}
	if !has && (err == nil || !strings.Contains(err.Error(), `"tc"`)) {
		t.Fatalf("forced tcx on a kernel without TCX: %q %v, want a refusal naming mode \"tc\"", got, err)
	}
	if got, err := d.ResolveMode(ModeTC); err != nil || got != ModeTC {
		t.Fatalf("forced tc: %q %v", got, err)
	}
	// The environment forces auto only.
	t.Setenv(ModeEnv, "tc")
	if got, err := d.ResolveMode(ModeAuto); err != nil || got != ModeTC {
		t.Fatalf("auto with %s=tc: %q %v", ModeEnv, got, err)
	}
	t.Logf("kernel has TCX: %v", has)
}
