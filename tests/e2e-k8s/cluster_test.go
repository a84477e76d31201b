// Package e2ek8s is podscope's cluster suite: deploy/ installed with
// `kubectl apply -k` on a real Kubernetes node, judged through the API,
// kubectl exec and the metrics endpoint only, with nothing but what a user
// has. It takes a kubeconfig and runs unchanged against the test node of
// hack/k8s/node.sh (`make e2e-k8s`) and against a kind cluster
// (hack/kind-e2e.sh). See docs/install-cluster.md.
//
// Environment (hack/k8s/e2e.sh and hack/kind-e2e.sh set it):
//
//	KUBECONFIG                    the cluster (required)
//	PODSCOPE_K8S_KUBECTL          kubectl to run (default: kubectl on PATH)
//	PODSCOPE_K8S_OVERLAY          kustomization to install (default hack/k8s/overlay/networkpolicy:
//	                              hack/k8s/overlay with NetworkPolicy enforcement)
//	PODSCOPE_K8S_CLEANUP_OVERLAY  kustomization of the cleanup DaemonSet (default hack/k8s/overlay/cleanup)
//	PODSCOPE_K8S_IMAGE_NEXT       the upgrade's image (default localhost/podscope/podscope:e2e-next)
//	PODSCOPE_K8S_TEST_IMAGE       busybox + /bin/pstraffic (default localhost/podscope/busybox:e2e)
//	PODSCOPE_K8S_PRIMARY_CNI      "bridge": the node has no CNI config and the suite is its
//	                              primary CNI (writes a bridge conflist after podscope's
//	                              DaemonSet started); "existing" (kind): the node has one
//	PODSCOPE_K8S_NODE             the node to test on (default: the one labelled
//	                              podscope.io/e2e=workload, else the only node)
package e2ek8s

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podscope/podscope/pkg/testenv"
)

const (
	dsNamespace = "podscope"
	dsName      = "podscope"
	testNS      = "podscope-e2e"
	confDir     = "/etc/cni/net.d"
	binDir      = "/opt/cni/bin"
	// The agent pod's view of the node's CNI dirs.
	agentConfDir = "/host/etc/cni/net.d"
	agentBinDir  = "/host/opt/cni/bin"
)

type cluster struct {
	cs          *kubernetes.Clientset
	kubectlBin  string
	kubeconfig  string
	overlay     string
	cleanup     string
	imageNext   string
	testImage   string
	primaryMode string
	node        string
	// The primary CNI's conflist on the node: its file name and the bytes
	// the primary CNI wrote (the removal must restore them exactly).
	primaryName  string
	primaryBytes []byte
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	kc := os.Getenv("KUBECONFIG")
	if kc == "" {
		testenv.Missing(t, "KUBECONFIG unset: the cluster suite runs with make e2e-k8s or hack/kind-e2e.sh")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	c := &cluster{
		cs:          cs,
		kubeconfig:  kc,
		kubectlBin:  env("PODSCOPE_K8S_KUBECTL", "kubectl"),
		overlay:     abs(env("PODSCOPE_K8S_OVERLAY", "../../hack/k8s/overlay/networkpolicy")),
		cleanup:     abs(env("PODSCOPE_K8S_CLEANUP_OVERLAY", "../../hack/k8s/overlay/cleanup")),
		imageNext:   env("PODSCOPE_K8S_IMAGE_NEXT", "localhost/podscope/podscope:e2e-next"),
		testImage:   env("PODSCOPE_K8S_TEST_IMAGE", "localhost/podscope/busybox:e2e"),
		primaryMode: env("PODSCOPE_K8S_PRIMARY_CNI", "bridge"),
		node:        os.Getenv("PODSCOPE_K8S_NODE"),
	}
	if c.primaryMode != "bridge" && c.primaryMode != "existing" {
		t.Fatalf("PODSCOPE_K8S_PRIMARY_CNI=%q: want bridge or existing", c.primaryMode)
	}
	if c.node == "" {
		nodes, err := cs.CoreV1().Nodes().List(ctx(t), metav1.ListOptions{LabelSelector: "podscope.io/e2e=workload"})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) == 0 {
			if nodes, err = cs.CoreV1().Nodes().List(ctx(t), metav1.ListOptions{}); err != nil {
				t.Fatal(err)
			}
			if len(nodes.Items) != 1 {
				t.Fatalf("%d nodes and none labelled podscope.io/e2e=workload: set PODSCOPE_K8S_NODE", len(nodes.Items))
			}
		}
		c.node = nodes.Items[0].Name
	}
	return c
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// kubectl runs kubectl with the suite's kubeconfig; stdin may be nil.
func (c *cluster) kubectlIn(t testing.TB, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cx, c.kubectlBin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kubeconfig)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s%s", strings.Join(args, " "), err, errb.String(), out.String())
	}
	return out.String(), nil
}

