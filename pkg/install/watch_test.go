package install

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rechainBound is how long the watch loop may take to chain a rewritten
// config in these tests: generous for a loaded 2-CPU machine, and far below
// the resync interval used, so only the inotify path can meet it.
const (
	rechainBound = 5 * time.Second
	testResync   = time.Hour
)

// waitChained waits until the file is want with podscope chained, and
// returns how long that took.
func waitChained(t *testing.T, path string, want []byte) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got, err := os.ReadFile(path)
		if err == nil {
			if c, err := parseNetConf(path, got); err == nil && len(c.podscopeIndexes()) == 1 {
				if base, err := c.withoutPodscope(); err == nil && bytes.Equal(base, want) {
					return time.Since(start)
				}
			}
		}
		if time.Since(start) > rechainBound {
			t.Fatalf("%s not re-chained within %s; it holds:\n%s", path, rechainBound, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// primaryWrite rewrites path as a primary CNI would: atomically (temp +
// rename, like Cilium's and Calico's installers) or in place (truncate and
// write, like a plain `cat > file`), the second in two steps so a reader can
// catch it half-written.
func primaryWrite(t *testing.T, path string, data []byte, inPlace bool) {
	t.Helper()
	if !inPlace {
		tmp := path + ".tmp-primary"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Error(err)
			return
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Error(err)
		}
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	half := len(data) / 2
	if _, err := f.Write(data[:half]); err != nil {
		t.Error(err)
	}
	time.Sleep(2 * time.Millisecond)
	if _, err := f.Write(data[half:]); err != nil {
		t.Error(err)
	}
	if err := f.Close(); err != nil {
		t.Error(err)
	}
}

func isBurstVersion(t *testing.T, b []byte) bool {
	for i := 11; i <= 40; i++ {
		if bytes.Equal(b, flannelVersion(t, i)) {
			return true
		}
	}
	return false
}

func flannelVersion(t *testing.T, i int) []byte {
	return bytes.Replace(fixture(t, "flannel.conflist"), []byte(`"cbr0"`), fmt.Appendf(nil, `"cbr%d"`, i), 1)
}

func TestWatchRechainsRewrites(t *testing.T) {
	n := newNode(t)
	path := n.write("10-flannel.conflist", flannelVersion(t, 0))
	in := n.installer(policyEntry)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Watch(ctx, testResync) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	}()
	waitChained(t, path, flannelVersion(t, 0))

	// One rewrite at a time, from another goroutine, each waited for.
	var worst time.Duration
	for i := 1; i <= 10; i++ {
		want := flannelVersion(t, i)
		wrote := make(chan struct{})
		go func() { defer close(wrote); primaryWrite(t, path, want, i%2 == 0) }()
		<-wrote
		if d := waitChained(t, path, want); d > worst {
			worst = d
		}
	}
	t.Logf("10 rewrites (atomic and in place) re-chained, slowest after %s", worst)

	// A burst: the primary rewrites many times in a row while the watcher
	// works; the last content wins and ends up chained.
	burst := make(chan struct{})
	go func() {
		defer close(burst)
		for i := 11; i <= 40; i++ {
			primaryWrite(t, path, flannelVersion(t, i), i%3 == 0)
			time.Sleep(time.Duration(i%4) * time.Millisecond)
		}
	}()
	<-burst
	// Converged on one of the burst's versions, chained once. (Which one
	// is not asserted: a write landing in the microseconds between the
	// watcher's last check and its rename is lost, as it would be for any
	// two writers of one file without a lock; see replaceIfUnchanged.)
	deadline := time.Now().Add(rechainBound)
	for {
		got, _ := os.ReadFile(path)
		c, err := parseNetConf(path, got)
		if err == nil && len(c.podscopeIndexes()) == 1 {
			if base, err := c.withoutPodscope(); err == nil && isBurstVersion(t, base) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("burst did not converge to a chained version:\n%s", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Then one more write, on a settled watcher: exactly that is chained.
	time.Sleep(200 * time.Millisecond)
	primaryWrite(t, path, flannelVersion(t, 41), true)
	d := waitChained(t, path, flannelVersion(t, 41))
	t.Logf("burst of 30 rewrites converged; a later write chained after %s", d)

	// The primary moves to a new file that sorts first (as Cilium does):
	// it is chained; the old one keeps its entry until uninstall.
	cil := fixture(t, "cilium.conflist")
	newPath := filepath.Join(n.confDir, "05-cilium.conflist")
	primaryWrite(t, newPath, cil, false)
	waitChained(t, newPath, cil)

	// Nothing left behind but config files.
	for name := range n.listing() {
		if strings.HasPrefix(name, tempPrefix) || strings.HasSuffix(name, ".tmp-primary") {
			t.Errorf("temp file left: %s", name)
		}
	}
}

func TestWatchWaitsForFirstConfig(t *testing.T) {
	n := newNode(t)
	in := n.installer("")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Watch(ctx, testResync) }()
	time.Sleep(100 * time.Millisecond) // the first round finds nothing
	conf := fixture(t, "calico.conflist")
	path := filepath.Join(n.confDir, "10-calico.conflist")
	primaryWrite(t, path, conf, false)
	d := waitChained(t, path, conf)
	t.Logf("first config chained %s after it appeared", d)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestMain lets the test binary act as podscope-install for the CLI tests.
func TestMain(m *testing.M) {
	if os.Getenv("PODSCOPE_INSTALL_TEST_MAIN") == "1" {
		os.Exit(Main(os.Args[1:], os.Stderr, CheckEntry))
	}
	os.Exit(m.Run())
}

func runMain(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	// Never read the host runtime's CNI cache from a test.
	cmd.Args = append(cmd.Args, "--cni-cache-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "PODSCOPE_INSTALL_TEST_MAIN=1")
	return cmd
}

func TestCLIInstallUninstall(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "calico.conflist")
	path := n.write("10-calico.conflist", orig)
	cfgFile := filepath.Join(t.TempDir(), "podscope.json")
	if err := os.WriteFile(cfgFile, []byte(policyEntry), 0o644); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--cni-bin-dir", n.binDir, "--cni-conf-dir", n.confDir, "--state-dir", n.stateDir,
		"--src-dir", n.src, "--config", cfgFile, "--skip-version-check"}
	for i := 0; i < 2; i++ {
		out, err := runMain(t, flags...).CombinedOutput()
		if err != nil {
			t.Fatalf("install: %v\n%s", err, out)
		}
		t.Logf("%s", out)
	}
	checkChained(t, path, orig, n.read("10-calico.conflist"), policyEntry)
	out, err := runMain(t, append(flags, "--uninstall")...).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if got := n.read("10-calico.conflist"); !bytes.Equal(got, orig) {
		t.Fatalf("not restored:\n%s", got)
	}

	// No config yet: exit code 3 (try again), the dir named.
	empty := newNode(t)
	cmd := runMain(t, "--cni-bin-dir", empty.binDir, "--cni-conf-dir", empty.confDir, "--state-dir", empty.stateDir,
		"--src-dir", empty.src, "--skip-version-check")
	out, err = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 3 || !strings.Contains(string(out), empty.confDir) {
		t.Fatalf("no config: exit %d, %v\n%s", cmd.ProcessState.ExitCode(), err, out)
	}
	// Bad flags: exit code 2.
	cmd = runMain(t, "--bin", "../evil", "--cni-conf-dir", empty.confDir, "--state-dir", empty.stateDir)
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 2 {
		t.Fatalf("bad --bin: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}
}

// The watcher stops on SIGTERM and, with --uninstall-on-exit, undoes the
// install before exiting 0.
func TestCLIWatchSIGTERM(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "flannel.conflist")
	path := n.write("10-flannel.conflist", orig)
	cmd := runMain(t, "--watch", "--uninstall-on-exit", "--cni-bin-dir", n.binDir, "--cni-conf-dir", n.confDir,
		"--state-dir", n.stateDir, "--src-dir", n.src, "--skip-version-check")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill() // only our own child, by PID
			<-exited
		}
	})
	waitChained(t, path, orig)
	newer := flannelVersion(t, 7)
	primaryWrite(t, path, newer, false)
	waitChained(t, path, newer)
	// Wait for the "watching" line so the signal handler is installed.
	deadline := time.Now().Add(rechainBound)
	for !strings.Contains(out.String(), "watching") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit within 10s of SIGTERM\n%s", out.String())
	}
	t.Logf("%s", out.String())
	if got := n.read("10-flannel.conflist"); !bytes.Equal(got, newer) {
		t.Fatalf("not uninstalled on exit:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(n.binDir, "podscope")); !os.IsNotExist(err) {
		t.Fatalf("binary left after uninstall on exit: %v", err)
	}
}

// syncBuffer is a bytes.Buffer the child's output copier and the test can
// share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The conf dir is removed and created again (a node re-provisioned under a
// running watcher): the inotify watch is re-added and the new config chained
// without waiting for the resync.
func TestWatchSurvivesConfDirRecreation(t *testing.T) {
	n := newNode(t)
	path := n.write("10-flannel.conflist", flannelVersion(t, 0))
	in := n.installer("")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Watch(ctx, testResync) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitChained(t, path, flannelVersion(t, 0))
	if err := os.RemoveAll(n.confDir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the watcher notices the loss
	if err := os.MkdirAll(n.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The re-added watch may come after this write; the re-add itself
	// triggers a round, so either way the file is chained.
	primaryWrite(t, path, flannelVersion(t, 1), false)
	d := waitChained(t, path, flannelVersion(t, 1))
	t.Logf("chained %s after the conf dir came back", d)
}

// Readers of the conflist (the runtime loading it for a pod ADD) only ever
// see a whole file, before or after an edit, never a partial one.
func TestReadersNeverSeeAPartialFile(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "calico.conflist")
	path := n.write("10-calico.conflist", orig)
	entries := []string{string(DefaultEntry), policyEntry}
	stop := make(chan struct{})
	reads := make(chan int, 1)
	go func() {
		count := 0
		defer func() { reads <- count }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("read %d: %v", count, err)
				return
			}
			c, err := parseNetConf(path, b)
			if err != nil {
				t.Errorf("read %d saw a partial file: %v\n%s", count, err, b)
				return
			}
			if base, err := c.withoutPodscope(); err != nil || !bytes.Equal(base, orig) {
				t.Errorf("read %d: not the original with or without podscope:\n%s", count, b)
				return
			}
			count++
		}
	}()
	for i := 0; i < 100; i++ {
		if err := n.installer(entries[i%2]).Install(); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.installer("").Uninstall(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	t.Logf("100 edits and an uninstall, %d whole reads meanwhile", <-reads)
	if got := n.read("10-calico.conflist"); !bytes.Equal(got, orig) {
		t.Fatal("not restored")
	}
}

// --wait-for-config: the installer waits for the primary CNI's first
// conflist (even for the conf dir itself to appear) and chains it at once.
func TestCLIWaitForConfig(t *testing.T) {
	n := newNode(t)
	if err := os.Remove(n.confDir); err != nil {
		t.Fatal(err)
	}
	cmd := runMain(t, "--wait-for-config=30s", "--cni-bin-dir", n.binDir, "--cni-conf-dir", n.confDir,
		"--state-dir", n.stateDir, "--src-dir", n.src, "--skip-version-check")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-exited:
		t.Fatalf("exited before any config existed: %v\n%s", err, out.String())
	default:
	}
	if err := os.MkdirAll(n.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fixture(t, "cilium.conflist")
	written := time.Now()
	primaryWrite(t, filepath.Join(n.confDir, "05-cilium.conflist"), conf, false)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, out.String())
		}
	case <-time.After(rechainBound):
		_ = cmd.Process.Kill() // our own child, by PID
		<-exited
		t.Fatalf("still waiting %s after the config appeared\n%s", rechainBound, out.String())
	}
	t.Logf("chained and exited %s after the config appeared", time.Since(written).Round(time.Millisecond))
	checkChained(t, "05-cilium.conflist", conf, n.read("05-cilium.conflist"), string(DefaultEntry))

	// Nothing within the time: exit 3, as without waiting.
	empty := newNode(t)
	cmd = runMain(t, "--wait-for-config=500ms", "--cni-bin-dir", empty.binDir, "--cni-conf-dir", empty.confDir,
		"--state-dir", empty.stateDir, "--src-dir", empty.src, "--skip-version-check")
	start := time.Now()
	o, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 3 || time.Since(start) < 500*time.Millisecond {
		t.Fatalf("exit %d after %s, want 3 after the 500ms wait\n%s", cmd.ProcessState.ExitCode(), time.Since(start), o)
	}
}
