package podstate

import (
	"fmt"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/testenv"
)

// netnsWithVeths returns a netns of the test's own holding n veth links
// (n/2 pairs, both ends there; and its loopback), removed when the test
// ends.
func netnsWithVeths(tb testing.TB, n int) ns.NetNS {
	tb.Helper()
	testenv.RequireRoot(tb)
	netns, err := ns.TempNetNS()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { netns.Close() })
	err = netns.Do(func(ns.NetNS) error {
		for i := 0; i < n/2; i++ {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("pstestva%d", i)}, PeerName: fmt.Sprintf("pstestvb%d", i)}
			if err := netlink.LinkAdd(v); err != nil {
				return fmt.Errorf("adding veth pair %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return netns
}

// The snapshot's index -> name agrees with the netlink library's full
// decode of the same links.
func TestLinkSnapshotMatchesLinkList(t *testing.T) {
	var (
		snap links
		all  []netlink.Link
	)
	err := netnsWithVeths(t, 300).Do(func(ns.NetNS) error {
		var err error
		if snap, err = linkSnapshot(); err != nil {
			return err
		}
		all, err = netlink.LinkList()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 301 || len(snap) != len(all) {
		t.Fatalf("snapshot has %d links, the library lists %d, want 301", len(snap), len(all))
	}
	for _, l := range all {
		a := l.Attrs()
		if got, ok := snap[a.Index]; !ok || got != a.Name {
			t.Errorf("ifindex %d: snapshot has %q (present %v), the library %q", a.Index, got, ok, a.Name)
		}
	}
}

// The reaper's link dump at 1,000 links, against the library's full decode
// (what the reaper used before).
func BenchmarkLinkSnapshot(b *testing.B) {
	netns := netnsWithVeths(b, 1000)
	for name, dump := range map[string]func() error{
		"snapshot":         func() error { _, err := linkSnapshot(); return err },
		"netlink.LinkList": func() error { _, err := netlink.LinkList(); return err },
	} {
		b.Run(name, func(b *testing.B) {
			// The loop runs on the netns's locked thread.
			err := netns.Do(func(ns.NetNS) error {
				for b.Loop() {
					if err := dump(); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// ADD's reaper asks for one slice of links (AddReapSlice requests) where
// the full reaper dumps them all: both at 1,000 links.
func BenchmarkReapSliceLinks(b *testing.B) {
	netns := netnsWithVeths(b, 1000)
	var ifindexes []int
	err := netns.Do(func(ns.NetNS) error {
		all, err := linkSnapshot()
		for i := range all {
			ifindexes = append(ifindexes, i)
		}
		return err
	})
	if err != nil || len(ifindexes) < AddReapSlice {
		b.Fatalf("%d links: %v", len(ifindexes), err)
	}
	for name, check := range map[string]func() error{
		"dump": func() error { _, err := linkSnapshot(); return err },
		"slice-requests": func() error {
			q := newLinkQuery()
			defer q.Close()
			for _, i := range ifindexes[:AddReapSlice] {
				if !q.alive(i, "") {
					return fmt.Errorf("link %d reported gone", i)
				}
			}
			return nil
		},
	} {
		b.Run(name, func(b *testing.B) {
			err := netns.Do(func(ns.NetNS) error {
				for b.Loop() {
					if err := check(); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