func (c *cluster) kubectl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return c.kubectlIn(t, nil, args...)
}

func (c *cluster) mustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.kubectl(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// execIn runs a command in a container through kubectl exec.
func (c *cluster) execIn(t testing.TB, ns, pod, container string, cmd ...string) (string, error) {
	t.Helper()
	args := []string{"-n", ns, "exec", pod}
	if container != "" {
		args = append(args, "-c", container)
	}
	return c.kubectl(t, append(append(args, "--"), cmd...)...)
}

// eventually retries f until it succeeds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	end := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// --- the podscope DaemonSet pod, and podscopectl in it ---------------------

// dsPod is the podscope pod on the test node, once it runs.
func (c *cluster) dsPod(t testing.TB) *corev1.Pod {
	t.Helper()
	var found *corev1.Pod
	eventually(t, 3*time.Minute, "a running podscope pod on "+c.node, func() error {
		pods, err := c.cs.CoreV1().Pods(dsNamespace).List(ctx(t), metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=podscope", FieldSelector: "spec.nodeName=" + c.node})
		if err != nil {
			return err
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podReady(p) {
				found = p
				return nil
			}
		}
		return fmt.Errorf("%d pods, none running and ready", len(pods.Items))
	})
	return found
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ctl runs podscopectl in the DaemonSet pod's podscope-nri container, as the
// README tells a user to.
func (c *cluster) ctl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	p := c.dsPod(t)
	return c.execIn(t, dsNamespace, p.Name, "podscope-nri", append([]string{"podscopectl"}, args...)...)
}

// The JSON of podscopectl, as documented (docs/podscopectl.md): decoded
// here into the suite's own types, not podscope's.
type counters struct {
	RxBytes, RxPackets, TxBytes, TxPackets uint64
	DropsEgress, DropsIngress              uint64
	// Of the drops, the Kubernetes NetworkPolicy's.
	NetworkPolicyDropsEgress, NetworkPolicyDropsIngress uint64
}

type podRow struct {
	Namespace, Name, UID string
	IPs                  []string
	Counters             counters
}

type status struct {
	BPFFSMounted     bool
	NRISocketPresent bool
	AuditMode        string
	StaleLayouts     []string
	PinnedLinks      int
	PinnedMaps       int
	PodsAttached     int
	Problems         []string
	NetworkPolicy    *struct {
		Enforced   bool
		Reason     string
		Hooks      []string
		Pods, Sets int
	}
}

type auditEvent struct {
	Namespace, Pod, PodUID, Container, ContainerID string
	Op, Path                                       string
	Time                                           time.Time
}

// decodeAll decodes a JSON array or a stream of JSON values into a slice.
func decodeAll[T any](s string) ([]T, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []T
	if strings.HasPrefix(s, "[") {
		err := json.Unmarshal([]byte(s), &out)
		return out, err
	}
	dec := json.NewDecoder(strings.NewReader(s))
	for {
		var v T
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return out, err
		}
		out = append(out, v)
	}
}

func (c *cluster) pods(t testing.TB) ([]podRow, error) {
	t.Helper()
	out, err := c.ctl(t, "pods", "-o", "json")
	if err != nil {
		return nil, err
	}
	return decodeAll[podRow](out)
}

// podRow finds the pod's row, matched by the API's namespace, name and UID.
func (c *cluster) row(t testing.TB, p *corev1.Pod) (podRow, error) {
	t.Helper()
	rows, err := c.pods(t)
	if err != nil {
		return podRow{}, err
	}
	for _, r := range rows {
		if r.Namespace == p.Namespace && r.Name == p.Name {
			if r.UID != string(p.UID) {
				return r, fmt.Errorf("pod %s/%s listed with UID %q, the API says %q", p.Namespace, p.Name, r.UID, p.UID)
			}
			return r, nil
		}
	}
	return podRow{}, fmt.Errorf("pod %s/%s not in podscopectl pods (%d rows)", p.Namespace, p.Name, len(rows))
}

func (c *cluster) mustRow(t testing.TB, p *corev1.Pod) podRow {
	t.Helper()
	var r podRow
	eventually(t, 30*time.Second, "pod "+p.Name+" attached", func() (err error) {
		r, err = c.row(t, p)
		return err
	})
	return r
}

func (c *cluster) status(t testing.TB) status {
	t.Helper()
	out, err := c.ctl(t, "status", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	st, err := decodeAll[status](out)
	if err != nil || len(st) != 1 {
		t.Fatalf("podscopectl status -o json: %v: %s", err, out)
	}
	return st[0]
}

func (c *cluster) audit(t testing.TB, p *corev1.Pod) ([]auditEvent, error) {
	t.Helper()
	out, err := c.ctl(t, "audit", "--pod", p.Namespace+"/"+p.Name, "-o", "json")
	if err != nil {
		return nil, err
	}
	return decodeAll[auditEvent](out)
}

// metrics scrapes podscope-nri's metrics endpoint through the API server's
// pod proxy (the DaemonSet's metrics port; no node access needed).
func (c *cluster) metrics(t testing.TB) string {
	t.Helper()
	p := c.dsPod(t)
	body, err := c.cs.CoreV1().RESTClient().Get().Namespace(dsNamespace).Resource("pods").
		Name(p.Name + ":9810").SubResource("proxy").Suffix("metrics").DoRaw(ctx(t))
	if err != nil {
		t.Fatalf("metrics of %s through the API server proxy: %v", p.Name, err)
	}
	return string(body)
}

// metric sums the samples of name whose labels include every label given.
func metric(body, name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		lb, val, ok := strings.Cut(line[len(name):], "} ")
		if !ok {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(lb, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		var v float64
		if _, err := fmt.Sscanf(strings.TrimSpace(val), "%g", &v); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// within: got is at least the payload and at most payload + 10% + 128 KiB,
// the header overhead docs/testing.md states for these sizes.
func within(got, want uint64) error {
	max := want + want/10 + 128<<10
	if got < want || got > max {
		return fmt.Errorf("%d bytes, want between %d (payload) and %d (payload + 10%% + 128 KiB of headers)", got, want, max)
	}
	return nil
}

// --- the node agent: the node's CNI dirs, through a pod ---------------------

const agentName = "node-agent"

// agent runs a hostNetwork pod on the test node with the node's CNI conf
// and bin dirs mounted: the suite reads the conflist and the plugin binary
// through it, and plays the primary CNI (which writes the conflist from a
// pod, as kindnet, flannel or Calico do).
func (c *cluster) startAgent(t *testing.T) {
	t.Helper()
	hp := func(name, path string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path}}}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: agentName, Namespace: testNS},
		Spec: corev1.PodSpec{
			NodeName:                      c.node,
			HostNetwork:                   true,
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			TerminationGracePeriodSeconds: ptr(int64(1)),
			Containers: []corev1.Container{{
				Name: "agent", Image: c.testImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sleep", "1000000"},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "conf", MountPath: agentConfDir}, {Name: "bin", MountPath: agentBinDir},
				},
			}},
			Volumes: []corev1.Volume{hp("conf", confDir), hp("bin", binDir)},
		},
	}
	c.createPod(t, p)
	c.waitReady(t, p)
}

