package integration

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podscope/podscope/pkg/pins"
)

// Only root may read or write podscope's pins and state (docs/reliability.md
// "Threat model"): a bpffs root and a state dir that podscope creates are
// 0700 all the way down, pins and the accounting log 0600.
func TestStateIsOwnerOnly(t *testing.T) {
	base := t.TempDir()
	n := newNode(t, nodeOpts{})
	root := pins.New(filepath.Join(n.root.Path, "created-by-podscope"))
	state := filepath.Join(base, "state", "podscope")
	n.root, n.stateDir = root, state
	n.setEntry(t, map[string]any{"bpffsRoot": root.Path, "stateDir": state})
	p := n.newPod("perm", nil)
	n.mustAdd(p)
	if err := n.del(p, p.netnsPath); err != nil {
		t.Fatal(err)
	}
	check := func(top string) {
		err := filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			want := fs.FileMode(0o600)
			if d.IsDir() {
				want = 0o700
			}
			if fi.Mode().Perm()&^want != 0 {
				t.Errorf("%s: mode %v, want at most %v", path, fi.Mode().Perm(), want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check(root.Path)
	check(state)
	if _, err := os.Stat(filepath.Join(state, "accounting.jsonl")); err != nil {
		t.Fatalf("no accounting log was written: %v", err)
	}
}

// setEntry sets fields of the podscope entry of the node's conflist.
func (n *node) setEntry(t testing.TB, fields map[string]any) {
	t.Helper()
	var conf map[string]any
	if err := json.Unmarshal(n.list.Bytes, &conf); err != nil {
		t.Fatal(err)
	}
	plugins := conf["plugins"].([]any)
	for k, v := range fields {
		plugins[len(plugins)-1].(map[string]any)[k] = v
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	if n.list, err = libcni.ConfListFromBytes(b); err != nil {
		t.Fatal(err)
	}
}

// DEL cleans up as far as it can (CNI spec) even when the conflist was
// edited after ADD into one with known fields of the wrong type: the pod is
// torn down and accounted, never stuck terminating.
func TestDelWithWronglyTypedFieldsCleansUp(t *testing.T) {
	n := newNode(t, nodeOpts{})
	p := n.newPod("typo", nil)
	n.mustAdd(p)
	n.setEntry(t, map[string]any{"attachMode": 5, "policy": []int{1}, "failClosed": "yes"})
	if err := n.del(p, p.netnsPath); err != nil {
		t.Fatalf("DEL with wrongly typed fields: %v", err)
	}
	if n.isRegistered(p) {
		t.Fatal("pod still registered")
	}
	n.assertClean(t, map[*pod]int{p: 1})
}
