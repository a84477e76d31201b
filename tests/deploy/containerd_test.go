package deploy_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"sigs.k8s.io/yaml"

	"github.com/podscope/podscope/pkg/testenv"
)

// containerdBinary finds a containerd to check the NRI snippets against:
// the one the e2e harness caches (hack/e2e-env.sh deps), or one on PATH.
// Under CI the harness builds it (the e2e suite needs it anyway).
func containerdBinary(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("PODSCOPE_CACHE")
	if cache == "" {
		cache = "/var/cache/podscope"
	}
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(cache, "containerd-v*", "containerd"))
		if len(m) == 0 {
			return ""
		}
		return m[len(m)-1]
	}
	if p := find(); p != "" {
		return p
	}
	if testenv.InCI() {
		cmd := exec.Command(filepath.Join(repo, "hack/e2e-env.sh"), "deps")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("hack/e2e-env.sh deps: %v\n%s", err, out)
		}
		if p := find(); p != "" {
			return p
		}
	}
	return testenv.RequireTool(t, "containerd")
}

// distinctive rewrites every value of the snippet's NRI table to one that
// differs from containerd's default, keeping the keys exactly as written:
// a misspelled key then shows up as a default in `config dump`.
func distinctive(t *testing.T, snippet, dir string) (string, map[string]string) {
	t.Helper()
	want := map[string]string{
		"disable":                     "true",
		"disable_connections":         "true",
		"socket_path":                 "'" + filepath.Join(dir, "nri-x.sock") + "'",
		"plugin_path":                 "'" + filepath.Join(dir, "plugins-x") + "'",
		"plugin_config_path":          "'" + filepath.Join(dir, "conf-x") + "'",
		"plugin_registration_timeout": "'7s'",
		"plugin_request_timeout":      "'3s'",
	}
	required := map[string]bool{"disable": true, "socket_path": true, "plugin_registration_timeout": true, "plugin_request_timeout": true}
	out := snippet
	for k, v := range want {
		re := regexp.MustCompile(`(?m)^(\s*` + regexp.QuoteMeta(k) + `\s*=\s*).*$`)
		if !re.MatchString(out) {
			if required[k] {
				t.Fatalf("snippet has no %s", k)
			}
			delete(want, k) // optional and absent: containerd's default
			continue
		}
		out = re.ReplaceAllString(out, "${1}"+strings.ReplaceAll(v, "$", "$$"))
	}
	return out, want
}

// kindPatch is the containerd config patch of hack/kind/cluster.yaml.
func kindPatch(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo, "hack/kind/cluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cluster struct {
		Kind                    string   `json:"kind"`
		APIVersion              string   `json:"apiVersion"`
		ContainerdConfigPatches []string `json:"containerdConfigPatches"`
		Nodes                   []struct {
			Role   string            `json:"role"`
			Labels map[string]string `json:"labels"`
		} `json:"nodes"`
	}
	if err := yaml.UnmarshalStrict(data, &cluster); err != nil {
		t.Fatalf("hack/kind/cluster.yaml: %v", err)
	}
	if cluster.Kind != "Cluster" || cluster.APIVersion != "kind.x-k8s.io/v1alpha4" || len(cluster.ContainerdConfigPatches) != 1 {
		t.Fatalf("hack/kind/cluster.yaml: %+v", cluster)
	}
	// hack/kind-e2e.sh puts the workload on the node with this label.
	workers := 0
	for _, n := range cluster.Nodes {
		if n.Role == "worker" && n.Labels["podscope.io/e2e"] == "workload" {
			workers++
		}
	}
	if workers != 1 {
		t.Fatalf("want one worker labelled podscope.io/e2e=workload, have %d", workers)
	}
	return cluster.ContainerdConfigPatches[0]
}

// containerd 2.x reads both snippets (1.7's version 2 config is migrated on
// load), and every key of the NRI table is one it knows.
func TestContainerdReadsNRISnippets(t *testing.T) {
	ctrd := containerdBinary(t)
	for _, f := range []string{"containerd-2.x-nri.toml", "containerd-1.7-nri.toml", "kind"} {
		t.Run(f, func(t *testing.T) {
			var data []byte
			if f == "kind" {
				// kind merges the patch into its node's config.
				data = []byte("version = 3\n" + kindPatch(t))
			} else {
				var err error
				if data, err = os.ReadFile(filepath.Join(repo, "deploy/containerd", f)); err != nil {
					t.Fatal(err)
				}
			}
			dir := t.TempDir()
			cfg, want := distinctive(t, string(data), dir)
			p := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(ctrd, "--config", p, "config", "dump").CombinedOutput()
			if err != nil {
				t.Fatalf("containerd config dump: %v\n%s", err, out)
			}
			i := bytes.Index(out, []byte("[plugins.'io.containerd.nri.v1.nri']"))
			if i < 0 {
				t.Fatalf("no NRI plugin section in the dump:\n%s", out)
			}
			section := string(out[i:])
			if j := strings.Index(section, "\n\n"); j > 0 {
				section = section[:j]
			}
			for k, v := range want {
				if !regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(k) + ` = ` + regexp.QuoteMeta(v) + `$`).MatchString(section) {
					t.Errorf("%s: containerd did not take %s = %s:\n%s", f, k, v, section)
				}
			}
		})
	}
}