func (c *cluster) agent(t testing.TB, cmd ...string) (string, error) {
	t.Helper()
	return c.execIn(t, testNS, agentName, "agent", cmd...)
}

// conflist reads the primary CNI's conflist from the node.
func (c *cluster) conflist(t testing.TB) []byte {
	t.Helper()
	out, err := c.agent(t, "cat", agentConfDir+"/"+c.primaryName)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(out)
}

// writeConflist writes the primary CNI's conflist the way CNI agents do: a
// temp file renamed over the config (one inotify event, never a partial file).
func (c *cluster) writeConflist(t testing.TB, data []byte) {
	t.Helper()
	dst := agentConfDir + "/" + c.primaryName
	if _, err := c.kubectlIn(t, data, "-n", testNS, "exec", "-i", agentName, "-c", "agent", "--",
		"sh", "-c", "cat >"+dst+".tmp && mv "+dst+".tmp "+dst); err != nil {
		t.Fatal(err)
	}
}

type conflistDoc struct {
	CNIVersion string            `json:"cniVersion"`
	Name       string            `json:"name"`
	Plugins    []json.RawMessage `json:"plugins"`
}

// chained checks podscope is the last plugin of the conflist, once, after
// the primary CNI's own plugins in their order.
func (c *cluster) chained(data []byte) error {
	var got, orig conflistDoc
	if err := json.Unmarshal(data, &got); err != nil {
		return fmt.Errorf("conflist: %v", err)
	}
	if err := json.Unmarshal(c.primaryBytes, &orig); err != nil {
		return fmt.Errorf("primary conflist: %v", err)
	}
	types := make([]string, len(got.Plugins))
	for i, p := range got.Plugins {
		var v struct{ Type string }
		_ = json.Unmarshal(p, &v)
		types[i] = v.Type
	}
	if len(types) != len(orig.Plugins)+1 || types[len(types)-1] != "podscope" {
		return fmt.Errorf("plugins %v: want the primary's %d then podscope", types, len(orig.Plugins))
	}
	for i, p := range orig.Plugins {
		var a, b any
		_ = json.Unmarshal(p, &a)
		_ = json.Unmarshal(got.Plugins[i], &b)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			return fmt.Errorf("plugin %d changed: %s, the primary CNI wrote %s", i, got.Plugins[i], p)
		}
	}
	if got.CNIVersion != orig.CNIVersion || got.Name != orig.Name {
		return fmt.Errorf("cniVersion/name %q/%q, the primary CNI wrote %q/%q", got.CNIVersion, got.Name, orig.CNIVersion, orig.Name)
	}
	return nil
}

