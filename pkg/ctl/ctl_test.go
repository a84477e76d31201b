package ctl

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/buildinfo"
	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/policy"
	"github.com/podscope/podscope/pkg/testenv"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"pods", "-o", "yaml"}, "-o table or -o json"},
		{[]string{"flows"}, "--pod NS/NAME"},
		{[]string{"policy"}, "policy show NS/NAME"},
		{[]string{"policy", "list"}, `unknown command "list"`},
		{[]string{"policy", "show"}, "policy show needs the pod as NS/NAME"},
		{[]string{"pods", "extra"}, `unknown command "extra"`},
		{[]string{"pods", "--no-such-flag"}, "unknown flag: --no-such-flag"},
	} {
		var out, errb bytes.Buffer
		if code := Main(tc.args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage); stderr %q", tc.args, code, errb.String())
		}
		if !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: stderr %q does not say %q", tc.args, errb.String(), tc.want)
		}
		if !strings.Contains(errb.String(), "--help' for usage") {
			t.Errorf("%v: stderr %q does not point to --help", tc.args, errb.String())
		}
	}
}

// Global flags go before or after the command (kubectl, cilium): both
// spellings must reach the command. A root that does not exist is named in
// the error, so the error proves which root the command used.
func TestGlobalFlagsBeforeOrAfterTheCommand(t *testing.T) {
	root := filepath.Join(t.TempDir(), "no-such-root")
	for _, args := range [][]string{
		{"--bpffs-root", root, "-o", "json", "pods"},
		{"pods", "--bpffs-root", root, "-o", "json"},
		{"--bpffs-root=" + root, "pods", "-ojson"},
		{"-o", "json", "policy", "show", "default/web", "--bpffs-root", root},
		{"policy", "--bpffs-root", root, "show", "default/web"},
	} {
		var out, errb bytes.Buffer
		code := Main(args, &out, &errb)
		if code != ExitNoState || !strings.Contains(errb.String(), root) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d naming %s", args, code, errb.String(), ExitNoState, root)
		}
	}
}

// A root without podscope state is an error scripts can tell apart: exit 3
// and a message saying what is missing, never "no pods attached" with 0.
func TestNoStateIsExit3(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	notBPFFS := t.TempDir() // tmpfs or ext4, never bpffs
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pods", "--bpffs-root", missing}, "does not exist"},
		{[]string{"status", "--bpffs-root", missing}, "does not exist"},
		{[]string{"flows", "--pod", "a/b", "--bpffs-root", missing}, "does not exist"},
		{[]string{"policy", "show", "a/b", "--bpffs-root", missing}, "does not exist"},
		{[]string{"pods", "--bpffs-root", notBPFFS}, "bpf filesystem"},
		{[]string{"status", "-o", "json", "--bpffs-root", notBPFFS}, "bpf filesystem"},
		{[]string{"audit", "--log", filepath.Join(missing, "audit.jsonl")}, "does not exist"},
	} {
		var out, errb bytes.Buffer
		code := Main(tc.args, &out, &errb)
		if code != ExitNoState {
			t.Errorf("%v: exit %d, want %d; stdout %q stderr %q", tc.args, code, ExitNoState, out.String(), errb.String())
		}
		if !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: stderr %q does not say %q", tc.args, errb.String(), tc.want)
		}
		if strings.Contains(out.String(), "no pods attached") {
			t.Errorf("%v: says %q on a root without podscope state", tc.args, out.String())
		}
	}
	// status still prints what it found, and does not claim a layout.
	var out, errb bytes.Buffer
	Main([]string{"status", "--bpffs-root", notBPFFS}, &out, &errb)
	if !strings.Contains(out.String(), "bpffs mounted: no") || strings.Contains(out.String(), "layout") {
		t.Errorf("status on a non-bpffs root:\n%s", out.String())
	}
}

