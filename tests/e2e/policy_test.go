package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/ctl"
)

// The network's default policy (hack/e2e-env.sh's conflist) denies egress to
// 10.77.0.0/24 tcp/7777 and allows the rest.
const serverIngress = `{"default":"deny","rules":[{"cidr":"10.77.0.0/24","protocol":"tcp","ports":["80"],"action":"allow"}]}`

// TestPolicy: the network default policy and a per-pod annotation policy
// are enforced on real pods; denied destinations are unreachable, allowed
// ones work, and replies of allowed connections pass in the direction that
// would otherwise deny them.
func TestPolicy(t *testing.T) {
	e := mustEnv(t)
	e.requireCNI(t)
	// server: ingress default deny except tcp/80 (annotation).
	srv := e.runPod(t, podSpec{Namespace: "e2e-policy", Name: "server",
		Annotations: map[string]string{"podscope.io/ingress": serverIngress}})
	for _, port := range []string{"80", "8080"} {
		srv.start(t, "tcp"+port, "pstraffic", "tcp-serve", port)
	}
	srv.start(t, "udp", "pstraffic", "udp-echo", "5001")
	sc := srv.start(t, "sleep", "sleep", "3600")
	// open: no annotation, the network default applies.
	open := e.runPod(t, podSpec{Namespace: "e2e-policy", Name: "open"})
	open.start(t, "tcp80", "pstraffic", "tcp-serve", "80")
	oc := open.start(t, "tcp7777", "pstraffic", "tcp-serve", "7777")
	cli := e.runPod(t, podSpec{Namespace: "e2e-policy", Name: "client"})
	cli.start(t, "tcp6000", "pstraffic", "tcp-serve", "6000")
	c := cli.start(t, "sleep", "sleep", "3600")
	for _, p := range []*pod{srv, open, cli} {
		e.waitAttached(t, p)
	}
	connect := func(from, addr string) error {
		_, err := e.exec(from, "pstraffic", "tcp-connect", addr, "2s")
		return err
	}
	eventually(t, 10*time.Second, "client -> server:80 (allowed by the server's annotation)", func() error { return connect(c, srv.IP+":80") })
	eventually(t, 10*time.Second, "client -> open:80 (allowed by default)", func() error { return connect(c, open.IP+":80") })
	// Controls: the denied services do listen (over loopback, which no
	// policy sees), so a failure below is the policy's doing.
	eventually(t, 10*time.Second, "server's own tcp/8080 over loopback", func() error { return connect(sc, "127.0.0.1:8080") })
	eventually(t, 10*time.Second, "open's own tcp/7777 over loopback", func() error { return connect(oc, "127.0.0.1:7777") })
	if out, err := e.exec(sc, "pstraffic", "udp-send", "127.0.0.1:5001", "3", "100"); err != nil || strings.TrimSpace(out) != "echoed 3" {
		t.Fatalf("server's own udp/5001 over loopback: %q %v", out, err)
	}
	d0 := e.mustPodRow(t, srv).Counters
	c0 := e.mustPodRow(t, cli).Counters

	if err := connect(c, srv.IP+":8080"); err == nil {
		t.Error("client -> server:8080 connected; the server's ingress annotation denies it")
	}
	if out, err := e.exec(c, "pstraffic", "udp-send", srv.IP+":5001", "3", "100"); err != nil || strings.TrimSpace(out) != "echoed 0" {
		t.Errorf("client -> server:5001/udp: %q %v; want no echo (ingress default deny)", out, err)
	}
	if err := connect(c, open.IP+":7777"); err == nil {
		t.Error("client -> open:7777 connected; the network's default egress policy denies tcp/7777")
	}
	// Replies pass: the server (ingress default deny) initiates to the
	// client's tcp/6000; the answers come into the server from port 6000,
	// which its ingress rules alone would drop.
	if out, err := e.exec(sc, "pstraffic", "tcp-send", cli.IP+":6000", "50000"); err != nil || strings.TrimSpace(out) != "ok 50000" {
		t.Errorf("server -> client:6000 (replies must pass the server's ingress deny): %q %v", out, err)
	}
	// An egress annotation: "locked" may only reach server:80.
	locked := e.runPod(t, podSpec{Namespace: "e2e-policy", Name: "locked", Annotations: map[string]string{
		"podscope.io/egress": `{"default":"deny","rules":[{"cidr":"` + srv.IP + `/32","protocol":"tcp","ports":["80"],"action":"allow"}]}`}})
	lc := locked.start(t, "sleep", "sleep", "3600")
	e.waitAttached(t, locked)
	eventually(t, 10*time.Second, "locked -> server:80 (its egress annotation allows it)", func() error { return connect(lc, srv.IP+":80") })
	if err := connect(lc, open.IP+":80"); err == nil {
		t.Error("locked -> open:80 connected; its egress annotation (default deny) forbids it")
	}
	if l := e.mustPodRow(t, locked).Counters; l.DropsEgress == 0 {
		t.Error("locked: no egress drops counted for the denied SYNs to open:80")
	}

	// And the allowed path still works after all that.
	if err := connect(c, srv.IP+":80"); err != nil {
		t.Errorf("client -> server:80 after the denied attempts: %v", err)
	}

	d1 := e.mustPodRow(t, srv).Counters
	c1 := e.mustPodRow(t, cli).Counters
	if d1.DropsIngress <= d0.DropsIngress {
		t.Errorf("server ingress drops %d -> %d: the denied SYNs/datagrams were not counted", d0.DropsIngress, d1.DropsIngress)
	}
	if c1.DropsEgress <= c0.DropsEgress {
		t.Errorf("client egress drops %d -> %d: the denied tcp/7777 SYNs were not counted", c0.DropsEgress, c1.DropsEgress)
	}

	if v, ok := e.metric(t, "podscope_network_policy_drops_total", `pod_uid="`+srv.UID+`"`, `direction="ingress"`); !ok || v < float64(d1.DropsIngress) {
		t.Errorf("metric podscope_network_policy_drops_total{pod=\"server\",direction=\"ingress\"} = %v (present %v), want >= %d", v, ok, d1.DropsIngress)
	}

	// What the kernel enforces, as podscopectl shows it.
	var pp ctl.PodPolicy
	e.podscopectlJSON(t, &pp, "policy", "show", "e2e-policy/server")
	var ingressDeny, port80, egress7777 bool
	for _, en := range pp.Entries {
		if en.Direction == "ingress" && en.Default == "deny" {
			ingressDeny = true
		}
		for _, r := range en.Rules {
			if en.Direction == "ingress" && r.Protocol == "tcp" && r.Ports == "80" && r.Action == "allow" {
				port80 = true
			}
			if en.Direction == "egress" && r.Protocol == "tcp" && r.Ports == "7777" && r.Action == "deny" {
				egress7777 = true
			}
		}
	}
	if !ingressDeny || !port80 {
		t.Errorf("policy show e2e-policy/server: want ingress default deny with tcp/80 allowed: %+v", pp.Entries)
	}
	// The annotation replaced the ingress default only: egress is still the
	// network's (tcp/7777 denied).
	if !egress7777 {
		t.Errorf("policy show e2e-policy/server: the network's egress rule (tcp/7777 deny) is gone: %+v", pp.Entries)
	}
}
