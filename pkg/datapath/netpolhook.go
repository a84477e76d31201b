// The NetworkPolicy program's netfilter links: one per family at
// NF_INET_PRE_ROUTING in the node's netns, pinned under the bpffs root.

package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/podscope/podscope/pkg/pins"
)

// netpolPriority is NF_IP_PRI_NAT_DST + 1 (NF_IP6_PRI_NAT_DST is the same
// -100): right after DNAT, so a ClusterIP is already translated to the pod
// it picked, and after conntrack (-200), so the packet's ctinfo is set.
const netpolPriority = -99

// ErrNoNetfilterLink is wrapped by NetworkPolicySupported when the kernel
// cannot attach BPF programs to netfilter hooks (before Linux 6.4, or
// without CONFIG_NETFILTER_BPF_LINK).
var ErrNoNetfilterLink = errors.New("kernel has no BPF netfilter links (Linux 6.4+ with CONFIG_NETFILTER_BPF_LINK)")

// ErrBridgeNotFiltered is wrapped by NetworkPolicySupported when this
// netns's bridges do not pass bridged packets through the netfilter hooks
// (net.bridge.bridge-nf-call-iptables or -ip6tables is 0): then traffic
// between two pods on one bridge would not be judged. kube-proxy needs the
// same setting.
var ErrBridgeNotFiltered = errors.New("bridged packets bypass netfilter")

// ErrNoConntrack is wrapped by NetworkPolicySupported when the kernel has
// no connection tracking to read (CONFIG_NF_CONNTRACK off, or the
// nf_conntrack module not loaded: kube-proxy loads it on a node).
var ErrNoConntrack = errors.New("kernel connection tracking not available")

var netpolFamilies = []struct {
	name   string
	pf     link.NetfilterProtocolFamily
	sysctl string
}{
	{"ipv4", link.NetfilterProtoIPv4, "/proc/sys/net/bridge/bridge-nf-call-iptables"},
	{"ipv6", link.NetfilterProtoIPv6, "/proc/sys/net/bridge/bridge-nf-call-ip6tables"},
}

// netpolObjectHash identifies the embedded NetworkPolicy object: a link pin
// carrying another hash runs another podscope's program.
var netpolObjectHash = func() string {
	sum := sha256.Sum256(_NetpolBytes)
	return hex.EncodeToString(sum[:6])
}()

const netpolLinkPrefix = "netpol_"

func netpolLinkPin(root pins.Root, fam string) string {
	return root.Pin(Owner, linksDir, netpolLinkPrefix+fam+"_"+netpolObjectHash)
}

var netfilterProbe struct {
	once sync.Once
	err  error
}

// NetworkPolicySupported reports whether NetworkPolicy can be enforced
// here: nil, or an error saying why not. It asks the kernel with a real
// attach of a program that accepts everything, at the very end of
// PREROUTING in the current netns, closed at once (cached per process), and
// reads this netns's br_netfilter settings (ErrBridgeNotFiltered; a netns
// without br_netfilter has no setting and only routed pods, which is fine).
func NetworkPolicySupported() error {
	if err := haveNetfilterLink(); err != nil {
		return err
	}
	for _, f := range netpolFamilies {
		b, err := os.ReadFile(f.sysctl)
		if err == nil && strings.TrimSpace(string(b)) == "0" {
			return fmt.Errorf("%w: %s is 0 (set it to 1)", ErrBridgeNotFiltered, strings.TrimPrefix(f.sysctl, "/proc/sys/"))
		}
	}
	return nil
}

// haveNetfilterLink is the kernel part of NetworkPolicySupported, probed
// once per process.
func haveNetfilterLink() error {
	netfilterProbe.once.Do(func() { netfilterProbe.err = probeNetfilter() })
	if netfilterProbe.err != nil {
		return netfilterProbe.err
	}
	_, err := conntrackBTF()
	return err
}

// conntrackBTF finds the kernel's struct nf_conn, which the program reads
// with CO-RE: in vmlinux's BTF (conntrack built in, or referenced there),
// else in the nf_conntrack module's BTF, returned as an extra relocation
// target. Not cached: the module may be loaded later.
func conntrackBTF() ([]*btf.Spec, error) {
	k, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("reading the kernel's BTF (CO-RE needs it): %w", err)
	}
	var conn *btf.Struct
	if k.TypeByName("nf_conn", &conn) == nil {
		return nil, nil
	}
	m, err := btf.LoadKernelModuleSpec("nf_conntrack")
	if err != nil {
		return nil, fmt.Errorf("%w: struct nf_conn is not in the kernel's BTF and module nf_conntrack is not loaded (%v)", ErrNoConntrack, err)
	}
	if err := m.TypeByName("nf_conn", &conn); err != nil {
		return nil, fmt.Errorf("%w: struct nf_conn not in nf_conntrack's BTF: %v", ErrNoConntrack, err)
	}
	return []*btf.Spec{m}, nil
}

func probeNetfilter() error {
	if err := features.HaveProgramType(ebpf.Netfilter); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("%w: %v", ErrNoNetfilterLink, err)
		}
		return fmt.Errorf("netfilter probe inconclusive: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Netfilter,
		AttachType:   ebpf.AttachNetfilter,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("netfilter probe: loading a program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachNetfilter(link.NetfilterOptions{
		Program:        prog,
		ProtocolFamily: link.NetfilterProtoIPv4,
		Hook:           link.NetfilterInetPreRouting,
		Priority:       math.MaxInt32 - 1, // the very end; MaxInt32 itself is reserved
	})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("%w: %v", ErrNoNetfilterLink, err)
		}
		return fmt.Errorf("netfilter probe: attaching: %w", err)
	}
	return l.Close()
}

