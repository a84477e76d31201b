package netpol

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/policy"
)

// scaleCluster is 1,000 pods on the node in 50 namespaces (20 pods, 10
// apps each) and 500 NetworkPolicies (10 per namespace, one per app):
// ingress from two other apps of the namespace and from a labelled
// namespace's pods on TCP 80, 443 and the named port "http", egress to
// the namespace's pods, to 10.0.0.0/8 except 10.96.0.0/12 on 443 and to
// kube-system on UDP/TCP 53.
func scaleCluster() (State, []pods.Pod) {
	var st State
	var local []pods.Pod
	st.Namespaces = append(st.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system",
		Labels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}}})
	dns := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns", UID: "dns", Labels: map[string]string{"k8s-app": "kube-dns"}}}
	dns.Spec.NodeName = "other"
	dns.Status.PodIPs = []corev1.PodIP{{IP: "10.244.200.2"}}
	st.Pods = append(st.Pods, dns)
	udp := corev1.ProtocolUDP
	port := func(p intstr.IntOrString, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Port: &p, Protocol: proto}
	}
	n := 0
	for i := 0; i < 50; i++ {
		ns := fmt.Sprintf("ns%d", i)
		st.Namespaces = append(st.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"kubernetes.io/metadata.name": ns, "team": fmt.Sprint("t", i%5)}}})
		for j := 0; j < 20; j++ {
			n++
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", j), UID: k8stypes.UID(fmt.Sprint("uid", n)),
				Labels: map[string]string{"app": fmt.Sprint("a", j%10)}}}
			p.Spec.NodeName = "node"
			p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8000 + int32(j%10)}}}}
			ip := netip.AddrFrom4([4]byte{10, 244, byte(n / 250), byte(n%250 + 1)})
			p.Status.Phase = corev1.PodRunning
			p.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
			st.Pods = append(st.Pods, p)
			local = append(local, pods.Pod{ID: datapath.PodID(n), Namespace: ns, Name: p.Name, UID: string(p.UID), IPs: []netip.Prefix{netip.PrefixFrom(ip, 24)}})
		}
		for a := 0; a < 10; a++ {
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("np", a)}}
			np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint("a", a)}}
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint("a", (a+1)%10)}}},
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint("a", (a+2)%10)}}},
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprint("t", (i+1)%5)}},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a0"}}},
				},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(80), nil), port(intstr.FromInt32(443), nil), port(intstr.FromString("http"), nil)},
			}}
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}},
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.96.0.0/12"}}}},
					Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(443), nil)}},
				{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}}}},
					Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(53), &udp), port(intstr.FromInt32(53), nil)}},
			}
			st.Policies = append(st.Policies, np)
		}
	}
	return st, local
}

// BenchmarkScale: 1,000 local pods and 500 NetworkPolicies, through the
// controller as the informers feed it (fake clientset), to the first
// complete sync; then one policy change. Reports the compile time, the
// distinct sets and their kernel entries. A benchmark, not a pass/fail
// test: docs/networkpolicy.md states the figures.
func BenchmarkScale(b *testing.B) {
	st, local := scaleCluster()
	var objs []k8sruntime.Object
	for _, o := range st.Namespaces {
		objs = append(objs, o)
	}
	for _, o := range st.Pods {
		objs = append(objs, o)
	}
	for _, o := range st.Policies {
		objs = append(objs, o)
	}
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res := Compute(st, "node", local)
		compute := time.Since(t0)
		entries := 0
		seen := map[[32]byte]bool{}
		for _, w := range res.Pods {
			if w.Set == nil || seen[w.Set.Sum()] {
				continue
			}
			seen[w.Set.Sum()] = true
		}
		// Kernel entries per distinct policy: what policy.Compile makes.
		comp := NewCompiler(st)
		done := map[string]bool{}
		for _, p := range st.Pods {
			if p.Spec.NodeName != "node" {
				continue
			}
			pol, key := comp.policyFor(p)
			if done[key] {
				continue
			}
			done[key] = true
			for _, d := range []policy.Direction{policy.Egress, policy.Ingress} {
				es, err := policy.Compile(pol.Spec(d), d, "x", policy.MaxMatches)
				if err != nil {
					b.Fatal(err)
				}
				entries += len(es)
			}
		}

		cs := fake.NewSimpleClientset(objs...)
		target := newFakeTarget()
		c, err := New(Config{NodeName: "node", Client: cs, Target: target, Local: func() ([]pods.Pod, error) { return local, nil },
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t1 := time.Now()
		go func() { _ = c.Run(ctx) }()
		<-c.Synced()
		first := time.Since(t1)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		// One policy changes: time until its pods' sets are written.
		np := st.Policies[0].DeepCopy()
		np.Spec.Ingress[0].Ports = np.Spec.Ingress[0].Ports[:1]
		before := c.Status().Syncs
		t2 := time.Now()
		if _, err := cs.NetworkingV1().NetworkPolicies(np.Namespace).Update(ctx, np, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		for c.Status().Syncs == before || c.Status().LatencyCount == 0 {
			time.Sleep(time.Millisecond)
		}
		update := time.Since(t2)
		cancel()
		s := c.Status()
		b.ReportMetric(compute.Seconds()*1000, "compute-ms")
		b.ReportMetric(first.Seconds()*1000, "first-sync-ms")
		b.ReportMetric(update.Seconds()*1000, "update-ms")
		b.ReportMetric(float64(s.Sets), "sets")
		b.ReportMetric(float64(entries), "entries")
		b.Logf("%d local pods, %d policies: Compute %v, informers to first sync %v, one policy update to written %v; "+
			"%d enforced, %d distinct sets, %d kernel entries, heap %d MiB, %d errors",
			s.PodsLocal, s.Policies, compute.Round(time.Millisecond), first.Round(time.Millisecond), update.Round(time.Millisecond),
			s.PodsEnforced, s.Sets, entries, ms.HeapAlloc>>20, len(s.Errors))
		if len(s.Errors) > 0 {
			b.Fatalf("errors: %v", s.Errors[:1])
		}
	}
}
