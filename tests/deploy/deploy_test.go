// Package deploy_test checks the Kubernetes manifests in deploy/: they build
// with kustomize (krusty, the library behind `kubectl apply -k`), decode into
// the Kubernetes API types, and carry what a node agent of this kind must
// have. It also runs podscope-install with exactly the DaemonSet's arguments
// and ConfigMap against temp dirs, so the manifests and the installer agree.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/podscope/podscope/pkg/install"
	"github.com/podscope/podscope/pkg/nriplugin"
	"github.com/podscope/podscope/pkg/policy"
)

const repo = "../.."

// built is what `kustomize build dir` produced, decoded.
type built struct {
	kinds      map[string][]string // kind -> names
	namespaces []corev1.Namespace
	sas        []corev1.ServiceAccount
	configMaps []corev1.ConfigMap
	daemonSets []appsv1.DaemonSet
	roles      []rbacv1.ClusterRole
	bindings   []rbacv1.ClusterRoleBinding
}

func build(t *testing.T, dir string) *built {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repo, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	b := &built{kinds: map[string][]string{}}
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		kind, name := r.GetKind(), r.GetName()
		b.kinds[kind] = append(b.kinds[kind], name)
		// Strict: a misspelled field is an error, not silently dropped.
		decode := func(into any) {
			if err := yaml.UnmarshalStrict(y, into); err != nil {
				t.Fatalf("%s %s does not decode as %T: %v\n%s", kind, name, into, err, y)
			}
		}
		switch kind {
		case "Namespace":
			var o corev1.Namespace
			decode(&o)
			b.namespaces = append(b.namespaces, o)
		case "ServiceAccount":
			var o corev1.ServiceAccount
			decode(&o)
			b.sas = append(b.sas, o)
		case "ConfigMap":
			var o corev1.ConfigMap
			decode(&o)
			b.configMaps = append(b.configMaps, o)
		case "DaemonSet":
			var o appsv1.DaemonSet
			decode(&o)
			b.daemonSets = append(b.daemonSets, o)
		case "ClusterRole":
			var o rbacv1.ClusterRole
			decode(&o)
			b.roles = append(b.roles, o)
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			decode(&o)
			b.bindings = append(b.bindings, o)
		default:
			t.Errorf("unexpected %s %s in %s", kind, name, dir)
		}
	}
	return b
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// flag returns the value of --name=value in args.
func flag(t *testing.T, c corev1.Container, name string) string {
	t.Helper()
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	t.Fatalf("container %s has no --%s", c.Name, name)
	return ""
}

// hostMount checks that c mounts the host directory path at the same path,
// through a hostPath volume, and returns the mount.
func hostMount(t *testing.T, spec corev1.PodSpec, c corev1.Container, path string) corev1.VolumeMount {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath != path {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			if v.HostPath == nil || v.HostPath.Path != path {
				t.Fatalf("%s: volume %s for %s is not hostPath %s: %+v", c.Name, v.Name, path, path, v.VolumeSource)
			}
			return m
		}
		t.Fatalf("%s: mount %s names missing volume %s", c.Name, path, m.Name)
	}
	t.Fatalf("container %s does not mount %s", c.Name, path)
	return corev1.VolumeMount{}
}

func propagation(m corev1.VolumeMount) corev1.MountPropagationMode {
	if m.MountPropagation == nil {
		return corev1.MountPropagationNone
	}
	return *m.MountPropagation
}

func privileged(c corev1.Container) bool {
	return c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
}

func checkResources(t *testing.T, c corev1.Container) {
	t.Helper()
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, ok1 := c.Resources.Requests[r]
		lim, ok2 := c.Resources.Limits[r]
		if !ok1 || !ok2 {
			t.Errorf("%s: %s request and limit must both be set", c.Name, r)
			continue
		}
		if req.Cmp(lim) > 0 || req.Cmp(resource.MustParse("0")) <= 0 {
			t.Errorf("%s: %s request %s, limit %s", c.Name, r, req.String(), lim.String())
		}
	}
}

