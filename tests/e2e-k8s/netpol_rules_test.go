package e2ek8s

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// --- 2b. NetworkPolicy: every rule kind ------------------------------------
//
// One more server pod (np-server, behind the Service np-server: TCP 80 ->
// 8080, 9000-9002 -> 9000-9002, UDP 53 -> 5300 and 54 -> 5301; port 9001
// is named np-web) and a second namespace labelled team=peer with two pods,
// peer-client (app=client, which also declares a port named np-web: 9000)
// and peer-other (app=other). The suite's client pod is app=client in
// testNS, whose namespace has no team label. Each state below replaces the
// previous policy and is judged by real connections through the Service's
// ClusterIP (the policy sees the translated pod and port); the expected
// verdicts are written from the API reference (the "Network Policies" page
// and the NetworkPolicy API): they are never read from podscope. Two
// consecutive states differ in at least one verdict, so a state is only
// passed once the controller has written it.

const (
	peerNS    = "podscope-e2e-peer"
	teamLabel = "e2e.podscope.io/team"
)

// probe is one connection attempt from a pod.
type probe struct {
	name    string
	ns, pod string
	udp     bool
	addr    string // ip:port
}

// verdict is a probe and the verdict the API's semantics give it.
type verdict struct {
	probe
	allowed bool
}

// connect runs a probe: true when the connection is established (TCP) or
// the datagram echoed (UDP), false when it vanished (a TCP connect that
// times out, a datagram without echo: what a drop looks like), an error
// for anything else (refused, exec failed), which is neither verdict.
func (s *suite) connect(t testing.TB, p probe) (bool, error) {
	if p.udp {
		out, err := s.execIn(t, p.ns, p.pod, "", "pstraffic", "udp-send", p.addr, "1", "32")
		if err != nil {
			return false, err
		}
		switch strings.TrimSpace(out) {
		case "echoed 1":
			return true, nil
		case "echoed 0":
			return false, nil
		}
		return false, fmt.Errorf("udp-send: %q", out)
	}
	_, err := s.execIn(t, p.ns, p.pod, "", "pstraffic", "tcp-connect", p.addr, "1s")
	if err == nil {
		return true, nil
	}
	if strings.Contains(err.Error(), "i/o timeout") {
		return false, nil
	}
	return false, err
}

func word(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "denied"
}

