package audit

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/pods"
)

func TestLogWriterRotatesAndKeepsMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	path := filepath.Join(dir, "audit.jsonl")
	w, err := NewLogWriter(path, 1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{Time: time.Unix(1700000000, 0).UTC(), Identity: Identity{Identity: pods.Identity{Namespace: "ns", Pod: "p"}}, CgroupID: 7, PID: 42, Comm: "sh",
		Op: "create", Path: "/tmp/x", Flags: 0o101, Count: 1}
	const n = 40
	for i := 0; i < n; i++ {
		ev.PID = uint32(i)
		if err := w.Write(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, p := range []string{path + ".2", path + ".1", path} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("rotation file missing: %v", err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
		}
		if st.Size() > 1000 {
			t.Errorf("%s is %d bytes, over the 1000-byte limit", p, st.Size())
		}
		f, _ := os.Open(p)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		f.Close()
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf("keep=2 but %s.3 exists (%v)", path, err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("log dir mode %v, want 0700", st.Mode().Perm())
	}
	// The newest lines survive, in order, each a complete object with the
	// contract's field names.
	var last uint32
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d not JSON: %q", i, l)
		}
		for _, f := range []string{"time", "namespace", "pod", "podUID", "container", "containerID", "cgroupID",
			"pid", "comm", "uid", "op", "path", "flags", "denied", "count"} {
			if _, ok := m[f]; !ok {
				t.Fatalf("line %d lacks %q: %s", i, f, l)
			}
		}
		if strings.Contains(l, `"target"`) || strings.Contains(l, `"value"`) {
			t.Fatalf("empty target/value should be omitted: %s", l)
		}
		pid := uint32(m["pid"].(float64))
		if i > 0 && pid != last+1 {
			t.Fatalf("line %d: pid %d after %d: lines lost or reordered inside the kept files", i, pid, last)
		}
		last = pid
	}
	if last != n-1 {
		t.Fatalf("newest line has pid %d, want %d", last, n-1)
	}
}

func TestLogWriterNarrowsExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.jsonl")
	if err := os.WriteFile(path, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := NewLogWriter(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("existing log left at %v, want 0600", st.Mode().Perm())
	}
}

func TestOpsAndModes(t *testing.T) {
	ops := Ops()
	want := "open_write create truncate unlink rename chmod chown mkdir rmdir link symlink sysctl_write"
	if got := strings.Join(ops, " "); got != want {
		t.Fatalf("Ops() = %q, want the contract's %q", got, want)
	}
	for _, m := range Modes {
		if !m.Valid() || modeFromKernel(uint32(m.kernel())) != m {
			t.Errorf("mode %s does not round-trip through its kernel value", m)
		}
	}
	if Mode("bogus").Valid() {
		t.Error("bogus mode is valid")
	}
}
