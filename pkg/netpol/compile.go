// Package netpol enforces Kubernetes NetworkPolicies with podscope's
// datapath: a compiler that turns NetworkPolicies, Pods and Namespaces into
// one policy.Policy per pod of this node, and a controller that keeps the
// datapath in step with the cluster through client-go informers.
//
// The compiled form of a direction in which a pod is isolated is Default
// Deny plus, at every prefix node that matters (peer CIDRs, their excepts,
// peer pods' /32 or /128), the (protocol, port ranges) allowed at exactly
// that node followed by a catch-all Deny, so that a less specific CIDR's
// allows never leak into an except or a peer with fewer allows. A direction
// in which the pod is not isolated is policy.AllowAll(). See
// docs/networkpolicy.md for the semantics decisions.
package netpol

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podscope/podscope/pkg/policy"
)

// State is the cluster state the compiler reads: what the informers hold.
type State struct {
	Policies   []*networkingv1.NetworkPolicy
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
}

var (
	root4 = netip.MustParsePrefix("0.0.0.0/0")
	root6 = netip.MustParsePrefix("::/0")
)

// podInfo is a pod as a peer.
type podInfo struct {
	pod    *corev1.Pod
	labels labels.Set
	addrs  []netip.Addr
}

// element says: addresses in prefix, except those in except, may use svc.
type element struct {
	prefix netip.Prefix
	except []netip.Prefix
	svc    *services
}

// portEntry is one NetworkPolicyPort, checked.
type portEntry struct {
	proto    int    // index in protocols
	name     string // named port, resolved per destination pod
	r        policy.PortRange
	allPorts bool
}

type peerTarget struct {
	prefix netip.Prefix
	except []netip.Prefix
	pod    *podInfo // set for pod peers (one target per address)
}

type rule struct {
	allPeers bool // empty from/to
	peers    []peerTarget
	allPorts bool // empty ports
	ports    []portEntry
}

type compiledNP struct {
	np               *networkingv1.NetworkPolicy
	key              string
	sel              labels.Selector
	ingress, egress  bool // policyTypes, defaulted
	inRules, egRules []rule
	egElems          []element // egress elements, computed on first use
	egDone           bool
}

// Compiler compiles one snapshot of the cluster state. It memoizes by the
// set of policies selecting a pod, so pods selected by the same policies
// (and, for ingress named ports, with the same container ports) share the
// work and the result.
type Compiler struct {
	nsLabels map[string]labels.Set
	peers    []*podInfo
	byNS     map[string][]*podInfo
	policies map[string][]*compiledNP // by namespace
	memo     map[string]policy.Spec
	errs     []error
}

// NewCompiler indexes st. Policies that cannot be understood (an invalid
// selector, CIDR or port) are reported by Errors; the parts that can be are
// still applied (a peer or port that cannot be understood matches nothing).
func NewCompiler(st State) *Compiler {
	c := &Compiler{nsLabels: map[string]labels.Set{}, byNS: map[string][]*podInfo{},
		policies: map[string][]*compiledNP{}, memo: map[string]policy.Spec{}}
	for _, ns := range st.Namespaces {
		c.nsLabels[ns.Name] = labels.Set(ns.Labels)
	}
	for _, p := range st.Pods {
		if !IsPeer(p) {
			continue
		}
		pi := &podInfo{pod: p, labels: labels.Set(p.Labels), addrs: PodAddrs(p)}
		c.peers = append(c.peers, pi)
		c.byNS[p.Namespace] = append(c.byNS[p.Namespace], pi)
	}
	nps := append([]*networkingv1.NetworkPolicy(nil), st.Policies...)
	sort.Slice(nps, func(i, j int) bool {
		return nps[i].Namespace+"/"+nps[i].Name < nps[j].Namespace+"/"+nps[j].Name
	})
	for _, np := range nps {
		cp := c.parse(np)
		c.policies[np.Namespace] = append(c.policies[np.Namespace], cp)
	}
	return c
}

// Errors lists what could not be understood in the policies.
func (c *Compiler) Errors() []error { return c.errs }

func (c *Compiler) errorf(np *networkingv1.NetworkPolicy, field, format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("networkpolicy %s/%s: %s: %s", np.Namespace, np.Name, field, fmt.Sprintf(format, args...)))
}

