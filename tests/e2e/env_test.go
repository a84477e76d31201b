// Package e2e is podscope's end-to-end suite: real pods under a real
// containerd (CRI + NRI), started by hack/e2e-env.sh, driven with crictl.
// Run it with hack/e2e.sh (`make e2e`), which brings the environment up,
// exports PODSCOPE_E2E_ENV and the paths below, and tears it all down.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/testenv"
)

// env is the running environment, as hack/e2e-env.sh wrote it to $WORK/env.
type env struct {
	work, repo, crictl                 string
	bpffsRoot, stateDir, auditLog      string
	busybox, cgroupParent, metricsAddr string
	chained                            bool // podscope is in the default network's chain
}

func getenv(t testing.TB, k string) string {
	t.Helper()
	v := os.Getenv(k)
	if v == "" {
		t.Fatalf("%s unset: run the suite through hack/e2e.sh", k)
	}
	return v
}

// mustEnv returns the environment, failing under CI=true when the suite was
// not started through hack/e2e.sh.
func mustEnv(t testing.TB) *env {
	t.Helper()
	testenv.RequireRoot(t)
	if os.Getenv("PODSCOPE_E2E_ENV") == "" {
		testenv.Missing(t, "PODSCOPE_E2E_ENV unset: run the suite with hack/e2e.sh (make e2e)")
	}
	return &env{
		work:         getenv(t, "PODSCOPE_E2E_ENV"),
		repo:         getenv(t, "PODSCOPE_E2E_REPO"),
		crictl:       getenv(t, "PODSCOPE_E2E_CRICTL"),
		bpffsRoot:    getenv(t, "PODSCOPE_E2E_BPFFS_ROOT"),
		stateDir:     getenv(t, "PODSCOPE_E2E_STATE_DIR"),
		auditLog:     getenv(t, "PODSCOPE_E2E_AUDIT_LOG"),
		busybox:      getenv(t, "PODSCOPE_E2E_BUSYBOX_IMAGE"),
		cgroupParent: getenv(t, "PODSCOPE_E2E_CGROUP_PARENT"),
		metricsAddr:  getenv(t, "PODSCOPE_E2E_METRICS_ADDR"),
		chained:      os.Getenv("PODSCOPE_E2E_PODSCOPE_CHAINED") == "1",
	}
}

// requireCNI fails (under CI) or skips (outside CI) a test that needs
// podscope in the default network's chain, when `make build` had not
// produced bin/podscope as the environment came up.
func (e *env) requireCNI(t testing.TB) {
	t.Helper()
	if !e.chained {
		testenv.Missing(t, "bin/podscope (the CNI plugin) was not built when the environment came up")
	}
}

// requireNRI is requireCNI plus a running podscope-nri.
func (e *env) requireNRI(t testing.TB) {
	t.Helper()
	e.requireCNI(t)
	if !e.nriRunning() {
		testenv.Missing(t, "podscope-nri is not running (bin/podscope-nri missing or it exited; see %s/log/podscope-nri.log)", e.work)
	}
}

// nriRunning: podscope-nri's recorded PID is alive and not a zombie (one
// killed stays a zombie until PID 1 reaps it).
func (e *env) nriRunning() bool {
	b, err := os.ReadFile(filepath.Join(e.work, "nri.pid"))
	if err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return rest != "" && rest[0] != 'Z' && rest[0] != 'X'
}

// run runs a command with a deadline and returns its stdout; the error
// carries stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func (e *env) crictlOut(args ...string) (string, error) {
	return run(context.Background(), e.crictl, append([]string{"--config", filepath.Join(e.work, "crictl.yaml")}, args...)...)
}

func (e *env) mustCrictl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.crictlOut(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// envScript runs hack/e2e-env.sh on the running environment (restarts).
func (e *env) envScript(t testing.TB, args ...string) {
	t.Helper()
	e.envScriptWith(t, nil, args...)
}

// envScriptWith is envScript with extra environment (e.g. PODSCOPE_NRI_ARGS
// for start-nri).
func (e *env) envScriptWith(t testing.TB, extra []string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.repo, "hack/e2e-env.sh"), args...)
	cmd.Env = append(append(os.Environ(), "PODSCOPE_E2E_WORK="+e.work), extra...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/e2e-env.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("hack/e2e-env.sh %s: %s", strings.Join(args, " "), bytes.TrimSpace(out))
}

