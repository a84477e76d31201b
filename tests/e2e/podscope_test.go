package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/ctl"
)

// Helpers that read what podscope recorded: `podscopectl pods`, the
// accounting log, the audit log.

// podRow returns podscope's row of the pod (by UID), or false.
func (e *env) podRow(t testing.TB, p *pod) (ctl.PodRow, bool) {
	t.Helper()
	var rows []ctl.PodRow
	e.podscopectlJSON(t, &rows, "pods")
	for _, r := range rows {
		if r.UID == p.UID {
			if r.Namespace != p.Namespace || r.Name != p.Name {
				t.Fatalf("podscope has pod UID %s as %s/%s, want %s/%s", p.UID, r.Namespace, r.Name, p.Namespace, p.Name)
			}
			if r.CountersError != "" {
				t.Fatalf("pod %s/%s: counters error: %s", p.Namespace, p.Name, r.CountersError)
			}
			return r, true
		}
	}
	return ctl.PodRow{}, false
}

func (e *env) mustPodRow(t testing.TB, p *pod) ctl.PodRow {
	t.Helper()
	r, ok := e.podRow(t, p)
	if !ok {
		t.Fatalf("podscopectl pods does not list %s/%s (uid %s)", p.Namespace, p.Name, p.UID)
	}
	return r
}

// accountingLine is one line of stateDir/accounting.jsonl (docs/design.md "Finished
// pods lose nothing").
type accountingLine struct {
	Reason    string `json:"reason"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodUID    string `json:"podUID"`
	RxBytes   uint64 `json:"rxBytes"`
	RxPackets uint64 `json:"rxPackets"`
	TxBytes   uint64 `json:"txBytes"`
	TxPackets uint64 `json:"txPackets"`
}

func (e *env) accounting(t testing.TB, uid string) []accountingLine {
	t.Helper()
	var out []accountingLine
	for _, raw := range readJSONL(t, filepath.Join(e.stateDir, "accounting.jsonl")) {
		var a accountingLine
		if err := json.Unmarshal(raw, &a); err != nil {
			t.Fatalf("accounting.jsonl: %v: %s", err, raw)
		}
		if a.PodUID == uid {
			out = append(out, a)
		}
	}
	return out
}

// auditEvent has the field names of docs/design.md "Audit event".
type auditEvent struct {
	Time        time.Time `json:"time"`
	Namespace   string    `json:"namespace"`
	Pod         string    `json:"pod"`
	PodUID      string    `json:"podUID"`
	Container   string    `json:"container"`
	ContainerID string    `json:"containerID"`
	CgroupID    uint64    `json:"cgroupID"`
	PID         uint32    `json:"pid"`
	Comm        string    `json:"comm"`
	Op          string    `json:"op"`
	Path        string    `json:"path"`
	Target      string    `json:"target"` // rename/link/symlink: the new name
	Denied      bool      `json:"denied"`
}

// auditOf returns the audit events of the pod (by UID).
func (e *env) auditOf(t testing.TB, uid string) []auditEvent {
	t.Helper()
	var out []auditEvent
	for _, raw := range readJSONL(t, e.auditLog) {
		var ev auditEvent
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatalf("audit log: %v: %s", err, raw)
		}
		if ev.PodUID == uid {
			out = append(out, ev)
		}
	}
	return out
}

// readJSONL reads a JSON-lines file; a missing file is empty. A last line
// without a newline is still being written and is left out.
func readJSONL(t testing.TB, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		if len(strings.TrimSpace(string(line))) > 0 {
			out = append(out, line)
		}
	}
	return out
}

// within checks got is at least want and at most want plus the stated
// overhead: headers (Ethernet+IP+TCP/UDP, ACKs) are counted by podscope but
// are not payload. 10% + 128 KiB covers them for the sizes used here.
func within(got, want uint64) error {
	max := want + want/10 + 128<<10
	if got < want || got > max {
		return fmt.Errorf("%d bytes, want between %d (payload) and %d (payload + 10%% + 128 KiB of headers)", got, want, max)
	}
	return nil
}

// waitAttached waits until podscope lists the pod (CNI ADD ran).
func (e *env) waitAttached(t testing.TB, p *pod) ctl.PodRow {
	t.Helper()
	var r ctl.PodRow
	eventually(t, 10*time.Second, "pod "+p.Namespace+"/"+p.Name+" in podscopectl pods", func() error {
		var ok bool
		if r, ok = e.podRow(t, p); !ok {
			return errors.New("not listed")
		}
		return nil
	})
	return r
}

// metric scrapes podscope-nri's /metrics and sums the samples of name whose
// labels contain every one of labels (each like `pod_uid="…"`).
func (e *env) metric(t testing.TB, name string, labels ...string) (float64, bool) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + e.metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scraping podscope-nri metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping podscope-nri metrics: %v %s", err, resp.Status)
	}
	var sum float64
	found := false
lines:
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	return sum, found
}