// IsPeer reports whether pod's addresses stand for it as a NetworkPolicy
// peer: it has addresses, is not on the host network (its address is the
// node's) and has not terminated (its address may be reused).
func IsPeer(p *corev1.Pod) bool {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return false
	}
	return len(PodAddrs(p)) > 0
}

// IsSubject reports whether policies can select pod: host-network pods are
// never subjects (their traffic is the node's).
func IsSubject(p *corev1.Pod) bool { return !p.Spec.HostNetwork }

// PodAddrs is the pod's status.podIPs (or status.podIP), IPv4 and IPv6.
func PodAddrs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		a = a.Unmap().WithZone("")
		for _, b := range out {
			if b == a {
				return
			}
		}
		out = append(out, a)
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	if p.Status.PodIP != "" {
		add(p.Status.PodIP)
	}
	return out
}

// policyTypes is spec.policyTypes with the API's defaulting: empty means
// Ingress, plus Egress when the policy has egress rules.
func policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func (c *Compiler) parse(np *networkingv1.NetworkPolicy) *compiledNP {
	cp := &compiledNP{np: np, key: np.Namespace + "/" + np.Name}
	cp.ingress, cp.egress = policyTypes(np)
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		c.errorf(np, "spec.podSelector", "%v (the policy selects no pod)", err)
		sel = labels.Nothing()
	}
	cp.sel = sel
	if cp.ingress {
		for i, r := range np.Spec.Ingress {
			cp.inRules = append(cp.inRules, c.parseRule(np, fmt.Sprintf("spec.ingress[%d]", i), r.From, r.Ports))
		}
	}
	if cp.egress {
		for i, r := range np.Spec.Egress {
			cp.egRules = append(cp.egRules, c.parseRule(np, fmt.Sprintf("spec.egress[%d]", i), r.To, r.Ports))
		}
	}
	return cp
}

func (c *Compiler) parseRule(np *networkingv1.NetworkPolicy, field string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) rule {
	var r rule
	r.allPeers = len(peers) == 0
	for i, p := range peers {
		r.peers = append(r.peers, c.resolvePeer(np, fmt.Sprintf("%s.peers[%d]", field, i), p)...)
	}
	r.allPorts = len(ports) == 0
	for i, p := range ports {
		pf := fmt.Sprintf("%s.ports[%d]", field, i)
		proto := "tcp"
		if p.Protocol != nil {
			proto = strings.ToLower(string(*p.Protocol))
		}
		pe := portEntry{proto: protoIndex(proto)}
		if pe.proto < 0 {
			c.errorf(np, pf+".protocol", "unknown protocol %q (the port matches nothing)", proto)
			continue
		}
		switch {
		case p.Port == nil:
			if p.EndPort != nil {
				c.errorf(np, pf+".endPort", "endPort without port (ignored: all ports)")
			}
			pe.allPorts = true
		case p.Port.Type == intstr.String:
			if p.EndPort != nil {
				c.errorf(np, pf+".endPort", "endPort with the named port %q (the port matches nothing)", p.Port.StrVal)
				continue
			}
			if p.Port.StrVal == "" {
				c.errorf(np, pf+".port", "empty port name (the port matches nothing)")
				continue
			}
			pe.name = p.Port.StrVal
		default:
			from, to := p.Port.IntVal, p.Port.IntVal
			if p.EndPort != nil {
				to = *p.EndPort
			}
			if from < 1 || to > 65535 || to < from {
				c.errorf(np, pf, "port range %d-%d is not within 1-65535 in order (the port matches nothing)", from, to)
				continue
			}
			pe.r = policy.PortRange{From: uint16(from), To: uint16(to)}
		}
		r.ports = append(r.ports, pe)
	}
	return r
}