func TestDaemonSet(t *testing.T) {
	b := build(t, "deploy")
	if got := b.kinds["DaemonSet"]; len(got) != 1 {
		t.Fatalf("DaemonSets: %v", got)
	}
	// No RBAC at all: podscope reads nothing from the API server.
	for _, k := range []string{"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} {
		if len(b.kinds[k]) > 0 {
			t.Errorf("unexpected %s %v", k, b.kinds[k])
		}
	}
	if len(b.namespaces) != 1 || b.namespaces[0].Name != "podscope" {
		t.Fatalf("namespaces: %v", b.kinds["Namespace"])
	}
	if b.namespaces[0].Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Error("namespace does not let Pod Security admit a privileged DaemonSet")
	}
	if len(b.sas) != 1 || b.sas[0].AutomountServiceAccountToken == nil || *b.sas[0].AutomountServiceAccountToken {
		t.Error("ServiceAccount must exist and not automount a token")
	}

	ds := b.daemonSets[0]
	spec := ds.Spec.Template.Spec
	if ds.Namespace != "podscope" {
		t.Errorf("DaemonSet namespace %q", ds.Namespace)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template", k, v)
		}
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("updateStrategy %q", ds.Spec.UpdateStrategy.Type)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if spec.ServiceAccountName != b.sas[0].Name {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("pod automounts a service account token")
	}
	// Every node: one toleration with operator Exists and no key matches
	// every taint.
	if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("no toleration for every taint: %+v", spec.Tolerations)
	}
	if !spec.HostNetwork || !spec.HostPID {
		t.Errorf("hostNetwork=%v hostPID=%v, want both (see daemonset.yaml)", spec.HostNetwork, spec.HostPID)
	}

	// Init container: the installer, privileged for the bpffs mount whose
	// propagation must reach the host.
	if len(spec.InitContainers) != 1 {
		t.Fatalf("init containers: %d", len(spec.InitContainers))
	}
	inst := spec.InitContainers[0]
	if !privileged(inst) {
		t.Error("install init container must be privileged (bpffs mount, Bidirectional)")
	}
	if got := propagation(hostMount(t, spec, inst, "/sys/fs/bpf")); got != corev1.MountPropagationBidirectional {
		t.Errorf("install: /sys/fs/bpf propagation %s, want Bidirectional", got)
	}
	hostMount(t, spec, inst, "/opt/cni/bin")
	hostMount(t, spec, inst, "/etc/cni/net.d")
	hostMount(t, spec, inst, "/var/lib/podscope")
	checkResources(t, inst)

	nri := container(t, spec.Containers, "podscope-nri")
	// Not privileged: exactly the capabilities docs/reliability.md says
	// each is needed for (the cluster suite passes with them), no privilege
	// escalation, a read-only root.
	if privileged(nri) {
		t.Error("podscope-nri is privileged; it needs only BPF, PERFMON, NET_ADMIN, DAC_OVERRIDE")
	}
	if sc := nri.SecurityContext; sc == nil || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(slices.Sorted(slices.Values(sc.Capabilities.Add)), []corev1.Capability{"BPF", "DAC_OVERRIDE", "NET_ADMIN", "PERFMON"}) ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("podscope-nri security context: %+v", nri.SecurityContext)
	}
	for _, p := range []string{"/opt/cni/bin", "/etc/cni/net.d", "/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/nri", "/var/log/podscope", "/var/lib/podscope"} {
		hostMount(t, spec, nri, p)
	}
	// Read-only: tracefs (an unprivileged container cannot mount it) and
	// the runtime's netns dir, which the reaper must see: without it every
	// live pod looked gone.
	for _, p := range []string{"/sys/kernel/tracing", "/var/run/netns"} {
		if m := hostMount(t, spec, nri, p); !m.ReadOnly {
			t.Errorf("podscope-nri: %s must be mounted read-only", p)
		}
	}
	if got := propagation(hostMount(t, spec, nri, "/var/run/netns")); got != corev1.MountPropagationHostToContainer {
		t.Errorf("podscope-nri: /var/run/netns propagation %s, want HostToContainer (netns files appear after start)", got)
	}
	if got := propagation(hostMount(t, spec, nri, "/sys/fs/bpf")); got != corev1.MountPropagationHostToContainer {
		t.Errorf("podscope-nri: /sys/fs/bpf propagation %s, want HostToContainer", got)
	}
	if m := hostMount(t, spec, nri, "/opt/cni/bin"); !m.ReadOnly {
		t.Error("podscope-nri needs /opt/cni/bin read-only only")
	}
	// The daemon's paths lie inside its mounts.
	for flagName, dir := range map[string]string{
		"nri-socket": "/var/run/nri/", "audit-log": "/var/log/podscope/",
		"bpffs-root": "/sys/fs/bpf/", "state-dir": "/var/lib/podscope",
	} {
		if v := flag(t, nri, flagName); !strings.HasPrefix(v, dir) {
			t.Errorf("--%s=%s is outside the mount %s", flagName, v, dir)
		}
	}
	// Metrics: the bind address is the pod IP (= node IP) on the port the
	// probes and the containerPort name.
	var metricsPort int32
	for _, p := range nri.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort != 9810 {
		t.Fatalf("metrics containerPort %d, want 9810", metricsPort)
	}
	if got := flag(t, nri, "metrics-addr"); got != "$(POD_IP):9810" {
		t.Errorf("--metrics-addr=%s", got)
	}
	// podscope-nri's own flag parser accepts the args, with the pod IP
	// expanded as the kubelet does.
	var args []string
	for _, a := range nri.Args {
		args = append(args, strings.ReplaceAll(a, "$(POD_IP)", "192.0.2.10"))
	}
	nf, err := nriplugin.ParseFlags(args, io.Discard)
	if err != nil {
		t.Fatalf("podscope-nri rejects the DaemonSet's args: %v", err)
	}
	if host, port, err := net.SplitHostPort(nf.MetricsAddr); err != nil || host != "192.0.2.10" || port != "9810" {
		t.Errorf("metrics address %q: %v", nf.MetricsAddr, err)
	}
	if !slices.ContainsFunc(nri.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	}) {
		t.Error("POD_IP is not taken from status.podIP")
	}
	for name, p := range map[string]*corev1.Probe{"liveness": nri.LivenessProbe, "readiness": nri.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" || p.HTTPGet.Host != "" {
			t.Errorf("%s probe must GET /healthz on the metrics port at the pod IP: %+v", name, p)
		}
	}
	checkResources(t, nri)

	watch := container(t, spec.Containers, "cni-watch")
	if !slices.Contains(watch.Args, "--watch") {
		t.Error("cni-watch does not run --watch")
	}
	if privileged(watch) {
		t.Error("cni-watch edits files only: it must not be privileged")
	}
	hostMount(t, spec, watch, "/opt/cni/bin")
	hostMount(t, spec, watch, "/etc/cni/net.d")
	checkResources(t, watch)

	// Every command is a binary the image has.
	img := imageBinaries(t)
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if len(c.Command) != 1 || !slices.Contains(img, c.Command[0]) {
			t.Errorf("%s runs %v, the image has %v", c.Name, c.Command, img)
		}
		if c.Image != "podscope:dev" {
			t.Errorf("%s image %q, want podscope:dev (kustomize images: rewrites it)", c.Name, c.Image)
		}
	}
}

