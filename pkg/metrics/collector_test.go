package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podscope/podscope/pkg/pods"
)

type fakeNet struct {
	pods []PodNetwork
	err  error
	n    int // scrapes served
}

func (f *fakeNet) PodNetwork() ([]PodNetwork, error) { f.n++; return f.pods, f.err }

type fakeAudit struct {
	mode   string
	lost   map[Container]uint64
	armed  int
	err    error
	writes WriteCounter
}

func (f *fakeAudit) Mode() (string, error)               { return f.mode, f.err }
func (f *fakeAudit) Lost() (map[Container]uint64, error) { return f.lost, f.err }
func (f *fakeAudit) Armed() (int, error)                 { return f.armed, f.err }
func (f *fakeAudit) WriteEvents() map[WriteKey]uint64    { return f.writes.Snapshot() }

var web = PodNetwork{Identity: pods.Identity{Namespace: "default", Pod: "web", PodUID: "u-web"}, Interface: "eth0",
	RxBytes: 1500, RxPackets: 10, TxBytes: 700, TxPackets: 7, DropsEgress: 3, DropsIngress: 1}

func TestNetworkMetrics(t *testing.T) {
	db := PodNetwork{Identity: pods.Identity{Namespace: "prod", Pod: "db", PodUID: "u-db"}, Interface: "eth0", RxBytes: 5, RxPackets: 1}
	src := &fakeNet{pods: []PodNetwork{web, db}}
	c := &Collector{Network: src}
	want := `
# HELP podscope_network_receive_bytes_total Bytes received by the pod on the interface (pod's view), counted by podscope's TC programs.
# TYPE podscope_network_receive_bytes_total counter
podscope_network_receive_bytes_total{interface="eth0",namespace="default",pod="web",pod_uid="u-web"} 1500
podscope_network_receive_bytes_total{interface="eth0",namespace="prod",pod="db",pod_uid="u-db"} 5
# HELP podscope_network_transmit_packets_total Packets transmitted by the pod on the interface (pod's view).
# TYPE podscope_network_transmit_packets_total counter
podscope_network_transmit_packets_total{interface="eth0",namespace="default",pod="web",pod_uid="u-web"} 7
podscope_network_transmit_packets_total{interface="eth0",namespace="prod",pod="db",pod_uid="u-db"} 0
# HELP podscope_network_policy_drops_total Packets dropped by podscope network policy, by direction (egress: sent by the pod, ingress: to the pod).
# TYPE podscope_network_policy_drops_total counter
podscope_network_policy_drops_total{direction="egress",interface="eth0",namespace="default",pod="web",pod_uid="u-web"} 3
podscope_network_policy_drops_total{direction="egress",interface="eth0",namespace="prod",pod="db",pod_uid="u-db"} 0
podscope_network_policy_drops_total{direction="ingress",interface="eth0",namespace="default",pod="web",pod_uid="u-web"} 1
podscope_network_policy_drops_total{direction="ingress",interface="eth0",namespace="prod",pod="db",pod_uid="u-db"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"podscope_network_receive_bytes_total", "podscope_network_transmit_packets_total", "podscope_network_policy_drops_total"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.CollectAndCount(c, "podscope_network_transmit_bytes_total", "podscope_network_receive_packets_total"); got != 4 {
		t.Errorf("transmit bytes + receive packets series = %d, want 4", got)
	}

	// Read at scrape time: a change in the source shows in the next scrape.
	before := src.n
	src.pods[0].RxBytes = 9000
	if got := testutil.ToFloat64(oneSeries(t, c, "podscope_network_receive_bytes_total", "web")); got != 9000 {
		t.Errorf("after the counter moved, scrape shows %v, want 9000", got)
	}
	if src.n == before {
		t.Error("the source was not read at scrape time")
	}
}

// oneSeries collects c and returns a collector of the single series of name
// whose labels mention pod.
func oneSeries(t *testing.T, c prometheus.Collector, name, pod string) prometheus.Collector {
	t.Helper()
	ch := make(chan prometheus.Metric, 100)
	c.Collect(ch)
	close(ch)
	for m := range ch {
		d := m.Desc().String()
		if strings.Contains(d, `"`+name+`"`) && (pod == "" || strings.Contains(metricString(t, m), `"`+pod+`"`)) {
			return constCollector{m}
		}
	}
	t.Fatalf("no %s series for %s", name, pod)
	return nil
}

type constCollector struct{ m prometheus.Metric }

func (c constCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.Desc() }
func (c constCollector) Collect(ch chan<- prometheus.Metric) { ch <- c.m }

func metricString(t *testing.T, m prometheus.Metric) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(constCollector{m}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs[0].String()
}

func TestDuplicateLabelsSummed(t *testing.T) {
	again := web
	again.RxBytes = 100
	c := &Collector{Network: &fakeNet{pods: []PodNetwork{web, again}}}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("duplicate series made the scrape invalid: %v", err)
	}
	want := `
# HELP podscope_network_receive_bytes_total Bytes received by the pod on the interface (pod's view), counted by podscope's TC programs.
# TYPE podscope_network_receive_bytes_total counter
podscope_network_receive_bytes_total{interface="eth0",namespace="default",pod="web",pod_uid="u-web"} 1600
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "podscope_network_receive_bytes_total"); err != nil {
		t.Fatal(err)
	}
}

