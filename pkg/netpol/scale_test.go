package netpol

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
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

// scaleObjects is the cluster of scaleCluster as a fake clientset's objects.
func scaleObjects(st State) []k8sruntime.Object {
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
	return objs
}

// scaleSync runs a controller over the fake clientset to target until its
// first complete sync, calls synced (if not nil), then updates one policy
// (its ingress ports cut to one) and waits until that is written. It
// returns the two times and the controller's status after the update.
func scaleSync(b *testing.B, st State, local []pods.Pod, dp Target, synced func()) (first, update time.Duration, s Status) {
	b.Helper()
	target, ok := dp.(*timedTarget)
	if !ok {
		target = &timedTarget{Target: dp}
	}
	cs := fake.NewSimpleClientset(scaleObjects(st)...)
	c, err := New(Config{NodeName: "node", Client: cs, Target: target, Local: func() ([]pods.Pod, error) { return local, nil },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	t1 := time.Now()
	go func() { defer close(ran); _ = c.Run(ctx) }()
	<-c.Synced()
	first = time.Since(t1)
	if synced != nil {
		synced()
	}
	// One policy changes: time until its pods' sets are written.
	np := st.Policies[0].DeepCopy()
	np.Spec.Ingress[0].Ports = np.Spec.Ingress[0].Ports[:1]
	// Pod 1 (ns0/p0, app a0) is one of the pods it selects.
	written := target.watch(1)
	t2 := time.Now()
	if _, err := cs.NetworkingV1().NetworkPolicies(np.Namespace).Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
	select {
	case <-written:
	case <-time.After(time.Minute):
		b.Fatal("the policy update was not written within a minute")
	}
	update = time.Since(t2)
	cancel()
	<-ran
	s = c.Status()
	if len(s.Errors) > 0 {
		b.Fatalf("errors: %v", s.Errors[:1])
	}
	return first, update, s
}

// BenchmarkScale: 1,000 local pods and 500 NetworkPolicies, through the
// controller as the informers feed it (fake clientset), to the first
// complete sync; then one policy change. Reports the compile time, the
// distinct sets and their kernel entries. A benchmark, not a pass/fail
// test: docs/networkpolicy.md states the figures.
func BenchmarkScale(b *testing.B) {
	st, local := scaleCluster()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		Compute(st, "node", local)
		compute := time.Since(t0)
		// Kernel entries per distinct policy: what policy.Compile makes.
		entries := 0
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
		first, update, s := scaleSync(b, st, local, newFakeTarget(), nil)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(compute.Seconds()*1000, "compute-ms")
		b.ReportMetric(first.Seconds()*1000, "first-sync-ms")
		b.ReportMetric(update.Seconds()*1000, "update-ms")
		b.ReportMetric(float64(s.Sets), "sets")
		b.ReportMetric(float64(entries), "entries")
		b.Logf("%d local pods, %d policies: Compute %v, informers to first sync %v, one policy update to written %v; "+
			"%d enforced, %d distinct sets, %d kernel entries, heap %d MiB",
			s.PodsLocal, s.Policies, compute.Round(time.Millisecond), first.Round(time.Millisecond), update.Round(time.Millisecond),
			s.PodsEnforced, s.Sets, entries, ms.HeapAlloc>>20)
	}
}

// timedTarget counts and times the writes into the datapath, and tells
// when a watched pod's policy was written.
type timedTarget struct {
	Target
	mu      sync.Mutex
	writes  int
	spent   time.Duration
	pod     datapath.PodID
	written chan struct{}
}

// watch returns a channel closed after pod's next write.
func (t *timedTarget) watch(pod datapath.PodID) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pod, t.written = pod, make(chan struct{})
	return t.written
}

func (t *timedTarget) SetNetworkPolicy(pod datapath.PodID, addrs []netip.Addr, s *datapath.PolicySet) error {
	t0 := time.Now()
	err := t.Target.SetNetworkPolicy(pod, addrs, s)
	t.mu.Lock()
	t.writes++
	t.spent += time.Since(t0)
	if pod == t.pod && t.written != nil && err == nil {
		close(t.written)
		t.written = nil
	}
	t.mu.Unlock()
	return err
}