// expectVerdicts waits (30 s at most) until every probe gets its verdict
// in one round; probes of a round run 4 at a time.
func (s *suite) expectVerdicts(t *testing.T, what string, vs []verdict) {
	t.Helper()
	t0 := time.Now()
	rounds := 0
	eventually(t, 30*time.Second, what, func() error {
		rounds++
		errs := make([]error, len(vs))
		sem := make(chan struct{}, 4)
		var wg sync.WaitGroup
		for i, v := range vs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				got, err := s.connect(t, v.probe)
				switch {
				case err != nil:
					errs[i] = fmt.Errorf("%s: %v", v.name, err)
				case got != v.allowed:
					errs[i] = fmt.Errorf("%s: %s, want %s", v.name, word(got), word(v.allowed))
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	t.Logf("%s: %d probes as expected after %s (%d rounds)", what, len(vs), time.Since(t0).Round(100*time.Millisecond), rounds)
}

func (s *suite) networkPolicyRules(t *testing.T) {
	t0 := time.Now()
	// The pods: created together, then waited for.
	_, err := s.cs.CoreV1().Namespaces().Create(ctx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: peerNS, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged", teamLabel: "peer"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv := s.testPod("np-server", "pstraffic tcp-serve 8080 & pstraffic tcp-serve 9000 & pstraffic tcp-serve 9001 & "+
		"pstraffic tcp-serve 9002 & pstraffic udp-echo 5300 & pstraffic udp-echo 5301 & wait", nil)
	srv.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: 9000},
		{Name: "np-web", ContainerPort: 9001}, {ContainerPort: 9002},
		{ContainerPort: 5300, Protocol: corev1.ProtocolUDP}, {ContainerPort: 5301, Protocol: corev1.ProtocolUDP}}
	peerClient := s.testPod("peer-client", "exec sleep 1000000", nil)
	peerClient.Namespace, peerClient.Labels = peerNS, map[string]string{"app": "client"}
	// A port of the same name on the source: a named port resolved there
	// (and not on the destination) would be 9000.
	peerClient.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "np-web", ContainerPort: 9000}}
	peerOther := s.testPod("peer-other", "exec sleep 1000000", nil)
	peerOther.Namespace, peerOther.Labels = peerNS, map[string]string{"app": "other"}
	for _, p := range []*corev1.Pod{srv, peerClient, peerOther} {
		s.createPod(t, p)
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	svcPort := func(name string, proto corev1.Protocol, port, target int32) corev1.ServicePort {
		return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target)}
	}
	svc, err := s.cs.CoreV1().Services(testNS).Create(ctx(t), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "np-server", Namespace: testNS},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "np-server"}, Ports: []corev1.ServicePort{
			svcPort("http", tcp, 80, 8080), svcPort("p9000", tcp, 9000, 9000), svcPort("p9001", tcp, 9001, 9001),
			svcPort("p9002", tcp, 9002, 9002), svcPort("u53", udp, 53, 5300), svcPort("u54", udp, 54, 5301)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv, peerClient, peerOther = s.waitReady(t, srv), s.waitReady(t, peerClient), s.waitReady(t, peerOther)
	t.Cleanup(func() {
		// The namespace goes in the background; TestCluster's cleanup
		// waits for it.
		_ = s.cs.CoreV1().Namespaces().Delete(ctx(t), peerNS, metav1.DeleteOptions{})
		_ = s.cs.CoreV1().Services(testNS).Delete(ctx(t), "np-server", metav1.DeleteOptions{})
		_ = s.cs.CoreV1().Pods(testNS).Delete(ctx(t), "np-server", metav1.DeleteOptions{})
	})
	ip := svc.Spec.ClusterIP
	at := func(port int) string { return fmt.Sprintf("%s:%d", ip, port) }
	from := func(name, ns, pod string, udp bool, addr string) probe {
		return probe{name: name, ns: ns, pod: pod, udp: udp, addr: addr}
	}
	var (
		c80   = from("client->np-server:80", testNS, "client", false, at(80))
		p80   = from("peer-client->np-server:80", peerNS, "peer-client", false, at(80))
		o80   = from("peer-other->np-server:80", peerNS, "peer-other", false, at(80))
		c9000 = from("client->np-server:9000", testNS, "client", false, at(9000))
		c9001 = from("client->np-server:9001", testNS, "client", false, at(9001))
		c9002 = from("client->np-server:9002", testNS, "client", false, at(9002))
		p9000 = from("peer-client->np-server:9000", peerNS, "peer-client", false, at(9000))
		p9001 = from("peer-client->np-server:9001", peerNS, "peer-client", false, at(9001))
		cu53  = from("client->np-server:udp/53 (pod 5300)", testNS, "client", true, at(53))
		cu54  = from("client->np-server:udp/54 (pod 5301)", testNS, "client", true, at(54))
		n80   = from("np-server->server:80 (egress)", testNS, "np-server", false, s.serviceIP+":80")
		cs80  = from("client->server:80 (no policy)", testNS, "client", false, s.serviceIP+":80")
	)
	v := func(p probe, allowed bool) verdict { return verdict{p, allowed} }
	all := []probe{c80, p80, o80, c9000, c9001, c9002, p9000, p9001, cu53, cu54, n80, cs80}
	var base []verdict
	for _, p := range all {
		base = append(base, v(p, true))
	}
	s.expectVerdicts(t, "no policy on np-server: every probe connects (the listeners are up)", base)
	t.Logf("pods and Service ready, baseline checked: %s", time.Since(t0).Round(100*time.Millisecond))

	npServer := metav1.LabelSelector{MatchLabels: map[string]string{"app": "np-server"}}
	clients := metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}
	team := metav1.LabelSelector{MatchLabels: map[string]string{teamLabel: "peer"}}
	ingressOnly := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	ingressFrom := func(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) {
		t.Helper()
		s.putPolicy(t, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "np"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: npServer, PolicyTypes: ingressOnly,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}}})
	}

	// namespaceSelector alone: every pod of the matching namespaces, none
	// of the policy's own namespace (which lacks the label).
	ingressFrom([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: &team}}, nil)
	s.expectVerdicts(t, "namespaceSelector alone", []verdict{v(c80, false), v(p80, true), v(o80, true)})

	// Both selectors in ONE peer: the matching pods of the matching
	// namespaces (AND).
	ingressFrom([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: &team, PodSelector: &clients}}, nil)
	s.expectVerdicts(t, "namespaceSelector AND podSelector (one peer)", []verdict{v(c80, false), v(p80, true), v(o80, false)})

	// The same selectors as two peers: either (OR); a podSelector alone
	// selects pods of the policy's namespace, so the client is in.
	ingressFrom([]networkingv1.NetworkPolicyPeer{{NamespaceSelector: &team}, {PodSelector: &clients}}, nil)
	s.expectVerdicts(t, "namespaceSelector OR podSelector (two peers)", []verdict{v(c80, true), v(p80, true), v(o80, true)})

	// ipBlock with except: the smallest block holding the three clients,
	// except the client's own address.
	block := commonPrefix(addr(t, s.client), addr(t, peerClient), addr(t, peerOther))
	if block.Bits() < 8 {
		t.Fatalf("the clients' addresses share only %s: no useful ipBlock", block)
	}
	ingressFrom([]networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
		CIDR: block.String(), Except: []string{s.client.Status.PodIP + "/32"}}}}, nil)
	s.expectVerdicts(t, fmt.Sprintf("ipBlock %s except the client's /32", block), []verdict{v(c80, false), v(p80, true), v(o80, true)})

	// A named port: np-web is 9001 on np-server (the destination); the
	// peer-client's own np-web (9000) does not count. The Service's ports
	// equal the pod's here, so the name is the only way to 9001.
	named := intstr.FromString("np-web")
	ingressFrom(nil, []networkingv1.NetworkPolicyPort{{Port: &named}})
	s.expectVerdicts(t, "named port np-web (9001 on the destination)", []verdict{
		v(c9001, true), v(p9001, true), v(c9000, false), v(p9000, false), v(c80, false)})

	// A port range: 9000..9001 (endPort), TCP.
	p9k := intstr.FromInt32(9000)
	ingressFrom(nil, []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p9k, EndPort: ptr(int32(9001))}})
	s.expectVerdicts(t, "port 9000 endPort 9001", []verdict{
		v(c9000, true), v(c9001, true), v(c9002, false), v(c80, false), v(cu54, false)})

	// UDP: the pod's port 5301 (the Service's 54), not 5300, and no TCP.
	p5301 := intstr.FromInt32(5301)
	ingressFrom(nil, []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &p5301}})
	s.expectVerdicts(t, "UDP port 5301", []verdict{v(cu54, true), v(cu53, false), v(c9000, false)})

	// policyTypes [Ingress, Egress] in one policy with ingress rules only:
	// ingress from this namespace's clients, egress isolated with no
	// allow. The client still connects (the replies of an allowed
	// connection pass the egress isolation), np-server reaches nothing.
	before := s.counters(t)
	if err := s.cs.NetworkingV1().NetworkPolicies(testNS).Delete(ctx(t), "np", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.putPolicy(t, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "np-both"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: npServer,
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &clients}}}}}})
	s.expectVerdicts(t, "policyTypes Ingress+Egress (ingress from app=client here, no egress)", []verdict{
		v(c80, true), v(p80, false), v(n80, false), v(cs80, true)})

	// podscopectl: the drops are NetworkPolicy's, on np-server, both ways,
	// and its flows say so (docs/podscopectl.md).
	after := s.counters(t)
	b, a := before["np-server"], after["np-server"]
	if a.NetworkPolicyDropsEgress <= b.NetworkPolicyDropsEgress || a.NetworkPolicyDropsIngress <= b.NetworkPolicyDropsIngress {
		t.Errorf("podscopectl pods: np-server's NetworkPolicy drops egress %d -> %d, ingress %d -> %d: want both to grow",
			b.NetworkPolicyDropsEgress, a.NetworkPolicyDropsEgress, b.NetworkPolicyDropsIngress, a.NetworkPolicyDropsIngress)
	}
	if a.DropsEgress-b.DropsEgress < a.NetworkPolicyDropsEgress-b.NetworkPolicyDropsEgress {
		t.Errorf("podscopectl pods: np-server's NetworkPolicy egress drops (+%d) are not among its drops (+%d)",
			a.NetworkPolicyDropsEgress-b.NetworkPolicyDropsEgress, a.DropsEgress-b.DropsEgress)
	}
	s.checkFlows(t, srv, peerClient)
	if out, err := s.ctl(t, "status"); err == nil {
		t.Logf("podscopectl status:\n%s", out)
	}
	if st := s.status(t); st.NetworkPolicy == nil || !st.NetworkPolicy.Enforced || st.NetworkPolicy.Pods < 1 || st.NetworkPolicy.Sets < 1 {
		t.Errorf("podscopectl status: NetworkPolicy %+v: want enforced, np-server's policy held", st.NetworkPolicy)
	}
	if err := s.cs.NetworkingV1().NetworkPolicies(testNS).Delete(ctx(t), "np-both", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("rule kinds checked in %s", time.Since(t0).Round(100*time.Millisecond))
}