// podscopectl runs bin/podscopectl against the environment's bpffs root
// (flags go after the command, and after "show" for `policy show`).
func (e *env) podscopectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.podscopectlOut(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) podscopectlOut(args ...string) (string, error) {
	n := 1
	if len(args) > 1 && args[0] == "policy" {
		n = 2
	}
	full := append(append(append([]string{}, args[:n]...), "--bpffs-root", e.bpffsRoot), args[n:]...)
	return run(context.Background(), filepath.Join(e.repo, "bin/podscopectl"), full...)
}

// podscopectlJSON runs a podscopectl command with -o json and decodes it.
func (e *env) podscopectlJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out := e.podscopectl(t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("podscopectl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// podSpec is what a test asks for; the UID is generated.
type podSpec struct {
	Namespace, Name string
	Annotations     map[string]string
	Runtime         string // "" = default handler (podscope chained); "runc-bare" = bridge only
}

type pod struct {
	e                    *env
	ID                   string
	Namespace, Name, UID string
	IP                   string
	IPs                  []string // all of them, IP first
	cfgPath              string
	runpTook             time.Duration // how long crictl runp took
	removed              bool
}

func (e *env) podConfig(t testing.TB, s podSpec, uid string) string {
	t.Helper()
	cfg := map[string]any{
		"metadata":      map[string]any{"name": s.Name, "namespace": s.Namespace, "uid": uid, "attempt": 0},
		"annotations":   s.Annotations,
		"labels":        map[string]string{"app": s.Name},
		"log_directory": filepath.Join(e.work, "podlogs", uid),
		"linux":         map[string]any{"cgroup_parent": "/" + e.cgroupParent + "/pod" + uid},
	}
	return writeJSON(t, "pod-"+s.Namespace+"-"+s.Name+"-"+uid+".json", cfg)
}

func writeJSON(t testing.TB, name string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runPod starts a pod sandbox; it is stopped and removed when the test ends
// (unless the test removed it already).
func (e *env) runPod(t testing.TB, s podSpec) *pod {
	t.Helper()
	uid := "e2e-" + randHex(6)
	p := &pod{e: e, Namespace: s.Namespace, Name: s.Name, UID: uid, cfgPath: e.podConfig(t, s, uid)}
	args := []string{"runp"}
	if s.Runtime != "" {
		args = append(args, "--runtime", s.Runtime)
	}
	start := time.Now()
	p.ID = e.mustCrictl(t, append(args, p.cfgPath)...)
	p.runpTook = time.Since(start)
	t.Cleanup(func() { p.remove(t) })
	p.IPs = e.podIPs(t, p.ID)
	if len(p.IPs) > 0 {
		p.IP = p.IPs[0]
	}
	return p
}

func (e *env) podIPs(t testing.TB, id string) []string {
	t.Helper()
	var st struct {
		Status struct {
			Network struct {
				IP            string `json:"ip"`
				AdditionalIPs []struct {
					IP string `json:"ip"`
				} `json:"additionalIps"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(e.mustCrictl(t, "inspectp", "-o", "json", id)), &st); err != nil {
		t.Fatal(err)
	}
	ips := []string{st.Status.Network.IP}
	for _, a := range st.Status.Network.AdditionalIPs {
		ips = append(ips, a.IP)
	}
	return ips
}

// remove stops and removes the pod (CNI DEL twice, as containerd does).
func (p *pod) remove(t testing.TB) {
	t.Helper()
	if p.removed {
		return
	}
	p.removed = true
	if _, err := p.e.crictlOut("stopp", p.ID); err != nil {
		t.Errorf("stopping pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	if _, err := p.e.crictlOut("rmp", "-f", p.ID); err != nil {
		t.Errorf("removing pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// start creates and starts a busybox container running cmd in the pod and
// returns its ID.
func (p *pod) start(t testing.TB, name string, cmd ...string) string {
	t.Helper()
	id := p.create(t, name, cmd...)
	p.e.mustCrictl(t, "start", id)
	return id
}

func (p *pod) create(t testing.TB, name string, cmd ...string) string {
	t.Helper()
	c := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": p.e.busybox},
		"command":  cmd,
		"log_path": name + ".log",
	}
	cfg := writeJSON(t, "ctr-"+p.Name+"-"+name+".json", c)
	return p.e.mustCrictl(t, "create", "--no-pull", p.ID, cfg, p.cfgPath)
}

// exec runs a command in a container and returns its stdout.
func (e *env) exec(ctrID string, cmd ...string) (string, error) {
	return e.crictlOut(append([]string{"exec", "-s", "--timeout", "60", ctrID}, cmd...)...)
}

func (e *env) mustExec(t testing.TB, ctrID string, cmd ...string) string {
	t.Helper()
	out, err := e.exec(ctrID, cmd...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, d, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
