package pods

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

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
//	944    64   why the pod is unobserved ("" = attached; e.g. its interface is
//	            not a veth), NUL padded; longer reasons make the record version 2
//	1008   8    accounting log offset + 1 at which teardown writes this pod's
//	            line (0 = teardown not started): a DEL killed after writing
//	            the line finds it there and does not write it twice
//	1016   8    reserved, zero
//
// Version 2 is the same layout for a pod whose identity does not fit: a
// field longer than its slot (the CRI and CNI set no length on UIDs,
// container IDs, netns paths or network names) or more than 4 IPs. Its
// slots hold what fits (a field that does not is left empty, never cut: a
// truncated container ID would never match on DEL) and the whole pod, as
// JSON, is in the blob store (pkg/blobs, kind KindPod, id = PodID). Pods
// that fit stay version 1, byte for byte, so pins written before version 2
// existed are read unchanged; a podscope that knows only version 1 refuses
// a version 2 entry with a message naming both versions.
const (
	valueVersion = 1
	longVersion  = 2
	valueSize    = 1024
	maxIPs       = MaxIPs
)

// MaxIPs is how many of a pod's IPs fit the fixed record; a pod with more
// keeps them all through the blob store.
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
	Unobserved    [64]byte
	LogOffset     int64
	Reserved      [8]byte
}

// unmarshal is binary.Read(b, LittleEndian, r) without reflection (which
// costs ~10 µs per record: podscopectl, the metrics and the reaper decode
// every pod). TestUnmarshalMatchesBinaryRead holds it to binary.Read.
func (r *record) unmarshal(b []byte) {
	le := binary.LittleEndian
	off := 0
	u32 := func() uint32 { v := le.Uint32(b[off:]); off += 4; return v }
	u64 := func() uint64 { v := le.Uint64(b[off:]); off += 8; return v }
	bytesTo := func(dst []byte) { off += copy(dst, b[off:off+len(dst)]) }
	r.Version = u32()
	r.HostIfindex = int32(u32())
	r.AttachedAtNs = int64(u64())
	for _, f := range [][]byte{r.Mode[:], r.Namespace[:], r.Name[:], r.UID[:], r.ContainerID[:], r.Netns[:], r.Interface[:], r.HostInterface[:]} {
		bytesTo(f)
	}
	for i := range r.IPs {
		bytesTo(r.IPs[i].Addr[:])
		r.IPs[i].Family, r.IPs[i].Bits = b[off], b[off+1]
		off += 2
		bytesTo(r.IPs[i].Pad[:])
	}
	bytesTo(r.Network[:])
	bytesTo(r.Unobserved[:])
	r.LogOffset = int64(u64())
	bytesTo(r.Reserved[:])
}

// rawRecord is one value as the map holds it (batch reads).
type rawRecord [valueSize]byte

// Offsets of the fields rawMayMatch compares without decoding.
var (
	offContainerID = int(unsafe.Offsetof(record{}.ContainerID))
	offInterface   = int(unsafe.Offsetof(record{}.Interface))
)

func init() {
	if n := binary.Size(record{}); n != valueSize || unsafe.Sizeof(record{}) != valueSize {
		panic(fmt.Sprintf("pods: record is %d bytes, layout says %d", n, valueSize))
	}
}

// rawMayMatch reports whether the encoded record v can be the pod of
// (containerID, ifname): false only when its fixed slots prove it is not.
// A version 2 record (identity in the blob store) may have left a slot
// empty because the value did not fit, so it always may match.
func rawMayMatch(v []byte, containerID, ifname string) bool {
	if len(v) != valueSize || binary.LittleEndian.Uint32(v) != valueVersion {
		return true // version 2, or a layout decode will explain
	}
	if string(getSlot(v[offContainerID:offContainerID+len(record{}.ContainerID)])) != containerID {
		return false
	}
	return ifname == "" || string(getSlot(v[offInterface:offInterface+len(record{}.Interface)])) == ifname
}

// getSlot is getString without the copy, for comparing.
func getSlot(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// putString stores s if it fits and reports whether it did.
func putString(dst []byte, s string) bool {
	if len(s) > len(dst) || bytes.IndexByte([]byte(s), 0) >= 0 {
		return false // a NUL inside would end the string early on reading
	}
	copy(dst, s)
	return true
}

func getString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// encode returns the fixed record of p and, when p does not fit it, the
// blob (the whole pod as JSON) that the record's version 2 points to.
func encode(p Pod) (rec []byte, blob []byte, err error) {
	var r record
	r.Version = valueVersion
	r.HostIfindex = int32(p.HostIfindex)
	r.LogOffset = p.AccountingOffset
	if !p.AttachedAt.IsZero() {
		r.AttachedAtNs = p.AttachedAt.UnixNano()
	}
	long := false
	for _, f := range []struct {
		dst   []byte
		value string
	}{
		{r.Mode[:], string(p.Mode)},
		{r.Namespace[:], p.Namespace},
		{r.Name[:], p.Name},
		{r.UID[:], p.UID},
		{r.ContainerID[:], p.ContainerID},
		{r.Netns[:], p.Netns},
		{r.Interface[:], p.Interface},
		{r.HostInterface[:], p.HostInterface},
		{r.Network[:], p.Network},
		{r.Unobserved[:], p.Unobserved},
	} {
		if !putString(f.dst, f.value) {
			long = true
		}
	}
	ips := p.IPs
	if len(ips) > maxIPs {
		long = true
		ips = ips[:maxIPs]
	}
	if long {
		r.Version = longVersion
		if blob, err = json.Marshal(p); err != nil {
			return nil, nil, err
		}
	}
	for i, ip := range ips {
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
		return nil, nil, err
	}
	return buf.Bytes(), blob, nil
}

// decode reads a record; a version 2 record takes the whole pod from
// blob(), which returns the pod's blob.
func decode(id datapath.PodID, b []byte, blob func() ([]byte, error)) (Pod, error) {
	var r record
	if len(b) != valueSize {
		return Pod{}, fmt.Errorf("pod %d: registry value is %d bytes, layout v%d has %d", id, len(b), valueVersion, valueSize)
	}
	r.unmarshal(b)
	if r.Version == longVersion {
		bl, err := blob()
		if err != nil {
			return Pod{}, fmt.Errorf("pod %d: identity too long for the registry entry, and its blob: %w", id, err)
		}
		var p Pod
		if err := json.Unmarshal(bl, &p); err != nil {
			return Pod{}, fmt.Errorf("pod %d: decoding its blob: %w", id, err)
		}
		p.ID = id
		return p, nil
	}
	if r.Version != valueVersion {
		return Pod{}, fmt.Errorf("pod %d: registry value layout v%d, this podscope reads v%d and v%d", id, r.Version, valueVersion, longVersion)
	}
	p := Pod{
		ID:               id,
		Namespace:        getString(r.Namespace[:]),
		Name:             getString(r.Name[:]),
		UID:              getString(r.UID[:]),
		ContainerID:      getString(r.ContainerID[:]),
		Netns:            getString(r.Netns[:]),
		Interface:        getString(r.Interface[:]),
		HostInterface:    getString(r.HostInterface[:]),
		Network:          getString(r.Network[:]),
		Unobserved:       getString(r.Unobserved[:]),
		HostIfindex:      int(r.HostIfindex),
		AccountingOffset: r.LogOffset,
		Mode:             datapath.Mode(getString(r.Mode[:])),
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
