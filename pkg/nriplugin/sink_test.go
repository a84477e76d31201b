package nriplugin

import (
	"bytes"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/pods"
)

func testEvent(i int) audit.Event {
	return audit.Event{Time: time.Unix(1700000000, int64(i)), Identity: audit.Identity{Identity: pods.Identity{Namespace: "default", Pod: "web", PodUID: "u"}, Container: "nginx", ContainerID: "c1"}, CgroupID: 7, PID: 42, Comm: "nginx", Op: "open_write",
		Path: "/var/cache/nginx/file", Flags: 0o101}
}

// The sink writes each event to the log (and stdout when asked) and counts
// it per container and op, a folded event as its repeats.
func TestSink(t *testing.T) {
	var out bytes.Buffer
	d := &Daemon{opt: Options{AuditStdout: true, Stdout: &out}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	lw, err := audit.NewLogWriter(filepath.Join(t.TempDir(), "audit.jsonl"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lw.Close()
	sink := d.sink(lw)
	sink(testEvent(1))
	folded := testEvent(2)
	folded.Count = 5
	sink(folded)
	unlink := testEvent(3)
	unlink.Op = "unlink"
	sink(unlink)
	if got := d.writes.Total("open_write"); got != 6 {
		t.Errorf("open_write counted %d, want 1 + 5 folded", got)
	}
	if got := d.writes.Total("unlink"); got != 1 {
		t.Errorf("unlink counted %d", got)
	}
	if lines := strings.Count(out.String(), "\n"); lines != 3 || !strings.Contains(out.String(), `"count":5`) {
		t.Errorf("stdout has %d lines:\n%s", lines, out.String())
	}
}

// BenchmarkSink: the daemon's per-event cost on the reader goroutine (JSON
// line into the buffered log file + counter), without --audit-stdout.
func BenchmarkSink(b *testing.B) {
	d := &Daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	lw, err := audit.NewLogWriter(filepath.Join(b.TempDir(), "audit.jsonl"), 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer lw.Close()
	sink := d.sink(lw)
	ev := testEvent(0)
	for b.Loop() {
		sink(ev)
	}
}
