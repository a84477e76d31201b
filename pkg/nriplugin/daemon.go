package nriplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/metrics"
	"github.com/podscope/podscope/pkg/netpol"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/podstate"
)

// Options are podscope-nri's flags.
type Options struct {
	// NRI is the runtime connection: --nri-socket (Socket), --plugin-name
	// (Name), --plugin-idx (Index). Run sets FailRequest and Connected.
	NRI Conn

	BPFFSRoot  string // --bpffs-root
	StateDir   string // --state-dir (the CNI plugin's: accounting log, reaper lock)
	CgroupRoot string // --cgroup-root, "" = found in /proc/self/mountinfo

	AuditLog     string // --audit-log
	AuditLogMax  int64  // --audit-log-max-bytes, 0 = audit.DefaultLogMaxBytes
	AuditLogKeep int    // --audit-log-keep, 0 = audit.DefaultLogKeep
	AuditStdout  bool   // --audit-stdout
	AuditDefault bool   // --audit-default=on
	AuditMode    string // --audit-mode, "" = probe
	FailClosed   bool   // --fail-closed
	MetricsAddr  string // --metrics-addr, "" = no metrics server
	ReapInterval time.Duration
	AuditRetry   time.Duration // wait between attempts to load the audit, default 30s
	Stdout       io.Writer     // for --audit-stdout

	// NetworkPolicy (--networkpolicy, opt-in) enforces the cluster's
	// NetworkPolicies on this node's pods (pkg/netpol), as the node
	// NodeName (--node-name, default $NODE_NAME), through Kubeconfig
	// (--kubeconfig, "" = in-cluster).
	NetworkPolicy bool
	NodeName      string
	Kubeconfig    string
}

// Daemon is a running podscope-nri.
type Daemon struct {
	opt    Options
	log    *slog.Logger
	root   pins.Root
	plugin *Plugin

	auditor     atomic.Pointer[audit.Auditor] // nil until loaded
	openErr     atomic.Pointer[error]         // why it is not loaded
	readerErr   atomic.Pointer[error]         // why the reader stopped, nil while it runs
	connected   atomic.Bool
	metricsAddr atomic.Value // string: where /metrics is served

	writes   metrics.WriteCounter
	auditSrc *metrics.Audit
	netpol   *netpol.Agent // nil without --networkpolicy
}

// auditing is the Arming the plugin uses: the Auditor once loaded, and a
// clear error before (the container then starts unaudited, or not at all
// under --fail-closed).
type auditing struct{ d *Daemon }

func (a auditing) get() (*audit.Auditor, error) {
	if au := a.d.auditor.Load(); au != nil {
		return au, nil
	}
	if e := a.d.openErr.Load(); e != nil {
		return nil, fmt.Errorf("file-write audit not loaded: %w", *e)
	}
	return nil, errors.New("file-write audit not loaded yet")
}

func (a auditing) Arm(dir string, id Identity) (uint64, error) {
	au, err := a.get()
	if err != nil {
		return 0, err
	}
	cgid, err := au.Arm(dir, id)
	if err == nil {
		// Loss counters outlive the arming: keep the name for the metrics.
		a.d.auditSrc.Remember(cgid, metrics.ContainerOf(id))
	}
	return cgid, err
}

func (a auditing) Disarm(cgid uint64) error {
	au, err := a.get()
	if err != nil {
		return err
	}
	return au.Disarm(cgid)
}

func (a auditing) Armed() (map[uint64]Identity, error) {
	au, err := a.get()
	if err != nil {
		return nil, err
	}
	return au.Armed()
}

// NewDaemon checks what can be checked before anything runs: the cgroup v2
// hierarchy (without it nothing can be audited) and the option values.
func NewDaemon(opt Options, log *slog.Logger) (*Daemon, error) {
	if opt.AuditMode != "" && !audit.Mode(opt.AuditMode).Valid() {
		return nil, fmt.Errorf("--audit-mode %q: want one of lsm_cgroup, lsm, fentry, tracepoint (or empty to probe)", opt.AuditMode)
	}
	if opt.AuditRetry <= 0 {
		opt.AuditRetry = 30 * time.Second
	}
	if opt.StateDir == "" {
		opt.StateDir = podstate.DefaultDir
	}
	res, err := cgroups.NewResolver(opt.CgroupRoot)
	if err != nil {
		return nil, err
	}
	d := &Daemon{opt: opt, log: log, root: pins.New(opt.BPFFSRoot)}
	d.opt.CgroupRoot = res.Mount.Point
	d.plugin = New(Config{AuditDefault: opt.AuditDefault, FailClosed: opt.FailClosed}, auditing{d}, res, log)
	d.auditSrc = &metrics.Audit{Root: d.root, Writes: &d.writes, Maps: func() metrics.AuditMaps {
		if a := d.auditor.Load(); a != nil {
			return a
		}
		return nil // an untyped nil: "not available"
	}}
	if opt.NetworkPolicy {
		if d.netpol, err = netpol.NewAgent(netpol.AgentConfig{Root: d.root, NodeName: opt.NodeName, Kubeconfig: opt.Kubeconfig, Log: log}); err != nil {
			return nil, err
		}
	}
	log.Info("podscope-nri starting", "bpffs_root", d.root.Path, "cgroup_root", res.Mount.Point,
		"audit_default", onOff{&opt.AuditDefault}.String(), "fail_closed", opt.FailClosed, "audit_log", opt.AuditLog, "networkpolicy", opt.NetworkPolicy)
	return d, nil
}

