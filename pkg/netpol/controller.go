package netpol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersnetworkingv1 "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
)

// Target is where the controller writes: the datapath's NetworkPolicy API
// (*datapath.Datapath; a fake in unit tests).
type Target interface {
	// SetNetworkPolicy makes s the pod's NetworkPolicy; s == nil: no
	// NetworkPolicy selects the pod.
	SetNetworkPolicy(pod datapath.PodID, addrs []netip.Addr, s *datapath.PolicySet) error
	// RemoveNetworkPolicy forgets the pod.
	RemoveNetworkPolicy(pod datapath.PodID) error
	// NetworkPolicies is what the datapath holds now, by pod (pods no
	// policy selects are not in it).
	NetworkPolicies() (map[datapath.PodID]datapath.NetworkPolicyRef, error)
}

// Config is a controller's configuration.
type Config struct {
	// NodeName is this node: pods with spec.nodeName == NodeName that the
	// CNI plugin attached are enforced.
	NodeName string
	Client   kubernetes.Interface
	Target   Target
	// Local lists the pods the CNI plugin attached on this node (the
	// pinned registry, pkg/pods).
	Local func() ([]pods.Pod, error)
	// Debounce is how long a burst of API events is collected before
	// recomputing (default 20ms); Resync how often the local registry is
	// read again without an API event (default 2s: a pod's CNI ADD is not
	// an API event).
	Debounce, Resync time.Duration
	Log              *slog.Logger
}

// Controller keeps the datapath's NetworkPolicy state of this node's pods
// in step with the cluster's NetworkPolicies, Pods and Namespaces.
type Controller struct {
	cfg  Config
	log  *slog.Logger
	kick chan struct{}

	pol listersnetworkingv1.NetworkPolicyLister
	pod listerscorev1.PodLister
	ns  listerscorev1.NamespaceLister

	mu       sync.Mutex
	pending  time.Time                   // first event not yet synced, zero if none
	written  map[datapath.PodID]podState // what the datapath holds, by our writes or read back
	status   Status
	latency  latencyHist
	syncedCh chan struct{}
}

type podState struct {
	sum   [32]byte // zero: not selected (the datapath holds nothing)
	addrs string
}

// Status is what the controller reports (metrics, podscopectl status).
type Status struct {
	Node         string    `json:"node"`
	Synced       bool      `json:"synced"`
	LastSync     time.Time `json:"lastSync"`
	Policies     int       `json:"policies"`
	PodsLocal    int       `json:"podsLocal"`
	PodsEnforced int       `json:"podsEnforced"` // local pods some policy selects, written
	Sets         int       `json:"sets"`         // distinct policies among them
	Errors       []string  `json:"errors,omitempty"`
	WriteErrors  uint64    `json:"writeErrors"`
	Syncs        uint64    `json:"syncs"`
	// Latency: API event (as the informer delivered it) to datapath
	// written, per sync that wrote something.
	LatencyBuckets []float64 `json:"-"`
	LatencyCounts  []uint64  `json:"-"`
	LatencyCount   uint64    `json:"latencyCount"`
	LatencySum     float64   `json:"latencySumSeconds"`
	LastLatency    float64   `json:"lastLatencySeconds"`
}

// LatencyBuckets are the update latency histogram's upper bounds (s).
var LatencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

type latencyHist struct {
	counts []uint64
	count  uint64
	sum    float64
	last   float64
}

func (h *latencyHist) observe(d time.Duration) {
	if h.counts == nil {
		h.counts = make([]uint64, len(LatencyBuckets))
	}
	s := d.Seconds()
	for i, b := range LatencyBuckets {
		if s <= b {
			h.counts[i]++
		}
	}
	h.count++
	h.sum += s
	h.last = s
}

