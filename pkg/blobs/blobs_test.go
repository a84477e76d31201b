package blobs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/podscope/podscope/pkg/testenv"
)

func TestRoundTripAcrossChunkBoundaries(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	if _, err := OpenPinned(root); !errors.Is(err, ErrNoStore) {
		t.Fatalf("OpenPinned before any blob: %v", err)
	}
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	// Lengths around the 4088-byte chunk payload, and the largest blob.
	for _, n := range []int{0, 1, 4087, 4088, 4089, 2*4088 + 7, MaxLen, 3, 0} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if err := s.Put(KindPod, 42, b); err != nil {
			t.Fatalf("Put %d bytes: %v", n, err)
		}
		got, ok, err := s.Get(KindPod, 42)
		if err != nil || !ok || !bytes.Equal(got, b) {
			t.Fatalf("%d bytes: got %d bytes ok=%v err=%v", n, len(got), ok, err)
		}
		// Shrinking leaves no chunk of the longer blob behind.
		want := (n + 4087) / 4088
		if n == 0 {
			want = 1
		}
		if c, _ := s.Len(); c != want {
			t.Fatalf("%d bytes stored in %d chunks, want %d", n, c, want)
		}
	}
	if err := s.Put(KindPod, 1, make([]byte, MaxLen+1)); err == nil {
		t.Fatal("a blob over MaxLen was accepted")
	}
	// Kinds do not collide.
	if _, ok, _ := s.Get(KindAuditIdentity, 42); ok {
		t.Fatal("blob found under another kind")
	}
	if ids, err := s.IDs(KindPod); err != nil || len(ids) != 1 || ids[0] != 42 {
		t.Fatalf("IDs = %v, %v", ids, err)
	}
	if err := s.Delete(KindPod, 42); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(KindPod, 42); err != nil {
		t.Fatalf("deleting a missing blob: %v", err)
	}
	if c, _ := s.Len(); c != 0 {
		t.Fatalf("%d chunks left", c)
	}
}
