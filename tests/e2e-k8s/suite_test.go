package e2ek8s

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// cniWatchBound is how soon cni-watch chains podscope back after the primary
// CNI rewrote its conflist: inotify at once, its --resync (10 s) at the
// latest (docs/install-node.md, the podscope-install flags); the rest is kubectl exec's latency.
const cniWatchBound = 20 * time.Second

// state the steps share, in order.
type suite struct {
	*cluster
	servers     []*corev1.Pod
	client      *corev1.Pod
	limited     *corev1.Pod
	writer      *corev1.Pod
	serviceIP   string
	allowed     string // the egress-limited pod's allowed destination (ip:port)
	denied      string // and its denied one, reachable by others
	lastCounts  map[string]counters
	pinsBefore  status
	installedAt time.Time
}

// TestCluster runs the scenarios of docs/install-cluster.md in order: each
// builds on the previous one (the install, then the workload, ...), so the
// first failure stops the rest.
func TestCluster(t *testing.T) {
	c := newCluster(t)
	s := &suite{cluster: c, lastCounts: map[string]counters{}}
	t.Logf("node %s, primary CNI %s, overlay %s", c.node, c.primaryMode, c.overlay)
	t.Cleanup(func() {
		if t.Failed() {
			c.diagnostics(t)
		}
		// Leave the cluster as found, whatever happened (on the test node,
		// hack/k8s/node.sh down removes the rest).
		_, _ = c.kubectl(t, "delete", "-k", c.overlay, "--ignore-not-found", "--wait=false")
		_, _ = c.kubectl(t, "delete", "-k", c.cleanup, "--ignore-not-found", "--wait=false")
		c.deleteNamespace(t, testNS)
		c.deleteNamespace(t, peerNS)
	})
	steps := []struct {
		name string
		f    func(*testing.T)
	}{
		{"1-install", s.install},
		{"2-service-traffic", s.serviceTraffic},
		{"2b-networkpolicy", s.networkPolicy},
		{"3-policy", s.policy},
		{"4-audit", s.audit},
		{"5-rechain", s.rechain},
		{"6-restart-upgrade", s.restartUpgrade},
		{"7-removal", s.removal},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.f) {
			t.Fatalf("%s failed: the later steps build on it", st.name)
		}
	}
}

// --- 1. install -------------------------------------------------------------

