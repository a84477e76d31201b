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

// The link question agrees with the netlink library's list of the same
// links: every link alive under its name, under no name, and not under
// another name; an index past them gone.
func TestLinkQueryMatchesLinkList(t *testing.T) {
	err := netnsWithVeths(t, 300).Do(func(ns.NetNS) error {
		all, err := netlink.LinkList()
		if err != nil {
			return err
		}
		if len(all) != 301 {
			return fmt.Errorf("the library lists %d links, want 301", len(all))
		}
		q := newLinkQuery()
		defer q.Close()
		top := 0
		for _, l := range all {
			a := l.Attrs()
			if !q.alive(a.Index, a.Name) || !q.alive(a.Index, "") {
				t.Errorf("link %d %q reported gone", a.Index, a.Name)
			}
			if q.alive(a.Index, a.Name+"x") {
				t.Errorf("link %d %q reported alive as %q", a.Index, a.Name, a.Name+"x")
			}
			top = max(top, a.Index)
		}
		if q.alive(top+1, "") {
			t.Errorf("ifindex %d (no link) reported alive", top+1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The reaper's link questions for 1,000 links and for ADD's slice, against
// the netlink dump of the same links (what the reaper did before).
func BenchmarkReapLinks(b *testing.B) {
	netns := netnsWithVeths(b, 1000)
	var all []netlink.Link
	err := netns.Do(func(ns.NetNS) (err error) {
		all, err = netlink.LinkList()
		return err
	})
	if err != nil || len(all) < AddReapSlice {
		b.Fatalf("%d links: %v", len(all), err)
	}
	ask := func(links []netlink.Link) func() error {
		return func() error {
			q := newLinkQuery()
			defer q.Close()
			for _, l := range links {
				if !q.alive(l.Attrs().Index, l.Attrs().Name) {
					return fmt.Errorf("link %s reported gone", l.Attrs().Name)
				}
			}
			return nil
		}
	}
	for name, check := range map[string]func() error{
		"netlink.LinkList":   func() error { _, err := netlink.LinkList(); return err },
		"ioctl, all links":   ask(all),
		"ioctl, ADD's slice": ask(all[:AddReapSlice]),
	} {
		b.Run(name, func(b *testing.B) {
			// The loop runs on the netns's locked thread.
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