// flow is a row of `podscopectl flows -o json`, as documented.
type flow struct {
	Proto, Local, Remote, Verdict, DeniedBy, Initiator string
}

type flows struct {
	Pod   string
	Flows []flow
}

// checkFlows: np-server's flow table holds its denied egress connection to
// the server Service (as np-server sent it: to the ClusterIP), the denied
// ingress from peer-client (to its own port 8080) and the allowed ingress
// from the client, all named by who denied them.
func (s *suite) checkFlows(t *testing.T, srv, peerClient *corev1.Pod) {
	t.Helper()
	out, err := s.ctl(t, "flows", "--pod", testNS+"/np-server", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeAll[flows](out)
	if err != nil || len(got) != 1 {
		t.Fatalf("podscopectl flows -o json: %v: %s", err, out)
	}
	var egress, ingress, allowed bool
	for _, f := range got[0].Flows {
		remote, _ := netip.ParseAddrPort(f.Remote)
		switch {
		case f.Proto == "tcp" && f.Initiator == "egress" && f.Remote == s.serviceIP+":80":
			egress = egress || f.Verdict == "deny" && f.DeniedBy == "networkpolicy"
		case f.Proto == "tcp" && f.Initiator == "ingress" && remote.Addr().String() == peerClient.Status.PodIP &&
			f.Local == fmt.Sprintf("%s:%d", srv.Status.PodIP, serverPort):
			ingress = ingress || f.Verdict == "deny" && f.DeniedBy == "networkpolicy"
		case f.Proto == "tcp" && f.Initiator == "ingress" && remote.Addr().String() == s.client.Status.PodIP &&
			f.Local == fmt.Sprintf("%s:%d", srv.Status.PodIP, serverPort) && f.Verdict == "allow":
			allowed = true
		}
	}
	if !egress || !ingress || !allowed {
		t.Errorf("podscopectl flows of np-server: denied egress to %s:80 by networkpolicy %v, denied ingress from peer-client by networkpolicy %v, "+
			"allowed ingress from the client %v; want all three:\n%s", s.serviceIP, egress, ingress, allowed, out)
	}
	table, err := s.ctl(t, "flows", "--pod", testNS+"/np-server")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(table, "\n") {
		if strings.Contains(l, s.serviceIP+":80") && strings.Contains(l, "deny (networkpolicy)") {
			found = true
		}
	}
	if !found {
		t.Errorf("podscopectl flows (table): no row to %s:80 saying \"deny (networkpolicy)\":\n%s", s.serviceIP, table)
	}
}

func addr(t testing.TB, p *corev1.Pod) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		t.Fatalf("pod %s/%s: address %q: %v", p.Namespace, p.Name, p.Status.PodIP, err)
	}
	return a
}

// commonPrefix is the smallest prefix holding every address (of one family).
func commonPrefix(addrs ...netip.Addr) netip.Prefix {
	for bits := addrs[0].BitLen(); bits > 0; bits-- {
		p, _ := addrs[0].Prefix(bits)
		in := true
		for _, a := range addrs[1:] {
			in = in && p.Contains(a)
		}
		if in {
			return p
		}
	}
	p, _ := addrs[0].Prefix(0)
	return p
}
