package cniplugin

import (
	"fmt"
	"net/netip"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podscope/podscope/pkg/pods"
)

// parseArgs reads the pod's identity from CNI_ARGS. containerd and CRI-O
// pass it as `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..` next to
// others (IgnoreUnknown, K8S_POD_INFRA_CONTAINER_ID) that are ignored.
func parseArgs(s string) pods.Identity {
	var id pods.Identity
	fields := map[string]*string{"K8S_POD_NAMESPACE": &id.Namespace, "K8S_POD_NAME": &id.Pod, "K8S_POD_UID": &id.PodUID}
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if dst := fields[strings.TrimSpace(k)]; ok && dst != nil {
			*dst = v
		}
	}
	return id
}

// containerIPs returns the IPs the result assigns to the container interface
// ifname: those whose Interface index points at it, plus those that name no
// interface (older plugins and 0.4.0 results leave it out).
func containerIPs(res *current.Result, ifname string) ([]netip.Prefix, error) {
	idx := -1
	for i, iface := range res.Interfaces {
		if iface.Name == ifname && iface.Sandbox != "" {
			idx = i
			break
		}
	}
	var out []netip.Prefix
	for _, ip := range res.IPs {
		if ip.Interface != nil && idx >= 0 && *ip.Interface != idx {
			continue
		}
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			return nil, fmt.Errorf("prevResult: bad IP %v", ip.Address.IP)
		}
		ones, bits := ip.Address.Mask.Size()
		// A v4 address in a 16-byte slice with a 128-bit mask is IPv4
		// mapped (::ffff:a.b.c.d/120): its prefix counts the 96 bits of
		// the mapping. Found by FuzzPrevResult: unmapping it kept /120, an
		// invalid IPv4 prefix.
		if a.Is4In6() && bits == 128 {
			if ones < 96 {
				return nil, fmt.Errorf("prevResult: IPv4-mapped address %v with a /%d mask", ip.Address.IP, ones)
			}
			ones -= 96
		}
		p := netip.PrefixFrom(a.Unmap(), ones)
		if !p.IsValid() {
			return nil, fmt.Errorf("prevResult: bad address %v", ip.Address.String())
		}
		out = append(out, p)
	}
	if idx < 0 && len(res.Interfaces) > 0 {
		return nil, fmt.Errorf("prevResult has no container interface %q (interfaces with a sandbox: %s)", ifname, sandboxIfaces(res))
	}
	return out, nil
}

func sandboxIfaces(res *current.Result) string {
	var n []string
	for _, i := range res.Interfaces {
		if i.Sandbox != "" {
			n = append(n, i.Name)
		}
	}
	if len(n) == 0 {
		return "none"
	}
	return strings.Join(n, ", ")
}
