package e2ek8s

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// --- 2b. NetworkPolicy ------------------------------------------------------
//
// The overlay turns --networkpolicy on. Through the Service's ClusterIP
// (kube-proxy's DNAT: the decision is on the translated destination, the
// server pod and its port 8080, not the ClusterIP and port 80), from the
// client pod: default deny ingress, an ipBlock on the server's port, the
// port changed, default deny egress, a podSelector egress, replies of
// allowed connections, the drop counted as NetworkPolicy's, and the time
// from an API update to enforcement.

func (s *suite) networkPolicy(t *testing.T) {
	body := s.metrics(t)
	if v, ok := metric(body, "podscope_networkpolicy_enforced", `reason=""`); !ok || v != 1 {
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "podscope_networkpolicy_enforced") {
				t.Fatalf("NetworkPolicy not enforced: %s", l)
			}
		}
		t.Fatal("no podscope_networkpolicy_enforced in /metrics: is --networkpolicy on in the overlay?")
	}
	np := s.cs.NetworkingV1().NetworkPolicies(testNS)
	t.Cleanup(func() {
		_ = np.DeleteCollection(ctx(t), metav1.DeleteOptions{}, metav1.ListOptions{})
	})
	connect := func() error {
		_, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-connect", s.serviceIP+":80", "1s")
		return err
	}
	expect := func(what string, allowed bool) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() error {
			err := connect()
			if allowed && err != nil {
				return fmt.Errorf("denied: %v", err)
			}
			if !allowed && err == nil {
				return fmt.Errorf("allowed")
			}
			return nil
		})
	}
	server := metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
	client := metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}
	ingress := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egress := []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	put := func(p *networkingv1.NetworkPolicy) {
		t.Helper()
		s.putPolicy(t, p)
	}
	del := func(name string) {
		t.Helper()
		if err := np.Delete(ctx(t), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	port := func(p int32) []networkingv1.NetworkPolicyPort {
		v := intstr.FromInt32(p)
		return []networkingv1.NetworkPolicyPort{{Port: &v}}
	}
	expect("allowed before any policy", true)

	// Default deny ingress on the servers.
	put(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "servers"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: server, PolicyTypes: ingress}})
	expect("default deny ingress", false)
	if v, ok := metric(s.metrics(t), "podscope_networkpolicy_drops_total", `direction="ingress"`); !ok || v == 0 {
		t.Errorf("a NetworkPolicy drop is not counted as one: podscope_networkpolicy_drops_total %v %v", v, ok)
	}

	// ipBlock: the client's address, on the server's own port (8080: the
	// translated one), then on another port.
	block := []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: s.client.Status.PodIP + "/32"}}}
	put(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "servers"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: server, PolicyTypes: ingress,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: block, Ports: port(serverPort)}}}})
	expect("ipBlock of the client on port 8080 (the Service's target port)", true)
	// A reply of an allowed connection: data both ways.
	if out, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-send", s.serviceIP+":80", "65536"); err != nil || strings.TrimSpace(out) != "ok 65536" {
		t.Fatalf("allowed connection: %q %v", out, err)
	}
	put(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "servers"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: server, PolicyTypes: ingress,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: block, Ports: port(80)}}}})
	expect("ipBlock on port 80 (the ClusterIP's port, not the pod's)", false)
	del("servers")
	expect("policy deleted", true)

	// Default deny egress on the client, then egress to app=server pods.
	put(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: client, PolicyTypes: egress}})
	expect("default deny egress", false)
	put(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: client, PolicyTypes: egress,
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &server}}}}}})
	expect("egress to the server pods through their ClusterIP", true)
	del("client")

	// Every other rule kind, on pods and a namespace of its own.
	s.networkPolicyRules(t)

	// Update-to-enforcement latency: a deny appears, then goes; the time
	// from the API call returning to the first probe with the new verdict
	// (a probe is a kubectl exec: ~0.1-0.3 s of it is the probe itself).
	//
	// A transition not in force after 30 s fails the suite; the loop
	// still goes on (the state forced back) so that one run shows every
	// miss with the controller's metrics at that moment. Seen once, in
	// the first run on a machine at load 40-55 (docs/networkpolicy.md).
	var lat []time.Duration
	misses := 0
	for i := 0; i < 10; i++ {
		for _, deny := range []bool{true, false} {
			t0 := time.Now()
			if deny {
				put(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "latency"},
					Spec: networkingv1.NetworkPolicySpec{PodSelector: server, PolicyTypes: ingress}})
			} else {
				_ = np.Delete(ctx(t), "latency", metav1.DeleteOptions{})
			}
			ok := false
			for time.Since(t0) < 30*time.Second {
				if (connect() != nil) == deny {
					ok = true
					break
				}
			}
			if !ok {
				misses++
				var lines []string
				for _, l := range strings.Split(s.metrics(t), "\n") {
					if strings.HasPrefix(l, "podscope_networkpolicy_") && !strings.Contains(l, "_bucket") {
						lines = append(lines, l)
					}
				}
				t.Logf("MISS sample %d: deny=%v not in force after 30s; controller metrics:\n%s", i, deny, strings.Join(lines, "\n"))
				// What the datapath holds and what the controller said.
				st, _ := s.ctl(t, "status")
				pods, _ := s.ctl(t, "pods")
				logs, _ := s.kubectl(t, "-n", dsNamespace, "logs", s.dsPod(t).Name, "-c", "podscope-nri", "--since=60s")
				pol, _ := s.kubectl(t, "-n", testNS, "get", "networkpolicies", "-o", "wide")
				t.Logf("MISS sample %d: podscopectl status:\n%s\npodscopectl pods:\n%s\npolicies:\n%s\npodscope-nri's last 60 s:\n%s", i, st, pods, pol, logs)
				if deny {
					_ = np.Delete(ctx(t), "latency", metav1.DeleteOptions{})
					expect("allowed again after the miss", true)
				}
				continue
			}
			lat = append(lat, time.Since(t0))
		}
	}
	if misses > 0 {
		t.Errorf("%d of 20 NetworkPolicy transitions not in force within 30 s (each logged above with the controller's metrics)", misses)
	}
	if len(lat) == 0 {
		t.Fatalf("no latency sample: %d misses", misses)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	t.Logf("API update to enforcement (%d samples, %d misses, probe included): p50 %v, p99 %v, max %v",
		len(lat), misses, p(0.5).Round(time.Millisecond), p(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	body = s.metrics(t)
	sum, cnt := plainMetric(body, "podscope_networkpolicy_update_latency_seconds_sum"), plainMetric(body, "podscope_networkpolicy_update_latency_seconds_count")
	if cnt > 0 {
		t.Logf("controller's own API event to datapath written: %d syncs, mean %.1f ms", int(cnt), 1000*sum/cnt)
	}
}

// putPolicy creates or updates a NetworkPolicy (in testNS unless it names
// its namespace).
func (s *suite) putPolicy(t testing.TB, p *networkingv1.NetworkPolicy) {
	t.Helper()
	if p.Namespace == "" {
		p.Namespace = testNS
	}
	np := s.cs.NetworkingV1().NetworkPolicies(p.Namespace)
	old, err := np.Get(ctx(t), p.Name, metav1.GetOptions{})
	if err == nil {
		p.ResourceVersion = old.ResourceVersion
		_, err = np.Update(ctx(t), p, metav1.UpdateOptions{})
	} else {
		_, err = np.Create(ctx(t), p, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// plainMetric is the value of an unlabelled sample, 0 if absent.
func plainMetric(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%g", &f); err == nil {
				return f
			}
		}
	}
	return 0
}
