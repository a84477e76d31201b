package metrics

import (
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// TestPinnedNetwork reads real pins: the datapath loaded under a fresh
// bpffs root, a pod in the registry, and per-CPU counters written into the
// pinned counters map the way the TC programs would (one value per CPU,
// pod's-view arrays [egress, ingress]). The scrape must show the per-CPU
// sums, and a later change to the map must show in the next scrape.
func TestPinnedNetwork(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	src := PinnedNetwork{Root: root}

	// Nothing pinned yet: no series, no error.
	if got, err := src.PodNetwork(); err != nil || len(got) != 0 {
		t.Fatalf("empty root: %v, %v", got, err)
	}

	dp, err := datapath.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	reg, err := pods.OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	pod := pods.Pod{ID: 7, Namespace: "default", Name: "web", UID: "u-web", ContainerID: "c0ffee", Interface: "eth0"}
	if err := reg.Put(pod); err != nil {
		t.Fatal(err)
	}

	// Registered but never counted (no packet yet): skipped, not an error.
	if got, err := src.PodNetwork(); err != nil || len(got) != 0 {
		t.Fatalf("pod without counters: %v, %v", got, err)
	}

	counters, err := ebpf.LoadPinnedMap(root.Pin(datapath.Owner, "pod_counters"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { counters.Close() })
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	if ncpu < 2 {
		t.Logf("only %d possible CPU: the per-CPU sum is checked over one value", ncpu)
	}
	// struct traffic_counters { bytes[2], packets[2], drop_bytes[2], drop_packets[2] },
	// index 0 = pod egress (transmit), 1 = pod ingress (receive).
	put := func(perCPU func(cpu int) [8]uint64) {
		t.Helper()
		vals := make([][8]uint64, ncpu)
		for i := range vals {
			vals[i] = perCPU(i)
		}
		if err := counters.Put(uint32(pod.ID), vals); err != nil {
			t.Fatal(err)
		}
	}
	put(func(cpu int) [8]uint64 {
		c := uint64(cpu + 1)
		return [8]uint64{100 * c, 1000 * c, 1 * c, 10 * c, 0, 0, 2 * c, 3 * c}
	})
	sum := uint64(ncpu * (ncpu + 1) / 2) // 1 + 2 + … + ncpu
	// NetworkPolicy's share of the drops: struct drop_counts { packets[2] }
	// per CPU in netpol_drops, the way bpf/netpol.c counts them.
	netpol, err := ebpf.LoadPinnedMap(root.Pin(datapath.Owner, "netpol_drops"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netpol.Close() })
	nd := make([][2]uint64, ncpu)
	for i := range nd {
		nd[i] = [2]uint64{uint64(i + 1), 2 * uint64(i+1)}
	}
	if err := netpol.Put(uint32(pod.ID), nd); err != nil {
		t.Fatal(err)
	}

	c := &Collector{Network: src}
	want := func(tx, rx, txp, rxp, de, di uint64) string {
		l := `{interface="eth0",namespace="default",pod="web",pod_uid="u-web"}`
		dl := func(d string) string {
			return `{direction="` + d + `",interface="eth0",namespace="default",pod="web",pod_uid="u-web"}`
		}
		return strings.Join([]string{
			"# HELP podscope_network_receive_bytes_total Bytes received by the pod on the interface (pod's view), counted by podscope's TC programs.",
			"# TYPE podscope_network_receive_bytes_total counter",
			"podscope_network_receive_bytes_total" + l + " " + itoa(rx),
			"# HELP podscope_network_transmit_bytes_total Bytes transmitted by the pod on the interface (pod's view).",
			"# TYPE podscope_network_transmit_bytes_total counter",
			"podscope_network_transmit_bytes_total" + l + " " + itoa(tx),
			"# HELP podscope_network_receive_packets_total Packets received by the pod on the interface (pod's view).",
			"# TYPE podscope_network_receive_packets_total counter",
			"podscope_network_receive_packets_total" + l + " " + itoa(rxp),
			"# HELP podscope_network_transmit_packets_total Packets transmitted by the pod on the interface (pod's view).",
			"# TYPE podscope_network_transmit_packets_total counter",
			"podscope_network_transmit_packets_total" + l + " " + itoa(txp),
			"# HELP podscope_network_policy_drops_total Packets dropped by podscope network policy, by direction (egress: sent by the pod, ingress: to the pod).",
			"# TYPE podscope_network_policy_drops_total counter",
			"podscope_network_policy_drops_total" + dl("egress") + " " + itoa(de),
			"podscope_network_policy_drops_total" + dl("ingress") + " " + itoa(di),
			"# HELP podscope_networkpolicy_drops_total Packets dropped because the pod's Kubernetes NetworkPolicy denied their connection, by direction (also counted in podscope_network_policy_drops_total).",
			"# TYPE podscope_networkpolicy_drops_total counter",
			"podscope_networkpolicy_drops_total" + dl("egress") + " " + itoa(sum),
			"podscope_networkpolicy_drops_total" + dl("ingress") + " " + itoa(2*sum),
			"",
		}, "\n")
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want(100*sum, 1000*sum, sum, 10*sum, 2*sum, 3*sum))); err != nil {
		t.Fatal(err)
	}

	// The kernel counts on: the next scrape reads the new values.
	put(func(cpu int) [8]uint64 {
		if cpu == 0 {
			return [8]uint64{5, 6, 1, 1, 0, 0, 0, 0}
		}
		return [8]uint64{}
	})
	if err := testutil.CollectAndCompare(c, strings.NewReader(want(5, 6, 1, 1, 0, 0))); err != nil {
		t.Fatal(err)
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// BenchmarkPinnedNetworkScrape measures one scrape's read of the pins (open
// registry + datapath, list, read counters, close) with 50 pods.
func BenchmarkPinnedNetworkScrape(b *testing.B) {
	root := testenv.BPFFSRoot(b)
	dp, err := datapath.Open(root)
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	reg, err := pods.OpenRegistry(root)
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	counters, err := ebpf.LoadPinnedMap(root.Pin(datapath.Owner, "pod_counters"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer counters.Close()
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= 50; i++ {
		p := pods.Pod{ID: datapath.PodID(i), Namespace: "bench", Name: "pod" + strconv.Itoa(i), UID: "u", Interface: "eth0"}
		if err := reg.Put(p); err != nil {
			b.Fatal(err)
		}
		if err := counters.Put(uint32(i), make([][8]uint64, ncpu)); err != nil {
			b.Fatal(err)
		}
	}
	src := PinnedNetwork{Root: root}
	b.ResetTimer()
	for b.Loop() {
		got, err := src.PodNetwork()
		if err != nil || len(got) != 50 {
			b.Fatalf("%d pods, %v", len(got), err)
		}
	}
}
