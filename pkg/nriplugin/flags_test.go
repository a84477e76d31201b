package nriplugin

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsDefaults(t *testing.T) {
	f, err := ParseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := f.Options
	if o.NRI.Socket != "/var/run/nri/nri.sock" || o.AuditLog != "/var/log/podscope/audit.jsonl" ||
		o.MetricsAddr != "127.0.0.1:9810" || !o.AuditDefault || o.FailClosed || o.NRI.Name != "podscope" ||
		o.NRI.Index != "50" || o.BPFFSRoot != "/sys/fs/bpf/podscope" || o.AuditStdout || o.AuditMode != "" ||
		o.ReapInterval != time.Minute || f.LogLevel != slog.LevelInfo {
		t.Errorf("defaults: %+v", f)
	}
}

func TestParseFlags(t *testing.T) {
	f, err := ParseFlags([]string{"--nri-socket", "/run/x.sock", "--bpffs-root=/sys/fs/bpf/t", "--state-dir", "/tmp/s",
		"--audit-log", "/tmp/a.jsonl", "--metrics-addr", "", "--audit-default", "off", "--plugin-name", "ps",
		"--plugin-idx", "10", "--audit-stdout", "--fail-closed", "--audit-mode", "tracepoint", "--reap-interval", "0",
		"--log-level", "debug", "--cgroup-root", "/sys/fs/cgroup/unified"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := f.Options
	if o.NRI.Socket != "/run/x.sock" || o.BPFFSRoot != "/sys/fs/bpf/t" || o.StateDir != "/tmp/s" || o.AuditLog != "/tmp/a.jsonl" ||
		o.MetricsAddr != "" || o.AuditDefault || o.NRI.Name != "ps" || o.NRI.Index != "10" || !o.AuditStdout ||
		!o.FailClosed || o.AuditMode != "tracepoint" || o.ReapInterval != 0 || f.LogLevel != slog.LevelDebug ||
		o.CgroupRoot != "/sys/fs/cgroup/unified" {
		t.Errorf("parsed: %+v", f)
	}
	for _, on := range []string{"on", "true", "ON"} {
		if f, err := ParseFlags([]string{"--audit-default=" + on}, io.Discard); err != nil || !f.AuditDefault {
			t.Errorf("--audit-default=%s: %v %v", on, f.AuditDefault, err)
		}
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"--audit-default", "maybe"}, "audit-default"},
		{[]string{"--plugin-idx", "5"}, "plugin-idx"},
		{[]string{"--plugin-idx", "ab"}, "plugin-idx"},
		{[]string{"--plugin-name", "a/b"}, "plugin-name"},
		{[]string{"--log-level", "loud"}, "log-level"},
		{[]string{"--audit-log", ""}, "audit-log"},
		{[]string{"--reap-interval", "-1s"}, "reap-interval"},
		{[]string{"--audit-log-max-bytes", "0"}, "audit-log-max-bytes"},
		{[]string{"--audit-log-max-bytes=-5"}, "audit-log-max-bytes"},
		{[]string{"--audit-log-keep", "0"}, "audit-log-keep"},
		{[]string{"--audit-log-keep=-1"}, "audit-log-keep"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		var out strings.Builder
		_, err := ParseFlags(tc.args, &out)
		if err == nil || !strings.Contains(err.Error()+out.String(), tc.mention) {
			t.Errorf("%v: err %v (output %q), want one naming %q", tc.args, err, out.String(), tc.mention)
		}
	}
}

// --help says what podscope-nri is before the flags, and --audit-default
// shows the values it takes, the words the start-up log line uses.
func TestHelpSaysWhatItIs(t *testing.T) {
	var b strings.Builder
	if _, err := ParseFlags([]string{"--help"}, &b); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v, want flag.ErrHelp", err)
	}
	out := b.String()
	if !strings.HasPrefix(out, "podscope-nri is podscope's node daemon") {
		t.Errorf("--help does not start by saying what podscope-nri is:\n%s", out)
	}
	if !strings.Contains(out, "-audit-default on|off") {
		t.Errorf("--help does not show --audit-default's values:\n%s", out)
	}
	v := true
	if got := (onOff{&v}).String(); got != "on" {
		t.Errorf("audit default on is logged as %q, want the flag's own word \"on\"", got)
	}
}

func TestParseFlagsNetworkPolicy(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	f, err := ParseFlags(nil, io.Discard)
	if err != nil || f.NetworkPolicy {
		t.Fatalf("--networkpolicy is opt-in: %+v %v", f.Options, err)
	}
	if _, err := ParseFlags([]string{"--networkpolicy"}, io.Discard); err == nil || !strings.Contains(err.Error(), "node-name") {
		t.Fatalf("--networkpolicy without a node name: %v", err)
	}
	t.Setenv("NODE_NAME", "node-a")
	f, err = ParseFlags([]string{"--networkpolicy", "--kubeconfig", "/etc/k.conf"}, io.Discard)
	if err != nil || !f.NetworkPolicy || f.NodeName != "node-a" || f.Kubeconfig != "/etc/k.conf" {
		t.Fatalf("%+v %v", f.Options, err)
	}
	f, err = ParseFlags([]string{"--networkpolicy", "--node-name=node-b"}, io.Discard)
	if err != nil || f.NodeName != "node-b" {
		t.Fatalf("--node-name beats $NODE_NAME: %+v %v", f.Options, err)
	}
}
