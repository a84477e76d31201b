package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/ctl"
)

// TestDualStack: on the IPv4+IPv6 network (runtime handler runc-dual),
// podscope counts IPv6 traffic, lists the IPv6 flow and enforces an IPv6
// rule of a pod's annotation policy, while IPv4 keeps working.
func TestDualStack(t *testing.T) {
	e := mustEnv(t)
	e.requireCNI(t)
	srv := e.runPod(t, podSpec{Namespace: "e2e-dual", Name: "server", Runtime: "runc-dual",
		Annotations: map[string]string{"podscope.io/ingress": `{"default":"allow","rules":[{"cidr":"fd00:77::/64","protocol":"tcp","ports":["6000"],"action":"deny"}]}`}})
	sc := srv.start(t, "tcp5000", "pstraffic", "tcp-serve", "5000")
	srv.start(t, "tcp6000", "pstraffic", "tcp-serve", "6000")
	cli := e.runPod(t, podSpec{Namespace: "e2e-dual", Name: "client", Runtime: "runc-dual"})
	c := cli.start(t, "sleep", "sleep", "3600")
	v6 := func(p *pod) string {
		for _, ip := range p.IPs {
			if a, err := netip.ParseAddr(ip); err == nil && a.Is6() {
				return ip
			}
		}
		t.Fatalf("pod %s has no IPv6 address: %v", p.Name, p.IPs)
		return ""
	}
	srv6, cli6 := v6(srv), v6(cli)
	e.waitAttached(t, srv)
	row := e.waitAttached(t, cli)
	if len(row.IPs) < 2 {
		t.Errorf("podscope knows the client by %v, want its IPv4 and IPv6 addresses", row.IPs)
	}
	addr := func(ip string, port int) string {
		return netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port)).String()
	}
	// IPv6 neighbour discovery must settle (DAD) before the first SYN.
	eventually(t, 15*time.Second, "client -> server over IPv6", func() error {
		_, err := e.exec(c, "pstraffic", "tcp-connect", addr(srv6, 5000), "1s")
		return err
	})

	s0 := e.mustPodRow(t, srv).Counters
	const n = 1_000_000
	if out := strings.TrimSpace(e.mustExec(t, c, "pstraffic", "tcp-send", addr(srv6, 5000), fmt.Sprint(n))); out != fmt.Sprintf("ok %d", n) {
		t.Fatalf("IPv6 tcp-send: %q", out)
	}
	s1 := e.mustPodRow(t, srv).Counters
	if err := within(s1.RxBytes-s0.RxBytes, n); err != nil {
		t.Errorf("server rx over IPv6: %v", err)
	}
	var fl ctl.Flows
	e.podscopectlJSON(t, &fl, "flows", "--pod", "e2e-dual/client")
	var tx uint64
	for _, f := range fl.Flows {
		if f.Proto == "tcp" && f.Remote.Addr().String() == srv6 && f.Remote.Port() == 5000 && f.Local.Addr().String() == cli6 {
			tx += f.TxBytes
		}
	}
	if tx < n {
		t.Errorf("client's IPv6 flows to [%s]:5000 carry %d tx bytes, want >= %d", srv6, tx, n)
	}

	// The annotation's IPv6 rule: tcp/6000 from fd00:77::/64 denied; the
	// same port over IPv4 is not covered by it and works.
	eventually(t, 10*time.Second, "server's own tcp/6000 over loopback", func() error {
		_, err := e.exec(sc, "pstraffic", "tcp-connect", "[::1]:6000", "1s")
		return err
	})
	if _, err := e.exec(c, "pstraffic", "tcp-connect", addr(srv6, 6000), "2s"); err == nil {
		t.Error("client -> server:6000 over IPv6 connected; the server's annotation denies it")
	}
	if _, err := e.exec(c, "pstraffic", "tcp-connect", addr(srv.IP, 6000), "2s"); err != nil {
		t.Errorf("client -> server:6000 over IPv4 (no rule covers it): %v", err)
	}
	if d := e.mustPodRow(t, srv).Counters.DropsIngress; d == 0 {
		t.Error("server: no ingress drops counted for the denied IPv6 SYNs")
	}
}
