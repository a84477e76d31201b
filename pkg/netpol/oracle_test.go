package netpol

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The oracle: a deliberately naive evaluator written from the
// NetworkPolicy API reference (networking.k8s.io/v1), sharing no code with
// the compiler. It answers one question straight from the objects: may
// this packet leave (egress) or enter (ingress) this pod?
//
// Decisions it encodes that the API leaves to the implementation (the same
// ones docs/networkpolicy.md states): host-network pods are never selected
// and never match a pod/namespace selector (their address is the node's:
// only ipBlock matches it); pods that terminated or have no address are not
// peers; a named port resolves against the containers' ports (name and
// protocol) of the destination pod: the selected pod for ingress, the
// destination pod for egress, and against no pod (matches nothing) for an
// address that is not a pod's.

type oracle struct {
	st State
}

type probe struct {
	pod   *corev1.Pod // the pod the policy is for
	dir   string      // "ingress" or "egress"
	peer  netip.Addr  // the source (ingress) or destination (egress)
	proto string      // "TCP", "UDP", "SCTP", "ICMP"
	port  int         // destination port (0 for ICMP)
}

// selectorMatches implements the LabelSelector documentation: every
// matchLabels pair and every matchExpressions requirement must hold; an
// empty selector matches everything, a nil one nothing.
func selectorMatches(sel *metav1.LabelSelector, lbls map[string]string) bool {
	if sel == nil {
		return false
	}
	for k, v := range sel.MatchLabels {
		got, ok := lbls[k]
		if !ok || got != v {
			return false
		}
	}
	for _, r := range sel.MatchExpressions {
		got, ok := lbls[r.Key]
		in := false
		for _, v := range r.Values {
			if ok && got == v {
				in = true
			}
		}
		switch r.Operator {
		case metav1.LabelSelectorOpIn:
			if !in {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			if in {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func (o oracle) namespaceLabels(name string) map[string]string {
	for _, ns := range o.st.Namespaces {
		if ns.Name == name {
			return ns.Labels
		}
	}
	return nil
}

// podOwning is the running, non-host-network pod that has address a.
func (o oracle) podOwning(a netip.Addr) *corev1.Pod {
	for _, p := range o.st.Pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := []string{p.Status.PodIP}
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		for _, s := range ips {
			if b, err := netip.ParseAddr(s); err == nil && b.Unmap() == a {
				return p
			}
		}
	}
	return nil
}

func types(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	// "If this field is not specified, it will default based on the
	// existence of ingress or egress rules; policies that contain an egress
	// section are assumed to affect egress, and all policies (whether or
	// not they contain an ingress section) are assumed to affect ingress."
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		if t == networkingv1.PolicyTypeIngress {
			ingress = true
		}
		if t == networkingv1.PolicyTypeEgress {
			egress = true
		}
	}
	return
}

func (o oracle) peerMatches(np *networkingv1.NetworkPolicy, peer networkingv1.NetworkPolicyPeer, a netip.Addr) bool {
	if peer.IPBlock != nil {
		if peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return false
		}
		c, err := netip.ParsePrefix(peer.IPBlock.CIDR)
		if err != nil || !c.Masked().Contains(a) {
			return false
		}
		for _, e := range peer.IPBlock.Except {
			x, err := netip.ParsePrefix(e)
			if err != nil || x.Masked().Contains(a) {
				return false
			}
		}
		return true
	}
	p := o.podOwning(a)
	if p == nil {
		return false
	}
	switch {
	case peer.PodSelector != nil && peer.NamespaceSelector == nil:
		// "selects particular Pods in the same namespace as the NetworkPolicy"
		return p.Namespace == np.Namespace && selectorMatches(peer.PodSelector, p.Labels)
	case peer.PodSelector == nil && peer.NamespaceSelector != nil:
		// "selects all pods in the namespaces selected"
		return selectorMatches(peer.NamespaceSelector, o.namespaceLabels(p.Namespace))
	case peer.PodSelector != nil && peer.NamespaceSelector != nil:
		// "selects particular Pods within particular namespaces"
		return selectorMatches(peer.NamespaceSelector, o.namespaceLabels(p.Namespace)) &&
			selectorMatches(peer.PodSelector, p.Labels)
	}
	return false
}

func (o oracle) portMatches(ports []networkingv1.NetworkPolicyPort, proto string, port int, dst *corev1.Pod) bool {
	// "If this field is empty or missing, this rule matches all ports"
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		want := "TCP" // "If not specified, this field defaults to TCP."
		if p.Protocol != nil {
			want = string(*p.Protocol)
		}
		if want != proto {
			continue
		}
		if p.Port == nil {
			// "If this field is not provided, this matches all port names and numbers."
			return true
		}
		if p.Port.Type == intstr.String {
			if p.EndPort != nil || dst == nil {
				continue
			}
			for _, c := range dst.Spec.Containers {
				for _, cp := range c.Ports {
					cproto := string(cp.Protocol)
					if cproto == "" {
						cproto = "TCP"
					}
					if cp.Name == p.Port.StrVal && strings.EqualFold(cproto, proto) && int(cp.ContainerPort) == port {
						return true
					}
				}
			}
			continue
		}
		lo, hi := int(p.Port.IntVal), int(p.Port.IntVal)
		if p.EndPort != nil {
			hi = int(*p.EndPort)
		}
		if port >= lo && port <= hi && lo >= 1 && hi <= 65535 {
			return true
		}
	}
	return false
}

// allowed answers the probe from the API objects.
func (o oracle) allowed(pr probe) bool {
	pod := pr.pod
	if pod.Spec.HostNetwork {
		return true
	}
	isolated := false
	for _, np := range o.st.Policies {
		if np.Namespace != pod.Namespace || !selectorMatches(&np.Spec.PodSelector, pod.Labels) {
			continue
		}
		in, eg := types(np)
		if pr.dir == "ingress" && in {
			isolated = true
			for _, r := range np.Spec.Ingress {
				if o.rulePeers(np, r.From, pr.peer) && (pr.proto != "ICMP" || len(r.Ports) == 0) &&
					o.portMatches(r.Ports, pr.proto, pr.port, pod) {
					return true
				}
			}
		}
		if pr.dir == "egress" && eg {
			isolated = true
			for _, r := range np.Spec.Egress {
				if o.rulePeers(np, r.To, pr.peer) && (pr.proto != "ICMP" || len(r.Ports) == 0) &&
					o.portMatches(r.Ports, pr.proto, pr.port, o.podOwning(pr.peer)) {
					return true
				}
			}
		}
	}
	// "if no policies select the pod (in that direction), all traffic is allowed"
	return !isolated
}

func (o oracle) rulePeers(np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, a netip.Addr) bool {
	// "If this field is empty or missing, this rule matches all sources/destinations"
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if o.peerMatches(np, p, a) {
			return true
		}
	}
	return false
}
