package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/ctl"
)

// TestTrafficAccounting: a client pod sends exact amounts of TCP and UDP to
// a server pod; podscope's per-pod counters (`podscopectl pods -o json`) and
// flows account for them within the stated header overhead.
func TestTrafficAccounting(t *testing.T) {
	e := mustEnv(t)
	e.requireCNI(t)
	srv := e.runPod(t, podSpec{Namespace: "e2e-acct", Name: "server"})
	srv.start(t, "tcp", "pstraffic", "tcp-serve", "5000")
	srv.start(t, "udp", "pstraffic", "udp-echo", "5001")
	cli := e.runPod(t, podSpec{Namespace: "e2e-acct", Name: "client"})
	c := cli.start(t, "sleep", "sleep", "3600")
	e.waitAttached(t, srv)
	e.waitAttached(t, cli)
	// Wait until both servers listen (a refused SYN would count too, but
	// the sums below would then be off by a retry).
	eventually(t, 10*time.Second, "server listening", func() error {
		_, err := e.exec(c, "pstraffic", "tcp-connect", srv.IP+":5000", "1s")
		return err
	})

	s0, c0 := e.mustPodRow(t, srv).Counters, e.mustPodRow(t, cli).Counters
	const tcpBytes, udpCount, udpSize = 2_000_000, 200, 1000
	if out := strings.TrimSpace(e.mustExec(t, c, "pstraffic", "tcp-send", srv.IP+":5000", fmt.Sprint(tcpBytes))); out != fmt.Sprintf("ok %d", tcpBytes) {
		t.Fatalf("tcp-send: server answered %q", out)
	}
	if out := strings.TrimSpace(e.mustExec(t, c, "pstraffic", "udp-send", srv.IP+":5001", fmt.Sprint(udpCount), fmt.Sprint(udpSize))); out != fmt.Sprintf("echoed %d", udpCount) {
		t.Fatalf("udp-send: %q", out)
	}
	s1, c1 := e.mustPodRow(t, srv).Counters, e.mustPodRow(t, cli).Counters

	sent := uint64(tcpBytes + udpCount*udpSize)
	echoed := uint64(udpCount * udpSize)
	t.Logf("client tx %d rx %d, server rx %d tx %d (payload client->server %d, server->client %d)",
		c1.TxBytes-c0.TxBytes, c1.RxBytes-c0.RxBytes, s1.RxBytes-s0.RxBytes, s1.TxBytes-s0.TxBytes, sent, echoed)
	for _, chk := range []struct {
		what      string
		got, want uint64
	}{
		{"client tx", c1.TxBytes - c0.TxBytes, sent},
		{"server rx", s1.RxBytes - s0.RxBytes, sent},
		{"client rx", c1.RxBytes - c0.RxBytes, echoed},
		{"server tx", s1.TxBytes - s0.TxBytes, echoed},
	} {
		if err := within(chk.got, chk.want); err != nil {
			t.Errorf("%s: %v", chk.what, err)
		}
	}
	if c1.TxPackets-c0.TxPackets < udpCount || s1.RxPackets-s0.RxPackets < udpCount {
		t.Errorf("packets: client tx %d, server rx %d; want at least the %d datagrams", c1.TxPackets-c0.TxPackets, s1.RxPackets-s0.RxPackets, udpCount)
	}

	// The same counters as Prometheus metrics (read from the pins per
	// scrape, so at least what podscopectl saw a moment ago).
	uid := `pod_uid="` + srv.UID + `"`
	for _, m := range []struct {
		name string
		min  uint64
	}{
		{"podscope_network_receive_bytes_total", s1.RxBytes},
		{"podscope_network_transmit_bytes_total", s1.TxBytes},
		{"podscope_network_receive_packets_total", s1.RxPackets},
	} {
		v, ok := e.metric(t, m.name, uid, `namespace="e2e-acct"`, `pod="server"`)
		if !ok || v < float64(m.min) {
			t.Errorf("metric %s{pod=\"server\"} = %v (present %v), want >= %d", m.name, v, ok, m.min)
		}
	}

	// Flows of the client: one TCP flow to :5000 and UDP to :5001, it
	// initiated both.
	var fl ctl.Flows
	e.podscopectlJSON(t, &fl, "flows", "--pod", "e2e-acct/client")
	var tcpTx, udpTx uint64
	for _, f := range fl.Flows {
		if f.Remote.Addr().String() != srv.IP {
			continue
		}
		switch {
		case f.Proto == "tcp" && f.Remote.Port() == 5000:
			tcpTx += f.TxBytes
		case f.Proto == "udp" && f.Remote.Port() == 5001:
			udpTx += f.TxBytes
		}
	}
	if tcpTx < tcpBytes {
		t.Errorf("client flows to %s:5000/tcp carry %d tx bytes, want >= %d: %+v", srv.IP, tcpTx, tcpBytes, fl.Flows)
	}
	if udpTx < udpCount*udpSize {
		t.Errorf("client flows to %s:5001/udp carry %d tx bytes, want >= %d", srv.IP, udpTx, udpCount*udpSize)
	}
}