// An empty directory on a real bpffs is mounted but holds nothing of
// podscope: status says so and exits 3, pods too.
func TestEmptyBPFFSRootIsExit3(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	var out, errb bytes.Buffer
	if code := Main([]string{"status", "--bpffs-root", root.Path}, &out, &errb); code != ExitNoState {
		t.Errorf("status: exit %d, want %d; stderr %q", code, ExitNoState, errb.String())
	}
	if !strings.Contains(out.String(), "nothing of podscope pinned") || !strings.Contains(errb.String(), "nothing of podscope is pinned") {
		t.Errorf("status on an empty bpffs root:\nstdout %s\nstderr %s", out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := Main([]string{"pods", "--bpffs-root", root.Path}, &out, &errb); code != ExitNoState {
		t.Errorf("pods: exit %d, want %d; stdout %q stderr %q", code, ExitNoState, out.String(), errb.String())
	}
}

func TestVersionAndHelp(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != 0 || strings.TrimSpace(out.String()) != "podscopectl "+buildinfo.Version {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out.String(), errb.String())
		}
	}
	// Per-command help names the command's own flags and the global ones.
	var out, errb bytes.Buffer
	if code := Main([]string{"audit", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("audit --help: exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"--follow", "--log", "--pod", "--bpffs-root", "--output"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("audit --help lacks %s:\n%s", want, out.String())
		}
	}
	out.Reset()
	Main([]string{"flows", "-h"}, &out, &errb)
	if strings.Contains(out.String(), "--follow") || !strings.Contains(out.String(), "--pod") {
		t.Errorf("flows -h shows another command's flags or lacks its own:\n%s", out.String())
	}
}

// The completion scripts are generated for the usual shells, and `--pod`
// completes from the pinned registry (nothing pinned: no candidates, no
// error).
func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		var out, errb bytes.Buffer
		if code := Main([]string{"completion", sh}, &out, &errb); code != 0 || !strings.Contains(out.String(), "podscopectl") {
			t.Errorf("completion %s: exit %d, %d bytes, stderr %q", sh, code, out.Len(), errb.String())
		}
	}
	var out, errb bytes.Buffer
	root := filepath.Join(t.TempDir(), "none")
	if code := Main([]string{"__complete", "flows", "--bpffs-root", root, "--pod", ""}, &out, &errb); code != 0 {
		t.Fatalf("__complete: exit %d: %s", code, errb.String())
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], ":") {
		t.Errorf("completion of --pod with nothing pinned: %q, want only the directive line", out.String())
	}
}

func TestPodsTable(t *testing.T) {
	rows := []PodRow{{
		Pod: pods.Pod{ID: 1, Namespace: "default", Name: "web-0", Interface: "eth0", HostInterface: "veth1234",
			IPs: []netip.Prefix{netip.MustParsePrefix("10.1.0.5/24"), netip.MustParsePrefix("fd00:1::5/64")}, Mode: "tcx"},
		Counters: datapath.Counters{RxBytes: 1500, RxPackets: 3, TxBytes: 700, TxPackets: 2, DropsEgress: 4, DropsIngress: 5},
	}, {
		Pod:           pods.Pod{ID: 2, ContainerID: "abcdef", Interface: "eth0", Mode: "tc"},
		CountersError: "pins gone",
	}}
	var b bytes.Buffer
	if err := printPods(&b, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", b.String())
	}
	for _, want := range []string{"default/web-0", "10.1.0.5,fd00:1::5", "tcx", "1500", "700", "4/5"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	if !strings.Contains(lines[2], "abcdef") || !strings.Contains(lines[2], "?") {
		t.Errorf("pod without k8s name / counters: %q", lines[2])
	}
	var js bytes.Buffer
	if err := emit(&js, "json", rows, nil); err != nil {
		t.Fatal(err)
	}
	var back []map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back[0]["name"] != "web-0" || back[0]["counters"].(map[string]any)["rxBytes"] != 1500.0 {
		t.Fatalf("json: %s", js.String())
	}
}

func TestPolicyView(t *testing.T) {
	es := []policy.Entry{{
		Direction: policy.Egress, Prefix: netip.MustParsePrefix("10.0.0.0/8"), Default: policy.Deny,
		Rules: []policy.CompiledRule{{Protocol: 6, HasPorts: true, Ports: policy.PortRange{From: 80, To: 80}, Action: policy.Allow,
			From: netip.MustParsePrefix("10.0.0.0/8")}},
	}, {Direction: policy.Ingress, Prefix: netip.MustParsePrefix("::/0"), Default: policy.Allow}}
	pp := &PodPolicy{Pod: "default/web-0", Entries: convertEntries(es)}
	var b bytes.Buffer
	if err := printPolicy(&b, pp); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"egress", "10.0.0.0/8", "tcp 80 -> allow [10.0.0.0/8]", "deny", "ingress", "::/0"} {
		if !strings.Contains(out, want) {
			t.Errorf("policy table lacks %q:\n%s", want, out)
		}
	}
}

