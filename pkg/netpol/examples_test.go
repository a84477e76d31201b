package netpol

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The examples of the Kubernetes "Network Policies" concept page, with the
// verdicts the page states, written by hand (not from the oracle).

func pod(ns, name, ip string, lbls map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID(ns + "." + name), Labels: lbls}}
	p.Spec.Containers = []corev1.Container{{Name: "c", Ports: ports}}
	p.Status.Phase = corev1.PodRunning
	for _, a := range splitIPs(ip) {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a})
	}
	return p
}

func splitIPs(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

func ns(name string, lbls map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

func tcp(port int32) networkingv1.NetworkPolicyPort {
	p := corev1.ProtocolTCP
	v := intstr.FromInt32(port)
	return networkingv1.NetworkPolicyPort{Protocol: &p, Port: &v}
}

type check struct {
	dir   string
	peer  string
	proto string
	port  int
	want  bool
}

func runExample(t *testing.T, st State, subject *corev1.Pod, checks []check) {
	t.Helper()
	c := NewCompiler(st)
	if errs := c.Errors(); len(errs) > 0 {
		t.Fatalf("compile errors: %v", errs)
	}
	pol := c.PolicyFor(subject)
	for _, ck := range checks {
		pr := probe{pod: subject, dir: ck.dir, peer: netip.MustParseAddr(ck.peer), proto: ck.proto, port: ck.port}
		if got := decide(t, pol, pr); got != ck.want {
			t.Errorf("%s %s %s/%d: allowed %v, the API documentation says %v\npolicy %s: %+v", ck.dir, ck.peer, ck.proto, ck.port, got, ck.want, ck.dir, pol.Spec(dirOf(ck.dir)))
		}
		// The oracle must agree with the documentation too.
		if o := (oracle{st}).allowed(pr); o != ck.want {
			t.Errorf("oracle: %s %s %s/%d: %v, the documentation says %v", ck.dir, ck.peer, ck.proto, ck.port, o, ck.want)
		}
	}
}

func TestExampleTestNetworkPolicy(t *testing.T) {
	// The page's first example: pods role=db in default; ingress from
	// 172.17.0.0/16 except 172.17.1.0/24, from any pod of a namespace
	// project=myproject, from pods role=frontend of default, on TCP 6379;
	// egress to 10.0.0.0/24 on TCP 5978.
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "test-network-policy"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "db"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: "172.17.0.0/16", Except: []string{"172.17.1.0/24"}}},
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"project": "myproject"}}},
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "frontend"}}},
				},
				Ports: []networkingv1.NetworkPolicyPort{tcp(6379)},
			}},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/24"}}},
				Ports: []networkingv1.NetworkPolicyPort{tcp(5978)},
			}},
		}}
	db := pod("default", "db", "10.1.0.10,fd01::10", map[string]string{"role": "db"})
	st := State{
		Namespaces: []*corev1.Namespace{ns("default", nil), ns("mine", map[string]string{"project": "myproject"}), ns("other", nil)},
		Pods: []*corev1.Pod{db,
			pod("default", "frontend", "10.1.0.11,fd01::11", map[string]string{"role": "frontend"}),
			pod("default", "backend", "10.1.0.12", map[string]string{"role": "backend"}),
			pod("mine", "any", "10.1.0.13", nil),
			pod("other", "frontend", "10.1.0.14", map[string]string{"role": "frontend"}),
		},
		Policies: []*networkingv1.NetworkPolicy{np},
	}
	runExample(t, st, db, []check{
		{"ingress", "172.17.0.1", "TCP", 6379, true},
		{"ingress", "172.17.255.255", "TCP", 6379, true},
		{"ingress", "172.17.1.7", "TCP", 6379, false}, // except
		{"ingress", "172.17.0.1", "TCP", 6380, false},
		{"ingress", "172.17.0.1", "UDP", 6379, false},
		{"ingress", "172.18.0.1", "TCP", 6379, false},
		{"ingress", "10.1.0.11", "TCP", 6379, true},  // role=frontend in default
		{"ingress", "fd01::11", "TCP", 6379, true},   // its IPv6 address
		{"ingress", "10.1.0.12", "TCP", 6379, false}, // role=backend
		{"ingress", "10.1.0.13", "TCP", 6379, true},  // any pod of project=myproject
		{"ingress", "10.1.0.14", "TCP", 6379, false}, // frontend, but another namespace
		{"ingress", "10.1.0.11", "ICMP", 0, false},
		{"egress", "10.0.0.1", "TCP", 5978, true},
		{"egress", "10.0.0.255", "TCP", 5978, true},
		{"egress", "10.0.1.0", "TCP", 5978, false},
		{"egress", "10.0.0.1", "TCP", 5977, false},
		{"egress", "10.0.0.1", "UDP", 5978, false},
		{"egress", "fd01::11", "TCP", 5978, false},
	})
	// A pod no policy selects is not isolated.
	fe := st.Pods[1]
	runExample(t, st, fe, []check{{"ingress", "8.8.8.8", "UDP", 53, true}, {"egress", "8.8.8.8", "ICMP", 0, true}})
}

