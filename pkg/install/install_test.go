package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// loadsInLibcni checks that the runtime's CNI library (containerd uses
// libcni) accepts the file as a conflist whose last plugin is podscope.
func loadsInLibcni(t *testing.T, data []byte, wantPlugins int) {
	t.Helper()
	l, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("libcni refuses the result: %v\n%s", err, data)
	}
	if len(l.Plugins) != wantPlugins || l.Plugins[len(l.Plugins)-1].Network.Type != PluginType {
		t.Fatalf("libcni sees %d plugins, last %q; want %d, last podscope", len(l.Plugins), l.Plugins[len(l.Plugins)-1].Network.Type, wantPlugins)
	}
}

// node is a throw-away CNI layout: conf dir, bin dir, state dir and a source
// dir holding a fake podscope binary.
type node struct {
	t                              *testing.T
	confDir, binDir, stateDir, src string
	binary                         []byte
}

func newNode(t *testing.T) *node {
	t.Helper()
	root := t.TempDir()
	n := &node{
		t:        t,
		confDir:  filepath.Join(root, "net.d"),
		binDir:   filepath.Join(root, "bin"),
		stateDir: filepath.Join(root, "state"),
		src:      filepath.Join(root, "src"),
		binary:   []byte("#!/bin/sh\necho fake podscope plugin\n"),
	}
	for _, d := range []string{n.confDir, n.src} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// 0600 in the source: the installed copy must still be 0755.
	if err := os.WriteFile(filepath.Join(n.src, "podscope"), n.binary, 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) installer(entry string) *Installer {
	n.t.Helper()
	cfg := Config{
		CNIBinDir: n.binDir, CNIConfDir: n.confDir, StateDir: n.stateDir, SrcDir: n.src,
		Binaries: []string{"podscope"}, Logf: n.t.Logf, ValidateEntry: CheckEntry,
	}
	if entry != "" {
		cfg.Entry = []byte(entry)
	}
	in, err := New(cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	return in
}

func (n *node) write(name string, data []byte) string {
	n.t.Helper()
	p := filepath.Join(n.confDir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		n.t.Fatal(err)
	}
	return p
}

func (n *node) read(name string) []byte {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.confDir, name))
	if err != nil {
		n.t.Fatal(err)
	}
	return b
}

// listing is the conf dir's file names and contents.
func (n *node) listing() map[string]string {
	n.t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(n.confDir)
	if err != nil {
		n.t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			out[e.Name()+"/"] = ""
			continue
		}
		out[e.Name()] = string(n.read(e.Name()))
	}
	return out
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("result is not valid JSON: %v\n%s", err, b)
	}
	return m
}

const policyEntry = `{"type":"podscope","bpffsRoot":"/sys/fs/bpf/podscope","stateDir":"/var/lib/podscope",` +
	`"capabilities":{"io.kubernetes.cri.pod-annotations":true},` +
	`"policy":{"egress":{"default":"allow","rules":[{"cidr":"169.254.169.254/32","action":"deny"}]}}}`