func (c *Compiler) resolvePeer(np *networkingv1.NetworkPolicy, field string, p networkingv1.NetworkPolicyPeer) []peerTarget {
	if p.IPBlock != nil {
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			c.errorf(np, field, "ipBlock together with a selector (the peer matches nothing)")
			return nil
		}
		pfx, err := parseCIDR(p.IPBlock.CIDR)
		if err != nil {
			c.errorf(np, field+".ipBlock.cidr", "%v (the peer matches nothing)", err)
			return nil
		}
		t := peerTarget{prefix: pfx}
		for i, e := range p.IPBlock.Except {
			x, err := parseCIDR(e)
			if err != nil {
				// Not knowing what to leave out, leave out everything.
				c.errorf(np, fmt.Sprintf("%s.ipBlock.except[%d]", field, i), "%v (the peer matches nothing)", err)
				return nil
			}
			t.except = append(t.except, x)
		}
		return []peerTarget{t}
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		c.errorf(np, field, "neither podSelector, namespaceSelector nor ipBlock (the peer matches nothing)")
		return nil
	}
	podSel := labels.Everything()
	if p.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(p.PodSelector)
		if err != nil {
			c.errorf(np, field+".podSelector", "%v (the peer matches nothing)", err)
			return nil
		}
		podSel = s
	}
	var cands []*podInfo
	if p.NamespaceSelector == nil {
		cands = c.byNS[np.Namespace]
	} else {
		nsSel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
		if err != nil {
			c.errorf(np, field+".namespaceSelector", "%v (the peer matches nothing)", err)
			return nil
		}
		for ns, pis := range c.byNS {
			if nsSel.Matches(c.nsLabels[ns]) {
				cands = append(cands, pis...)
			}
		}
	}
	var out []peerTarget
	for _, pi := range cands {
		if !podSel.Matches(pi.labels) {
			continue
		}
		for _, a := range pi.addrs {
			out = append(out, peerTarget{prefix: netip.PrefixFrom(a, a.BitLen()), pod: pi})
		}
	}
	return out
}

func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		if p.Bits() < 0 {
			return p, fmt.Errorf("CIDR %q: IPv4-mapped prefix shorter than /96", s)
		}
	}
	return p.Masked(), nil
}

// namedPort resolves the named port of entry e against pod's containers:
// the container ports with that name and protocol.
func namedPort(pod *corev1.Pod, e portEntry) []uint16 {
	var out []uint16
	for _, ct := range pod.Spec.Containers {
		for _, cp := range ct.Ports {
			proto := "tcp"
			if cp.Protocol != "" {
				proto = strings.ToLower(string(cp.Protocol))
			}
			if cp.Name == e.name && proto == protocols[e.proto] && cp.ContainerPort >= 1 && cp.ContainerPort <= 65535 {
				out = append(out, uint16(cp.ContainerPort))
			}
		}
	}
	return out
}

// numericServices is what r's ports allow without named ports.
func (r *rule) numericServices() *services {
	if r.allPorts {
		return allServices()
	}
	s := &services{}
	for _, e := range r.ports {
		switch {
		case e.name != "":
		case e.allPorts:
			s.addRange(e.proto, policy.PortRange{From: 1, To: 65535})
		default:
			s.addRange(e.proto, e.r)
		}
	}
	return s
}

// namedServices is what r's named ports allow on pod.
func (r *rule) namedServices(pod *corev1.Pod) *services {
	s := &services{}
	for _, e := range r.ports {
		if e.name == "" {
			continue
		}
		for _, p := range namedPort(pod, e) {
			s.addRange(e.proto, policy.PortRange{From: p, To: p})
		}
	}
	return s
}

func (r *rule) hasNamed() bool {
	for _, e := range r.ports {
		if e.name != "" {
			return true
		}
	}
	return false
}

func excepted(a netip.Addr, except []netip.Prefix) bool {
	for _, x := range except {
		if x.Contains(a) {
			return true
		}
	}
	return false
}

