package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNetworkPolicyCollector(t *testing.T) {
	st := NetworkPolicyStatus{Reason: "NetworkPolicy not supported here: kernel has no BPF netfilter links"}
	c := &NetworkPolicyCollector{Status: func() NetworkPolicyStatus { return st }}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	want := `# HELP podscope_networkpolicy_enforced 1 while podscope enforces Kubernetes NetworkPolicies on this node; 0 with the reason why not.
# TYPE podscope_networkpolicy_enforced gauge
podscope_networkpolicy_enforced{reason="NetworkPolicy not supported here: kernel has no BPF netfilter links"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "podscope_networkpolicy_enforced"); err != nil {
		t.Fatal(err)
	}
	st = NetworkPolicyStatus{Running: true, LastSync: time.Unix(1700000000, 0), Policies: 3, PodsLocal: 5, PodsEnforced: 2, Sets: 1,
		LatencyBuckets: []float64{0.1, 1}, LatencyCounts: []uint64{1, 2}, LatencyCount: 2, LatencySum: 0.55}
	want = `# HELP podscope_networkpolicy_pods This node's attached pods (state=local) and those a NetworkPolicy selects, enforced (state=enforced).
# TYPE podscope_networkpolicy_pods gauge
podscope_networkpolicy_pods{state="enforced"} 2
podscope_networkpolicy_pods{state="local"} 5
# HELP podscope_networkpolicy_update_latency_seconds From an API event (as the informer delivered it) to the datapath written, per sync that wrote.
# TYPE podscope_networkpolicy_update_latency_seconds histogram
podscope_networkpolicy_update_latency_seconds_bucket{le="0.1"} 1
podscope_networkpolicy_update_latency_seconds_bucket{le="1"} 2
podscope_networkpolicy_update_latency_seconds_bucket{le="+Inf"} 2
podscope_networkpolicy_update_latency_seconds_sum 0.55
podscope_networkpolicy_update_latency_seconds_count 2
# HELP podscope_networkpolicy_enforced 1 while podscope enforces Kubernetes NetworkPolicies on this node; 0 with the reason why not.
# TYPE podscope_networkpolicy_enforced gauge
podscope_networkpolicy_enforced{reason=""} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "podscope_networkpolicy_pods", "podscope_networkpolicy_update_latency_seconds", "podscope_networkpolicy_enforced"); err != nil {
		t.Fatal(err)
	}
}