// checkChained asserts that got is orig with exactly one podscope entry
// (equal to entry) appended to its plugins, every other byte kept.
func checkChained(t *testing.T, path string, orig, got []byte, entry string) {
	t.Helper()
	oc, err := parseNetConf(path, orig)
	if err != nil {
		t.Fatal(err)
	}
	gc, err := parseNetConf(path, got)
	if err != nil {
		t.Fatalf("chained file does not parse: %v\n%s", err, got)
	}
	if len(gc.plugins) != len(oc.plugins)+1 {
		t.Fatalf("plugins: %d, want %d\n%s", len(gc.plugins), len(oc.plugins)+1, got)
	}
	loadsInLibcni(t, got, len(oc.plugins)+1)
	last := gc.plugins[len(gc.plugins)-1]
	if last.typ != PluginType {
		t.Fatalf("last plugin is %q, want podscope\n%s", last.typ, got)
	}
	var want, have any
	if err := json.Unmarshal([]byte(entry), &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got[last.start:last.end], &have); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want, have) {
		t.Fatalf("chained entry = %s, want %s", got[last.start:last.end], entry)
	}
	// Splice only: everything up to the end of the last original plugin,
	// and everything after it, is byte-identical.
	cut := oc.plugins[len(oc.plugins)-1].end
	if !bytes.Equal(got[:cut], orig[:cut]) {
		t.Fatalf("bytes before the insertion changed:\n%s", got)
	}
	if !bytes.HasSuffix(got, orig[cut:]) {
		t.Fatalf("bytes after the insertion changed:\n%s", got)
	}
	// And the whole document is the original with one more plugin.
	om, gm := decode(t, orig), decode(t, got)
	gp := gm["plugins"].([]any)
	gm["plugins"] = gp[:len(gp)-1]
	if !reflect.DeepEqual(om, gm) {
		t.Fatalf("chaining changed other content:\n%s", got)
	}
	if entry != string(DefaultEntry) {
		// The added entry is indented like its neighbours: no line of
		// the result is longer than the longest of the input plus the
		// entry's longest value (a compact blob would be).
		if bytes.Contains(orig, []byte("\n")) && bytes.Count(got, []byte("\n")) <= bytes.Count(orig, []byte("\n")) {
			t.Errorf("entry was not laid out on its own lines:\n%s", got)
		}
	}
}

func TestInstallShapes(t *testing.T) {
	shapes := []struct{ fixture, file string }{
		{"bridge.conflist", "10-containerd-net.conflist"},
		{"kindnet.conflist", "10-kindnet.conflist"},
		{"calico.conflist", "10-calico.conflist"},
		{"cilium.conflist", "05-cilium.conflist"},
		{"flannel.conflist", "10-flannel.conflist"},
		{"values.conflist", "00-values.conflist"},
	}
	for _, s := range shapes {
		t.Run(s.fixture, func(t *testing.T) {
			for _, entry := range []string{"", policyEntry} {
				n := newNode(t)
				orig := fixture(t, s.fixture)
				path := n.write(s.file, orig)
				// A later file (loopback) is not the active one and is never touched.
				lo := []byte(`{"cniVersion":"0.3.1","name":"lo","type":"loopback"}`)
				n.write("99-loopback.conf", lo)

				in := n.installer(entry)
				if err := in.Install(); err != nil {
					t.Fatal(err)
				}
				once := n.read(s.file)
				want := entry
				if want == "" {
					want = string(DefaultEntry)
				}
				checkChained(t, path, orig, once, want)
				t.Logf("%s chained:\n%s", s.file, once)
				state1, err := os.ReadFile(filepath.Join(n.stateDir, stateFileName))
				if err != nil {
					t.Fatal(err)
				}

				// Twice = once: same bytes, same record.
				if err := n.installer(entry).Install(); err != nil {
					t.Fatal(err)
				}
				if twice := n.read(s.file); !bytes.Equal(twice, once) {
					t.Fatalf("second install changed the file:\n%s", twice)
				}
				state2, err := os.ReadFile(filepath.Join(n.stateDir, stateFileName))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(state1, state2) {
					t.Fatal("second install changed the install record")
				}
				// ... and did not even rewrite it (the watch loop runs a
				// round every resync: no fsync when nothing changed).
				stA, _ := os.Stat(filepath.Join(n.stateDir, stateFileName))
				if err := n.installer(entry).Install(); err != nil {
					t.Fatal(err)
				}
				stB, _ := os.Stat(filepath.Join(n.stateDir, stateFileName))
				if !os.SameFile(stA, stB) {
					t.Error("a no-op install rewrote the install record")
				}
				if got := n.read("99-loopback.conf"); !bytes.Equal(got, lo) {
					t.Fatal("a config that is not the active one was modified")
				}

				// Uninstall restores byte for byte and removes the binary.
				if err := n.installer(entry).Uninstall(); err != nil {
					t.Fatal(err)
				}
				if got := n.read(s.file); !bytes.Equal(got, orig) {
					t.Fatalf("uninstall did not restore the original:\n%s\nwant:\n%s", got, orig)
				}
				if _, err := os.Stat(filepath.Join(n.binDir, "podscope")); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("binary still there after uninstall: %v", err)
				}
				if _, err := os.Stat(n.stateDir); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("install state dir still there after uninstall: %v", err)
				}
				if got := n.listing(); len(got) != 2 {
					t.Fatalf("conf dir after uninstall: %v", keys(got))
				}
			}
		})
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Values keep their spelling: numbers, escapes, key order, whitespace.
func TestValuesKeptByteIdentical(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "values.conflist")
	n.write("00-values.conflist", orig)
	if err := n.installer(policyEntry).Install(); err != nil {
		t.Fatal(err)
	}
	got := n.read("00-values.conflist")
	for _, lit := range []string{
		`"zeta": 1.5e3,`, `[1500, 1.50E+3, -0.0, 1e-7, 12345678901234567890123]`,
		`"caf\u00e9 \/ \"q\" \ud83d\ude00"`, `"mtu":1.5e3,"z":{"b":1,"a":2}`,
		`"empty": {}, "null": null`,
	} {
		if !bytes.Contains(got, []byte(lit)) {
			t.Errorf("lost %s:\n%s", lit, got)
		}
	}
	if strings.Index(string(got), `"zeta"`) > strings.Index(string(got), `"cniVersion"`) {
		t.Error("key order changed")
	}
}