// New makes a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("networkpolicy: no node name (--node-name or $NODE_NAME)")
	}
	if cfg.Client == nil || cfg.Target == nil || cfg.Local == nil {
		return nil, errors.New("networkpolicy: client, target and local pods are required")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 20 * time.Millisecond
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Controller{cfg: cfg, log: cfg.Log.With("component", "networkpolicy"), kick: make(chan struct{}, 1),
		written: map[datapath.PodID]podState{}, syncedCh: make(chan struct{}),
		status: Status{Node: cfg.NodeName}}, nil
}

// Status is a copy of the controller's state.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Errors = append([]string(nil), s.Errors...)
	s.LatencyBuckets = LatencyBuckets
	s.LatencyCounts = append([]uint64(nil), c.latency.counts...)
	if s.LatencyCounts == nil {
		s.LatencyCounts = make([]uint64, len(LatencyBuckets))
	}
	s.LatencyCount, s.LatencySum, s.LastLatency = c.latency.count, c.latency.sum, c.latency.last
	return s
}

// Synced is closed after the first complete sync.
func (c *Controller) Synced() <-chan struct{} { return c.syncedCh }

// event records that the cluster changed at now and wakes the loop.
func (c *Controller) event() {
	c.mu.Lock()
	if c.pending.IsZero() {
		c.pending = time.Now()
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// podRelevant is what of a pod the compiler reads: a status update that
// changes none of it (conditions, container states) is no event.
type podRelevant struct {
	ns, node string
	labels   map[string]string
	host     bool
	phase    corev1.PodPhase
	ips      []corev1.PodIP
	ip       string
	ports    []string
}

func relevant(p *corev1.Pod) podRelevant {
	r := podRelevant{ns: p.Namespace, node: p.Spec.NodeName, labels: p.Labels, host: p.Spec.HostNetwork,
		phase: p.Status.Phase, ips: p.Status.PodIPs, ip: p.Status.PodIP, ports: []string{portSignature(p)}}
	// Running/Pending/Unknown are the same to the compiler.
	if r.phase != corev1.PodSucceeded && r.phase != corev1.PodFailed {
		r.phase = ""
	}
	return r
}

// Run watches the API and keeps the datapath in step until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(c.cfg.Client, 0)
	polInf := f.Networking().V1().NetworkPolicies()
	podInf := f.Core().V1().Pods()
	nsInf := f.Core().V1().Namespaces()
	// Only what the compiler reads is kept: 1,000s of pods' managed
	// fields and status conditions are most of a pod object.
	_ = podInf.Informer().SetTransform(func(o any) (any, error) {
		if p, ok := o.(*corev1.Pod); ok {
			q := &corev1.Pod{ObjectMeta: p.ObjectMeta, Spec: corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork}}
			q.ManagedFields, q.Annotations, q.OwnerReferences = nil, nil, nil
			for _, ct := range p.Spec.Containers {
				q.Spec.Containers = append(q.Spec.Containers, corev1.Container{Name: ct.Name, Ports: ct.Ports})
			}
			q.Status = corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs}
			return q, nil
		}
		return o, nil
	})
	strip := func(o any) (any, error) {
		if m, ok := o.(interface {
			SetManagedFields([]metav1.ManagedFieldsEntry)
		}); ok {
			m.SetManagedFields(nil)
		}
		return o, nil
	}
	_ = nsInf.Informer().SetTransform(strip)
	_ = polInf.Informer().SetTransform(strip)
	c.pol, c.pod, c.ns = polInf.Lister(), podInf.Lister(), nsInf.Lister()

	base := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.event() },
		DeleteFunc: func(any) { c.event() },
	}
	polH := base
	polH.UpdateFunc = func(o, n any) {
		a, b := o.(*networkingv1.NetworkPolicy), n.(*networkingv1.NetworkPolicy)
		if !reflect.DeepEqual(a.Spec, b.Spec) {
			c.event()
		}
	}
	podH := base
	podH.UpdateFunc = func(o, n any) {
		if !reflect.DeepEqual(relevant(o.(*corev1.Pod)), relevant(n.(*corev1.Pod))) {
			c.event()
		}
	}
	nsH := base
	nsH.UpdateFunc = func(o, n any) {
		if !reflect.DeepEqual(o.(*corev1.Namespace).Labels, n.(*corev1.Namespace).Labels) {
			c.event()
		}
	}
	for _, h := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{{polInf.Informer(), polH}, {podInf.Informer(), podH}, {nsInf.Informer(), nsH}} {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	c.log.Info("waiting for the NetworkPolicy, Pod and Namespace caches", "node", c.cfg.NodeName)
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("networkpolicy: cache of %v did not sync", typ)
		}
	}
	if err := c.readBack(); err != nil {
		c.log.Warn("reading the datapath's NetworkPolicy state (rewriting every pod)", "err", err)
	}
	c.event()
	t := time.NewTicker(c.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
			// Collect the rest of a burst.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(c.cfg.Debounce):
			}
			select {
			case <-c.kick:
			default:
			}
		case <-t.C:
		}
		c.Sync()
	}
}