// AttachNetworkPolicyHooks loads the NetworkPolicy program against the
// datapath's maps under root (opening the datapath if needed) and attaches
// it in the current netns at PREROUTING, IPv4 and IPv6, with the links
// pinned under root so they outlive the process. Idempotent: links of this
// program already pinned stay; links of another podscope's program are
// replaced (detached first: one link per hook, priority and netns).
func AttachNetworkPolicyHooks(root pins.Root) error {
	if err := haveNetfilterLink(); err != nil {
		return err
	}
	d, err := Open(root)
	if err != nil {
		return err
	}
	defer d.Close()
	unlock, err := lockDir(d.dir)
	if err != nil {
		return err
	}
	defer unlock()

	var prog *ebpf.Program
	defer func() {
		if prog != nil {
			prog.Close()
		}
	}()
	for _, f := range netpolFamilies {
		pin := netpolLinkPin(root, f.name)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			l.Close()
			continue
		}
		if err := removeNetpolLinks(root, f.name); err != nil {
			return err
		}
		if prog == nil {
			if prog, err = d.loadNetpol(); err != nil {
				return err
			}
		}
		l, err := link.AttachNetfilter(link.NetfilterOptions{
			Program:        prog,
			ProtocolFamily: f.pf,
			Hook:           link.NetfilterInetPreRouting,
			Priority:       netpolPriority,
		})
		if err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				err = fmt.Errorf("%w: %v", ErrNoNetfilterLink, err)
			}
			return fmt.Errorf("attaching the NetworkPolicy program (%s PREROUTING, priority %d): %w", f.name, netpolPriority, err)
		}
		if err := l.Pin(pin); err != nil {
			_ = l.Close()
			return fmt.Errorf("pinning NetworkPolicy link at %s: %w", pin, err)
		}
		l.Close() // the pin holds it
	}
	return nil
}

// loadNetpol loads the NetworkPolicy program with d's maps in place of its
// own (both objects declare the same maps, bpf/datapath.h).
func (d *Datapath) loadNetpol() (*ebpf.Program, error) {
	spec, err := loadNetpol()
	if err != nil {
		return nil, err
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range mapFields(&d.objs.tcMaps) {
		if _, ok := spec.Maps[name]; ok {
			repl[name] = *m
		}
	}
	extra, err := conntrackBTF()
	if err != nil {
		return nil, err
	}
	var objs netpolPrograms
	opts := &ebpf.CollectionOptions{MapReplacements: repl, Programs: ebpf.ProgramOptions{ExtraRelocationTargets: extra}}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the NetworkPolicy program: %w (verifier log: %+v)", err, ve)
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			err = fmt.Errorf("%w: %v", ErrNoNetfilterLink, err)
		}
		return nil, fmt.Errorf("loading the NetworkPolicy program: %w", err)
	}
	return objs.NetpolPrerouting, nil
}

// netpolLinkPins lists the NetworkPolicy link pins of family fam ("" for
// all) under root, whatever program they run.
func netpolLinkPins(root pins.Root, fam string) ([]string, error) {
	return filepath.Glob(root.Pin(Owner, linksDir, netpolLinkPrefix+fam+"*"))
}

// removeNetpolLinks detaches and unpins the NetworkPolicy links of family
// fam ("" for all) under root, whatever program they run.
func removeNetpolLinks(root pins.Root, fam string) error {
	matches, err := netpolLinkPins(root, fam)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range matches {
		l, err := link.LoadPinnedLink(m, nil)
		if err == nil {
			if derr := l.Detach(); derr != nil && !errors.Is(derr, os.ErrInvalid) && !errors.Is(derr, ebpf.ErrNotSupported) {
				errs = append(errs, fmt.Errorf("detaching %s: %w", m, derr))
			}
			l.Close()
		}
		if err := os.Remove(m); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// NetworkPolicyHook is one of the NetworkPolicy program's pinned netfilter
// links.
type NetworkPolicyHook struct {
	Family string `json:"family"` // ipv4 or ipv6
	Pin    string `json:"pin"`
	// Current: the link runs this build's program (else another
	// podscope's, which a podscope-nri of this build replaces).
	Current bool `json:"current"`
}

// NetworkPolicyHooks lists the NetworkPolicy links pinned under root that
// the kernel still holds (a reader's view: podscopectl status).
func NetworkPolicyHooks(root pins.Root) ([]NetworkPolicyHook, error) {
	matches, err := netpolLinkPins(root, "")
	if err != nil {
		return nil, err
	}
	var out []NetworkPolicyHook
	for _, m := range matches {
		l, err := link.LoadPinnedLink(m, nil) // links open read-write only
		if err != nil {
			continue
		}
		l.Close()
		fam, hash, _ := strings.Cut(strings.TrimPrefix(filepath.Base(m), netpolLinkPrefix), "_")
		out = append(out, NetworkPolicyHook{Family: fam, Pin: m, Current: hash == netpolObjectHash})
	}
	return out, nil
}

// DetachNetworkPolicyHooks detaches the NetworkPolicy program's links
// pinned under root and removes their pins. Idempotent.
func DetachNetworkPolicyHooks(root pins.Root) error {
	return removeNetpolLinks(root, "")
}