func TestFlowsTable(t *testing.T) {
	now := time.Now()
	f := &Flows{Pod: "default/a", Flows: []datapath.Flow{{
		Proto: "tcp", Local: netip.MustParseAddrPort("10.1.0.5:43210"), Remote: netip.MustParseAddrPort("[fd00::1]:80"),
		TxBytes: 10, TxPackets: 1, RxBytes: 20, RxPackets: 2, LastSeen: now.Add(-3 * time.Second),
		Verdict: policy.Deny, Initiator: policy.Egress,
	}}}
	var b bytes.Buffer
	if err := printFlows(&b, f); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tcp", "10.1.0.5:43210", "[fd00::1]:80", "egress", "deny", "3s ago"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("flows table lacks %q:\n%s", want, b.String())
		}
	}
}

const auditFixture = `{"time":"2026-01-02T03:04:05Z","namespace":"default","pod":"web-0","podUID":"u1","container":"nginx","containerID":"c1","cgroupID":77,"pid":12,"comm":"sh","uid":0,"op":"open_write","path":"/etc/passwd","flags":577,"denied":false}
{"time":"2026-01-02T03:04:06Z","namespace":"kube-system","pod":"dns","podUID":"u2","container":"coredns","containerID":"c2","cgroupID":78,"pid":13,"comm":"touch","uid":1000,"op":"create","path":"/tmp/x","flags":0,"denied":true,"count":3}
`

func TestAuditFilterAndFormat(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(p, []byte(auditFixture+`{"time":"2026-01-02T03:04:07Z","namespace":"default","pod":"web-0","op":"unlink","path":"/var/x"`), 0o600); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := runAudit(&b, auditOpts{path: p, pod: "kube-system/dns"}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.Contains(out, "kube-system/dns") || !strings.Contains(out, "/tmp/x") || strings.Contains(out, "/etc/passwd") {
		t.Fatalf("filtered table:\n%s", out)
	}
	// DENIED and COUNT are the last two columns of the event's row; the
	// row's timestamp also holds a "3", so compare the columns themselves.
	rows := strings.Split(strings.TrimSpace(out), "\n")
	if len(rows) != 2 {
		t.Fatalf("want a header and one row:\n%s", out)
	}
	if hdr := strings.Fields(rows[0]); hdr[len(hdr)-2] != "DENIED" || hdr[len(hdr)-1] != "COUNT" {
		t.Fatalf("header %q does not end in DENIED COUNT", rows[0])
	}
	cols := strings.Fields(rows[1])
	if denied, count := cols[len(cols)-2], cols[len(cols)-1]; denied != "yes" || count != "3" {
		t.Fatalf("DENIED %q COUNT %q, want yes 3:\n%s", denied, count, out)
	}
	// The unterminated last line is a write in progress, not an error.
	b.Reset()
	if err := runAudit(&b, auditOpts{path: p, json: true}); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(&b)
	n := 0
	for dec.More() {
		var e AuditEvent
		if err := dec.Decode(&e); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d events, want 2", n)
	}
}

func TestAuditFollowSeesAppendedLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	lines := strings.SplitAfter(auditFixture, "\n")
	if err := os.WriteFile(p, []byte(lines[0]), 0o600); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var b safeBuffer
	done := make(chan error)
	go func() {
		done <- runAudit(&b, auditOpts{path: p, follow: true, json: true, poll: 10 * time.Millisecond, stop: stop})
	}()
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Written in two pieces: follow must not parse half a line.
	f.WriteString(lines[1][:40])
	time.Sleep(50 * time.Millisecond)
	f.WriteString(lines[1][40:])
	f.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(b.String(), "coredns") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "coredns") || !strings.Contains(b.String(), "nginx") {
		t.Fatalf("follow output:\n%s", b.String())
	}
}