func TestConvertSingleConf(t *testing.T) {
	for _, fx := range []string{"bridge.conf", "cilium.conf"} {
		t.Run(fx, func(t *testing.T) {
			n := newNode(t)
			orig := fixture(t, fx)
			name := "10-" + fx
			p := n.write(name, orig)
			if err := os.Chmod(p, 0o600); err != nil {
				t.Fatal(err)
			}
			n.write("99-loopback.conf", []byte(`{"cniVersion":"0.3.1","name":"lo","type":"loopback"}`))
			if err := n.installer(policyEntry).Install(); err != nil {
				t.Fatal(err)
			}
			listName := strings.TrimSuffix(name, ".conf") + ".conflist"
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s still there after conversion", name)
			}
			list := n.read(listName)
			t.Logf("converted:\n%s", list)
			if act, _ := ActiveConfig(n.confDir); filepath.Base(act) != listName {
				t.Fatalf("active config is %s, want %s", act, listName)
			}
			st, err := os.Stat(filepath.Join(n.confDir, listName))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("converted file mode %v, want the original's 0600", st.Mode().Perm())
			}
			m := decode(t, list)
			om := decode(t, orig)
			if m["name"] != om["name"] || m["cniVersion"] != om["cniVersion"] {
				t.Errorf("name/cniVersion not carried over: %v", m)
			}
			loadsInLibcni(t, list, 2)
			plugins := m["plugins"].([]any)
			if len(plugins) != 2 || !reflect.DeepEqual(plugins[0], om) {
				t.Fatalf("first plugin is not the original conf: %v", plugins)
			}
			if plugins[1].(map[string]any)["type"] != PluginType {
				t.Fatalf("second plugin is not podscope: %v", plugins[1])
			}
			// The original's text is inside, only re-indented.
			if fx == "bridge.conf" && !bytes.Contains(list, []byte(`"mtu": 1.5e3`)) {
				t.Error("number spelling lost in conversion")
			}

			if err := n.installer(policyEntry).Install(); err != nil {
				t.Fatal(err)
			}
			if again := n.read(listName); !bytes.Equal(again, list) {
				t.Fatalf("second install changed the converted file:\n%s", again)
			}
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("second install brought the .conf back")
			}

			if err := n.installer(policyEntry).Uninstall(); err != nil {
				t.Fatal(err)
			}
			if got := n.read(name); !bytes.Equal(got, orig) {
				t.Fatalf("restored .conf differs:\n%s", got)
			}
			if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("restored .conf mode: %v %v", st, err)
			}
			if _, err := os.Stat(filepath.Join(n.confDir, listName)); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("converted conflist left behind by uninstall")
			}
		})
	}
}

