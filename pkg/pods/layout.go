package pods

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/podscope/podscope/pkg/datapath"
)

// Value layout of the pinned "pods" map, version 1 (little endian, 1024 bytes).
// Key: the PodID as a host-endian uint32.
//
//	offset size field
//	0      4    layout version (1)
//	4      4    host veth ifindex (int32)
//	8      8    attach time, Unix nanoseconds (int64)
//	16     8    attach mode ("tcx"/"tc"), NUL padded
//	24     64   namespace (k8s limit 63), NUL padded
//	88     256  pod name (k8s limit 253)
//	344    40   pod UID (36)
//	384    128  container (sandbox) ID
//	512    256  netns path
//	768    16   container interface name (IFNAMSIZ)
//	784    16   host interface name
//	800    80   4 × IP: 16 bytes address (v4 in the first 4), family (4|6|0 = unused), prefix bits, 2 pad
//	880    64   CNI network name (the conflist's "name"; "" in entries written before it existed)
//	944    80   reserved, zero
//
// Strings that do not fit are refused rather than cut: a truncated container
// ID would never match on DEL.
const (
	valueVersion = 1
	valueSize    = 1024
	maxIPs       = MaxIPs
)

// MaxIPs is how many of a pod's IPs the registry keeps.
const MaxIPs = 4

type ipRecord struct {
	Addr   [16]byte
	Family uint8
	Bits   uint8
	Pad    [2]byte
}

type record struct {
	Version       uint32
	HostIfindex   int32
	AttachedAtNs  int64
	Mode          [8]byte
	Namespace     [64]byte
	Name          [256]byte
	UID           [40]byte
	ContainerID   [128]byte
	Netns         [256]byte
	Interface     [16]byte
	HostInterface [16]byte
	IPs           [maxIPs]ipRecord
	Network       [64]byte
	Reserved      [80]byte
}

func init() {
	if n := binary.Size(record{}); n != valueSize {
		panic(fmt.Sprintf("pods: record is %d bytes, layout says %d", n, valueSize))
	}
}

func putString(dst []byte, field, s string) error {
	if len(s) > len(dst) {
		return fmt.Errorf("pod %s %q is %d bytes, at most %d fit", field, s, len(s), len(dst))
	}
	copy(dst, s)
	return nil
}

func getString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func encode(p Pod) ([]byte, error) {
	var r record
	r.Version = valueVersion
	r.HostIfindex = int32(p.HostIfindex)
	if !p.AttachedAt.IsZero() {
		r.AttachedAtNs = p.AttachedAt.UnixNano()
	}
	for _, f := range []struct {
		dst   []byte
		name  string
		value string
	}{
		{r.Mode[:], "attach mode", string(p.Mode)},
		{r.Namespace[:], "namespace", p.Namespace},
		{r.Name[:], "name", p.Name},
		{r.UID[:], "UID", p.UID},
		{r.ContainerID[:], "container ID", p.ContainerID},
		{r.Netns[:], "netns path", p.Netns},
		{r.Interface[:], "interface", p.Interface},
		{r.HostInterface[:], "host interface", p.HostInterface},
		{r.Network[:], "network name", p.Network},
	} {
		if err := putString(f.dst, f.name, f.value); err != nil {
			return nil, err
		}
	}
	if len(p.IPs) > maxIPs {
		return nil, fmt.Errorf("pod has %d IPs, the registry keeps at most %d", len(p.IPs), maxIPs)
	}
	for i, ip := range p.IPs {
		a := ip.Addr()
		if a.Is4() {
			r.IPs[i].Family = 4
			b := a.As4()
			copy(r.IPs[i].Addr[:], b[:])
		} else {
			r.IPs[i].Family = 6
			r.IPs[i].Addr = a.As16()
		}
		r.IPs[i].Bits = uint8(ip.Bits())
	}
	var buf bytes.Buffer
	buf.Grow(valueSize)
	if err := binary.Write(&buf, binary.LittleEndian, &r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func decode(id datapath.PodID, b []byte) (Pod, error) {
	var r record
	if len(b) != valueSize {
		return Pod{}, fmt.Errorf("pod %d: registry value is %d bytes, layout v%d has %d", id, len(b), valueVersion, valueSize)
	}
	if err := binary.Read(bytes.NewReader(b), binary.LittleEndian, &r); err != nil {
		return Pod{}, err
	}
	if r.Version != valueVersion {
		return Pod{}, fmt.Errorf("pod %d: registry value layout v%d, this podscope reads v%d", id, r.Version, valueVersion)
	}
	p := Pod{
		ID:            id,
		Namespace:     getString(r.Namespace[:]),
		Name:          getString(r.Name[:]),
		UID:           getString(r.UID[:]),
		ContainerID:   getString(r.ContainerID[:]),
		Netns:         getString(r.Netns[:]),
		Interface:     getString(r.Interface[:]),
		HostInterface: getString(r.HostInterface[:]),
		Network:       getString(r.Network[:]),
		HostIfindex:   int(r.HostIfindex),
		Mode:          datapath.Mode(getString(r.Mode[:])),
	}
	if r.AttachedAtNs != 0 {
		p.AttachedAt = time.Unix(0, r.AttachedAtNs).UTC()
	}
	for _, ip := range r.IPs {
		var a netip.Addr
		switch ip.Family {
		case 4:
			a = netip.AddrFrom4([4]byte(ip.Addr[:4]))
		case 6:
			a = netip.AddrFrom16(ip.Addr)
		default:
			continue
		}
		p.IPs = append(p.IPs, netip.PrefixFrom(a, int(ip.Bits)))
	}
	return p, nil
}