func (t *timedTarget) took() (int, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	w, d := t.writes, t.spent
	t.writes, t.spent = 0, 0
	return w, d
}

// pinnedMap is what the kernel reports for one pinned map: bpftool's
// bytes_memlock and max_entries, and the keys it holds now (walked with
// BPF_MAP_GET_NEXT_KEY).
type pinnedMap struct {
	Name             string
	Memlock, Entries int64
	MaxEntries       int64
}

func pinnedMaps(b *testing.B, bpftool, dir string) []pinnedMap {
	b.Helper()
	var out []pinnedMap
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		raw, err := exec.Command(bpftool, "-j", "map", "show", "pinned", path).Output()
		if err != nil {
			return nil // a pinned link or program, not a map
		}
		var info struct {
			Name         string `json:"name"`
			MaxEntries   int64  `json:"max_entries"`
			BytesMemlock int64  `json:"bytes_memlock"`
		}
		if err := json.Unmarshal(raw, &info); err != nil {
			return fmt.Errorf("bpftool map show pinned %s: %w", path, err)
		}
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		defer m.Close()
		var n int64
		var key any
		for {
			next, err := m.NextKeyBytes(key)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if next == nil {
				break
			}
			n++
			key = next
		}
		out = append(out, pinnedMap{Name: filepath.Base(path), Memlock: info.BytesMemlock, Entries: n, MaxEntries: info.MaxEntries})
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// BenchmarkScaleDatapath is BenchmarkScale into a real pinned datapath
// (pkg/datapath in a test bpffs root; root): the controller writes the
// 1,000 pods' NetworkPolicy sets and addresses as on a node (no veths: the
// NetworkPolicy maps are keyed by pod id and address). It reports the
// kernel's own figures of the maps (bpftool's memlock, entries walked in
// the maps) empty and after the sync, the time to the first complete sync
// and the part of it spent writing, and one policy change to written.
func BenchmarkScaleDatapath(b *testing.B) {
	testenv.RequireRoot(b)
	bpftool := testenv.RequireTool(b, "bpftool")
	st, local := scaleCluster()
	for i := 0; i < b.N; i++ {
		root := testenv.BPFFSRoot(b)
		d, err := datapath.Open(root)
		if err != nil {
			b.Fatal(err)
		}
		dir := root.Dir(datapath.Owner)
		empty := pinnedMaps(b, bpftool, dir)
		target := &timedTarget{Target: d}
		var full []pinnedMap
		var writes int
		var spent time.Duration
		first, update, s := scaleSync(b, st, local, target, func() {
			writes, spent = target.took()
			full = pinnedMaps(b, bpftool, dir)
		})
		uwrites, uspent := target.took()
		var memEmpty, memFull, entries int64
		var grew []string
		for j, m := range full {
			memEmpty += empty[j].Memlock
			memFull += m.Memlock
			entries += m.Entries - empty[j].Entries
			if m.Memlock != empty[j].Memlock || m.Entries != empty[j].Entries {
				grew = append(grew, fmt.Sprintf("%s %d->%d entries, memlock %d->%d KiB",
					m.Name, empty[j].Entries, m.Entries, empty[j].Memlock>>10, m.Memlock>>10))
			}
		}
		d.Close()
		b.ReportMetric(first.Seconds()*1000, "first-sync-ms")
		b.ReportMetric(update.Seconds()*1000, "update-ms")
		b.ReportMetric(float64(memFull-memEmpty)/(1<<20), "memlock-added-MiB")
		b.ReportMetric(float64(entries), "entries-added")
		b.Logf("%d local pods, %d policies into a real datapath: informers to first sync %v, one policy update to written %v; "+
			"the first sync's %d writes took %v, the update's %d writes %v; %d enforced, %d distinct sets; pinned maps memlock %.1f MiB empty, %.1f MiB with the pods (bpftool); "+
			"%d map entries added: %s",
			s.PodsLocal, s.Policies, first.Round(time.Millisecond), update.Round(time.Millisecond), writes, spent.Round(time.Millisecond),
			uwrites, uspent.Round(time.Millisecond), s.PodsEnforced, s.Sets, float64(memEmpty)/(1<<20), float64(memFull)/(1<<20), entries, strings.Join(grew, "; "))
	}
}
