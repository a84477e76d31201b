package netpol

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/policy"
)

// fakeTarget is the datapath's NetworkPolicy API in memory.
type fakeTarget struct {
	mu      sync.Mutex
	held    map[datapath.PodID][32]byte // a nil set: absent, like the datapath
	addrs   map[datapath.PodID][]netip.Addr
	sets    int // SetNetworkPolicy calls
	removes int
}

func newFakeTarget() *fakeTarget {
	return &fakeTarget{held: map[datapath.PodID][32]byte{}, addrs: map[datapath.PodID][]netip.Addr{}}
}

func (f *fakeTarget) SetNetworkPolicy(pod datapath.PodID, addrs []netip.Addr, s *datapath.PolicySet) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets++
	if s == nil {
		delete(f.held, pod)
		delete(f.addrs, pod)
		return nil
	}
	f.held[pod] = s.Sum()
	f.addrs[pod] = addrs
	return nil
}

func (f *fakeTarget) RemoveNetworkPolicy(pod datapath.PodID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removes++
	delete(f.held, pod)
	delete(f.addrs, pod)
	return nil
}

func (f *fakeTarget) NetworkPolicies() (map[datapath.PodID]datapath.NetworkPolicyRef, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[datapath.PodID]datapath.NetworkPolicyRef{}
	for k, v := range f.held {
		out[k] = datapath.NetworkPolicyRef{Sum: v, Addrs: f.addrs[k], Set: 1}
	}
	return out, nil
}

func (f *fakeTarget) get(id datapath.PodID) ([32]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.held[id]
	return s, ok
}

type fakeLocal struct {
	mu   sync.Mutex
	pods []pods.Pod
}

func (l *fakeLocal) list() ([]pods.Pod, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]pods.Pod(nil), l.pods...), nil
}

func (l *fakeLocal) set(ps ...pods.Pod) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pods = ps
}

func sumOf(t *testing.T, p policy.Policy) [32]byte {
	t.Helper()
	s, err := datapath.NewPolicySet(p)
	if err != nil {
		t.Fatal(err)
	}
	return s.Sum()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func regPod(id datapath.PodID, p *corev1.Pod, ip string) pods.Pod {
	return pods.Pod{ID: id, Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), IPs: []netip.Prefix{netip.MustParsePrefix(ip)}}
}