// imageBinaries reads the Dockerfile's final COPY into /usr/local/bin.
func imageBinaries(t *testing.T) []string {
	t.Helper()
	df, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	re := regexp.MustCompile(`(?m)^COPY --from=build (.+) /usr/local/bin/$`)
	m := re.FindSubmatch(df)
	if m == nil {
		t.Fatal("Dockerfile: no COPY --from=build ... /usr/local/bin/")
	}
	for _, f := range strings.Fields(string(m[1])) {
		out = append(out, "/usr/local/bin/"+filepath.Base(f))
	}
	for _, want := range []string{"podscope", "podscope-nri", "podscopectl", "podscope-install"} {
		if !slices.Contains(out, "/usr/local/bin/"+want) {
			t.Errorf("image lacks %s", want)
		}
	}
	return out
}

// configEntry returns the ConfigMap file that --config points at.
func configEntry(t *testing.T, b *built, c corev1.Container, spec corev1.PodSpec) []byte {
	t.Helper()
	path := flag(t, c, "config")
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, m.MountPath+"/")
		if !ok {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			for _, cm := range b.configMaps {
				if cm.Name == v.ConfigMap.Name {
					data, ok := cm.Data[rel]
					if !ok {
						t.Fatalf("ConfigMap %s has no key %s", cm.Name, rel)
					}
					return []byte(data)
				}
			}
			t.Fatalf("ConfigMap %s not in the build", v.ConfigMap.Name)
		}
	}
	t.Fatalf("--config=%s is not inside a ConfigMap mount of %s", path, c.Name)
	return nil
}