// Plugin is the daemon's NRI plugin (tests drive it directly).
func (d *Daemon) Plugin() *Plugin { return d.plugin }

// MetricsAddr is the address /metrics is served on, "" until it is.
func (d *Daemon) MetricsAddr() string {
	s, _ := d.metricsAddr.Load().(string)
	return s
}

// Run runs everything until ctx ends: the metrics server, the audit loader
// and reader, the reaper and the NRI connection. It returns an error only
// for what cannot be retried (the metrics port taken, the audit log not
// writable, a bad plugin name).
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	unlock, err := lockInstance(ctx, d.opt.StateDir, d.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for another instance
		}
		return err
	}
	defer unlock()

	lw, err := audit.NewLogWriter(d.opt.AuditLog, d.opt.AuditLogMax, d.opt.AuditLogKeep)
	if err != nil {
		return err
	}
	defer func() {
		if err := lw.Close(); err != nil {
			d.log.Error("closing the audit log", "err", err)
		}
	}()

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	if d.opt.MetricsAddr != "" {
		bound, wait, err := metrics.Serve(ctx, d.opt.MetricsAddr, metrics.Handler(d.registry(), d.health, d.log))
		if err != nil {
			return err
		}
		d.metricsAddr.Store(bound)
		d.log.Info("serving metrics", "addr", bound, "paths", "/metrics /healthz")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := wait(); err != nil {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
	}

	// The NRI connection waits for the first attempt to load the audit, so
	// the first Synchronize arms with it (or, if it failed, the Resync after
	// it recovers does).
	firstTry := make(chan struct{})
	wg.Add(1)
	go func() { defer wg.Done(); d.runAudit(ctx, lw, firstTry) }()

	wg.Add(1)
	go func() { defer wg.Done(); every(ctx, time.Second, func() { d.flush(lw) }) }()

	if d.netpol != nil {
		// Its failures (kernel, API) are reported, never fatal.
		wg.Add(1)
		go func() { defer wg.Done(); d.netpol.Run(ctx) }()
	}

	if d.opt.ReapInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			every(ctx, d.opt.ReapInterval, d.reap)
			// Stopped: ADD reaps again instead of waiting for this daemon.
			if err := podstate.ClearDaemonReaped(d.opt.StateDir); err != nil {
				d.log.Error("removing the reaper's stamp", "err", err)
			}
		}()
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			return
		case <-firstTry:
		}
		conn := d.opt.NRI
		conn.FailRequest = d.opt.FailClosed
		conn.Connected = func(up bool) {
			d.connected.Store(up)
			if up {
				d.log.Info("registered with the runtime", "socket", conn.Socket, "plugin", conn.Index+"-"+conn.Name)
			}
		}
		err := d.plugin.Run(ctx, conn)
		if err != nil {
			errc <- err
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		d.log.Error("podscope-nri stopping", "err", runErr)
	}
	cancel()
	wg.Wait()
	if a := d.auditor.Load(); a != nil {
		if err := a.Close(); err != nil {
			d.log.Warn("closing audit handles (pins stay)", "err", err)
		}
	}
	d.logSummary()
	return runErr
}

// runAudit loads the audit (retrying while it fails: a missing bpffs or an
// old pinned layout is for the operator to fix, and the daemon keeps
// serving in the meantime) and reads its ring buffer until ctx ends.
func (d *Daemon) runAudit(ctx context.Context, lw *audit.LogWriter, firstTry chan struct{}) {
	var a *audit.Auditor
	for tries := 0; a == nil; tries++ {
		var err error
		a, err = audit.Open(d.root, audit.Options{Mode: audit.Mode(d.opt.AuditMode), CgroupRoot: d.opt.CgroupRoot,
			Logf: func(f string, args ...any) { d.log.Info(fmt.Sprintf(f, args...)) }})
		if err == nil {
			d.auditor.Store(a)
		}
		if tries == 0 {
			close(firstTry)
		}
		if err != nil {
			d.openErr.Store(&err)
			d.log.Error("file-write audit could not be loaded; containers start unaudited until it is (retrying)",
				"err", err, "retry_in", d.opt.AuditRetry, "fail_closed", d.opt.FailClosed)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d.opt.AuditRetry):
			}
		}
	}
	recovered := d.openErr.Load() != nil
	d.openErr.Store(nil)
	d.log.Info("file-write audit loaded", "mode", a.Mode(), "probe", a.Probe().String())
	if recovered {
		// Containers started while the audit was missing: get the full
		// list again and arm them.
		d.plugin.Resync()
	}

	sink := d.sink(lw)
	for {
		err := a.Run(ctx, sink)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("reader returned")
		}
		d.readerErr.Store(&err)
		d.log.Error("audit reader stopped; restarting it", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		d.readerErr.Store(nil)
	}
}