func TestController(t *testing.T) {
	a := pod("default", "a", "10.244.0.10", map[string]string{"app": "a"})
	b := pod("default", "b", "10.244.0.11", map[string]string{"app": "b"})
	remote := pod("default", "r", "10.244.1.5", map[string]string{"app": "b"})
	a.Spec.NodeName, b.Spec.NodeName, remote.Spec.NodeName = "node1", "node1", "node2"
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-a"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}}
	cs := fake.NewSimpleClientset(ns("default", nil), a, b, remote, deny)
	target := newFakeTarget()
	// A stale entry a previous process left for a pod that is gone.
	target.held[99] = [32]byte{1}
	local := &fakeLocal{}
	local.set(regPod(1, a, "10.244.0.10/24"), regPod(2, b, "10.244.0.11/24"))
	c, _ := runSynced(t, Config{NodeName: "node1", Client: cs, Target: target, Local: local.list,
		Resync: 50 * time.Millisecond})

	denyIngress := sumOf(t, policy.Policy{Egress: policy.AllowAll(), Ingress: policy.Spec{Default: policy.Deny}})
	if s, _ := target.get(1); s != denyIngress {
		t.Fatalf("pod a: want the deny-all-ingress set")
	}
	if _, ok := target.get(2); ok {
		t.Fatal("pod b: no policy selects it, yet the datapath holds a set for it")
	}
	if _, ok := target.get(99); ok {
		t.Fatal("the stale entry of pod 99 was not removed")
	}
	if st := c.Status(); st.PodsLocal != 2 || st.PodsEnforced != 1 || st.Sets != 1 || st.Policies != 1 {
		t.Fatalf("status %+v", st)
	}

	// Allow a from app=b: both b's, local and remote, by address.
	allow := deny.DeepCopy()
	allow.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}}}}
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Update(context.Background(), allow, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	fromB := sumOf(t, policy.Policy{Egress: policy.AllowAll(), Ingress: policy.Spec{Default: policy.Deny, Rules: []policy.Rule{
		{CIDR: netip.MustParsePrefix("10.244.0.11/32"), Action: policy.Allow},
		{CIDR: netip.MustParsePrefix("10.244.1.5/32"), Action: policy.Allow},
	}}})
	waitFor(t, "the allow-from-b set on pod a", func() bool { s, _ := target.get(1); return s == fromB })

	// b's labels change: it is no peer any more, only the remote one is.
	b2 := b.DeepCopy()
	b2.Labels = map[string]string{"app": "c"}
	if _, err := cs.CoreV1().Pods("default").Update(context.Background(), b2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	fromRemote := sumOf(t, policy.Policy{Egress: policy.AllowAll(), Ingress: policy.Spec{Default: policy.Deny, Rules: []policy.Rule{
		{CIDR: netip.MustParsePrefix("10.244.1.5/32"), Action: policy.Allow}}}})
	waitFor(t, "pod a's set without b", func() bool { s, _ := target.get(1); return s == fromRemote })

	// A status-only update changes nothing the compiler reads: no write.
	target.mu.Lock()
	before := target.sets
	target.mu.Unlock()
	b3 := b2.DeepCopy()
	b3.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := cs.CoreV1().Pods("default").UpdateStatus(context.Background(), b3, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	target.mu.Lock()
	after := target.sets
	target.mu.Unlock()
	if after != before {
		t.Fatalf("%d writes for a status update that changes nothing", after-before)
	}

	// The policy goes: pod a is not selected any more.
	if err := cs.NetworkingV1().NetworkPolicies("default").Delete(context.Background(), "deny-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod a unselected", func() bool { _, ok := target.get(1); return !ok })

	// A new policy selects b, then b leaves the registry (CNI DEL): its
	// entry goes.
	denyB := deny.DeepCopy()
	denyB.Name, denyB.Spec.PodSelector.MatchLabels = "deny-c", map[string]string{"app": "c"}
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(context.Background(), denyB, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod b selected", func() bool { s, _ := target.get(2); return s == denyIngress })
	local.set(regPod(1, a, "10.244.0.10/24"))
	waitFor(t, "pod b removed", func() bool { _, ok := target.get(2); return !ok })

	st := c.Status()
	if st.LatencyCount == 0 || st.LatencySum <= 0 {
		t.Fatalf("no update latency recorded: %+v", st)
	}
	if len(st.Errors) != 0 {
		t.Fatalf("errors: %v", st.Errors)
	}
}

func TestControllerRestartKeepsUnchanged(t *testing.T) {
	// After a restart the datapath already holds the right set: nothing is
	// rewritten.
	a := pod("default", "a", "10.244.0.10", map[string]string{"app": "a"})
	a.Spec.NodeName = "node1"
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}}
	cs := fake.NewSimpleClientset(ns("default", nil), a, deny)
	target := newFakeTarget()
	target.held[1] = sumOf(t, policy.Policy{Egress: policy.Spec{Default: policy.Deny}, Ingress: policy.AllowAll()})
	target.addrs[1] = []netip.Addr{netip.MustParseAddr("10.244.0.10")}
	local := &fakeLocal{}
	local.set(regPod(1, a, "10.244.0.10/24"))
	c, stop := runSynced(t, Config{NodeName: "node1", Client: cs, Target: target, Local: local.list})
	stop()
	if target.sets != 0 || target.removes != 0 {
		t.Fatalf("%d writes, %d removals after a restart with nothing changed", target.sets, target.removes)
	}
	if st := c.Status(); st.PodsEnforced != 1 {
		t.Fatalf("status %+v", st)
	}
}

// runSynced starts a controller made from cfg (logging nowhere unless cfg
// says) and returns once its first sync is done; stop (also run at the
// test's end) cancels it and waits for Run to return.
func runSynced(t *testing.T, cfg Config) (c *Controller, stop func()) {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	<-c.Synced()
	return c, stop
}