// readBack learns what the datapath holds (after a restart: what the
// previous process wrote), so that unchanged pods are not rewritten and
// pods that are gone are removed.
func (c *Controller) readBack() error {
	held, err := c.cfg.Target.NetworkPolicies()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, ref := range held {
		c.written[id] = podState{sum: ref.Sum, addrs: fmt.Sprint(ref.Addrs)}
	}
	return nil
}

// Sync recomputes every local pod's policy from the caches and writes the
// pods whose policy changed. Pods selected by the same policies share the
// compiled result (the compiler memoizes), so this costs about one compile
// per distinct policy combination, plus a sum per pod.
func (c *Controller) Sync() {
	c.mu.Lock()
	start := c.pending
	c.pending = time.Time{}
	c.mu.Unlock()

	st, err := c.state()
	if err != nil {
		c.fail(err)
		return
	}
	local, err := c.cfg.Local()
	if err != nil {
		c.fail(fmt.Errorf("reading the pod registry: %w", err))
		return
	}
	res := Compute(st, c.cfg.NodeName, local)

	c.mu.Lock()
	written := make(map[datapath.PodID]podState, len(c.written))
	for k, v := range c.written {
		written[k] = v
	}
	c.mu.Unlock()

	var writeErrs uint64
	errs := append([]string(nil), res.Errors...)
	wrote := false
	for id, want := range res.Pods {
		ps := podState{addrs: fmt.Sprint(want.Addrs)}
		if want.Set != nil {
			ps.sum = want.Set.Sum()
		} else {
			ps.addrs = ""
		}
		if have, ok := written[id]; ok && have.sum == ps.sum && (have.addrs == ps.addrs || want.Set == nil) {
			continue
		}
		if err := c.cfg.Target.SetNetworkPolicy(id, want.Addrs, want.Set); err != nil {
			writeErrs++
			errs = append(errs, fmt.Sprintf("pod %s: writing its NetworkPolicy: %v", want.Ref, err))
			continue
		}
		written[id] = ps
		wrote = true
	}
	for id := range written {
		if _, ok := res.Pods[id]; ok || res.Kept[id] {
			continue
		}
		if err := c.cfg.Target.RemoveNetworkPolicy(id); err != nil {
			writeErrs++
			errs = append(errs, fmt.Sprintf("pod id %d: removing its NetworkPolicy: %v", id, err))
			continue
		}
		delete(written, id)
		wrote = true
	}
	now := time.Now()
	c.mu.Lock()
	c.written = written
	if wrote && !start.IsZero() {
		c.latency.observe(now.Sub(start))
	}
	first := !c.status.Synced
	c.status.Synced = true
	c.status.LastSync = now
	c.status.Policies = len(st.Policies)
	c.status.PodsLocal = res.Local
	c.status.PodsEnforced = res.Enforced
	c.status.Sets = res.Sets
	c.status.Errors = errs
	c.status.WriteErrors += writeErrs
	c.status.Syncs++
	c.mu.Unlock()
	if first {
		close(c.syncedCh)
		c.log.Info("NetworkPolicies in force", "policies", len(st.Policies), "local_pods", res.Local,
			"enforced", res.Enforced, "distinct_policies", res.Sets, "errors", len(errs))
	}
	for _, e := range errs {
		c.log.Debug("networkpolicy", "err", e)
	}
}