func TestConvertRefusedWhenItWouldLoseActive(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "bridge.conf")
	n.write("10-bridge.conf", orig)
	// Sorts between 10-bridge.conf and 10-bridge.conflist.
	other := []byte(`{"cniVersion":"0.3.1","name":"x","type":"loopback"}`)
	n.write("10-bridge.conf2.conf", other)
	err := n.installer("").Install()
	if err == nil || !strings.Contains(err.Error(), "10-bridge.conf2.conf") {
		t.Fatalf("err = %v, want a refusal naming 10-bridge.conf2.conf", err)
	}
	if got := n.read("10-bridge.conf"); !bytes.Equal(got, orig) {
		t.Fatal("refused conversion changed the file")
	}
	if l := n.listing(); len(l) != 2 {
		t.Fatalf("files after refusal: %v", keys(l))
	}
}

func TestBrokenConfigRefusedUntouched(t *testing.T) {
	cases := map[string]string{
		"truncated":          `{"cniVersion":"0.3.1","name":"k","plugins":[{"type":"ptp"`,
		"trailing comma":     `{"cniVersion":"0.3.1","name":"k","plugins":[{"type":"ptp"},]}`,
		"plugins not a list": `{"cniVersion":"0.3.1","name":"k","plugins":{"type":"ptp"}}`,
		"duplicate plugins":  `{"name":"k","plugins":[{"type":"ptp"}],"plugins":[{"type":"bridge"}]}`,
		"empty plugins":      `{"cniVersion":"0.3.1","name":"k","plugins":[]}`,
		"plugin no type":     `{"cniVersion":"0.3.1","name":"k","plugins":[{"mtu":1500}]}`,
		"plugin not object":  `{"cniVersion":"0.3.1","name":"k","plugins":["ptp"]}`,
		"not an object":      `[{"type":"ptp"}]`,
		"trailing garbage":   `{"name":"k","plugins":[{"type":"ptp"}]} x`,
		"no plugins":         `{"cniVersion":"0.3.1","name":"k"}`,
		"empty file":         ``,
		"bad version type":   `{"cniVersion":1,"name":"k","plugins":[{"type":"ptp"}]}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			n := newNode(t)
			p := n.write("10-broken.conflist", []byte(body))
			old := time.Now().Add(-time.Hour)
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
			err := n.installer("").Install()
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a ParseError", err)
			}
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("error does not name the file: %v", err)
			}
			t.Logf("refused: %v", err)
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := n.read("10-broken.conflist"); string(got) != body || !st.ModTime().Equal(old) {
				t.Fatal("broken file was touched")
			}
			if l := n.listing(); len(l) != 1 {
				t.Fatalf("files left in conf dir: %v", keys(l))
			}
		})
	}
}

func TestActiveConfigIsLexicallyFirst(t *testing.T) {
	n := newNode(t)
	if err := os.Mkdir(filepath.Join(n.confDir, "00-dir.conflist"), 0o755); err != nil {
		t.Fatal(err)
	}
	n.write("00-notes.txt", []byte("not a config"))
	n.write("20-b.conflist", fixture(t, "flannel.conflist"))
	n.write("10-a.json", fixture(t, "calico.conflist"))
	n.write("30-c.conf", fixture(t, "bridge.conf"))
	got, err := ActiveConfig(n.confDir)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(got) != "10-a.json" {
		t.Fatalf("active = %s, want 10-a.json", got)
	}
	// The same order as libcni's ConfFiles sorted, which containerd uses.
	lib, err := libcni.ConfFiles(n.confDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(lib)
	ours, err := configFiles(n.confDir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lib, ours) {
		t.Fatalf("config files %v, libcni %v", ours, lib)
	}
	before := n.listing()
	if err := n.installer("").Install(); err != nil {
		t.Fatal(err)
	}
	after := n.listing()
	for name, body := range before {
		if name != "10-a.json" && after[name] != body {
			t.Errorf("%s changed although it is not the active config", name)
		}
	}
	checkChained(t, "10-a.json", []byte(before["10-a.json"]), []byte(after["10-a.json"]), string(DefaultEntry))
}

func TestNoConfig(t *testing.T) {
	n := newNode(t)
	err := n.installer("").Install()
	if !errors.Is(err, ErrNoConfig) {
		t.Fatalf("err = %v, want ErrNoConfig", err)
	}
}

func TestPolicyChangeReplacesEntry(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "calico.conflist")
	path := n.write("10-calico.conflist", orig)
	if err := n.installer("").Install(); err != nil {
		t.Fatal(err)
	}
	if err := n.installer(policyEntry).Install(); err != nil {
		t.Fatal(err)
	}
	got := n.read("10-calico.conflist")
	checkChained(t, path, orig, got, policyEntry)
	if err := n.installer(policyEntry).Uninstall(); err != nil {
		t.Fatal(err)
	}
	if got := n.read("10-calico.conflist"); !bytes.Equal(got, orig) {
		t.Fatalf("not restored after a policy change:\n%s", got)
	}
}

func TestBadEntryRefused(t *testing.T) {
	for name, entry := range map[string]string{
		"bad cidr":   `{"type":"podscope","policy":{"egress":{"default":"allow","rules":[{"cidr":"10.0.0.300/8","action":"deny"}]}}}`,
		"bad port":   `{"type":"podscope","policy":{"ingress":{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["70000"],"action":"deny"}]}}}`,
		"wrong type": `{"type":"bridge"}`,
		"typo":       `{"type":"podscope","polcy":{"egress":{"default":"deny"}}}`,
		"bad mode":   `{"type":"podscope","attachMode":"xdp"}`,
		"not json":   `{"type":`,
		// The plugin refuses these at every ADD (code 7), so the installer
		// must never chain them.
		"policy twice": `{"type":"podscope","policy":{"egress":{"default":"deny"}},"policy":{"egress":{"default":"allow"}}}`,
		"egress twice": `{"type":"podscope","policy":{"egress":{"default":"deny"},"egress":{"default":"allow"}}}`,
		// 33 matches in one CIDR's chain: the datapath holds 32, so every
		// ADD would fail compiling it.
		"chain over 32": `{"type":"podscope","policy":{"egress":{"default":"allow","rules":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17","18","19","20","21","22","23","24","25","26","27","28","29","30","31","32","33"],"action":"deny"}]}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			n := newNode(t)
			orig := fixture(t, "flannel.conflist")
			n.write("10-flannel.conflist", orig)
			err := n.installer(entry).Install()
			if err == nil {
				t.Fatal("bad entry accepted")
			}
			t.Logf("refused: %v", err)
			if got := n.read("10-flannel.conflist"); !bytes.Equal(got, orig) {
				t.Fatal("conflist changed")
			}
		})
	}
}

