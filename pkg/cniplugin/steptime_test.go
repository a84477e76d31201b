package cniplugin

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// What ADD writes to the timing log reads back as Timing: the bench's
// scale rows depend on it.
func TestTimingLogReadsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "timing.jsonl")
	t.Setenv(TimingEnv, path)
	for _, reap := range []bool{false, true} {
		st := newStepTimer()
		st.step("config")
		if reap {
			st.step(StepReap)
		}
		st.step("lookup")
		st.write("ctr")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), data)
	}
	for i, l := range lines {
		var x Timing
		if err := json.Unmarshal(l, &x); err != nil {
			t.Fatal(err)
		}
		if x.Container != "ctr" || len(x.Steps) != 2+i || x.Steps[0][0] != "config" || x.TotalMs < 0 || x.CPUMs <= 0 {
			t.Fatalf("line %d: %+v", i, x)
		}
		if x.Ran(StepReap) != (i == 1) || x.Ran("attach") {
			t.Fatalf("line %d: Ran(reap) = %v, Ran(attach) = %v", i, x.Ran(StepReap), x.Ran("attach"))
		}
	}
}
