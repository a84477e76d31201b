package install

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/podscope/podscope/pkg/cniplugin"
)

// AfterChain fires when podscope is written into a config — the first
// chain and a re-chain after the primary CNI rewrote its file — and not on a
// run that changes nothing.
func TestAfterChainOnlyWhenWritten(t *testing.T) {
	n := newNode(t)
	path := n.write("10-calico.conflist", fixture(t, "calico.conflist"))
	in := n.installer("")
	var calls []string
	in.cfg.AfterChain = func(p string) { calls = append(calls, p) }
	for i := 0; i < 2; i++ {
		if err := in.Install(); err != nil {
			t.Fatal(err)
		}
	}
	if len(calls) != 1 || calls[0] != path {
		t.Fatalf("after two installs AfterChain calls = %v, want one for %s", calls, path)
	}
	n.write("10-calico.conflist", fixture(t, "calico.conflist")) // the primary rewrites it
	if err := in.Install(); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 {
		t.Fatalf("re-chain after a rewrite did not fire AfterChain: %v", calls)
	}
}

// podscope-install adopts running pods after chaining, with the config now
// active and the cache dir it was given; --adopt=false turns it off; a pod
// that cannot be adopted is logged, not fatal.
func TestCLIAdoptsRunningPods(t *testing.T) {
	type call struct {
		conflist []byte
		cacheDir string
	}
	var calls []call
	saved := adoptFunc
	t.Cleanup(func() { adoptFunc = saved })
	adoptFunc = func(conflist []byte, cacheDir string) ([]cniplugin.Adopted, error) {
		calls = append(calls, call{conflist, cacheDir})
		return []cniplugin.Adopted{{ContainerID: "a"}, {ContainerID: "b", Err: errors.New("netns gone")}}, nil
	}
	n := newNode(t)
	n.write("10-bridge.conflist", fixture(t, "bridge.conflist"))
	cache := t.TempDir()
	flags := []string{"--cni-bin-dir", n.binDir, "--cni-conf-dir", n.confDir, "--state-dir", n.stateDir,
		"--src-dir", n.src, "--skip-version-check", "--cni-cache-dir", cache}
	var out bytes.Buffer
	for i := 0; i < 2; i++ {
		if code := Main(flags, &out, CheckEntry); code != 0 {
			t.Fatalf("install exit %d:\n%s", code, out.String())
		}
	}
	if len(calls) != 2 {
		t.Fatalf("adopt called %d times over two runs, want once per run:\n%s", len(calls), out.String())
	}
	for _, c := range calls {
		if c.cacheDir != cache || !bytes.Contains(c.conflist, []byte(`"podscope"`)) {
			t.Fatalf("adopt got cache %q and a conflist without podscope:\n%s", c.cacheDir, c.conflist)
		}
	}
	if !strings.Contains(out.String(), "1 of 2 running pods") || !strings.Contains(out.String(), "netns gone") {
		t.Fatalf("adoption outcome not logged:\n%s", out.String())
	}
	calls = nil
	if code := Main(append(flags, "--adopt=false"), &out, CheckEntry); code != 0 || len(calls) != 0 {
		t.Fatalf("--adopt=false: exit %d, %d adopt calls", code, len(calls))
	}
}