// egressElements are the destinations and services of cp's egress rules;
// they do not depend on the selected pod (named ports resolve against each
// destination pod).
func (c *Compiler) egressElements(cp *compiledNP) []element {
	if cp.egDone {
		return cp.egElems
	}
	cp.egDone = true
	for i := range cp.egRules {
		r := &cp.egRules[i]
		num := r.numericServices()
		named := r.hasNamed()
		perPod := func(pi *podInfo, inBlock func(netip.Addr) bool) {
			s := r.namedServices(pi.pod)
			if s.empty() {
				return
			}
			for _, a := range pi.addrs {
				if inBlock(a) {
					cp.egElems = append(cp.egElems, element{prefix: netip.PrefixFrom(a, a.BitLen()), svc: s})
				}
			}
		}
		if r.allPeers {
			if !num.empty() {
				cp.egElems = append(cp.egElems, element{prefix: root4, svc: num}, element{prefix: root6, svc: num})
			}
			if named {
				for _, pi := range c.peers {
					perPod(pi, func(netip.Addr) bool { return true })
				}
			}
			continue
		}
		for _, t := range r.peers {
			if t.pod != nil {
				s := num.clone()
				s.union(r.namedServices(t.pod.pod))
				if !s.empty() {
					cp.egElems = append(cp.egElems, element{prefix: t.prefix, svc: s})
				}
				continue
			}
			if !num.empty() {
				cp.egElems = append(cp.egElems, element{prefix: t.prefix, except: t.except, svc: num})
			}
			if named {
				// A named port towards an ipBlock: the pods whose
				// addresses are in the block, each with its own port.
				t := t
				for _, pi := range c.peers {
					perPod(pi, func(a netip.Addr) bool { return t.prefix.Contains(a) && !excepted(a, t.except) })
				}
			}
		}
	}
	return cp.egElems
}

// ingressElements are the sources and services of cp's ingress rules for
// the selected pod (named ports resolve against its own containers).
func (c *Compiler) ingressElements(cp *compiledNP, pod *corev1.Pod) []element {
	var out []element
	for i := range cp.inRules {
		r := &cp.inRules[i]
		s := r.numericServices()
		s.union(r.namedServices(pod))
		if s.empty() {
			continue
		}
		if r.allPeers {
			out = append(out, element{prefix: root4, svc: s}, element{prefix: root6, svc: s})
			continue
		}
		for _, t := range r.peers {
			out = append(out, element{prefix: t.prefix, except: t.except, svc: s})
		}
	}
	return out
}

// Selecting lists the policies that select pod (by namespace and
// podSelector), sorted by namespace/name.
func (c *Compiler) selecting(pod *corev1.Pod) []*compiledNP {
	var out []*compiledNP
	set := labels.Set(pod.Labels)
	for _, cp := range c.policies[pod.Namespace] {
		if cp.sel.Matches(set) {
			out = append(out, cp)
		}
	}
	return out
}

// Selected reports whether any NetworkPolicy selects pod.
func (c *Compiler) Selected(pod *corev1.Pod) bool {
	return IsSubject(pod) && len(c.selecting(pod)) > 0
}

// PolicyFor is pod's policy: per direction, policy.AllowAll() unless a
// policy selecting pod has that direction in its policyTypes; then Default
// Deny with the union of those policies' allows.
func (c *Compiler) PolicyFor(pod *corev1.Pod) policy.Policy {
	p, _ := c.policyFor(pod)
	return p
}

// policyFor is PolicyFor with a key that is the same for pods whose
// policies are the same by construction (same selecting policies, same
// named ports).
func (c *Compiler) policyFor(pod *corev1.Pod) (policy.Policy, string) {
	p := policy.Policy{Egress: policy.AllowAll(), Ingress: policy.AllowAll()}
	if !IsSubject(pod) {
		return p, ""
	}
	var egKey, inKey string
	sel := c.selecting(pod)
	var in, eg []*compiledNP
	for _, cp := range sel {
		if cp.ingress {
			in = append(in, cp)
		}
		if cp.egress {
			eg = append(eg, cp)
		}
	}
	if len(eg) > 0 {
		p.Egress, egKey = c.memoSpec("e", eg, c.egressElements)
	}
	if len(in) > 0 {
		p.Ingress, inKey = c.memoSpec("i"+portSignature(pod), in, func(cp *compiledNP) []element {
			return c.ingressElements(cp, pod)
		})
	}
	return p, egKey + "\x01" + inKey
}

// memoSpec is the spec of one direction made of the elements of the
// selecting policies cps, memoized under prefix (the direction, and for
// ingress what the pod's named ports resolve to) plus their keys.
func (c *Compiler) memoSpec(prefix string, cps []*compiledNP, elements func(*compiledNP) []element) (policy.Spec, string) {
	key := prefix
	for _, cp := range cps {
		key += "\x00" + cp.key
	}
	spec, ok := c.memo[key]
	if !ok {
		var elems []element
		for _, cp := range cps {
			elems = append(elems, elements(cp)...)
		}
		spec = buildSpec(elems)
		c.memo[key] = spec
	}
	return spec, key
}

