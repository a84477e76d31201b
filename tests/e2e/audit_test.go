package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeScript makes exactly these changes under /data (the busybox image has
// an empty /data): create+write, truncate, rename, chmod, unlink, mkdir, rmdir.
const writeScript = `echo hello > /data/a.txt; truncate -s 2 /data/a.txt; mv /data/a.txt /data/b.txt; chmod 600 /data/b.txt; rm /data/b.txt; mkdir /data/d; rmdir /data/d; echo done; sleep 3600`

// auditWant is one event the script must produce.
type auditWant struct {
	ops  []string
	path string
}

var scriptWants = []auditWant{
	{[]string{"create", "open_write"}, "/data/a.txt"},
	{[]string{"truncate"}, "/data/a.txt"},
	{[]string{"rename"}, "/data/a.txt"},
	{[]string{"chmod"}, "/data/b.txt"},
	{[]string{"unlink"}, "/data/b.txt"},
	{[]string{"mkdir"}, "/data/d"},
	{[]string{"rmdir"}, "/data/d"},
}

// allowedOps says which ops may appear for each path the script touches
// (open_write accompanies create/truncate depending on how busybox opens).
var allowedOps = map[string][]string{
	"/data/a.txt": {"create", "open_write", "truncate", "rename"},
	"/data/b.txt": {"chmod", "unlink", "rename"},
	"/data/d":     {"mkdir", "rmdir"},
}

// TestAudit: a container's file writes show up in the audit log exactly,
// with the pod's identity and the path as the container sees it; a pod
// that opted out produces nothing; a container whose very first action is
// a write is audited (armed before its process runs).
func TestAudit(t *testing.T) {
	e := mustEnv(t)
	e.requireNRI(t)
	w := e.runPod(t, podSpec{Namespace: "e2e-audit", Name: "writer"})
	first := w.start(t, "first", "touch", "/data/first-write")
	script := w.start(t, "script", "sh", "-c", writeScript)
	quiet := e.runPod(t, podSpec{Namespace: "e2e-audit", Name: "quiet",
		Annotations: map[string]string{"podscope.io/audit": "false"}})
	quiet.start(t, "script", "sh", "-c", writeScript)
	quiet.start(t, "first", "touch", "/data/first-write")

	var evs []auditEvent
	eventually(t, 20*time.Second, "audit events of e2e-audit/writer", func() error {
		evs = e.auditOf(t, w.UID)
		if missing := missingWants(evs, script, scriptWants); len(missing) > 0 {
			return fmt.Errorf("missing %v", missing)
		}
		if missing := missingWants(evs, first, []auditWant{{[]string{"create", "open_write"}, "/data/first-write"}}); len(missing) > 0 {
			return fmt.Errorf("container \"first\" (its first instruction is the write): missing %v", missing)
		}
		return nil
	})
	// Let stragglers arrive before checking nothing extra came.
	time.Sleep(2 * time.Second)
	evs = e.auditOf(t, w.UID)
	for _, ev := range evs {
		if ev.Namespace != "e2e-audit" || ev.Pod != "writer" {
			t.Errorf("event with identity %s/%s, want e2e-audit/writer: %+v", ev.Namespace, ev.Pod, ev)
		}
		switch ev.ContainerID {
		case first:
			if ev.Container != "first" {
				t.Errorf("container %s named %q, want first", ev.ContainerID, ev.Container)
			}
		case script:
			if ev.Container != "script" {
				t.Errorf("container %s named %q, want script", ev.ContainerID, ev.Container)
			}
		default:
			t.Errorf("event of an unknown container ID %q: %+v", ev.ContainerID, ev)
		}
		// Paths under /data are the test's own: exactly the script's
		// changes. (Outside /data the runtime's own setup, e.g. runc init
		// writing /proc/self/…, may legitimately show up.)
		if !strings.HasPrefix(ev.Path, "/data/") {
			continue
		}
		if ev.Path == "/data/first-write" {
			if ev.ContainerID != first || !slices.Contains([]string{"create", "open_write"}, ev.Op) {
				t.Errorf("unexpected event on /data/first-write: %+v", ev)
			}
			continue
		}
		if ok := slices.Contains(allowedOps[ev.Path], ev.Op); !ok || ev.ContainerID != script {
			t.Errorf("event the script did not cause: %s %s by %s (%s)", ev.Op, ev.Path, ev.Container, ev.Comm)
		}
		if ev.Op == "rename" && ev.Target != "/data/b.txt" {
			t.Errorf("rename of /data/a.txt has target %q, want /data/b.txt", ev.Target)
		}
		if strings.Contains(ev.Path, "overlay") || strings.Contains(ev.Path, "snapshots") {
			t.Errorf("path %q is the host's view, want the container's", ev.Path)
		}
	}
	// Each write is logged once: no event twice (same time, pid, op, path).
	seen := map[string]bool{}
	for _, ev := range evs {
		k := fmt.Sprintf("%s %d %s %s", ev.Time.Format(time.RFC3339Nano), ev.PID, ev.Op, ev.Path)
		if seen[k] {
			t.Errorf("event logged twice: %s", k)
		}
		seen[k] = true
	}
	t.Logf("%d audit events of e2e-audit/writer", len(evs))

	// The opted-out pod did the same and more: nothing of it is logged.
	if q := e.auditOf(t, quiet.UID); len(q) != 0 {
		t.Errorf("pod with podscope.io/audit=\"false\" produced %d events, e.g. %+v", len(q), q[0])
	}

	// And as metrics: the writer's script container counted its ops.
	for _, op := range []string{"rename", "mkdir", "rmdir", "unlink", "chmod", "truncate"} {
		v, ok := e.metric(t, "podscope_file_write_events_total", `pod_uid="`+w.UID+`"`, `container="script"`, `op="`+op+`"`)
		if !ok || v < 1 {
			t.Errorf("metric podscope_file_write_events_total{pod=\"writer\",container=\"script\",op=%q} = %v (present %v), want >= 1", op, v, ok)
		}
	}
	if v, ok := e.metric(t, "podscope_file_write_events_total", `pod_uid="`+quiet.UID+`"`); ok && v > 0 {
		t.Errorf("metric podscope_file_write_events_total of the opted-out pod = %v, want none", v)
	}

	// podscopectl reads the same log.
	out := e.podscopectl(t, "audit", "--pod", "e2e-audit/writer", "--log", e.auditLog)
	if !strings.Contains(out, "/data/a.txt") || !strings.Contains(out, "rmdir") {
		t.Errorf("podscopectl audit --pod e2e-audit/writer does not show the script's events:\n%s", out)
	}
}

// missingWants returns the wanted events that are not among evs of ctrID.
func missingWants(evs []auditEvent, ctrID string, wants []auditWant) []string {
	var missing []string
	for _, w := range wants {
		found := slices.ContainsFunc(evs, func(ev auditEvent) bool {
			return ev.ContainerID == ctrID && ev.Path == w.path && slices.Contains(w.ops, ev.Op)
		})
		if !found {
			missing = append(missing, strings.Join(w.ops, "|")+" "+w.path)
		}
	}
	return missing
}

// TestAuditDefaultOff: with podscope-nri --audit-default=off only pods
// annotated podscope.io/audit: "true" are audited.
func TestAuditDefaultOff(t *testing.T) {
	e := mustEnv(t)
	e.requireNRI(t)
	e.envScript(t, "stop-nri")
	e.envScriptWith(t, []string{"PODSCOPE_NRI_ARGS=--audit-default=off"}, "start-nri")
	t.Cleanup(func() {
		e.envScript(t, "stop-nri")
		e.envScript(t, "start-nri")
	})
	in := e.runPod(t, podSpec{Namespace: "e2e-auditoff", Name: "optin",
		Annotations: map[string]string{"podscope.io/audit": "true"}})
	cin := in.start(t, "w", "sh", "-c", "echo x > /data/opted-in; sleep 3600")
	out := e.runPod(t, podSpec{Namespace: "e2e-auditoff", Name: "plain"})
	out.start(t, "w", "sh", "-c", "echo x > /data/not-opted-in; sleep 3600")
	eventually(t, 15*time.Second, "audit event of the opted-in pod", func() error {
		if missing := missingWants(e.auditOf(t, in.UID), cin, []auditWant{{[]string{"create", "open_write"}, "/data/opted-in"}}); len(missing) > 0 {
			return fmt.Errorf("missing %v", missing)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	if evs := e.auditOf(t, out.UID); len(evs) != 0 {
		t.Errorf("--audit-default=off: the pod without the annotation produced %d events, e.g. %+v", len(evs), evs[0])
	}
}