// --- pods ----------------------------------------------------------------------

func ptr[T any](v T) *T { return &v }

func (c *cluster) createPod(t testing.TB, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	if p.Namespace == "" {
		p.Namespace = testNS
	}
	if p.Spec.NodeName == "" {
		p.Spec.NodeName = c.node
	}
	if p.Spec.TerminationGracePeriodSeconds == nil {
		p.Spec.TerminationGracePeriodSeconds = ptr(int64(1))
	}
	got, err := c.cs.CoreV1().Pods(p.Namespace).Create(ctx(t), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s: %v", p.Name, err)
	}
	return got
}

// testPod is a busybox pod on the test node running sh -c script.
func (c *cluster) testPod(name, script string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Annotations: annotations,
			Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: name, Image: c.testImage, ImagePullPolicy: corev1.PullIfNotPresent,
			Command: []string{"/bin/sh", "-c", script},
		}}},
	}
}

// waitReady waits for the pod to be Ready and returns it as the API has it.
func (c *cluster) waitReady(t testing.TB, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	eventually(t, 2*time.Minute, "pod "+p.Namespace+"/"+p.Name+" Ready", func() error {
		var err error
		got, err = c.cs.CoreV1().Pods(p.Namespace).Get(ctx(t), p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !podReady(got) {
			return fmt.Errorf("phase %s, %s", got.Status.Phase, containerStates(got))
		}
		return nil
	})
	return got
}

func containerStates(p *corev1.Pod) string {
	var s []string
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			s = append(s, cs.Name+": waiting "+cs.State.Waiting.Reason+" "+cs.State.Waiting.Message)
		case cs.State.Running != nil:
			s = append(s, cs.Name+": running")
		case cs.State.Terminated != nil:
			s = append(s, fmt.Sprintf("%s: terminated %s (%d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode))
		}
	}
	return strings.Join(s, "; ")
}

func (c *cluster) getPod(t testing.TB, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := c.cs.CoreV1().Pods(ns).Get(ctx(t), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (c *cluster) deleteNamespace(t testing.TB, ns string) {
	t.Helper()
	err := c.cs.CoreV1().Namespaces().Delete(ctx(t), ns, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("deleting namespace %s: %v", ns, err)
		return
	}
	eventually(t, 3*time.Minute, "namespace "+ns+" gone", func() error {
		_, err := c.cs.CoreV1().Namespaces().Get(ctx(t), ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
}

// diagnostics logs what a person needs when a step failed.
func (c *cluster) diagnostics(t *testing.T) {
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "pods", "-A", "-o", "wide"},
		{"-n", dsNamespace, "describe", "pods"},
		{"-n", dsNamespace, "logs", "ds/" + dsName, "-c", "install", "--tail=50"},
		{"-n", dsNamespace, "logs", "ds/" + dsName, "-c", "podscope-nri", "--tail=80"},
		{"-n", dsNamespace, "logs", "ds/" + dsName, "-c", "cni-watch", "--tail=50"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
	} {
		out, err := c.kubectl(t, args...)
		t.Logf("kubectl %s:\n%s%v", strings.Join(args, " "), out, errOrEmpty(err))
	}
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