func TestUninstallAfterPrimaryRewrite(t *testing.T) {
	n := newNode(t)
	n.write("10-flannel.conflist", fixture(t, "flannel.conflist"))
	if err := n.installer("").Install(); err != nil {
		t.Fatal(err)
	}
	// The primary rewrites its file (different content, no podscope);
	// then it is chained again; uninstall must give the new content back.
	newer := bytes.Replace(fixture(t, "flannel.conflist"), []byte(`"cbr0"`), []byte(`"cbr1"`), 1)
	n.write("10-flannel.conflist", newer)
	if err := n.installer("").Install(); err != nil {
		t.Fatal(err)
	}
	// Someone edits the chained file by hand: uninstall removes only the
	// podscope entry from what is there.
	edited := bytes.Replace(n.read("10-flannel.conflist"), []byte(`"hairpinMode": true`), []byte(`"hairpinMode": false`), 1)
	n.write("10-flannel.conflist", edited)
	if err := n.installer("").Uninstall(); err != nil {
		t.Fatal(err)
	}
	want := bytes.Replace(newer, []byte(`"hairpinMode": true`), []byte(`"hairpinMode": false`), 1)
	if got := n.read("10-flannel.conflist"); !bytes.Equal(got, want) {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestUninstallWithoutRecord(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "cilium.conflist")
	n.write("05-cilium.conflist", orig)
	if err := n.installer(policyEntry).Install(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(n.stateDir); err != nil {
		t.Fatal(err)
	}
	if err := n.installer("").Uninstall(); err != nil {
		t.Fatal(err)
	}
	if got := n.read("05-cilium.conflist"); !bytes.Equal(got, orig) {
		t.Fatalf("got:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(n.binDir, "podscope")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("binary identical to ours not removed")
	}
}

func TestUninstallKeepsChangedBinary(t *testing.T) {
	n := newNode(t)
	n.write("10-flannel.conflist", fixture(t, "flannel.conflist"))
	if err := n.installer("").Install(); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(n.binDir, "podscope")
	if err := os.WriteFile(bin, []byte("someone else's"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := n.installer("").Uninstall(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(bin); err != nil || string(b) != "someone else's" {
		t.Fatalf("a binary podscope-install did not write was removed: %v", err)
	}
}

func TestCopyBinaryAtomic(t *testing.T) {
	n := newNode(t)
	n.write("10-flannel.conflist", fixture(t, "flannel.conflist"))
	dst := filepath.Join(n.binDir, "podscope")
	if err := os.MkdirAll(n.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	old := []byte("old plugin")
	if err := os.WriteFile(dst, old, 0o700); err != nil {
		t.Fatal(err)
	}
	// A runtime executing the old binary holds it open: it must keep
	// reading the old content (the new one arrives by rename, not by an
	// in-place write).
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := n.installer("").Install(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, n.binary) {
		t.Fatalf("installed content = %q", got)
	}
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Fatalf("mode %v, want 0755", st.Mode().Perm())
	}
	held := make([]byte, 64)
	k, _ := f.ReadAt(held, 0)
	if !bytes.Equal(held[:k], old) {
		t.Fatalf("the open old binary changed under its reader: %q", held[:k])
	}
	entries, err := os.ReadDir(n.binDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("bin dir holds %d entries (temp files left?)", len(entries))
	}
	// Unchanged content: not rewritten (same inode).
	st1, _ := os.Stat(dst)
	if err := n.installer("").Install(); err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(dst)
	if !os.SameFile(st1, st2) {
		t.Error("identical binary rewritten")
	}
}

func TestVersionCheck(t *testing.T) {
	n := newNode(t)
	// A fake plugin that answers VERSION like skel does.
	script := "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] || exit 1\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}'\n"
	if err := os.WriteFile(filepath.Join(n.src, "podscope"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	mk := func() *Installer {
		in, err := New(Config{CNIBinDir: n.binDir, CNIConfDir: n.confDir, StateDir: n.stateDir, SrcDir: n.src,
			Binaries: []string{"podscope"}, SupportedVersions: PluginVersions, Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	old := fixture(t, "flannel.conflist") // cniVersion 0.3.1
	n.write("10-flannel.conflist", old)
	err := mk().Install()
	if err == nil || !strings.Contains(err.Error(), `"0.3.1"`) || !strings.Contains(err.Error(), "0.4.0, 1.0.0") {
		t.Fatalf("err = %v, want a refusal naming 0.3.1 and the supported versions", err)
	}
	if got := n.read("10-flannel.conflist"); !bytes.Equal(got, old) {
		t.Fatal("refused conflist was changed")
	}
	if err := os.Remove(filepath.Join(n.confDir, "10-flannel.conflist")); err != nil {
		t.Fatal(err)
	}
	n.write("10-bridge.conflist", fixture(t, "bridge.conflist")) // 1.0.0
	if err := mk().Install(); err != nil {
		t.Fatal(err)
	}
}

func TestRefusesWithoutPluginBinary(t *testing.T) {
	n := newNode(t)
	orig := fixture(t, "bridge.conflist")
	n.write("10-bridge.conflist", orig)
	in, err := New(Config{CNIBinDir: n.binDir, CNIConfDir: n.confDir, StateDir: n.stateDir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	err = in.Install()
	if err == nil || !strings.Contains(err.Error(), filepath.Join(n.binDir, "podscope")) {
		t.Fatalf("err = %v, want a refusal naming the missing plugin", err)
	}
	if got := n.read("10-bridge.conflist"); !bytes.Equal(got, orig) {
		t.Fatal("conflist changed although the plugin is missing")
	}
	// Installed earlier (by hand, make install): chaining with no
	// binaries to copy works.
	if err := os.MkdirAll(n.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.binDir, "podscope"), n.binary, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := in.Install(); err != nil {
		t.Fatal(err)
	}
	checkChained(t, "10-bridge.conflist", orig, n.read("10-bridge.conflist"), string(DefaultEntry))
}
