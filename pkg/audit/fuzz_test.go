package audit

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// rawRecord lays out a ring record like audit_emit, with the lengths of the
// header as given (they may lie).
func rawRecord(f *testing.F, h auditEvent, body string) []byte {
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, h); err != nil {
		f.Fatal(err)
	}
	b.WriteString(body)
	return b.Bytes()
}

// FuzzDecodeRecord: whatever bytes the ring buffer hands over (a record
// from another program version, a torn read), the decoder never reads past
// them and never panics; the strings it returns come from the body.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(rawRecord(f, auditEvent{TimeNs: uint64(time.Second), CgroupId: 42, Key: 7, Pid: 100, Uid: 1000, Flags: 0o101, Count: 3,
		Op: uint16(auditWriteOpAOP_RENAME), AuxKind: uint8(auditAuxKindAAUX_TARGET), Comm: comm16("mv"), PathLen: 7, AuxLen: 7}, "/data/a/data/b"))
	f.Add(rawRecord(f, auditEvent{CgroupId: 43, Op: uint16(auditWriteOpAOP_SYSCTL_WRITE), AuxKind: uint8(auditAuxKindAAUX_VALUE),
		Count: 1, Denied: 1, Comm: comm16("sysctl"), PathLen: 29, AuxLen: 1}, "/proc/sys/net/ipv4/ip_forward1"))
	f.Add(rawRecord(f, auditEvent{Op: 999, AuxKind: 200, PathLen: 65535, AuxLen: 65535}, "short"))
	f.Add([]byte{})
	a := &Auditor{}
	d := a.newDecoder()
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, ok := d.decode(raw)
		if !ok {
			return
		}
		if len(raw) < headerSize {
			t.Fatal("record shorter than the header accepted")
		}
		if n := len(ev.Path) + len(ev.Target) + len(ev.Value); n > len(raw)-headerSize {
			t.Fatalf("decoded %d string bytes from a %d-byte body", n, len(raw)-headerSize)
		}
	})
}
