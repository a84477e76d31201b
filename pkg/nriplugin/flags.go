package nriplugin

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/podstate"
)

// Defaults of podscope-nri's flags (docs/design.md "podscope-nri flags").
const (
	DefaultMetricsAddr  = "127.0.0.1:9810"
	DefaultPluginName   = "podscope"
	DefaultPluginIdx    = "50"
	DefaultReapInterval = time.Minute
)

// onOff is a flag taking on|off (and the usual true/false spellings).
type onOff struct{ v *bool }

func (o onOff) String() string {
	if o.v == nil || *o.v {
		return "on"
	}
	return "off"
}

func (o onOff) Set(s string) error {
	switch strings.ToLower(s) {
	case "on", "true", "1", "yes":
		*o.v = true
	case "off", "false", "0", "no":
		*o.v = false
	default:
		return fmt.Errorf("want on or off, got %q", s)
	}
	return nil
}

// Flags is a parsed command line: the daemon's options and what main needs.
type Flags struct {
	Options
	LogLevel slog.Level
	Version  bool
}

// ParseFlags parses podscope-nri's command line. Errors name the flag.
func ParseFlags(args []string, output io.Writer) (Flags, error) {
	f := Flags{Options: Options{AuditDefault: true}}
	fs := flag.NewFlagSet("podscope-nri", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `podscope-nri is podscope's node daemon: a containerd NRI plugin that arms the
file-write audit of every container before it runs, writes the audit log,
serves Prometheus metrics and reaps pods removed without a CNI DEL.
Run one per node, as root (a DaemonSet or a systemd unit). Docs: docs/podscope-nri.md

Usage: podscope-nri [flags]

Flags:
`)
		fs.PrintDefaults()
	}
	o := &f.Options
	fs.StringVar(&o.NRI.Socket, "nri-socket", api.DefaultSocketPath, "containerd's NRI socket")
	fs.StringVar(&o.NRI.Name, "plugin-name", DefaultPluginName, "NRI plugin name (what containerd's required_plugins lists)")
	fs.StringVar(&o.NRI.Index, "plugin-idx", DefaultPluginIdx, "NRI plugin index, two digits: order among NRI plugins")
	fs.StringVar(&o.BPFFSRoot, "bpffs-root", pins.DefaultRoot, "bpffs directory of podscope's pinned maps, programs and links")
	fs.StringVar(&o.StateDir, "state-dir", podstate.DefaultDir, "podscope's state directory (the CNI plugin's: accounting log of reaped pods)")
	fs.StringVar(&o.CgroupRoot, "cgroup-root", "", "cgroup v2 mount (default: found in /proc/self/mountinfo, /sys/fs/cgroup or /sys/fs/cgroup/unified)")
	fs.StringVar(&o.AuditLog, "audit-log", audit.DefaultLogPath, "audit log file (JSON lines, mode 0600, rotated by size)")
	fs.Int64Var(&o.AuditLogMax, "audit-log-max-bytes", audit.DefaultLogMaxBytes, "rotate the audit log when it would grow past this size (at least 1)")
	fs.IntVar(&o.AuditLogKeep, "audit-log-keep", audit.DefaultLogKeep, "rotated audit logs to keep (audit.jsonl.1 … .N, at least 1)")
	fs.BoolVar(&o.AuditStdout, "audit-stdout", false, "also write every audit event as a JSON line to stdout")
	fs.Var(onOff{&o.AuditDefault}, "audit-default", `on: audit every pod unless annotated podscope.io/audit: "false"; off: only pods annotated "true" (`+"`on|off`"+`, default on)`)
	fs.StringVar(&o.AuditMode, "audit-mode", "", "force an audit mode (lsm_cgroup, lsm, fentry, tracepoint) instead of probing; for tests")
	fs.BoolVar(&o.FailClosed, "fail-closed", false, "refuse to start a container that cannot be armed (default: it starts unaudited, with an error logged)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", DefaultMetricsAddr, `Prometheus /metrics and /healthz address ("" disables)`)
	fs.DurationVar(&o.ReapInterval, "reap-interval", DefaultReapInterval, "how often to remove pods whose veth/netns vanished without a CNI DEL (0 disables)")
	fs.BoolVar(&o.NetworkPolicy, "networkpolicy", false, "enforce the cluster's Kubernetes NetworkPolicies on this node's pods (opt-in: only with a primary CNI that enforces none; docs/networkpolicy.md)")
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's Kubernetes name, for --networkpolicy (default $NODE_NAME)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig for --networkpolicy (default: the in-cluster service account)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.Version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments %q (all options are flags)", fs.Args())
	}
	if err := f.LogLevel.UnmarshalText([]byte(*level)); err != nil {
		return f, fmt.Errorf("-log-level %q: %w", *level, err)
	}
	if len(o.NRI.Index) != 2 || o.NRI.Index[0] < '0' || o.NRI.Index[0] > '9' || o.NRI.Index[1] < '0' || o.NRI.Index[1] > '9' {
		return f, fmt.Errorf("-plugin-idx %q: want two digits, e.g. 50", o.NRI.Index)
	}
	if o.NRI.Name == "" || strings.ContainsAny(o.NRI.Name, "/ ") {
		return f, fmt.Errorf("-plugin-name %q: want a non-empty name without '/' or spaces", o.NRI.Name)
	}
	if o.AuditLog == "" {
		return f, fmt.Errorf("-audit-log: must name a file")
	}
	// 0 or below used to turn silently into the default: an operator who
	// wrote --audit-log-keep=0 meaning "keep none" got five.
	if o.AuditLogMax < 1 {
		return f, fmt.Errorf("-audit-log-max-bytes %d: must be at least 1 (default %d)", o.AuditLogMax, int64(audit.DefaultLogMaxBytes))
	}
	if o.AuditLogKeep < 1 {
		return f, fmt.Errorf("-audit-log-keep %d: must be at least 1 (default %d)", o.AuditLogKeep, audit.DefaultLogKeep)
	}
	if o.NetworkPolicy && o.NodeName == "" {
		return f, fmt.Errorf("-networkpolicy needs the node's name: -node-name or $NODE_NAME")
	}
	if o.ReapInterval < 0 {
		return f, fmt.Errorf("-reap-interval %v: must not be negative", o.ReapInterval)
	}
	return f, nil
}
