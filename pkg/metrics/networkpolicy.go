package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// NetworkPolicyStatus is the NetworkPolicy controller's state
// (podscope-nri --networkpolicy, pkg/netpol).
type NetworkPolicyStatus struct {
	Running      bool
	Reason       string // why NetworkPolicies are not enforced, "" while they are
	LastSync     time.Time
	Policies     int
	PodsLocal    int
	PodsEnforced int
	Sets         int
	Errors       int
	WriteErrors  uint64
	// Update latency histogram: API event to datapath written.
	LatencyBuckets []float64
	LatencyCounts  []uint64 // cumulative, one per bucket
	LatencyCount   uint64
	LatencySum     float64
}

var (
	npEnforcedDesc    = family("podscope_networkpolicy_enforced", "1 while podscope enforces Kubernetes NetworkPolicies on this node; 0 with the reason why not.", "reason")
	npLastSyncDesc    = family("podscope_networkpolicy_last_sync_timestamp_seconds", "When the NetworkPolicy controller last brought the datapath in step with the API.")
	npPoliciesDesc    = family("podscope_networkpolicy_policies", "NetworkPolicies in the cluster (the controller's cache).")
	npPodsDesc        = family("podscope_networkpolicy_pods", "This node's attached pods (state=local) and those a NetworkPolicy selects, enforced (state=enforced).", "state")
	npSetsDesc        = family("podscope_networkpolicy_sets", "Distinct compiled policies among the enforced pods (pods share a set by content).")
	npErrorsDesc      = family("podscope_networkpolicy_errors", "Problems in the last sync: parts of policies that could not be understood, pods whose policy could not be built or written.")
	npWriteErrorsDesc = family("podscope_networkpolicy_write_errors_total", "Datapath writes of a pod's NetworkPolicy that failed (the pod kept what it had).")
	npLatencyDesc     = family("podscope_networkpolicy_update_latency_seconds", "From an API event (as the informer delivered it) to the datapath written, per sync that wrote.")
)

// NetworkPolicyCollector exposes Status at every scrape.
type NetworkPolicyCollector struct {
	Status func() NetworkPolicyStatus
}

var _ prometheus.Collector = (*NetworkPolicyCollector)(nil)

// Describe sends every descriptor.
func (c *NetworkPolicyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{npEnforcedDesc, npLastSyncDesc, npPoliciesDesc, npPodsDesc, npSetsDesc,
		npErrorsDesc, npWriteErrorsDesc, npLatencyDesc} {
		ch <- d
	}
}

// Collect reads the status now.
func (c *NetworkPolicyCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.Status()
	if !s.Running {
		ch <- prometheus.MustNewConstMetric(npEnforcedDesc, prometheus.GaugeValue, 0, s.Reason)
		return
	}
	ch <- prometheus.MustNewConstMetric(npEnforcedDesc, prometheus.GaugeValue, 1, "")
	if !s.LastSync.IsZero() {
		ch <- prometheus.MustNewConstMetric(npLastSyncDesc, prometheus.GaugeValue, float64(s.LastSync.UnixNano())/1e9)
	}
	ch <- prometheus.MustNewConstMetric(npPoliciesDesc, prometheus.GaugeValue, float64(s.Policies))
	ch <- prometheus.MustNewConstMetric(npPodsDesc, prometheus.GaugeValue, float64(s.PodsLocal), "local")
	ch <- prometheus.MustNewConstMetric(npPodsDesc, prometheus.GaugeValue, float64(s.PodsEnforced), "enforced")
	ch <- prometheus.MustNewConstMetric(npSetsDesc, prometheus.GaugeValue, float64(s.Sets))
	ch <- prometheus.MustNewConstMetric(npErrorsDesc, prometheus.GaugeValue, float64(s.Errors))
	ch <- prometheus.MustNewConstMetric(npWriteErrorsDesc, prometheus.CounterValue, float64(s.WriteErrors))
	buckets := map[float64]uint64{}
	for i, b := range s.LatencyBuckets {
		if i < len(s.LatencyCounts) {
			buckets[b] = s.LatencyCounts[i]
		}
	}
	ch <- prometheus.MustNewConstHistogram(npLatencyDesc, s.LatencyCount, s.LatencySum, buckets)
}