func TestConfigMapIsAValidPodscopeEntry(t *testing.T) {
	b := build(t, "deploy")
	spec := b.daemonSets[0].Spec.Template.Spec
	entry := configEntry(t, b, spec.InitContainers[0], spec)
	if w := configEntry(t, b, container(t, spec.Containers, "cni-watch"), spec); !bytes.Equal(w, entry) {
		t.Fatal("the init container and the watcher chain different entries")
	}
	var top struct {
		Type         string          `json:"type"`
		BPFFSRoot    string          `json:"bpffsRoot"`
		StateDir     string          `json:"stateDir"`
		Capabilities map[string]bool `json:"capabilities"`
		Policy       json.RawMessage `json:"policy"`
	}
	dec := json.NewDecoder(bytes.NewReader(entry))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&top); err != nil {
		t.Fatalf("ConfigMap entry: %v", err)
	}
	if top.Type != "podscope" || !top.Capabilities["io.kubernetes.cri.pod-annotations"] {
		t.Errorf("entry: type %q, capabilities %v", top.Type, top.Capabilities)
	}
	nri := container(t, spec.Containers, "podscope-nri")
	if top.BPFFSRoot != flag(t, nri, "bpffs-root") || top.StateDir != flag(t, nri, "state-dir") {
		t.Errorf("CNI plugin and podscope-nri disagree: bpffsRoot %s vs %s, stateDir %s vs %s",
			top.BPFFSRoot, flag(t, nri, "bpffs-root"), top.StateDir, flag(t, nri, "state-dir"))
	}
	p, err := policy.ParsePolicy(top.Policy, "policy")
	if err != nil {
		t.Fatalf("ConfigMap policy: %v", err)
	}
	if p.Egress.Default != policy.Allow || len(p.Egress.Rules) != 1 || p.Egress.Rules[0].Action != policy.Deny ||
		p.Egress.Rules[0].CIDR.String() != "169.254.169.254/32" {
		t.Errorf("default policy changed: %+v (update docs/install-cluster.md and hack/kind-e2e.sh with it)", p.Egress)
	}
}

// hostPaths maps the DaemonSet's host paths into a temp "node".
type fakeNode struct {
	root string
}

func (n fakeNode) path(p string) string { return filepath.Join(n.root, p) }

// rewrite turns the container's args into ones for the fake node: host
// paths are re-rooted, --config points at a file with the ConfigMap data.
func (n fakeNode) rewrite(t *testing.T, c corev1.Container, configFile string) []string {
	var out []string
	for _, a := range c.Args {
		name, val, ok := strings.Cut(a, "=")
		switch {
		case !ok:
			out = append(out, a)
		case name == "--config":
			out = append(out, name+"="+configFile)
		case name == "--mount-bpffs":
			// needs root and a real mount; not what this test is about
		case strings.HasPrefix(val, "/"):
			out = append(out, name+"="+n.path(val))
		default:
			out = append(out, a)
		}
	}
	return append(out, "--src-dir="+n.path("/usr/local/bin"), "--skip-version-check")
}

