package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/testenv"
)

// Measurements for the closing note; not run by `go test` without -bench:
//
//	go test ./tests/integration/ -run '^$' -bench . -benchtime 1x
//
// BenchmarkCNILatency: wall time of the whole chain ADD and DEL through
// libcni (every plugin a fresh exec, as containerd does), 100 pods one after
// another, for bridge alone and bridge+podscope (interleaved), p50/p95 in ms.
// BenchmarkPodThroughput: iperf3 TCP (3 s) between two pods on one bridge,
// with and without podscope, three interleaved rounds in the same run.

const latencyRuns = 100

func percentile(d []time.Duration, p float64) float64 {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return float64(s[i].Microseconds()) / 1000
}

func BenchmarkCNILatency(b *testing.B) {
	type setup struct {
		name       string
		n          *node
		ps         []*pod
		adds, dels []time.Duration
	}
	var setups []*setup
	for _, tc := range []struct {
		name string
		opts nodeOpts
	}{{"bridge", nodeOpts{noPodscope: true}}, {"bridge+podscope", nodeOpts{}}} {
		s := &setup{name: tc.name, n: newNode(b, tc.opts)}
		// One pod first so the bridge exists and (with podscope) the
		// programs are loaded: steady state, not the node's first pod.
		s.n.mustAdd(s.n.newPod("warm", nil))
		for i := 0; i < latencyRuns; i++ {
			s.ps = append(s.ps, s.n.newPod(fmt.Sprintf("lat-%03d", i), nil))
		}
		setups = append(setups, s)
	}
	// Interleaved: pod i of every setup, then pod i+1, so load from
	// elsewhere on the machine hits both alike.
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < latencyRuns; i++ {
			for _, s := range setups {
				t0 := time.Now()
				if err := s.n.add(s.ps[i]); err != nil {
					b.Fatalf("%s: %v", s.name, err)
				}
				s.adds = append(s.adds, time.Since(t0))
			}
		}
		for i := 0; i < latencyRuns; i++ {
			for _, s := range setups {
				t0 := time.Now()
				if err := s.n.del(s.ps[i], s.ps[i].netnsPath); err != nil {
					b.Fatalf("%s: %v", s.name, err)
				}
				s.dels = append(s.dels, time.Since(t0))
			}
		}
	}
	b.StopTimer()
	for _, s := range setups {
		b.ReportMetric(percentile(s.adds, 0.50), s.name+"-add-p50-ms")
		b.ReportMetric(percentile(s.adds, 0.95), s.name+"-add-p95-ms")
		b.ReportMetric(percentile(s.dels, 0.50), s.name+"-del-p50-ms")
		b.ReportMetric(percentile(s.dels, 0.95), s.name+"-del-p95-ms")
	}
}

func BenchmarkPodThroughput(b *testing.B) {
	iperf := testenv.RequireTool(b, "iperf3")
	type setup struct {
		name     string
		srv, cli *pod
		total    float64
		runs     int
	}
	var setups []*setup
	for _, tc := range []struct {
		name string
		opts nodeOpts
	}{{"bridge", nodeOpts{noPodscope: true}}, {"bridge+podscope", nodeOpts{}}} {
		n := newNode(b, tc.opts)
		s := &setup{name: tc.name, srv: n.newPod("iperf-srv", nil), cli: n.newPod("iperf-cli", nil)}
		n.mustAdd(s.srv)
		n.mustAdd(s.cli)
		setups = append(setups, s)
	}
	// Interleaved rounds, so load from elsewhere on the machine hits both
	// setups alike.
	const rounds = 3
	for i := 0; i < b.N*rounds; i++ {
		for _, s := range setups {
			bps, err := iperf3(iperf, s.srv, s.cli, 3*time.Second)
			if err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
			b.Logf("round %d %s: %.2f Gbit/s", i, s.name, bps/1e9)
			s.total += bps
			s.runs++
		}
	}
	for _, s := range setups {
		b.ReportMetric(s.total/float64(s.runs)/1e9, s.name+"-Gbit/s")
	}
}

// iperf3 runs a one-shot server in srv's netns and a TCP client in cli's,
// returning the received bits per second.
func iperf3(bin string, srv, cli *pod, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d+20*time.Second)
	defer cancel()
	server := exec.CommandContext(ctx, "nsenter", "--net="+srv.netnsPath, bin, "-s", "-1", "-B", srv.v4.String(), "-p", "5201")
	if err := server.Start(); err != nil {
		return 0, err
	}
	defer func() {
		// Only the server we started, by its PID.
		_ = server.Process.Kill()
		_ = server.Wait()
	}()
	var out []byte
	var err error
	for try := 0; try < 20; try++ { // the server needs a moment to listen
		out, err = exec.CommandContext(ctx, "nsenter", "--net="+cli.netnsPath, bin, "-c", srv.v4.String(), "-p", "5201",
			"-t", strconv.Itoa(int(d.Seconds())), "-J").Output()
		if err == nil && !strings.Contains(string(out), `"error"`) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 client: %v: %.500s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, err
	}
	if res.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("iperf3 reported no throughput: %.500s", out)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}
