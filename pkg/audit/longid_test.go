package audit

import (
	"strings"
	"testing"

	"github.com/podscope/podscope/pkg/blobs"
	"github.com/podscope/podscope/pkg/pods"
)

// Identities the CRI allows but struct identity cannot hold (a 48-byte pod
// UID, a 200-byte container ID, a 300-byte pod name) are armed, and events
// carry them exactly; Disarm leaves no blob behind.
func TestLongIdentityArmedExactly(t *testing.T) {
	h := newHarness(t)
	id := Identity{Identity: pods.Identity{Namespace: "ns1", Pod: strings.Repeat("p", 300), PodUID: "pstest-pref-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"},
		Container: "c1", ContainerID: strings.Repeat("c", 200)}
	if len(id.PodUID) != 48 {
		t.Fatalf("UID is %d bytes", len(id.PodUID))
	}
	cg := h.cgroup(t)
	cgid, err := h.a.Arm(cg, id)
	if err != nil {
		t.Fatalf("Arm refused a long identity: %v", err)
	}
	armed, err := h.a.Armed()
	if err != nil || armed[cgid] != id {
		t.Fatalf("Armed()[%d] = %+v, %v; want %+v", cgid, armed[cgid], err, id)
	}
	// A fresh reader (podscope-nri after a restart) has no cache.
	h.a.cache = identityCache{}
	if got := h.a.lookupIdentity(cgid); got != id {
		t.Fatalf("lookupIdentity = %+v, want %+v", got, id)
	}
	pid := h.run(t, cg, "writes", childOpts{env: []string{dirEnv + "=" + realDir(t), countEnv + "=2"}})
	h.waitFor(func(ev Event) bool { return ev.PID == uint32(pid) }, 2)
	for _, ev := range h.take(func(ev Event) bool { return ev.PID == uint32(pid) }) {
		if ev.Pod != id.Pod || ev.PodUID != id.PodUID || ev.ContainerID != id.ContainerID {
			t.Fatalf("event identity %q %q %q, want the armed one exactly", ev.Pod, ev.PodUID, ev.ContainerID)
		}
	}
	// Re-arming with an identity that fits removes the blob.
	short := Identity{Identity: pods.Identity{Namespace: "ns1", Pod: "p", PodUID: "u"}, Container: "c1", ContainerID: "cid"}
	if _, err := h.a.Arm(cg, short); err != nil {
		t.Fatal(err)
	}
	s, err := blobs.OpenPinned(h.a.root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok, _ := s.Get(blobs.KindAuditIdentity, cgid); ok {
		t.Fatal("blob of the long identity kept after re-arming with a short one")
	}
	if _, err := h.a.Arm(cg, id); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Disarm(cgid); err != nil {
		t.Fatal(err)
	}
	if ids, _ := s.IDs(blobs.KindAuditIdentity); len(ids) != 0 {
		t.Fatalf("blobs left after Disarm: %v", ids)
	}
}
