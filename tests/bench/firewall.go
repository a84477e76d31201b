package bench

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
)

// DenyPrefixes returns n distinct, non-overlapping IPv4 prefixes that never
// contain the addresses of pair idx's pods (10.99.idx.2 and .3), so traffic
// keeps flowing through them. They are built to be realistic work for a
// lookup: the first ones are /32 neighbours inside the pods' own /24 (a
// longest-prefix match walks deep before it misses), the rest a mix of /32
// (70%), /28 (20%) and /24 (10%) in 10.100.0.0/14, 10.112.0.0/12 and
// 10.128.0.0/9.
func DenyPrefixes(idx, n int) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	for host := 10; host < 255 && len(out) < n; host++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(idx), byte(host)}), 32))
	}
	var n32, n28, n24 uint32
	for j := 0; len(out) < n; j++ {
		var base, off uint32
		var bits int
		switch j % 10 {
		case 0:
			base, off, bits = 10<<24|128<<16, n24*256, 24
			n24++
		case 1, 2:
			base, off, bits = 10<<24|112<<16, n28*16, 28
			n28++
		default:
			base, off, bits = 10<<24|100<<16, n32, 32
			n32++
		}
		a := base + off
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), bits))
	}
	return out
}

// iptablesLegacyVariant: n DROP rules on the node netns' FORWARD chain
// (x_tables, evaluated linearly per packet), then a counting ACCEPT for the
// pair's subnet that Verify reads.
func iptablesLegacyVariant(n int) *Variant {
	v := &Variant{Name: fmt.Sprintf("iptables-legacy, %d rules", n),
		Note: "FORWARD chain of the node netns, -d <cidr> -j DROP, never matching"}
	bin := "iptables-legacy-restore"
	if _, err := exec.LookPath(bin); err != nil {
		v.NA = bin + " not installed"
		return v
	}
	v.Setup = func(p *Pair) error {
		var b strings.Builder
		b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
		for _, pf := range DenyPrefixes(p.Index, n) {
			fmt.Fprintf(&b, "-A FORWARD -d %s -j DROP\n", pf)
		}
		fmt.Fprintf(&b, "-A FORWARD -s 10.99.%d.0/24 -j ACCEPT\nCOMMIT\n", p.Index)
		return inNetnsStdin(p.Node, b.String(), bin)
	}
	v.Verify = func(p *Pair) error {
		out, err := inNetnsOutput(p.Node, "iptables-legacy", "-L", "FORWARD", "-v", "-x", "-n")
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := len(lines) - 2; got != n+1 {
			return fmt.Errorf("FORWARD has %d rules, want %d", got, n+1)
		}
		return checkCount(lines[len(lines)-1], "last FORWARD rule (all rules passed)")
	}
	v.Teardown = func(p *Pair) error { return inNetns(p.Node, "iptables-legacy", "-F", "FORWARD") }
	return v
}

func checkCount(line, what string) error {
	f := strings.Fields(line)
	if len(f) == 0 {
		return fmt.Errorf("%s: empty", what)
	}
	pk, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return fmt.Errorf("%s: %q: %w", what, line, err)
	}
	if pk == 0 {
		return fmt.Errorf("%s counted 0 packets: the traffic did not traverse the rules", what)
	}
	return nil
}

const nftTable = "pstestbench"

// nftablesVariant: n rules in a forward-hook chain of the node netns (linear
// evaluation), or with set=true one rule doing one lookup in an interval set
// of the same n prefixes.
func nftablesVariant(n int, set bool) *Variant {
	v := &Variant{Name: fmt.Sprintf("nftables, %d rules", n), Note: "forward hook of the node netns, ip daddr <cidr> drop, never matching"}
	if set {
		v.Name = fmt.Sprintf("nftables, 1 set lookup (%d cidrs)", n)
		v.Note = "forward hook, ip daddr @deny drop (interval set)"
	}
	if _, err := exec.LookPath("nft"); err != nil {
		v.NA = "nft not installed"
		return v
	}
	v.Setup = func(p *Pair) error {
		var b strings.Builder
		fmt.Fprintf(&b, "table ip %s {\n", nftTable)
		pfs := DenyPrefixes(p.Index, n)
		if set {
			b.WriteString("  set deny {\n    type ipv4_addr; flags interval;\n    elements = { ")
			for i, pf := range pfs {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString(pf.String())
			}
			b.WriteString(" }\n  }\n")
		}
		b.WriteString("  chain pstestfwd {\n    type filter hook forward priority 0; policy accept;\n")
		if set {
			b.WriteString("    ip daddr @deny drop\n")
		} else {
			for _, pf := range pfs {
				fmt.Fprintf(&b, "    ip daddr %s drop\n", pf)
			}
		}
		fmt.Fprintf(&b, "    ip saddr 10.99.%d.0/24 counter accept\n  }\n}\n", p.Index)
		return inNetnsStdin(p.Node, b.String(), "nft", "-f", "-")
	}
	v.Verify = func(p *Pair) error {
		out, err := inNetnsOutput(p.Node, "nft", "list", "chain", "ip", nftTable, "pstestfwd")
		if err != nil {
			return err
		}
		i := strings.Index(out, "counter packets ")
		if i < 0 {
			return fmt.Errorf("no counter in chain: %s", firstLine(out))
		}
		return checkCount(out[i+len("counter packets "):], "counting rule after the deny rules")
	}
	v.Teardown = func(p *Pair) error { return inNetns(p.Node, "nft", "delete", "table", "ip", nftTable) }
	return v
}

// proxyVariant: clients talk to a userspace TCP proxy in the server pod.
func proxyVariant() *Variant {
	return &Variant{Name: "userspace TCP proxy (sidecar)", Proxy: true,
		Note: "Go proxy in the server pod: client -> pod:port -> proxy -> 127.0.0.1 -> server, read/write copies"}
}

// BaselineVariants are the variants that need nothing from podscope.
func BaselineVariants(quick bool) []*Variant {
	sizes := []int{10, 1000, 10000}
	var vs []*Variant
	for _, n := range sizes {
		vs = append(vs, iptablesLegacyVariant(n))
	}
	for _, n := range sizes {
		vs = append(vs, nftablesVariant(n, false))
	}
	vs = append(vs, nftablesVariant(10000, true))
	vs = append(vs, proxyVariant())
	return vs
}
