package audit

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/pods"
)

// record builds a ring record the way audit_emit lays it out: the
// generated header, then path bytes, then aux bytes.
func record(t *testing.T, h auditEvent, path, aux string) []byte {
	t.Helper()
	h.PathLen, h.AuxLen = uint16(len(path)), uint16(len(aux))
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, h); err != nil {
		t.Fatal(err)
	}
	if b.Len() != headerSize {
		t.Fatalf("header encodes to %d bytes, the C struct is %d", b.Len(), headerSize)
	}
	b.WriteString(path)
	b.WriteString(aux)
	return b.Bytes()
}

func comm16(s string) (c [16]int8) {
	for i := 0; i < len(s) && i < 15; i++ {
		c[i] = int8(s[i])
	}
	return c
}

func TestDecodeRecord(t *testing.T) {
	a := &Auditor{}
	id := Identity{Identity: pods.Identity{Namespace: "ns", Pod: "p", PodUID: "u"}, Container: "c", ContainerID: "cid"}
	a.cache.put(42, id)
	d := a.newDecoder()

	ev, ok := d.decode(record(t, auditEvent{TimeNs: uint64(time.Second), CgroupId: 42, Key: 7, Pid: 100, Uid: 1000,
		Flags: 0o101, Count: 3, Op: uint16(auditWriteOpAOP_RENAME), AuxKind: uint8(auditAuxKindAAUX_TARGET),
		Comm: comm16("mv")}, "/data/a", "/data/b"))
	if !ok {
		t.Fatal("valid record rejected")
	}
	want := Event{Time: d.bootBase.Add(time.Second), Identity: Identity{Identity: pods.Identity{Namespace: "ns", Pod: "p", PodUID: "u"}, Container: "c", ContainerID: "cid"}, CgroupID: 42, PID: 100, Comm: "mv", UID: 1000, Op: "rename", Path: "/data/a",
		Flags: 0o101, Count: 3, Target: "/data/b"}
	if ev != want {
		t.Fatalf("decoded\n %+v\nwant\n %+v", ev, want)
	}

	ev, ok = d.decode(record(t, auditEvent{CgroupId: 43, Op: uint16(auditWriteOpAOP_SYSCTL_WRITE),
		AuxKind: uint8(auditAuxKindAAUX_VALUE), Count: 1, Denied: 1, Comm: comm16("sysctl")},
		"/proc/sys/net/ipv4/ip_forward", "1"))
	if !ok || ev.Value != "1" || ev.Target != "" || ev.Op != "sysctl_write" || !ev.Denied || ev.Pod != "" {
		t.Fatalf("sysctl record decoded to %+v (unknown cgroup must give an empty identity)", ev)
	}

	// A record shorter than its header says is dropped, not read past.
	raw := record(t, auditEvent{CgroupId: 42, Op: uint16(auditWriteOpAOP_CREATE)}, "/x/y", "")
	if _, ok := d.decode(raw[:len(raw)-1]); ok {
		t.Fatal("truncated record accepted")
	}
	if _, ok := d.decode(raw[:headerSize-1]); ok {
		t.Fatal("record shorter than the header accepted")
	}

	// The sweep names a folded path from the decoder's memory.
	fk := foldKey{42, 7, uint32(auditWriteOpAOP_RENAME), 1000, 0o101, false}
	if fi, ok := d.recall(fk); !ok || fi.path != "/data/a" || fi.target != "/data/b" {
		t.Fatalf("recall(%v) = %+v, %v", fk, fi, ok)
	}
	// Keys are compared in full: any field differing is another operation.
	for _, k := range []foldKey{
		{42, 8, fk.op, 1000, 0o101, false}, {43, 7, fk.op, 1000, 0o101, false},
		{42, 7, uint32(auditWriteOpAOP_LINK), 1000, 0o101, false}, {42, 7, fk.op, 0, 0o101, false},
		{42, 7, fk.op, 1000, 0o1, false}, {42, 7, fk.op, 1000, 0o101, true},
	} {
		if _, ok := d.recall(k); ok {
			t.Errorf("recall of %+v, never seen, succeeded", k)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	a := &Auditor{}
	a.cache.put(42, Identity{Identity: pods.Identity{Pod: "p"}})
	d := a.newDecoder()
	var buf bytes.Buffer
	h := auditEvent{CgroupId: 42, Op: uint16(auditWriteOpAOP_CREATE), Count: 1, Comm: comm16("writer"),
		PathLen: uint16(len("/var/lib/app/data/file-000001"))}
	binary.Write(&buf, binary.NativeEndian, h)
	buf.WriteString("/var/lib/app/data/file-000001")
	raw := buf.Bytes()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, ok := d.decode(raw); !ok {
			b.Fatal("rejected")
		}
	}
}

// Event times come from one wall-clock base: resyncing it on every sweep
// moved it by the jitter of reading two clocks, which on an emulated CPU
// put a fold line before the record that opened its window. The base moves
// only for a real step of the wall clock.
func TestClockSyncKeepsBaseUnlessClockStepped(t *testing.T) {
	d := (&Auditor{}).newDecoder()
	fresh := bootBaseNow()
	if off := fresh.Sub(d.bootBase); off > clockStep/2 || off < -clockStep/2 {
		t.Fatalf("two estimates of the boot time %v apart", off)
	}
	// As if the previous sync had read the clocks clockStep/4 apart.
	kept := d.bootBase.Add(clockStep / 4)
	d.bootBase = kept
	for i := 0; i < 100; i++ {
		d.clockSync()
		if !d.bootBase.Equal(kept) {
			t.Fatalf("sync %d moved the base by %v without a clock step", i, d.bootBase.Sub(kept))
		}
	}
	// As if the wall clock had been stepped by 5 s since.
	d.bootBase = kept.Add(-5 * time.Second)
	d.clockSync()
	if off := d.bootBase.Sub(bootBaseNow()); off > clockStep/2 || off < -clockStep/2 {
		t.Fatalf("after a 5 s step the base is %v from the clock's", off)
	}
}