// sink is what the reader calls for each event, on its goroutine: a slow
// sink fills the ring and the kernel counts losses, so it does the log
// write, the optional stdout line and one counter, nothing else.
func (d *Daemon) sink(lw *audit.LogWriter) func(audit.Event) {
	var stdout *json.Encoder
	if d.opt.AuditStdout && d.opt.Stdout != nil {
		stdout = json.NewEncoder(d.opt.Stdout)
	}
	var lastWriteErr, lastStdoutErr time.Time
	return func(ev audit.Event) {
		if err := lw.Write(ev); err != nil && time.Since(lastWriteErr) > 10*time.Second {
			lastWriteErr = time.Now()
			d.log.Error("writing the audit log failed (events are lost; repeated errors are suppressed for 10s)", "err", err)
		}
		if stdout != nil {
			// A closed or full stdout must not stop the log: report, go on.
			if err := stdout.Encode(ev); err != nil && time.Since(lastStdoutErr) > 10*time.Second {
				lastStdoutErr = time.Now()
				d.log.Error("writing audit events to stdout failed (repeated errors are suppressed for 10s)", "err", err)
			}
		}
		n := uint64(max(ev.Count, 1))
		d.writes.Add(metrics.WriteKey{Container: metrics.ContainerOf(ev.Identity), Op: ev.Op}, n)
	}
}

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// flush pushes buffered audit lines to the file; run every second, so a
// reader of the log (podscopectl audit --follow) lags by at most that.
func (d *Daemon) flush(lw *audit.LogWriter) {
	if err := lw.Flush(); err != nil {
		d.log.Error("flushing the audit log", "err", err)
	}
}

// reap removes pods whose veth or netns vanished without a CNI DEL
// (containerd never calls CNI GC), writing their final accounting first.
func (d *Daemon) reap() {
	reaped, err := podstate.Reap(d.root, d.opt.StateDir, 5*time.Second)
	if err != nil {
		d.log.Error("reaping stale pods", "err", err)
	} else if err := podstate.MarkDaemonReaped(d.opt.StateDir, time.Now(), d.opt.ReapInterval); err != nil {
		// ADD then keeps reaping as if no daemon ran: slower, never wrong.
		d.log.Error("stamping the reap", "err", err)
	}
	for _, p := range reaped {
		d.log.Info("reaped stale pod (final counters written to the accounting log)", "pod", p.Ref(), "uid", p.UID)
	}
}

func (d *Daemon) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		&metrics.Collector{Network: metrics.PinnedNetwork{Root: d.root}, Audit: d.auditSrc,
			Connected: d.connected.Load, Log: d.log},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if d.netpol != nil {
		reg.MustRegister(&metrics.NetworkPolicyCollector{Status: d.networkPolicyStatus})
	}
	return reg
}

func (d *Daemon) networkPolicyStatus() metrics.NetworkPolicyStatus {
	s := d.netpol.Status()
	return metrics.NetworkPolicyStatus{Running: s.Running, Reason: s.Reason, LastSync: s.LastSync, Policies: s.Policies,
		PodsLocal: s.PodsLocal, PodsEnforced: s.PodsEnforced, Sets: s.Sets, Errors: len(s.Errors), WriteErrors: s.WriteErrors,
		LatencyBuckets: s.LatencyBuckets, LatencyCounts: s.LatencyCounts, LatencyCount: s.LatencyCount, LatencySum: s.LatencySum}
}

// health is /healthz: unhealthy while the audit is not loaded or its
// reader is down. Not being registered with the runtime is not unhealthy
// (containerd restarting is not cured by restarting podscope-nri).
func (d *Daemon) health() error {
	if e := d.openErr.Load(); e != nil {
		return fmt.Errorf("file-write audit not loaded: %w", *e)
	}
	if d.auditor.Load() == nil {
		return errors.New("file-write audit loading")
	}
	if e := d.readerErr.Load(); e != nil {
		return fmt.Errorf("audit reader down: %w", *e)
	}
	return nil
}

func (d *Daemon) logSummary() {
	attrs := []any{}
	for _, op := range audit.Ops() {
		if n := d.writes.Total(op); n > 0 {
			attrs = append(attrs, op, n)
		}
	}
	d.log.Info("podscope-nri stopped; audit events written by op", attrs...)
}
