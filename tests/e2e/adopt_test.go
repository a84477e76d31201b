package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/testenv"
)

// TestAdoption: pods that run on a network without podscope get it when
// podscope-install chains podscope into that network's conflist — attached
// from the runtime's CNI cache with their identity, no restart — and the
// network's later pods get it at ADD. Uninstall restores the conflist byte
// for byte.
func TestAdoption(t *testing.T) {
	e := mustEnv(t)
	e.requireCNI(t)
	install := filepath.Join(e.repo, "bin/podscope-install")
	if _, err := os.Stat(install); err != nil {
		testenv.Missing(t, "bin/podscope-install not built")
	}
	confDir := getenv(t, "PODSCOPE_E2E_ADOPT_CONF_DIR")
	confs, _ := filepath.Glob(filepath.Join(confDir, "*.conflist"))
	if len(confs) != 1 {
		t.Fatalf("want one conflist in %s, have %v", confDir, confs)
	}
	original, err := os.ReadFile(confs[0])
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(e.work, "install-adopt")
	podscopeInstall := func(args ...string) {
		t.Helper()
		all := append([]string{"--cni-bin-dir", getenv(t, "PODSCOPE_E2E_CNI_BIN_DIR"), "--cni-conf-dir", confDir,
			"--state-dir", stateDir, "--bin", ""}, args...)
		out, err := exec.Command(install, all...).CombinedOutput()
		t.Logf("podscope-install %s:\n%s", strings.Join(args, " "), bytes.TrimSpace(out))
		if err != nil {
			t.Fatalf("podscope-install: %v", err)
		}
	}

	srv := e.runPod(t, podSpec{Namespace: "e2e-adopt", Name: "server", Runtime: "runc-adopt"})
	srv.start(t, "tcp", "pstraffic", "tcp-serve", "5000")
	cli := e.runPod(t, podSpec{Namespace: "e2e-adopt", Name: "client", Runtime: "runc-adopt"})
	c := cli.start(t, "sleep", "sleep", "3600")
	eventually(t, 10*time.Second, "client -> server before podscope", func() error {
		_, err := e.exec(c, "pstraffic", "tcp-send", srv.IP+":5000", "100000")
		return err
	})
	if _, ok := e.podRow(t, srv); ok {
		t.Fatal("podscope lists a pod of the network it is not chained into")
	}

	podscopeInstall("--config", getenv(t, "PODSCOPE_E2E_PODSCOPE_ENTRY"))
	uninstalled := false
	uninstall := func() {
		if !uninstalled {
			uninstalled = true
			podscopeInstall("--uninstall")
		}
	}
	t.Cleanup(uninstall)

	// Adopted with the identity containerd gave at ADD (from the cache).
	e.waitAttached(t, srv)
	e.waitAttached(t, cli)
	s0 := e.mustPodRow(t, srv).Counters
	if out, err := e.exec(c, "pstraffic", "tcp-send", srv.IP+":5000", "200000"); err != nil || strings.TrimSpace(out) != "ok 200000" {
		t.Fatalf("client -> server after adoption: %q %v", out, err)
	}
	s1 := e.mustPodRow(t, srv).Counters
	if err := within(s1.RxBytes-s0.RxBytes, 200000); err != nil {
		t.Errorf("adopted server rx: %v", err)
	}

	// A pod started after the install gets podscope at its ADD (containerd
	// reloads the changed conflist).
	var late *pod
	eventually(t, 20*time.Second, "a new pod of the network attached at ADD", func() error {
		if late != nil {
			late.remove(t)
		}
		late = e.runPod(t, podSpec{Namespace: "e2e-adopt", Name: "late", Runtime: "runc-adopt"})
		if _, ok := e.podRow(t, late); !ok {
			return os.ErrNotExist
		}
		return nil
	})

	// Removal while chained: DEL logs the adopted pod's counters once.
	srv.remove(t)
	if lines := e.accounting(t, srv.UID); len(lines) != 1 || lines[0].RxBytes < 200000 {
		t.Errorf("accounting of the adopted server after removal: %+v; want one line with rx >= 200000", lines)
	}
	cli.remove(t)
	late.remove(t)
	uninstall()
	after, err := os.ReadFile(confs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, original) {
		t.Errorf("uninstall did not restore %s:\n--- before\n%s\n--- after\n%s", confs[0], original, after)
	}
}
