package podstate

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
)

func TestAccountingLines(t *testing.T) {
	dir := t.TempDir()
	p := pods.Pod{ID: 3, Namespace: "ns1", Name: "web", UID: "u", ContainerID: "c1", Interface: "eth0",
		IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}, AttachedAt: time.Unix(100, 0).UTC(), Mode: "tcx"}
	c := datapath.Counters{RxBytes: 10, RxPackets: 1, TxBytes: 20, TxPackets: 2, DropsEgress: 3, DropsIngress: 4}
	if err := Append(dir, NewRecord(p, "del", c, nil)); err != nil {
		t.Fatal(err)
	}
	p.ContainerID = "c2"
	if err := Append(dir, NewRecord(p, "gc", datapath.Counters{}, errors.New("pins gone"))); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, AccountingFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("accounting log mode %v, want 0600", st.Mode().Perm())
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 2 {
		t.Fatalf("%d lines", len(recs))
	}
	r := recs[0]
	if r.ContainerID != "c1" || r.Pod != "web" || r.Namespace != "ns1" || r.Reason != "del" || r.TxBytes != 20 ||
		r.RxPackets != 1 || r.DropsIngress != 4 || r.PodID != 3 || !r.AttachedAt.Equal(p.AttachedAt) || r.DetachedAt.IsZero() {
		t.Errorf("record 1: %+v", r)
	}
	if recs[1].CountersError != "pins gone" || recs[1].Reason != "gc" {
		t.Errorf("record 2: %+v", recs[1])
	}
}

func TestStaleReason(t *testing.T) {
	ls := newLinkQuery()
	defer ls.Close()
	// HostVethAlive (CHECK) asks the same question on a socket of its own.
	if !HostVethAlive(pods.Pod{HostIfindex: 1, HostInterface: "lo"}) ||
		HostVethAlive(pods.Pod{HostIfindex: 1 << 30, HostInterface: "vethnothere"}) ||
		HostVethAlive(pods.Pod{HostIfindex: 1, HostInterface: "veth123"}) {
		t.Error("HostVethAlive: want lo alive, a missing ifindex and a reused one gone")
	}
	gone := pods.Pod{HostIfindex: 1 << 30, HostInterface: "vethnothere"}
	if r := staleReason(gone, ls); r == "" {
		t.Error("a pod whose host ifindex does not exist is not stale")
	}
	// Loopback exists in every netns: alive, unless the name differs
	// (the kernel reused the ifindex for another device).
	if r := staleReason(pods.Pod{HostIfindex: 1, HostInterface: "lo"}, ls); r != "" {
		t.Errorf("live pod reported stale: %s", r)
	}
	if r := staleReason(pods.Pod{HostIfindex: 1, HostInterface: "veth123"}, ls); r == "" {
		t.Error("reused ifindex not detected")
	}
	if r := staleReason(pods.Pod{HostIfindex: 1, HostInterface: "lo", Netns: filepath.Join(t.TempDir(), "pstest-none")}, ls); r == "" {
		t.Error("vanished netns file not detected")
	}
	// The runtime's netns dir not mounted where the reaper runs (the
	// DaemonSet's podscope-nri once): the file is not gone, it is
	// not visible; the live veth decides.
	if r := staleReason(pods.Pod{HostIfindex: 1, HostInterface: "lo", Netns: filepath.Join(t.TempDir(), "not-mounted", "cni-1")}, ls); r != "" {
		t.Errorf("a netns file whose directory is not visible is not a staleness signal: %s", r)
	}
	if r := staleReason(pods.Pod{HostIfindex: 1, HostInterface: "lo", Netns: "/proc/999999999/ns/net"}, ls); r != "" {
		t.Errorf("a /proc netns path is not a staleness signal: %s", r)
	}
}

// Only the kernel's "no such device" makes a link gone: a question that
// fails otherwise (here: the ioctl asked of a file, which is no socket)
// must not get a live pod torn down.
func TestLinkQueryFailureIsNotGone(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	q := &linkQuery{fd: int(f.Fd())}
	if !q.alive(1<<30, "vethnothere") {
		t.Error("a failed question (not ENODEV) reported the link gone")
	}
	if r := staleReason(pods.Pod{HostIfindex: 1 << 30, HostInterface: "vethnothere"}, q); r != "" {
		t.Errorf("a failed question made the pod stale: %s", r)
	}
}

// While podscope-nri reaps (its stamp younger than twice its interval),
// ADD does not; once the daemon stops or its stamp ages, ADD reaps again.
// One stamp serves both: it says how long the last reap holds.
func TestReapDueLeavesReapingToTheDaemon(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if err := MarkDaemonReaped(dir, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, after := range []time.Duration{0, time.Second, 61 * time.Second, 119 * time.Second} {
		if ReapDue(dir, now.Add(after)) {
			t.Fatalf("ADD %v after the daemon's reap (interval 1m) reaps itself", after)
		}
	}
	if !ReapDue(dir, now.Add(121*time.Second)) {
		t.Fatal("ADD does not reap when the daemon's stamp is older than twice its interval")
	}
	// A daemon that stopped removes its stamp: the next ADD reaps (its own
	// 10 s interval started at the reap just above, so 11 s later).
	if err := MarkDaemonReaped(dir, now.Add(122*time.Second), time.Minute); err != nil {
		t.Fatal(err)
	}
	if ReapDue(dir, now.Add(132*time.Second)) {
		t.Fatal("ADD reaps while the daemon's stamp is fresh")
	}
	if err := ClearDaemonReaped(dir); err != nil {
		t.Fatal(err)
	}
	if err := ClearDaemonReaped(dir); err != nil {
		t.Fatalf("removing a stamp that is gone: %v", err)
	}
	if !ReapDue(dir, now.Add(133*time.Second)) {
		t.Fatal("ADD does not reap after the daemon removed its stamp")
	}
	// A stamp that does not parse holds like an ADD's (AddReapInterval),
	// never like a daemon's.
	if err := os.WriteFile(filepath.Join(dir, ReapStamp), []byte("soon\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !ReapDue(dir, now.Add(144*time.Second)) {
		t.Fatal("an unreadable daemon stamp stops ADD from reaping")
	}
}

// ADD reaps at most once per AddReapInterval per node.
func TestReapDue(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if !ReapDue(dir, now) {
		t.Fatal("first ADD on a node does not reap")
	}
	if ReapDue(dir, now.Add(time.Second)) {
		t.Fatal("second ADD a second later reaps again")
	}
	if !ReapDue(dir, now.Add(AddReapInterval+time.Second)) {
		t.Fatal("ADD after the interval does not reap")
	}
	if ReapDue(dir, now.Add(AddReapInterval+2*time.Second)) {
		t.Fatal("the interval did not restart at the last reap")
	}
}