func (s *suite) install(t *testing.T) {
	if _, err := s.kubectl(t, "get", "ns", dsNamespace); err == nil {
		t.Fatalf("namespace %s exists already: the suite needs a cluster without podscope", dsNamespace)
	}
	_, err := s.cs.CoreV1().Namespaces().Create(ctx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: testNS, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.startAgent(t)
	ls, err := s.agent(t, "ls", agentConfDir)
	if err != nil {
		t.Fatal(err)
	}
	var confs []string
	for _, f := range strings.Fields(ls) {
		if strings.HasSuffix(f, ".conflist") || strings.HasSuffix(f, ".conf") {
			confs = append(confs, f)
		}
	}
	switch s.primaryMode {
	case "bridge":
		if len(confs) != 0 {
			t.Fatalf("PODSCOPE_K8S_PRIMARY_CNI=bridge but the node has CNI configs already: %v", confs)
		}
	case "existing":
		if len(confs) == 0 {
			t.Fatal("PODSCOPE_K8S_PRIMARY_CNI=existing but the node has no CNI config")
		}
		s.primaryName = confs[0]
		s.primaryBytes = s.conflist(t)
	}

	out := s.mustKubectl(t, "apply", "-k", s.overlay)
	t.Logf("kubectl apply -k %s:\n%s", s.overlay, out)
	s.installedAt = time.Now()

	if s.primaryMode == "bridge" {
		// The node has no network yet: podscope's install container waits
		// for the primary CNI (--wait-for-config) instead of failing.
		eventually(t, 2*time.Minute, "podscope's install container running and waiting for a CNI config", func() error {
			pods, err := s.cs.CoreV1().Pods(dsNamespace).List(ctx(t), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=podscope"})
			if err != nil {
				return err
			}
			if len(pods.Items) != 1 {
				return fmt.Errorf("%d podscope pods", len(pods.Items))
			}
			p := &pods.Items[0]
			for _, st := range p.Status.InitContainerStatuses {
				if st.Name == "install" && st.State.Running != nil {
					return nil
				}
			}
			return fmt.Errorf("%s", containerStates(p))
		})
		time.Sleep(3 * time.Second)
		logs, _ := s.kubectl(t, "-n", dsNamespace, "logs", "ds/"+dsName, "-c", "install")
		t.Logf("install container while waiting:\n%s", logs)
		node, err := s.cs.CoreV1().Nodes().Get(ctx(t), s.node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node.Spec.PodCIDR == "" {
			t.Fatalf("node %s has no podCIDR", s.node)
		}
		s.primaryName = "10-podscope-e2e.conflist"
		s.primaryBytes = []byte(fmt.Sprintf(`{
  "cniVersion": "0.3.1",
  "name": "podscope-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, node.Spec.PodCIDR))
		s.writeConflist(t, s.primaryBytes)
		t.Logf("primary CNI wrote %s/%s (bridge on %s) after podscope's DaemonSet started", confDir, s.primaryName, node.Spec.PodCIDR)
	}

	eventually(t, 4*time.Minute, "DaemonSet podscope Ready on every node", func() error {
		ds, err := s.cs.AppsV1().DaemonSets(dsNamespace).Get(ctx(t), dsName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled {
			return fmt.Errorf("%d of %d ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
		}
		return nil
	})
	t.Logf("DaemonSet Ready %s after apply", time.Since(s.installedAt).Round(time.Second))
	eventually(t, 30*time.Second, "podscope chained into "+s.primaryName, func() error {
		return s.chained(s.conflist(t))
	})
	if _, err := s.agent(t, "test", "-x", agentBinDir+"/podscope"); err != nil {
		t.Fatalf("%s/podscope not installed: %v", binDir, err)
	}
	st := s.status(t)
	if !st.BPFFSMounted || !st.NRISocketPresent || st.AuditMode == "" || len(st.StaleLayouts) > 0 {
		t.Fatalf("podscopectl status: %+v", st)
	}
	t.Logf("podscopectl status: %+v", st)
}

// --- 2. Deployment + Service + client ------------------------------------------

const serverPort = 8080

func (s *suite) serviceTraffic(t *testing.T) {
	labels := map[string]string{"app": "server"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: testNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeName:                      s.node,
					TerminationGracePeriodSeconds: ptr(int64(1)),
					Containers: []corev1.Container{{
						Name: "server", Image: s.testImage, ImagePullPolicy: corev1.PullIfNotPresent,
						Command: []string{"/bin/pstraffic", "tcp-serve", strconv.Itoa(serverPort)},
						Ports:   []corev1.ContainerPort{{ContainerPort: serverPort}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
							TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(serverPort)}}, PeriodSeconds: 5},
					}},
				},
			},
		},
	}
	if _, err := s.cs.AppsV1().Deployments(testNS).Create(ctx(t), dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := s.cs.CoreV1().Services(testNS).Create(ctx(t), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: testNS},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{
			Port: 80, TargetPort: intstr.FromInt32(serverPort), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.serviceIP = svc.Spec.ClusterIP
	s.client = s.waitReady(t, s.createPod(t, s.testPod("client", "exec sleep 1000000", nil)))
	eventually(t, 2*time.Minute, "2 server replicas Ready", func() error {
		pods, err := s.cs.CoreV1().Pods(testNS).List(ctx(t), metav1.ListOptions{LabelSelector: "app=server"})
		if err != nil {
			return err
		}
		s.servers = nil
		for i := range pods.Items {
			if podReady(&pods.Items[i]) && pods.Items[i].DeletionTimestamp == nil {
				s.servers = append(s.servers, &pods.Items[i])
			}
		}
		if len(s.servers) != 2 {
			return fmt.Errorf("%d ready", len(s.servers))
		}
		return nil
	})
	// Each pod is attached with the identity the API shows (row checks the UID).
	for _, p := range append([]*corev1.Pod{s.client}, s.servers...) {
		r := s.mustRow(t, p)
		if !hasIP(r.IPs, p.Status.PodIP) {
			t.Fatalf("pod %s: podscope has IPs %v, the API says %s", p.Name, r.IPs, p.Status.PodIP)
		}
	}
	// The Service's endpoints must be programmed before traffic: kube-proxy.
	eventually(t, time.Minute, "Service server reachable from the client", func() error {
		_, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-connect", s.serviceIP+":80", "2s")
		return err
	})

	before := s.counters(t)
	const conns, size = 8, 256 << 10
	for i := 0; i < conns; i++ {
		out, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-send", s.serviceIP+":80", strconv.Itoa(size))
		if err != nil || strings.TrimSpace(out) != fmt.Sprintf("ok %d", size) {
			t.Fatalf("sending %d bytes through the Service: %q %v", size, out, err)
		}
	}
	total := uint64(conns * size)
	after := s.counters(t)
	if err := within(after["client"].TxBytes-before["client"].TxBytes, total); err != nil {
		t.Errorf("client transmitted (podscopectl pods): %v", err)
	}
	var rx uint64
	for _, p := range s.servers {
		rx += after[p.Name].RxBytes - before[p.Name].RxBytes
		t.Logf("server %s received %d bytes", p.Name, after[p.Name].RxBytes-before[p.Name].RxBytes)
	}
	if err := within(rx, total); err != nil {
		t.Errorf("servers received (podscopectl pods, both replicas): %v", err)
	}
	// The metrics endpoint counts the same, labelled with the API's identity.
	body := s.metrics(t)
	for _, p := range append([]*corev1.Pod{s.client}, s.servers...) {
		lbl := []string{`namespace="` + testNS + `"`, `pod="` + p.Name + `"`, `pod_uid="` + string(p.UID) + `"`}
		tx, ok1 := metric(body, "podscope_network_transmit_bytes_total", lbl...)
		rxm, ok2 := metric(body, "podscope_network_receive_bytes_total", lbl...)
		if !ok1 || !ok2 {
			t.Fatalf("no byte counters of %s/%s (uid %s) in /metrics", testNS, p.Name, p.UID)
		}
		// Read after podscopectl: never less, and no new traffic since.
		if uint64(tx) < after[p.Name].TxBytes || uint64(rxm) < after[p.Name].RxBytes ||
			uint64(tx)-after[p.Name].TxBytes > 64<<10 || uint64(rxm)-after[p.Name].RxBytes > 64<<10 {
			t.Errorf("%s: /metrics tx %v rx %v, podscopectl tx %d rx %d", p.Name, tx, rxm, after[p.Name].TxBytes, after[p.Name].RxBytes)
		}
	}
	st := s.status(t)
	if len(st.Problems) > 0 || st.PodsAttached < 3 {
		t.Errorf("podscopectl status with pods running: %+v", st)
	}
}

func hasIP(prefixes []string, ip string) bool {
	for _, p := range prefixes {
		if pp, err := netip.ParsePrefix(p); err == nil && pp.Addr().String() == ip {
			return true
		}
		if p == ip {
			return true
		}
	}
	return false
}

// counters of every pod of the test namespace, by name; never lower than
// the last reading (counters do not go backwards, restarts included).
func (s *suite) counters(t testing.TB) map[string]counters {
	t.Helper()
	rows, err := s.pods(t)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]counters{}
	for _, r := range rows {
		if r.Namespace != testNS {
			continue
		}
		m[r.Name] = r.Counters
		if l, ok := s.lastCounts[r.Name]; ok {
			if r.Counters.TxBytes < l.TxBytes || r.Counters.RxBytes < l.RxBytes || r.Counters.DropsEgress < l.DropsEgress {
				t.Errorf("pod %s: counters went backwards: %+v after %+v", r.Name, r.Counters, l)
			}
		}
		s.lastCounts[r.Name] = r.Counters
	}
	return m
}

// --- 3. policy --------------------------------------------------------------------

// metadataIP is what deploy/podscope.json, the network's default, denies.
const metadataIP = "169.254.169.254"

func (s *suite) policy(t *testing.T) {
	a, b := s.servers[0].Status.PodIP, s.servers[1].Status.PodIP
	s.allowed = fmt.Sprintf("%s:%d", a, serverPort)
	s.denied = fmt.Sprintf("%s:%d", b, serverPort)
	egress, _ := json.Marshal(map[string]any{
		"default": "deny",
		"rules":   []map[string]any{{"cidr": a + "/32", "protocol": "tcp", "ports": []string{strconv.Itoa(serverPort)}, "action": "allow"}},
	})
	s.limited = s.waitReady(t, s.createPod(t, s.testPod("egress-limited", "exec sleep 1000000",
		map[string]string{"podscope.io/egress": string(egress)})))
	s.mustRow(t, s.limited)
	s.checkPolicy(t)
}

// checkPolicy: the annotated pod reaches its allowed destination (and gets
// the reply), not its denied one, which an unannotated pod reaches; the
// ConfigMap's default denies the metadata address to unannotated pods.
func (s *suite) checkPolicy(t *testing.T) {
	t.Helper()
	before := s.counters(t)
	if out, err := s.execIn(t, testNS, "egress-limited", "", "pstraffic", "tcp-send", s.allowed, "10000"); err != nil || strings.TrimSpace(out) != "ok 10000" {
		t.Errorf("egress-limited to its allowed %s: %q %v", s.allowed, out, err)
	}
	if _, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-connect", s.denied, "3s"); err != nil {
		t.Errorf("client (unannotated) cannot reach %s, so the next check proves nothing: %v", s.denied, err)
	}
	if out, err := s.execIn(t, testNS, "egress-limited", "", "pstraffic", "tcp-connect", s.denied, "3s"); err == nil {
		t.Errorf("egress-limited reached its denied %s: %s", s.denied, out)
	}
	if _, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-connect", metadataIP+":80", "2s"); err == nil {
		t.Errorf("client reached %s:80, which the network's default (the ConfigMap) denies", metadataIP)
	}
	after := s.counters(t)
	if after["egress-limited"].DropsEgress <= before["egress-limited"].DropsEgress {
		t.Errorf("egress-limited: no egress drops counted for %s (%d before, %d after)", s.denied, before["egress-limited"].DropsEgress, after["egress-limited"].DropsEgress)
	}
	if after["client"].DropsEgress <= before["client"].DropsEgress {
		t.Errorf("client: no egress drops counted for %s (%d before, %d after)", metadataIP, before["client"].DropsEgress, after["client"].DropsEgress)
	}
	if after["egress-limited"].RxBytes-before["egress-limited"].RxBytes == 0 {
		t.Errorf("egress-limited: the allowed destination's replies were not received")
	}
}

// --- 4. audit ---------------------------------------------------------------------

func (s *suite) audit(t *testing.T) {
	// The container's first instruction is a write; then one a second.
	s.writer = s.waitReady(t, s.createPod(t, s.testPod("writer",
		`echo first >/tmp/first.txt; i=0; while true; do echo $i >/tmp/loop.txt; i=$((i+1)); sleep 1; done`, nil)))
	eventually(t, 30*time.Second, "the writer's first write audited with its identity", func() error {
		evs, err := s.cluster.audit(t, s.writer)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Path == "/tmp/first.txt" {
				if e.Namespace != testNS || e.Pod != "writer" || e.Container != "writer" || e.PodUID != string(s.writer.UID) {
					return fmt.Errorf("event %+v: want namespace %s, pod writer, container writer, uid %s", e, testNS, s.writer.UID)
				}
				return nil
			}
		}
		return fmt.Errorf("%d events, none for /tmp/first.txt", len(evs))
	})
}

// writesSince counts the writer's audited writes of /tmp/loop.txt after t0.
func (s *suite) writesSince(t testing.TB, t0 time.Time) int {
	t.Helper()
	evs, err := s.cluster.audit(t, s.writer)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if e.Path == "/tmp/loop.txt" && e.Time.After(t0) && e.Container == "writer" {
			n++
		}
	}
	return n
}

// --- 5. the primary CNI rewrites its conflist -------------------------------------

func (s *suite) rechain(t *testing.T) {
	t0 := time.Now()
	s.writeConflist(t, s.primaryBytes)
	eventually(t, cniWatchBound, "podscope chained again after the primary CNI rewrote "+s.primaryName, func() error {
		return s.chained(s.conflist(t))
	})
	t.Logf("chained again %s after the rewrite", time.Since(t0).Round(100*time.Millisecond))
	p := s.waitReady(t, s.createPod(t, s.testPod("after-rewrite", "exec sleep 1000000", nil)))
	s.mustRow(t, p)
}

// --- 6. rollout restart and upgrade ----------------------------------------------

func (s *suite) restartUpgrade(t *testing.T) {
	s.pinsBefore = s.status(t)
	s.counters(t)
	old := s.dsPod(t).Name
	s.mustKubectl(t, "-n", dsNamespace, "rollout", "restart", "ds/"+dsName)
	s.mustKubectl(t, "-n", dsNamespace, "rollout", "status", "ds/"+dsName, "--timeout=4m")
	s.afterRollout(t, old, "rollout restart")

	old = s.dsPod(t).Name
	s.mustKubectl(t, "-n", dsNamespace, "set", "image", "ds/"+dsName,
		"install="+s.imageNext, "podscope-nri="+s.imageNext, "cni-watch="+s.imageNext)
	s.mustKubectl(t, "-n", dsNamespace, "rollout", "status", "ds/"+dsName, "--timeout=4m")
	p := s.afterRollout(t, old, "upgrade")
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Image != s.imageNext {
			t.Errorf("after the upgrade, container %s runs %s", c.Name, c.Image)
		}
	}
	v, err := s.execIn(t, dsNamespace, p.Name, "podscope-nri", "podscope-nri", "--version")
	if err != nil || !strings.Contains(v, "-next") {
		t.Errorf("podscope-nri --version after the upgrade: %q %v (want the second build's version)", v, err)
	}
	t.Logf("upgraded to %s", strings.TrimSpace(v))
}

// afterRollout: a new podscope pod runs; the running pods kept counting
// (never backwards), their policy and their audit; no pin leaked.
func (s *suite) afterRollout(t *testing.T, oldPod, what string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	eventually(t, 2*time.Minute, "a new podscope pod after the "+what, func() error {
		p = s.dsPod(t)
		if p.Name == oldPod {
			return fmt.Errorf("still %s", oldPod)
		}
		return nil
	})
	before := s.counters(t)
	const n = 1 << 20
	out, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-send", s.serviceIP+":80", strconv.Itoa(n))
	if err != nil || strings.TrimSpace(out) != fmt.Sprintf("ok %d", n) {
		t.Fatalf("after the %s, client to the Service: %q %v", what, out, err)
	}
	after := s.counters(t)
	if err := within(after["client"].TxBytes-before["client"].TxBytes, n); err != nil {
		t.Errorf("after the %s, client transmitted: %v", what, err)
	}
	s.checkPolicy(t)
	t0 := time.Now()
	eventually(t, 30*time.Second, "the writer still audited after the "+what, func() error {
		if n := s.writesSince(t, t0); n < 2 {
			return fmt.Errorf("%d writes of /tmp/loop.txt audited since %s", n, t0.Format(time.TimeOnly))
		}
		return nil
	})
	st := s.status(t)
	if st.PinnedLinks != s.pinsBefore.PinnedLinks || st.PinnedMaps != s.pinsBefore.PinnedMaps ||
		st.PodsAttached != s.pinsBefore.PodsAttached || len(st.StaleLayouts) > 0 || len(st.Problems) > 0 {
		t.Errorf("after the %s, pins %+v; before %+v", what, st, s.pinsBefore)
	}
	return p
}

// --- 7. removal --------------------------------------------------------------------

func (s *suite) removal(t *testing.T) {
	s.mustKubectl(t, "delete", "-k", s.overlay, "--wait=true", "--timeout=3m")
	// Deleting the DaemonSet leaves podscope chained and working.
	if err := s.chained(s.conflist(t)); err != nil {
		t.Errorf("after kubectl delete -k: %v", err)
	}
	s.mustKubectl(t, "apply", "-k", s.cleanup)
	s.mustKubectl(t, "-n", "podscope-cleanup", "rollout", "status", "ds/podscope-cleanup", "--timeout=3m")
	got := s.conflist(t)
	if string(got) != string(s.primaryBytes) {
		t.Errorf("conflist after the cleanup DaemonSet is not byte for byte what the primary CNI wrote:\n%s\nwant:\n%s", got, s.primaryBytes)
	}
	if out, err := s.agent(t, "ls", agentBinDir); err != nil || strings.Contains(" "+strings.Join(strings.Fields(out), " ")+" ", " podscope ") {
		t.Errorf("%s after the cleanup: %q %v: the plugin binary must be gone", binDir, out, err)
	}
	// The pods that ran all along keep their network.
	if out, err := s.execIn(t, testNS, "client", "", "pstraffic", "tcp-send", s.serviceIP+":80", "10000"); err != nil || strings.TrimSpace(out) != "ok 10000" {
		t.Errorf("after the removal, client to the Service: %q %v", out, err)
	}
	if out, err := s.execIn(t, testNS, "egress-limited", "", "pstraffic", "tcp-connect", s.denied, "3s"); err != nil {
		t.Errorf("after the removal (policy detached), egress-limited to %s: %q %v", s.denied, out, err)
	}
	s.mustKubectl(t, "delete", "-k", s.cleanup, "--wait=true", "--timeout=3m")
}
