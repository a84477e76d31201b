package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPodsTalk is the harness's own proof: two pods on the bridge-only
// network (no podscope in their chain) start, get addresses and exchange
// HTTP and TCP. Everything else builds on this working.
func TestPodsTalk(t *testing.T) {
	e := mustEnv(t)
	srv := e.runPod(t, podSpec{Namespace: "e2e-talk", Name: "web", Runtime: "runc-bare"})
	srv.start(t, "httpd", "httpd", "-f", "-p", "80", "-h", "/var/www")
	srv.start(t, "tcp", "pstraffic", "tcp-serve", "5000")
	cli := e.runPod(t, podSpec{Namespace: "e2e-talk", Name: "client", Runtime: "runc-bare"})
	c := cli.start(t, "sleep", "sleep", "3600")
	if srv.IP == "" || cli.IP == "" || srv.IP == cli.IP {
		t.Fatalf("pod IPs: server %q client %q", srv.IP, cli.IP)
	}
	var body string
	eventually(t, 10*time.Second, "client wget of the server pod", func() error {
		var err error
		body, err = e.exec(c, "timeout", "3", "wget", "-q", "-O", "-", "http://"+srv.IP+"/") // busybox 1.35 wget -T segfaults
		return err
	})
	if !strings.Contains(body, "hello from podscope e2e") {
		t.Fatalf("wget body = %q", body)
	}
	out := e.mustExec(t, c, "pstraffic", "tcp-send", srv.IP+":5000", "100000")
	if strings.TrimSpace(out) != "ok 100000" {
		t.Fatalf("tcp-send reply %q, want \"ok 100000\"", out)
	}
}

// BenchmarkPodStartLatency measures crictl runp+create+start with podscope
// in the chain (default handler) and without it (runc-bare), one pod of
// each per iteration, interleaved, and reports the medians. A measurement,
// never a pass/fail on time; run it with
// `RUN='^$' BENCH=PodStartLatency make e2e` (20 pods of each by default:
// BENCHTIME=Nx).
func BenchmarkPodStartLatency(b *testing.B) {
	e := mustEnv(b)
	// Each pod is removed before the next round: both kinds see the same
	// machine state (caches, load).
	one := func(runtime, label string, i int) time.Duration {
		p := e.runPod(b, podSpec{Namespace: "e2e-latency", Name: fmt.Sprintf("%s-%d", label, i), Runtime: runtime})
		start := time.Now()
		p.start(b, "sleep", "sleep", "3600")
		took := p.runpTook + time.Since(start)
		p.remove(b)
		return took
	}
	var bareDs, withDs []time.Duration
	for i := 0; b.Loop(); i++ {
		bareDs = append(bareDs, one("runc-bare", "bare", i))
		withDs = append(withDs, one("", "podscope", i))
	}
	slices.Sort(bareDs)
	slices.Sort(withDs)
	n := len(bareDs)
	bare, with := bareDs[n/2], withDs[n/2]
	b.ReportMetric(float64(bare.Microseconds())/1000, "bridge-p50-ms")
	b.ReportMetric(float64(with.Microseconds())/1000, "podscope-p50-ms")
	label := "with podscope"
	if !e.chained {
		label = "default handler WITHOUT podscope (bin/podscope not built)"
	}
	msg := fmt.Sprintf("pod start latency (crictl runp+create+start, p50 over %d pods): bridge only %v, %s %v",
		n, bare.Round(time.Millisecond), label, with.Round(time.Millisecond))
	b.Log(msg)
	if err := os.WriteFile(filepath.Join(e.work, "latency.txt"), []byte(msg+"\n"), 0o644); err != nil {
		b.Error(err)
	}
}

// TestNetworkReady: containerd calls podscope's CNI STATUS on every CRI
// status call; a failing STATUS would mark the node NetworkNotReady.
func TestNetworkReady(t *testing.T) {
	e := mustEnv(t)
	e.requireCNI(t)
	var info struct {
		Status struct {
			Conditions []struct {
				Type    string `json:"type"`
				Status  bool   `json:"status"`
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(e.mustCrictl(t, "info", "-o", "json")), &info); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range info.Status.Conditions {
		if c.Type == "NetworkReady" {
			found = true
			if !c.Status {
				t.Errorf("NetworkReady false with podscope chained: %s: %s", c.Reason, c.Message)
			}
		}
	}
	if !found {
		t.Errorf("crictl info has no NetworkReady condition: %+v", info.Status.Conditions)
	}
}