func TestExampleDefaults(t *testing.T) {
	p := pod("default", "p", "10.1.0.10", map[string]string{"app": "x"})
	other := pod("default", "q", "10.1.0.11", nil)
	base := State{Namespaces: []*corev1.Namespace{ns("default", nil)}, Pods: []*corev1.Pod{p, other}}
	mk := func(name string, spec networkingv1.NetworkPolicySpec) State {
		st := base
		st.Policies = []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, Spec: spec}}
		return st
	}
	all := []check{}
	verdicts := func(in, eg bool) []check {
		return append(all,
			check{"ingress", "10.1.0.11", "TCP", 80, in}, check{"ingress", "8.8.8.8", "UDP", 53, in}, check{"ingress", "fd00::1", "ICMP", 0, in},
			check{"egress", "10.1.0.11", "TCP", 80, eg}, check{"egress", "8.8.8.8", "UDP", 53, eg}, check{"egress", "fd00::1", "SCTP", 9, eg})
	}
	t.Run("default-deny-ingress", func(t *testing.T) {
		// podSelector {} and no policyTypes: Ingress only.
		runExample(t, mk("default-deny-ingress", networkingv1.NetworkPolicySpec{}), p, verdicts(false, true))
	})
	t.Run("allow-all-ingress", func(t *testing.T) {
		runExample(t, mk("allow-all-ingress", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{}}, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}), p, verdicts(true, true))
	})
	t.Run("default-deny-egress", func(t *testing.T) {
		runExample(t, mk("default-deny-egress", networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}), p, verdicts(true, false))
	})
	t.Run("allow-all-egress", func(t *testing.T) {
		runExample(t, mk("allow-all-egress", networkingv1.NetworkPolicySpec{
			Egress: []networkingv1.NetworkPolicyEgressRule{{}}, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}), p, verdicts(true, true))
	})
	t.Run("default-deny-all", func(t *testing.T) {
		runExample(t, mk("default-deny-all", networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}), p, verdicts(false, false))
	})
	t.Run("egress-rules-imply-egress-type", func(t *testing.T) {
		// No policyTypes but egress rules: Ingress and Egress; the egress
		// rule allows only TCP 80 to anywhere.
		st := mk("implied", networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcp(80)}}}})
		runExample(t, st, p, []check{{"egress", "10.1.0.11", "TCP", 80, true}, {"egress", "8.8.8.8", "TCP", 80, true},
			{"egress", "8.8.8.8", "UDP", 53, false}, {"ingress", "10.1.0.11", "TCP", 80, false}})
	})
	t.Run("selector-misses", func(t *testing.T) {
		// A policy whose podSelector does not match leaves the pod open.
		st := mk("other", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "y"}}})
		runExample(t, st, p, verdicts(true, true))
	})
}

func TestExampleEndPortAndNamedPorts(t *testing.T) {
	// The page's endPort example: egress to 10.0.0.0/24 on TCP 32000-32768.
	end := int32(32768)
	p32000 := tcp(32000)
	p32000.EndPort = &end
	dns := intstr.FromString("dns")
	udp := corev1.ProtocolUDP
	web := intstr.FromString("http")
	subject := pod("default", "p", "10.1.0.10", map[string]string{"app": "x"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080})
	server := pod("default", "dns", "10.1.0.53", map[string]string{"app": "dns"}, corev1.ContainerPort{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP})
	other := pod("default", "dns2", "10.1.0.54", map[string]string{"app": "dns"}, corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP})
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "multi-port-egress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &web}}}},
			Egress: []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/24"}}}, Ports: []networkingv1.NetworkPolicyPort{p32000}},
				{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "dns"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}}},
			},
		}}
	st := State{Namespaces: []*corev1.Namespace{ns("default", nil)}, Pods: []*corev1.Pod{subject, server, other},
		Policies: []*networkingv1.NetworkPolicy{np}}
	runExample(t, st, subject, []check{
		{"egress", "10.0.0.7", "TCP", 31999, false},
		{"egress", "10.0.0.7", "TCP", 32000, true},
		{"egress", "10.0.0.7", "TCP", 32768, true},
		{"egress", "10.0.0.7", "TCP", 32769, false},
		// The named port resolves per destination pod.
		{"egress", "10.1.0.53", "UDP", 5353, true},
		{"egress", "10.1.0.53", "UDP", 53, false},
		{"egress", "10.1.0.54", "UDP", 53, true},
		{"egress", "10.1.0.54", "UDP", 5353, false},
		{"egress", "10.1.0.54", "TCP", 53, false},
		// Ingress: "http" is the selected pod's own 8080, from anywhere.
		{"ingress", "10.1.0.53", "TCP", 8080, true},
		{"ingress", "192.0.2.1", "TCP", 8080, true},
		{"ingress", "192.0.2.1", "TCP", 80, false},
	})
}

func TestHostNetworkPods(t *testing.T) {
	// A host-network pod is never selected, and a pod selector never
	// matches it (its address is the node's): only an ipBlock does.
	hn := pod("default", "hn", "192.168.0.1", map[string]string{"app": "x"})
	hn.Spec.HostNetwork = true
	subject := pod("default", "p", "10.1.0.10", map[string]string{"app": "x"})
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "x"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}}}}
	st := State{Namespaces: []*corev1.Namespace{ns("default", nil)}, Pods: []*corev1.Pod{hn, subject}, Policies: []*networkingv1.NetworkPolicy{np}}
	c := NewCompiler(st)
	if c.Selected(hn) {
		t.Error("a host-network pod is selected")
	}
	runExample(t, st, subject, []check{{"ingress", "192.168.0.1", "TCP", 80, false}, {"ingress", "10.1.0.10", "TCP", 80, true}})
}
