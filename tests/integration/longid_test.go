package integration

import (
	"strings"
	"testing"
)

// Identities the CRI allows but the registry's fixed slots cannot hold (a
// 48-byte pod UID from a CRI client that prefixes its UUIDs, a 200-byte
// container ID) attach through libcni, are found exactly by DEL, accounted
// once, and leave nothing.
func TestLongIdentityThroughLibcni(t *testing.T) {
	n := newNode(t, nodeOpts{})
	p := n.newPod("long-id", nil)
	p.uid = "pstest-prefix-" + p.uid[:34]
	p.containerID = strings.Repeat(p.containerID, 4)[:200]
	if len(p.uid) != 48 {
		t.Fatalf("uid is %d bytes", len(p.uid))
	}
	if err := n.add(p); err != nil {
		t.Fatalf("ADD of a pod with a 48-byte UID and a 200-byte container ID: %v", err)
	}
	reg, ok := n.registered(p)
	if !ok || reg.UID != p.uid || reg.ContainerID != p.containerID || reg.Unobserved != "" {
		t.Fatalf("registry: %+v", reg)
	}
	if err := n.check(p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := n.del(p, p.netnsPath); err != nil {
		t.Fatal(err)
	}
	if err := n.del(p, ""); err != nil {
		t.Fatal(err)
	}
	lines := n.accountingLines(p.containerID)
	if len(lines) != 1 || lines[0]["podUID"] != p.uid {
		t.Fatalf("accounting lines: %v", lines)
	}
	st, err := readPins(n.root)
	if err != nil {
		t.Fatal(err)
	}
	if left := st.nonEmptyMaps(); len(left) != 0 {
		t.Fatalf("map entries left: %v", left)
	}
}
