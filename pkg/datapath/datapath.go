package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/policy"
)

// Mode is how programs are attached to a veth.
type Mode string

const (
	ModeAuto Mode = ""    // tcx if the kernel has it (probed), else tc
	ModeTCX  Mode = "tcx" // BPF links on the device's TCX hooks, pinned
	ModeTC   Mode = "tc"  // clsact qdisc + cls_bpf filter in direct-action mode
)

// PodID is a stable pod index chosen by the caller (never an ifindex, which
// the kernel reuses). 0 is invalid.
type PodID uint32

// ErrUnknownPod is returned for a pod the datapath has no state for.
var ErrUnknownPod = errors.New("pod unknown to the datapath")

// ErrNotLoaded is returned by OpenPinned when no datapath is pinned.
var ErrNotLoaded = errors.New("datapath not loaded")

// Owner is the pins owner directory of the datapath: root.Dir(Owner).
const Owner = "datapath"

// Counters are a pod's traffic totals over all CPUs, in the pod's view: Rx
// entered the pod, Tx left it. Bytes are skb->len at the hook: the Ethernet
// frame including its 14-byte header. Dropped packets count only in Drops*.
type Counters struct {
	RxBytes          uint64 `json:"rxBytes"`
	RxPackets        uint64 `json:"rxPackets"`
	TxBytes          uint64 `json:"txBytes"`
	TxPackets        uint64 `json:"txPackets"`
	DropsEgress      uint64 `json:"dropsEgress"`
	DropsIngress     uint64 `json:"dropsIngress"`
	DropBytesEgress  uint64 `json:"dropBytesEgress"`
	DropBytesIngress uint64 `json:"dropBytesIngress"`
	// Of the Drops*, those the pod's Kubernetes NetworkPolicy denied (the
	// rest were denied by podscope's own policy).
	NetworkPolicyDropsEgress  uint64 `json:"networkPolicyDropsEgress"`
	NetworkPolicyDropsIngress uint64 `json:"networkPolicyDropsIngress"`
}

// Flow is one entry of the flow table, in the pod's view (Local is the
// pod's address). Tx counts packets the pod sent, Rx those it was sent,
// passed or dropped alike; Verdict is the last packet's.
type Flow struct {
	Proto     string           `json:"proto"`
	Local     netip.AddrPort   `json:"local"`
	Remote    netip.AddrPort   `json:"remote"`
	TxBytes   uint64           `json:"txBytes"`
	TxPackets uint64           `json:"txPackets"`
	RxBytes   uint64           `json:"rxBytes"`
	RxPackets uint64           `json:"rxPackets"`
	FirstSeen time.Time        `json:"firstSeen"`
	LastSeen  time.Time        `json:"lastSeen"`
	Verdict   policy.Action    `json:"verdict"`
	DeniedBy  DeniedBy         `json:"deniedBy,omitempty"` // with Verdict deny: which policy
	Initiator policy.Direction `json:"initiator"`
}

// DeniedBy names the policy that denied a flow's last packet (enum
// denied_by in bpf/tc.h).
type DeniedBy string

const (
	DeniedByPolicy        DeniedBy = "policy"        // podscope's own (conflist default, annotations)
	DeniedByNetworkPolicy DeniedBy = "networkpolicy" // the pod's Kubernetes NetworkPolicy
)

func deniedBy(code uint8) DeniedBy {
	switch code {
	case 1:
		return DeniedByPolicy
	case 2:
		return DeniedByNetworkPolicy
	}
	return ""
}

// PolicyEntry is one prefix of a pod's policy as the kernel holds it.
type PolicyEntry = policy.Entry

// Attachment is one program attached to one hook of a pod's veth.
type Attachment struct {
	Pod       PodID            `json:"pod"`
	Ifindex   int              `json:"ifindex"`
	Mode      Mode             `json:"mode"`
	Hook      string           `json:"hook"`      // host veth hook: "ingress" or "egress"
	Direction policy.Direction `json:"direction"` // the pod's direction this hook sees
	Pin       string           `json:"pin,omitempty"`
	Handle    uint32           `json:"handle,omitempty"` // tc filter
	Prio      uint32           `json:"prio,omitempty"`   // tc filter
}

// Datapath is a handle on the pinned TC programs and maps of one bpffs root.
type Datapath struct {
	root pins.Root
	dir  string
	objs tcObjects
}

// hook is a hook of the host-side veth (enum hook in bpf/tc.h).
type hook uint32

const (
	hookHostIngress hook = 0
	hookHostEgress  hook = 1
)

var hooks = [...]hook{hookHostIngress, hookHostEgress}

// hookFor is the one Go place that knows the mapping, mirroring
// pod_direction() in bpf/tc.c: what the pod sends enters the host veth
// (pod egress = host ingress) and what it receives leaves it.
func hookFor(d policy.Direction) hook {
	if d == policy.Egress {
		return hookHostIngress
	}
	return hookHostEgress
}

func (h hook) direction() policy.Direction {
	for _, d := range []policy.Direction{policy.Egress, policy.Ingress} {
		if hookFor(d) == h {
			return d
		}
	}
	panic(fmt.Sprintf("unknown hook %d", h))
}

func (h hook) String() string {
	if h == hookHostIngress {
		return "ingress"
	}
	return "egress"
}

func (h hook) tcxAttach() ebpf.AttachType {
	if h == hookHostIngress {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

func (d *Datapath) program(h hook) *ebpf.Program {
	if h == hookHostIngress {
		return d.objs.HostIngress
	}
	return d.objs.HostEgress
}

// Close drops the file descriptors; everything pinned stays.
func (d *Datapath) Close() error {
	return d.objs.Close()
}

// Dir is the directory the datapath pins into.
func (d *Datapath) Dir() string { return d.dir }

// ProgramIDs returns the kernel IDs of the programs of the host ingress and
// egress hooks (the same on every Open of one root while the pins live).
func (d *Datapath) ProgramIDs() (ingress, egress ebpf.ProgramID, err error) {
	for i, h := range hooks {
		info, err := d.program(h).Info()
		if err != nil {
			return 0, 0, err
		}
		id, _ := info.ID()
		if i == 0 {
			ingress = id
		} else {
			egress = id
		}
	}
	return ingress, egress, nil
}
