// Package metrics is podscope-nri's Prometheus exposition. Network counters
// and audit losses are read from the pinned maps at scrape time through
// sources — nothing is copied or cached in between, so a scrape always shows
// what the kernel counted, whichever process loaded the programs. Names
// follow cAdvisor's container_network_* so existing dashboards fit.
package metrics

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podscope/podscope/pkg/pods"
)

// PodNetwork is one attached pod interface's counters, pod's view:
// receive = into the pod.
type PodNetwork struct {
	pods.Identity
	Interface string

	RxBytes, RxPackets, TxBytes, TxPackets uint64
	DropsEgress, DropsIngress              uint64 // packets dropped by policy (either kind)
	// Of those, the packets the pod's Kubernetes NetworkPolicy dropped.
	NetworkPolicyDropsEgress, NetworkPolicyDropsIngress uint64

	// Unobserved, when set, is why podscope let the pod start without
	// attaching: it has no counters, only podscope_pod_unobserved.
	Unobserved string
}

// NetworkSource reads the counters of every attached pod. It is called at
// every scrape; "nothing attached yet" is an empty list, not an error.
type NetworkSource interface {
	PodNetwork() ([]PodNetwork, error)
}

// Container names an audited container in metric labels.
type Container struct {
	pods.Identity
	Container string
}

// WriteKey is a file-write event class: a container and an op.
type WriteKey struct {
	Container
	Op string
}

// AuditSource is the audit side: what the kernel side says (mode, losses,
// armed cgroups, read from pins) and what the reader delivered.
type AuditSource interface {
	// Mode is the audit mode in use ("tracepoint", …), "" when none.
	Mode() (string, error)
	// Lost is the number of events that could not be delivered, per
	// container.
	Lost() (map[Container]uint64, error)
	// Armed is the number of cgroups armed now.
	Armed() (int, error)
	// WriteEvents is the number of file-write events delivered per
	// container and op since the daemon started.
	WriteEvents() map[WriteKey]uint64
}

// family declares one metric family of the exposition: its name, its help
// and its variable labels (no constant labels). Both collectors declare
// every family through it.
func family(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// with is labels and one more (a fresh slice: labels is shared).
func with(labels []string, more string) []string {
	return append(append([]string{}, labels...), more)
}

var (
	netLabels       = []string{"namespace", "pod", "pod_uid", "interface"}
	containerLabels = []string{"namespace", "pod", "pod_uid", "container"}
	dirLabels       = with(netLabels, "direction")

	rxBytesDesc   = family("podscope_network_receive_bytes_total", "Bytes received by the pod on the interface (pod's view), counted by podscope's TC programs.", netLabels...)
	txBytesDesc   = family("podscope_network_transmit_bytes_total", "Bytes transmitted by the pod on the interface (pod's view).", netLabels...)
	rxPacketsDesc = family("podscope_network_receive_packets_total", "Packets received by the pod on the interface (pod's view).", netLabels...)
	txPacketsDesc = family("podscope_network_transmit_packets_total", "Packets transmitted by the pod on the interface (pod's view).", netLabels...)
	dropsDesc     = family("podscope_network_policy_drops_total",
		"Packets dropped by podscope network policy, by direction (egress: sent by the pod, ingress: to the pod).", dirLabels...)
	netpolDropsDesc = family("podscope_networkpolicy_drops_total",
		"Packets dropped because the pod's Kubernetes NetworkPolicy denied their connection, by direction (also counted in podscope_network_policy_drops_total).", dirLabels...)
	unobservedDesc = family("podscope_pod_unobserved",
		"1 for a pod podscope let start without observing it (no accounting, no policy), with the reason (e.g. its interface is not a veth).",
		with(netLabels, "reason")...)

	writesDesc = family("podscope_file_write_events_total",
		"File-write audit events delivered to the audit log, by container and op (folded repeats count each occurrence).",
		with(containerLabels, "op")...)
	lostDesc  = family("podscope_audit_events_lost_total", "File-write audit events that could not be delivered (ring buffer full), by container.", containerLabels...)
	modeDesc  = family("podscope_audit_mode_info", "The file-write audit mode in use (lsm_cgroup, lsm, fentry, tracepoint); 1 for the mode in use.", "mode")
	armedDesc = family("podscope_audit_armed_cgroups", "Container cgroups armed for file-write audit now.")

	connectedDesc = family("podscope_nri_connected", "1 while podscope-nri is registered with the container runtime's NRI socket.")
)

// Collector is a prometheus.Collector over the sources. A nil source leaves
// its metrics out.
type Collector struct {
	Network   NetworkSource
	Audit     AuditSource
	Connected func() bool
	Log       *slog.Logger
}

var _ prometheus.Collector = (*Collector)(nil)

// Describe sends every descriptor the collector may emit.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{rxBytesDesc, txBytesDesc, rxPacketsDesc, txPacketsDesc, dropsDesc, netpolDropsDesc,
		writesDesc, lostDesc, modeDesc, armedDesc, connectedDesc, unobservedDesc} {
		ch <- d
	}
}