// The DaemonSet's own installer arguments, with its ConfigMap, chain a
// kindnet conflist (kind's), and the cleanup DaemonSet's arguments undo it.
func TestInstallerArgsAgainstAFakeNode(t *testing.T) {
	b := build(t, "deploy")
	spec := b.daemonSets[0].Spec.Template.Spec
	inst := spec.InitContainers[0]
	n := fakeNode{root: t.TempDir()}
	for _, d := range []string{"/usr/local/bin", "/etc/cni/net.d", "/etc/podscope"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(n.path("/usr/local/bin/podscope"), []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	kindnet, err := os.ReadFile(filepath.Join(repo, "pkg/install/testdata/kindnet.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	conf := n.path("/etc/cni/net.d/10-kindnet.conflist")
	if err := os.WriteFile(conf, kindnet, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := n.path("/etc/podscope/podscope.json")
	if err := os.WriteFile(cfg, configEntry(t, b, inst, spec), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if code := install.Main(n.rewrite(t, inst, cfg), &stderr, install.CheckEntry); code != 0 {
		t.Fatalf("install init container args: exit %d\n%s", code, stderr.String())
	}
	got, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(got, &list); err != nil {
		t.Fatal(err)
	}
	last := list.Plugins[len(list.Plugins)-1]
	if len(list.Plugins) != 3 || last["type"] != "podscope" || last["policy"] == nil {
		t.Fatalf("not chained with the ConfigMap's entry:\n%s", got)
	}
	if _, err := os.Stat(n.path("/opt/cni/bin/podscope")); err != nil {
		t.Fatalf("plugin not copied where the runtime looks: %v", err)
	}

	cb := build(t, "deploy/cleanup")
	if len(cb.daemonSets) != 1 {
		t.Fatalf("cleanup DaemonSets: %v", cb.kinds["DaemonSet"])
	}
	cspec := cb.daemonSets[0].Spec.Template.Spec
	un := container(t, cspec.InitContainers, "uninstall")
	if !slices.Contains(un.Args, "--uninstall") {
		t.Fatal("cleanup does not run --uninstall")
	}
	for _, p := range []string{"/opt/cni/bin", "/etc/cni/net.d", "/var/lib/podscope"} {
		hostMount(t, cspec, un, p)
	}
	if flag(t, un, "state-dir") != flag(t, inst, "state-dir") {
		t.Fatal("cleanup reads another install record than the installer writes")
	}
	stderr.Reset()
	if code := install.Main(n.rewrite(t, un, ""), &stderr, install.CheckEntry); code != 0 {
		t.Fatalf("cleanup uninstall args: exit %d\n%s", code, stderr.String())
	}
	if got, _ := os.ReadFile(conf); !bytes.Equal(got, kindnet) {
		t.Fatalf("cleanup did not restore the conflist:\n%s", got)
	}
	if _, err := os.Stat(n.path("/opt/cni/bin/podscope")); !os.IsNotExist(err) {
		t.Fatalf("cleanup left the plugin binary: %v", err)
	}
	unpin := container(t, cspec.InitContainers, "unpin")
	if unpin.Command[0] != "/usr/local/bin/podscopectl" || unpin.Args[0] != "cleanup" || !privileged(unpin) {
		t.Errorf("unpin: %v %v", unpin.Command, unpin.Args)
	}
	// Unchain before unpinning: init containers run in order.
	if cspec.InitContainers[0].Name != "uninstall" {
		t.Error("cleanup must unchain first")
	}
}

// The NRI socket the DaemonSet connects to is the one the containerd
// snippets and the kind cluster configure.
func TestNRISocketAgrees(t *testing.T) {
	b := build(t, "deploy")
	sock := flag(t, container(t, b.daemonSets[0].Spec.Template.Spec.Containers, "podscope-nri"), "nri-socket")
	for _, f := range []string{"deploy/containerd/containerd-2.x-nri.toml", "deploy/containerd/containerd-1.7-nri.toml", "hack/kind/cluster.yaml"} {
		data, err := os.ReadFile(filepath.Join(repo, f))
		if err != nil {
			t.Fatal(err)
		}
		s := string(data)
		for _, want := range []string{`[plugins."io.containerd.nri.v1.nri"]`, `disable = false`, `socket_path = "` + sock + `"`} {
			if !strings.Contains(s, want) {
				t.Errorf("%s lacks %s", f, want)
			}
		}
	}
}

// execStart returns the arguments of a systemd unit's ExecStart (with
// backslash-continued lines joined).
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo, "deploy/systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.ReplaceAll(string(data), "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("%s: no ExecStart", unit)
	return nil
}

// The single-node systemd units use the same paths as the DaemonSet, and
// their flags are accepted by the binaries' own parsers.
func TestSystemdUnits(t *testing.T) {
	b := build(t, "deploy")
	spec := b.daemonSets[0].Spec.Template.Spec
	nriC := container(t, spec.Containers, "podscope-nri")

	nri := execStart(t, "podscope-nri.service")
	if nri[0] != "/usr/local/bin/podscope-nri" {
		t.Fatalf("podscope-nri.service runs %s", nri[0])
	}
	f, err := nriplugin.ParseFlags(nri[1:], io.Discard)
	if err != nil {
		t.Fatalf("podscope-nri rejects the unit's flags: %v", err)
	}
	if f.NRI.Socket != flag(t, nriC, "nri-socket") || f.BPFFSRoot != flag(t, nriC, "bpffs-root") ||
		f.StateDir != flag(t, nriC, "state-dir") || f.AuditLog != flag(t, nriC, "audit-log") {
		t.Errorf("unit and DaemonSet disagree: %+v", f.Options)
	}
	if f.MetricsAddr != "127.0.0.1:9810" {
		t.Errorf("single node metrics on %s, want loopback", f.MetricsAddr)
	}

	watch := execStart(t, "podscope-cni-watch.service")
	if watch[0] != "/usr/local/bin/podscope-install" || !slices.Contains(watch, "--watch") {
		t.Fatalf("podscope-cni-watch.service runs %v", watch)
	}
	wc := corev1.Container{Name: "unit", Args: watch[1:]}
	dsWatch := container(t, spec.Containers, "cni-watch")
	for _, name := range []string{"cni-bin-dir", "cni-conf-dir", "state-dir", "config"} {
		if flag(t, wc, name) != flag(t, dsWatch, name) {
			t.Errorf("--%s: unit %s, DaemonSet %s", name, flag(t, wc, name), flag(t, dsWatch, name))
		}
	}
	// The unit's flags chain deploy/podscope.json into a fake node where
	// the plugin is already installed (--bin= copies nothing). --watch is
	// dropped so the run is one round.
	n := fakeNode{root: t.TempDir()}
	for _, d := range []string{"/opt/cni/bin", "/etc/cni/net.d", "/usr/local/bin"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(n.path("/opt/cni/bin/podscope"), []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	flannel, err := os.ReadFile(filepath.Join(repo, "pkg/install/testdata/flannel.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	conf := n.path("/etc/cni/net.d/10-flannel.conflist")
	if err := os.WriteFile(conf, flannel, 0o644); err != nil {
		t.Fatal(err)
	}
	wc.Args = slices.DeleteFunc(slices.Clone(wc.Args), func(a string) bool { return a == "--watch" })
	var stderr bytes.Buffer
	if code := install.Main(n.rewrite(t, wc, filepath.Join(repo, "deploy/podscope.json")), &stderr, install.CheckEntry); code != 0 {
		t.Fatalf("unit flags: exit %d\n%s", code, stderr.String())
	}
	got, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, []byte(`"169.254.169.254/32"`)) {
		t.Fatalf("deploy/podscope.json not chained:\n%s", got)
	}
}