// portSignature identifies what named ports resolve to on pod.
func portSignature(pod *corev1.Pod) string {
	var parts []string
	for _, ct := range pod.Spec.Containers {
		for _, cp := range ct.Ports {
			if cp.Name != "" {
				parts = append(parts, fmt.Sprintf("%s/%s/%d", cp.Name, cp.Protocol, cp.ContainerPort))
			}
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// buildSpec turns the allowed elements of one isolated direction into a
// Default Deny spec. For every node N (an element's prefix or except, and
// the /0 of each family), the traffic allowed to an address whose most
// specific node is N is the union of the elements whose prefix contains N
// and none of whose excepts contains N: every boundary is a node, so that
// is the same for all such addresses. A node is emitted only when its set
// differs from its nearest emitted ancestor's, with Allow rules for its set
// followed by a catch-all Deny (or a single Allow-all).
func buildSpec(elems []element) policy.Spec {
	byPrefix := map[netip.Prefix][]*element{}
	lengths := map[bool]map[int]bool{true: {}, false: {}}
	nodes := map[netip.Prefix]bool{root4: true, root6: true}
	for i := range elems {
		e := &elems[i]
		byPrefix[e.prefix] = append(byPrefix[e.prefix], e)
		lengths[e.prefix.Addr().Is4()][e.prefix.Bits()] = true
		nodes[e.prefix] = true
		for _, x := range e.except {
			if x.Addr().Is4() == e.prefix.Addr().Is4() {
				nodes[x] = true
			}
		}
	}
	lens := map[bool][]int{}
	for fam, ls := range lengths {
		for l := range ls {
			lens[fam] = append(lens[fam], l)
		}
	}
	order := make([]netip.Prefix, 0, len(nodes))
	for n := range nodes {
		order = append(order, n)
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if a.Bits() != b.Bits() {
			return a.Bits() < b.Bits()
		}
		if a.Addr().Is4() != b.Addr().Is4() {
			return a.Addr().Is4()
		}
		return a.Addr().Less(b.Addr())
	})
	allowedAt := func(n netip.Prefix) *services {
		s := &services{}
		for _, l := range lens[n.Addr().Is4()] {
			if l > n.Bits() {
				continue
			}
			anc, _ := n.Addr().Prefix(l)
			for _, e := range byPrefix[anc] {
				out := false
				for _, x := range e.except {
					if x.Addr().Is4() == n.Addr().Is4() && x.Bits() <= n.Bits() && x.Contains(n.Addr()) {
						out = true
						break
					}
				}
				if !out {
					s.union(e.svc)
				}
			}
		}
		return s
	}
	emitted := map[netip.Prefix]*services{}
	spec := policy.Spec{Default: policy.Deny}
	var rules []policy.Rule
	for _, n := range order {
		s := allowedAt(n)
		if n.Bits() > 0 {
			var near *services
			for l := n.Bits() - 1; l >= 0 && near == nil; l-- {
				anc, _ := n.Addr().Prefix(l)
				near = emitted[anc]
			}
			if s.equal(near) {
				continue
			}
		}
		emitted[n] = s
		rules = append(rules, nodeRules(n, s, n.Bits() == 0)...)
	}
	sort.SliceStable(rules, func(i, j int) bool { return policy.PrefixLess(rules[i].CIDR, rules[j].CIDR) })
	spec.Rules = rules
	return spec
}

// nodeRules are the rules at node n for the allowed set s. At a /0 the
// catch-all Deny is the default already.
func nodeRules(n netip.Prefix, s *services, root bool) []policy.Rule {
	if s.empty() {
		if root {
			return nil
		}
		return []policy.Rule{{CIDR: n, Action: policy.Deny}}
	}
	if s.all {
		return []policy.Rule{{CIDR: n, Action: policy.Allow}}
	}
	var out []policy.Rule
	for i, proto := range protocols {
		switch {
		case s.full[i]:
			out = append(out, policy.Rule{CIDR: n, Protocol: proto, Action: policy.Allow})
		case len(s.ranges[i]) > 0:
			out = append(out, policy.Rule{CIDR: n, Protocol: proto, Ports: append([]policy.PortRange(nil), s.ranges[i]...), Action: policy.Allow})
		}
	}
	if !root {
		out = append(out, policy.Rule{CIDR: n, Action: policy.Deny})
	}
	return out
}