func TestAuditMetrics(t *testing.T) {
	a := &fakeAudit{mode: "tracepoint", armed: 2,
		lost: map[Container]uint64{{Identity: pods.Identity{Namespace: "default", Pod: "web", PodUID: "u-web"}, Container: "nginx"}: 4}}
	nginx := Container{Identity: pods.Identity{Namespace: "default", Pod: "web", PodUID: "u-web"}, Container: "nginx"}
	a.writes.Add(WriteKey{nginx, "open_write"}, 3)
	a.writes.Add(WriteKey{nginx, "open_write"}, 2)
	a.writes.Add(WriteKey{nginx, "unlink"}, 1)
	up := true
	c := &Collector{Audit: a, Connected: func() bool { return up }}
	want := `
# HELP podscope_audit_events_lost_total File-write audit events that could not be delivered (ring buffer full), by container.
# TYPE podscope_audit_events_lost_total counter
podscope_audit_events_lost_total{container="nginx",namespace="default",pod="web",pod_uid="u-web"} 4
# HELP podscope_audit_mode_info The file-write audit mode in use (lsm_cgroup, lsm, fentry, tracepoint); 1 for the mode in use.
# TYPE podscope_audit_mode_info gauge
podscope_audit_mode_info{mode="tracepoint"} 1
# HELP podscope_file_write_events_total File-write audit events delivered to the audit log, by container and op (folded repeats count each occurrence).
# TYPE podscope_file_write_events_total counter
podscope_file_write_events_total{container="nginx",namespace="default",op="open_write",pod="web",pod_uid="u-web"} 5
podscope_file_write_events_total{container="nginx",namespace="default",op="unlink",pod="web",pod_uid="u-web"} 1
# HELP podscope_audit_armed_cgroups Container cgroups armed for file-write audit now.
# TYPE podscope_audit_armed_cgroups gauge
podscope_audit_armed_cgroups 2
# HELP podscope_nri_connected 1 while podscope-nri is registered with the container runtime's NRI socket.
# TYPE podscope_nri_connected gauge
podscope_nri_connected 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	up = false
	if v := testutil.ToFloat64(oneSeries(t, c, "podscope_nri_connected", "")); v != 0 {
		t.Errorf("podscope_nri_connected = %v after disconnect", v)
	}
}

func TestHandler(t *testing.T) {
	a := &fakeAudit{mode: "tracepoint"}
	netSrc := &fakeNet{err: errors.New("pinned map counters: permission denied")}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&Collector{Network: netSrc, Audit: a})
	healthErr := error(nil)
	ts := httptest.NewServer(Handler(reg, func() error { return healthErr }, nil))
	defer ts.Close()

	body, code := get(t, ts.URL+"/metrics")
	if code != 200 || !strings.Contains(body, `podscope_audit_mode_info{mode="tracepoint"} 1`) {
		t.Errorf("a failing network source hid the other metrics: %d\n%s", code, body)
	}
	if strings.Contains(body, "podscope_network_receive_bytes_total{") {
		t.Errorf("failed network source still produced series:\n%s", body)
	}
	if body, code := get(t, ts.URL+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	healthErr = errors.New("audit reader stopped: ring buffer closed")
	if body, code := get(t, ts.URL+"/healthz"); code != 503 || !strings.Contains(body, "audit reader stopped") {
		t.Errorf("/healthz unhealthy = %d %q", code, body)
	}
}

func TestServeRefusesTakenPort(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	bound, wait, err := Serve(ctx, "127.0.0.1:0", http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	if _, code := get(t, "http://"+bound+"/x"); code != 404 {
		t.Errorf("served on %s: %d", bound, code)
	}
	cancel()
	if err := wait(); err != nil {
		t.Errorf("Serve after cancel = %v", err)
	}
	ts := httptest.NewServer(http.NotFoundHandler())
	defer ts.Close()
	if _, _, err := Serve(context.Background(), strings.TrimPrefix(ts.URL, "http://"), http.NotFoundHandler()); err == nil {
		t.Error("Serve on a taken port did not fail")
	}
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp.StatusCode
}

// A pod podscope let start unobserved is a gauge with the reason, and has
// no counters (zeros would claim it was counted).
func TestUnobservedPodMetric(t *testing.T) {
	mv := PodNetwork{Identity: pods.Identity{Namespace: "prod", Pod: "mv", PodUID: "u-mv"}, Interface: "eth0", Unobserved: "interface eth0 is a macvlan link, not a veth"}
	c := &Collector{Network: &fakeNet{pods: []PodNetwork{web, mv}}}
	want := `
# HELP podscope_pod_unobserved 1 for a pod podscope let start without observing it (no accounting, no policy), with the reason (e.g. its interface is not a veth).
# TYPE podscope_pod_unobserved gauge
podscope_pod_unobserved{interface="eth0",namespace="prod",pod="mv",pod_uid="u-mv",reason="interface eth0 is a macvlan link, not a veth"} 1
# HELP podscope_network_receive_bytes_total Bytes received by the pod on the interface (pod's view), counted by podscope's TC programs.
# TYPE podscope_network_receive_bytes_total counter
podscope_network_receive_bytes_total{interface="eth0",namespace="default",pod="web",pod_uid="u-web"} 1500
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "podscope_pod_unobserved", "podscope_network_receive_bytes_total"); err != nil {
		t.Fatal(err)
	}
}