type nriProbe struct {
	configured chan string
	synced     chan int
}

func (p *nriProbe) Configure(_ context.Context, _, runtime, version string) (api.EventMask, error) {
	p.configured <- runtime + " " + version
	return 0, nil
}

// RunPodSandbox subscribes to an event: a plugin with no event handler is
// refused by the stub.
func (p *nriProbe) RunPodSandbox(context.Context, *api.PodSandbox) error { return nil }

func (p *nriProbe) Synchronize(_ context.Context, pods []*api.PodSandbox, _ []*api.Container) ([]*api.ContainerUpdate, error) {
	p.synced <- len(pods)
	return nil, nil
}

// A real containerd 2.x with the 2.x snippet (only its paths moved into a
// temp dir) opens the NRI socket, and an NRI plugin registers on it and
// gets Configure and Synchronize, as podscope-nri does.
func TestContainerdNRISnippetRegistersAPlugin(t *testing.T) {
	testenv.RequireRoot(t)
	ctrd := containerdBinary(t)
	data, err := os.ReadFile(filepath.Join(repo, "deploy/containerd/containerd-2.x-nri.toml"))
	if err != nil {
		t.Fatal(err)
	}
	// Under /run: a short socket path, and tmpfs for the overlay snapshotter.
	w, err := os.MkdirTemp("/run", testenv.Name(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(w); err != nil {
			t.Errorf("removing %s: %v", w, err)
		}
	})
	snippet := string(data)
	for from, to := range map[string]string{
		"/var/run/nri/nri.sock": w + "/nri.sock",
		"/opt/nri/plugins":      w + "/nri-plugins",
		"/etc/nri/conf.d":       w + "/nri-conf",
	} {
		if !strings.Contains(snippet, `"`+from+`"`) {
			t.Fatalf("snippet does not set %s", from)
		}
		snippet = strings.ReplaceAll(snippet, `"`+from+`"`, `"`+to+`"`)
	}
	// Everything else of containerd in w too; CRI listens on nothing but
	// its unix socket, and finds no CNI config (no pod networking here).
	base := fmt.Sprintf(`root = '%[1]s/root'
state = '%[1]s/state'
imports = []
[grpc]
  address = '%[1]s/c.sock'
[ttrpc]
  address = '%[1]s/c.sock.ttrpc'
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['%[1]s/cni-bin']
  conf_dir = '%[1]s/net.d'
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
[plugins.'io.containerd.internal.v1.opt']
  path = '%[1]s/opt'
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = '%[1]s/opt/image-verifier/bin'
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '%[1]s/s'
`, w)
	// version must come first; the snippet's own tables follow ours.
	version := regexp.MustCompile(`(?m)^version = 3\n`)
	if !version.MatchString(snippet) {
		t.Fatal("2.x snippet does not say version = 3")
	}
	cfg := "version = 3\n" + base + version.ReplaceAllString(snippet, "")
	if err := os.WriteFile(w+"/config.toml", []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(w + "/containerd.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ctrd, "--config", w+"/config.toml")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // our own child, by PID
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(w + "/containerd.log")
			t.Logf("containerd log:\n%s", b)
		}
	})

	sock := w + "/nri.sock"
	deadline := time.Now().Add(30 * time.Second)
	for {
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("containerd exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd opened no NRI socket within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	p := &nriProbe{configured: make(chan string, 1), synced: make(chan int, 1)}
	s, err := stub.New(p, stub.WithPluginName(testenv.Name(t)), stub.WithPluginIdx("99"), stub.WithSocketPath(sock))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	select {
	case rt := <-p.configured:
		t.Logf("registered with %s", rt)
	case err := <-ran:
		t.Fatalf("NRI plugin stopped before Configure: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("no Configure from containerd within 15s")
	}
	select {
	case n := <-p.synced:
		t.Logf("Synchronize with %d pods", n)
	case <-time.After(15 * time.Second):
		t.Fatal("no Synchronize from containerd within 15s")
	}
	s.Stop()
	cancel()
}