func TestAuditMissingLogSaysWhatToDo(t *testing.T) {
	err := runAudit(&bytes.Buffer{}, auditOpts{path: "/nonexistent/audit.jsonl"})
	if err == nil || !strings.Contains(err.Error(), "--log") {
		t.Fatalf("err = %v", err)
	}
}

func TestPolicyEntriesOrderedAsTheKernelDecides(t *testing.T) {
	es := []policy.Entry{
		{Direction: policy.Ingress, Prefix: netip.MustParsePrefix("0.0.0.0/0"), Default: policy.Allow},
		{Direction: policy.Egress, Prefix: netip.MustParsePrefix("::/0"), Default: policy.Allow},
		{Direction: policy.Egress, Prefix: netip.MustParsePrefix("0.0.0.0/0"), Default: policy.Allow},
		{Direction: policy.Egress, Prefix: netip.MustParsePrefix("10.1.0.0/16"), Default: policy.Allow},
	}
	got := convertEntries(es)
	var order []string
	for _, e := range got {
		order = append(order, e.Direction+" "+e.Prefix)
	}
	want := "egress 10.1.0.0/16,egress 0.0.0.0/0,egress ::/0,ingress 0.0.0.0/0"
	if strings.Join(order, ",") != want {
		t.Fatalf("order %v, want %s", order, want)
	}
}

// podscopectl reads what podscope-nri's LogWriter writes: the same field
// names, nothing lost.
func TestAuditReadsLogWriterOutput(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	w, err := audit.NewLogWriter(p, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	in := []audit.Event{
		{Time: time.Unix(1700000000, 0).UTC(), Identity: audit.Identity{Identity: pods.Identity{Namespace: "default", Pod: "web-0", PodUID: "u1"}, Container: "nginx", ContainerID: "c1"},
			CgroupID: 42, PID: 7, Comm: "mv", UID: 1000, Op: "rename", Path: "/a", Target: "/b", Flags: 0, Denied: true, Count: 2},
		{Time: time.Unix(1700000001, 0).UTC(), Identity: audit.Identity{Identity: pods.Identity{Namespace: "default", Pod: "web-0"}}, Op: "sysctl_write", Path: "/proc/sys/net/ipv4/ip_forward", Value: "1", Count: 1},
	}
	for _, e := range in {
		if err := w.Write(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := runAudit(&b, auditOpts{path: p, pod: "default/web-0", json: true}); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(&b)
	for i, want := range in {
		var got AuditEvent
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		wantJSON, _ := json.Marshal(want)
		gotJSON, _ := json.Marshal(got)
		if string(wantJSON) != string(gotJSON) {
			t.Errorf("event %d:\n got %s\nwant %s", i, gotJSON, wantJSON)
		}
	}
	b.Reset()
	if err := runAudit(&b, auditOpts{path: p}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "/a -> /b") || !strings.Contains(b.String(), `ip_forward = "1"`) {
		t.Fatalf("table:\n%s", b.String())
	}
}

// A pod that is not attached is exit 4, whether the registry holds other
// pods or none at all; `pods` on that root lists nothing with exit 0.
func TestPodNotAttachedIsExit4(t *testing.T) {
	root := testenv.BPFFSRoot(t)
	reg, err := pods.OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	reg.Close()
	for _, args := range [][]string{
		{"flows", "--pod", "default/nope"},
		{"policy", "show", "default/nope"},
	} {
		var out, errb bytes.Buffer
		if code := Main(append(args, "--bpffs-root", root.Path), &out, &errb); code != ExitNotFound || !strings.Contains(errb.String(), "default/nope") {
			t.Errorf("%v: exit %d, stderr %q; want %d naming the pod", args, code, errb.String(), ExitNotFound)
		}
	}
	var out, errb bytes.Buffer
	if code := Main([]string{"pods", "--bpffs-root", root.Path}, &out, &errb); code != 0 || !strings.Contains(out.String(), "no pods attached") {
		t.Errorf("pods on a root with an empty registry: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}
