package cniplugin

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// NotVethError: the pod's interface has no host side to attach to (macvlan,
// ipvlan, host-device, an SR-IOV VF…).
type NotVethError struct {
	Interface, Type string
}

func (e *NotVethError) Error() string {
	return fmt.Sprintf("container interface %s is a %s link; podscope attaches to the host side of a veth", e.Interface, e.Type)
}

// hostVeth finds the host side of the pod's veth: the container interface's
// IFLA_LINK (ParentIndex) is its peer's ifindex in the namespace the plugin
// runs in. Asking the kernel is more robust than trusting names in
// prevResult: some primary plugins report no host interface at all.
func hostVeth(netnsPath, ifname string) (int, string, error) {
	netns, err := ns.GetNS(netnsPath)
	if err != nil {
		return 0, "", fmt.Errorf("opening pod netns %s: %w", netnsPath, err)
	}
	defer netns.Close()
	var peer int
	err = netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("container interface %s in %s: %w", ifname, netnsPath, err)
		}
		v, ok := l.(*netlink.Veth)
		if !ok {
			return &NotVethError{Interface: ifname, Type: l.Type()}
		}
		peer = l.Attrs().ParentIndex
		if peer == 0 {
			if peer, err = netlink.VethPeerIndex(v); err != nil {
				return fmt.Errorf("peer of %s: %w", ifname, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	host, err := netlink.LinkByIndex(peer)
	if err != nil {
		return 0, "", fmt.Errorf("host side of %s (ifindex %d) not found in the plugin's netns: %w", ifname, peer, err)
	}
	return peer, host.Attrs().Name, nil
}