func (c *Controller) fail(err error) {
	c.log.Error("networkpolicy sync failed (retrying)", "err", err)
	c.mu.Lock()
	c.status.Errors = []string{err.Error()}
	if c.pending.IsZero() {
		c.pending = time.Now()
	}
	c.mu.Unlock()
}

func (c *Controller) state() (State, error) {
	var st State
	var err error
	if st.Policies, err = c.pol.List(labels.Everything()); err != nil {
		return st, err
	}
	if st.Pods, err = c.pod.List(labels.Everything()); err != nil {
		return st, err
	}
	if st.Namespaces, err = c.ns.List(labels.Everything()); err != nil {
		return st, err
	}
	return st, nil
}

// Want is one local pod's desired NetworkPolicy.
type Want struct {
	Ref   string
	Addrs []netip.Addr
	Set   *datapath.PolicySet // nil: no policy selects the pod
}

// Result is a computation for one node.
type Result struct {
	Pods     map[datapath.PodID]Want
	Kept     map[datapath.PodID]bool // local pods left as they are (not in the API cache yet, or a compile error)
	Local    int
	Enforced int
	Sets     int
	Errors   []string
}

// Compute is the desired state of the node's attached pods (local) given
// the cluster state st: the same path for the controller and the scale
// benchmark. A registry pod not (yet) in st, or whose policy cannot be
// built, is in Kept: what the datapath holds for it stays.
func Compute(st State, node string, local []pods.Pod) Result {
	comp := NewCompiler(st)
	res := Result{Pods: map[datapath.PodID]Want{}, Kept: map[datapath.PodID]bool{}}
	for _, e := range comp.Errors() {
		res.Errors = append(res.Errors, e.Error())
	}
	byUID := map[string]*corev1.Pod{}
	for _, p := range st.Pods {
		if p.Spec.NodeName == node {
			byUID[string(p.UID)] = p
		}
	}
	sets := map[string]*datapath.PolicySet{}
	for _, lp := range local {
		if lp.Unobserved != "" || lp.UID == "" {
			continue
		}
		p, ok := byUID[lp.UID]
		if !ok {
			res.Kept[lp.ID] = true
			continue
		}
		if !IsSubject(p) {
			continue
		}
		res.Local++
		addrs := make([]netip.Addr, 0, len(lp.IPs))
		for _, ip := range lp.IPs {
			addrs = append(addrs, ip.Addr().Unmap())
		}
		if len(addrs) == 0 {
			addrs = PodAddrs(p)
		}
		sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
		w := Want{Ref: lp.Ref(), Addrs: addrs}
		if comp.Selected(p) {
			pol, key := comp.policyFor(p)
			s, ok := sets[key]
			if !ok {
				var err error
				s, err = datapath.NewPolicySet(pol)
				if err != nil {
					res.Errors = append(res.Errors, fmt.Sprintf("pod %s: %v (its previous NetworkPolicy state stays)", lp.Ref(), err))
					sets[key] = nil
				} else {
					sets[key] = s
				}
			}
			if s == nil {
				res.Kept[lp.ID] = true
				continue
			}
			w.Set = s
			res.Enforced++
		}
		res.Pods[lp.ID] = w
	}
	distinct := map[[32]byte]bool{}
	for _, s := range sets {
		if s != nil {
			distinct[s.Sum()] = true
		}
	}
	res.Sets = len(distinct)
	return res
}