// Collect reads the sources now. A failing source reports an invalid
// metric (the scrape shows the error) and the other metrics still go out.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.Network != nil {
		c.collectNetwork(ch)
	}
	if c.Audit != nil {
		c.collectAudit(ch)
	}
	if c.Connected != nil {
		v := 0.0
		if c.Connected() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, v)
	}
}

// netKey is a counter series: the pod and its interface.
type netKey struct {
	pods.Identity
	iface string
}

func (c *Collector) collectNetwork(ch chan<- prometheus.Metric) {
	pods, err := c.Network.PodNetwork()
	if err != nil {
		c.invalid(ch, rxBytesDesc, "network counters", err)
		return
	}
	// Two entries with the same labels (a pod re-attached under the same
	// name, in the window before the old one is reaped) would make the
	// scrape invalid: their counters are summed.
	sum := map[netKey]PodNetwork{}
	var order []netKey
	for _, p := range pods {
		if p.Unobserved != "" {
			ch <- prometheus.MustNewConstMetric(unobservedDesc, prometheus.GaugeValue, 1,
				p.Namespace, p.Pod, p.PodUID, p.Interface, p.Unobserved)
			continue
		}
		k := netKey{p.Identity, p.Interface}
		s, seen := sum[k]
		if !seen {
			order = append(order, k)
		}
		s.RxBytes += p.RxBytes
		s.RxPackets += p.RxPackets
		s.TxBytes += p.TxBytes
		s.TxPackets += p.TxPackets
		s.DropsEgress += p.DropsEgress
		s.DropsIngress += p.DropsIngress
		s.NetworkPolicyDropsEgress += p.NetworkPolicyDropsEgress
		s.NetworkPolicyDropsIngress += p.NetworkPolicyDropsIngress
		sum[k] = s
	}
	for _, k := range order {
		s := sum[k]
		l := []string{k.Namespace, k.Pod, k.PodUID, k.iface}
		ch <- prometheus.MustNewConstMetric(rxBytesDesc, prometheus.CounterValue, float64(s.RxBytes), l...)
		ch <- prometheus.MustNewConstMetric(txBytesDesc, prometheus.CounterValue, float64(s.TxBytes), l...)
		ch <- prometheus.MustNewConstMetric(rxPacketsDesc, prometheus.CounterValue, float64(s.RxPackets), l...)
		ch <- prometheus.MustNewConstMetric(txPacketsDesc, prometheus.CounterValue, float64(s.TxPackets), l...)
		ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(s.DropsEgress), append(l, "egress")...)
		ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(s.DropsIngress), append(l, "ingress")...)
		ch <- prometheus.MustNewConstMetric(netpolDropsDesc, prometheus.CounterValue, float64(s.NetworkPolicyDropsEgress), append(l, "egress")...)
		ch <- prometheus.MustNewConstMetric(netpolDropsDesc, prometheus.CounterValue, float64(s.NetworkPolicyDropsIngress), append(l, "ingress")...)
	}
}

func (c *Collector) collectAudit(ch chan<- prometheus.Metric) {
	if mode, err := c.Audit.Mode(); err != nil {
		c.invalid(ch, modeDesc, "audit mode", err)
	} else if mode != "" {
		ch <- prometheus.MustNewConstMetric(modeDesc, prometheus.GaugeValue, 1, mode)
	}
	if n, err := c.Audit.Armed(); err != nil {
		c.invalid(ch, armedDesc, "armed cgroups", err)
	} else {
		ch <- prometheus.MustNewConstMetric(armedDesc, prometheus.GaugeValue, float64(n))
	}
	if lost, err := c.Audit.Lost(); err != nil {
		c.invalid(ch, lostDesc, "audit losses", err)
	} else {
		for k, n := range lost {
			ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(n),
				k.Namespace, k.Pod, k.PodUID, k.Container)
		}
	}
	for k, n := range c.Audit.WriteEvents() {
		ch <- prometheus.MustNewConstMetric(writesDesc, prometheus.CounterValue, float64(n),
			k.Namespace, k.Pod, k.PodUID, k.Container.Container, k.Op)
	}
}

func (c *Collector) invalid(ch chan<- prometheus.Metric, d *prometheus.Desc, what string, err error) {
	if c.Log != nil {
		c.Log.Warn("metrics: reading "+what+" failed", "err", err)
	}
	ch <- prometheus.NewInvalidMetric(d, err)
}
