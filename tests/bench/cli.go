package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/flock"
)

// Main dispatches the podscope-bench subcommands.
func Main(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: podscope-bench run|serve|proxy|load|flip|netpol-report|audit-loop [flags]")
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:])
	case "serve":
		return cmdServe(args[1:])
	case "proxy":
		return cmdProxy(args[1:])
	case "load":
		return cmdLoad(args[1:])
	case "report":
		return cmdReport(args[1:])
	case "cni-worker":
		return cmdCNIWorker(args[1:])
	case "audit-loop":
		return cmdAuditLoop(args[1:])
	case "flip":
		return cmdFlip(args[1:])
	case "netpol-report":
		return cmdNetpolReport(args[1:])
	}
	return fmt.Errorf("unknown subcommand %q", args[0])
}

func waitSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	<-ch
}

func cmdServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", "0.0.0.0:5201", "base address (ports base..base+4)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil {
		return err
	}
	s, err := Serve(ap)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	waitSignal()
	s.Close()
	return nil
}

func cmdProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	listen := fs.String("listen", "0.0.0.0:5201", "base address to accept on")
	upstream := fs.String("upstream", "127.0.0.1:5301", "base address of the server")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return err
	}
	u, err := netip.ParseAddrPort(*upstream)
	if err != nil {
		return err
	}
	p, err := StartProxy(l, u)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	waitSignal()
	p.Close()
	return nil
}

func cmdLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var o LoadOptions
	mode := fs.String("mode", "rr", "stream, rr, crr, udp")
	target := fs.String("target", "", "server base address ip:port")
	control := fs.String("control", "", "server base address for the UDP count (default target)")
	streams := fs.Int("streams", 1, "parallel streams (stream)")
	dur := fs.Duration("duration", time.Second, "measuring time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*target)
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	o.Mode, o.Target, o.Streams, o.Duration = *mode, ap, *streams, *dur
	if *control != "" {
		if o.Control, err = netip.ParseAddrPort(*control); err != nil {
			return fmt.Errorf("--control: %w", err)
		}
	}
	r, err := RunLoad(o)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// cmdReport re-renders a results.json (tables, summary, markdown, plot)
// without measuring again: after a change to the reporting code.
func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	in := fs.String("in", "bench/out/results.json", "results.json to read")
	out := fs.String("out", "bench/out", "directory for results.{json,md,png}")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, err := ReadResults(*in)
	if err != nil {
		return err
	}
	res.Summary = Goals(res)
	return writeResults(res, *out)
}

func writeResults(res *Results, out string) error {
	if err := res.WriteText(os.Stdout); err != nil {
		return err
	}
	if err := res.WriteJSON(filepath.Join(out, "results.json")); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(out, "results.md"))
	if err != nil {
		return err
	}
	if err := res.WriteMarkdown(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := Plot(res, filepath.Join(out, "results.png")); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	quick := fs.Bool("quick", os.Getenv("QUICK") == "1", "reduced rounds and durations (bench-quick)")
	out := fs.String("out", "bench/out", "scratch directory for results.json, results.md, results.png")
	sections := fs.String("sections", "datapath,cni,audit", "comma-separated sections to run")
	rounds := fs.Int("rounds", 0, "A/B rounds (default 5, quick 3)")
	dur := fs.Duration("duration", 0, "per datapath measurement (default 500ms, quick 200ms)")
	cniBin := fs.String("cni-bin", "", "CNI plugin directory (reference plugins + podscope)")
	cniRuns := fs.Int("cni-runs", 0, "ADD/DEL runs per CNI variant (default 200, quick 30)")
	scale := fs.Int("scale-pods", 0, "pods attached at once in the scale test (default 1000, quick 100)")
	scalePolicy := fs.Bool("scale-policy", true, "also attach the scale test's pods with a 100,000-CIDR network policy (doubles its time)")
	auditOps := fs.Int("audit-ops", 0, "operations per audit loop measurement (default 100000, quick 20000)")
	burst := fs.Int("audit-burst", 200000, "writes in the audit loss burst")
	auditd := fs.Bool("auditd", !quick0(args), "measure auditd -w DIR -p wa (enables kernel audit; off in --quick)")
	only := fs.String("variants", "", "run only datapath variants whose name contains one of these |-separated parts, e.g. \"accounting only|empty\" (debugging)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the bench creates namespaces and loads BPF programs")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := &Config{Quick: *quick, Rounds: *rounds, Duration: *dur, Self: self, Out: *out, RunID: NewRunID(),
		CNIBin: *cniBin, CNIRuns: *cniRuns, ScalePods: *scale, NoScalePolicy: !*scalePolicy, AuditOps: *auditOps, AuditBurst: *burst, Auditd: *auditd}
	def := func(v *int, full, q int) {
		if *v == 0 {
			*v = full
			if cfg.Quick {
				*v = q
			}
		}
	}
	def(&cfg.Rounds, 5, 3)
	def(&cfg.CNIRuns, 200, 30)
	def(&cfg.ScalePods, 1000, 100)
	def(&cfg.AuditOps, 100000, 20000)
	if cfg.Duration == 0 {
		cfg.Duration = 500 * time.Millisecond
		if cfg.Quick {
			cfg.Duration = 200 * time.Millisecond
		}
	}
	if cfg.CNIBin == "" {
		cache := os.Getenv("PODSCOPE_CACHE")
		if cache == "" {
			cache = "/var/cache/podscope"
		}
		cfg.CNIBin = filepath.Join(cache, "cni-bin")
	}
	start := time.Now()
	cfg.Log = func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return err
	}
	// One bench at a time: a second run would disturb the numbers, and its
	// leftover removal (everything named RunPrefix*) would delete the
	// first run's namespaces and cgroups. The lock is the kernel's: it goes
	// with the process, however it ends.
	unlock, err := flock.Wait(context.Background(), "/run/podscope-bench.lock", func() {
		cfg.logf("another podscope-bench run holds /run/podscope-bench.lock: waiting for it")
	})
	if err != nil {
		return err
	}
	defer unlock()
	if left := RemoveLeftovers(cleanupPins); len(left) > 0 {
		cfg.logf("removed what an earlier interrupted run left: %s", strings.Join(left, " "))
	}
	// An interrupt must still remove what was created: the deferred
	// teardowns run because the sections return on ctx cancel.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.ctx = ctx
	defer cfg.runCleanups()

	res := &Results{Started: start.UTC(), Quick: cfg.Quick, Machine: machine()}
	want := map[string]bool{}
	for _, s := range strings.Split(*sections, ",") {
		want[strings.TrimSpace(s)] = true
	}
	var errs []error
	if want["datapath"] {
		vs := DatapathVariants(cfg)
		if *only != "" {
			vs = FilterVariants(vs, *only)
		}
		sec, err := RunDatapath(cfg, vs)
		if err != nil {
			errs = append(errs, fmt.Errorf("datapath: %w", err))
		} else {
			res.Sections = append(res.Sections, *sec)
		}
	}
	if want["cni"] && ctx.Err() == nil {
		sec, err := RunCNI(cfg)
		if err != nil {
			errs = append(errs, fmt.Errorf("cni: %w", err))
		} else {
			res.Sections = append(res.Sections, *sec)
		}
	}
	if want["audit"] && ctx.Err() == nil {
		sec, err := RunAudit(cfg)
		if err != nil {
			errs = append(errs, fmt.Errorf("audit: %w", err))
		} else {
			res.Sections = append(res.Sections, *sec)
		}
	}
	res.Summary = Goals(res)
	res.Seconds = time.Since(start).Seconds()
	for _, e := range errs {
		res.Notes = append(res.Notes, "section failed: "+e.Error())
	}
	if err := writeResults(res, cfg.Out); err != nil {
		return err
	}
	cfg.logf("wrote %s/results.{json,md,png} in %.0fs", cfg.Out, res.Seconds)
	return errors.Join(errs...)
}

// quick0 tells whether the run is quick before flags are parsed (for the
// default of --auditd).
func quick0(args []string) bool {
	if os.Getenv("QUICK") == "1" {
		return true
	}
	for _, a := range args {
		if a == "--quick" || a == "-quick" || a == "--quick=true" {
			return true
		}
	}
	return false
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.IndexByte(l, ':'); i >= 0 {
					m.CPUModel = strings.TrimSpace(l[i+1:])
				}
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryMB = kb / 1024
		}
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}

// FilterVariants keeps the variants whose name contains one of spec's
// |-separated parts, in their order (the baseline is run regardless).
func FilterVariants(vs []*Variant, spec string) []*Variant {
	parts := strings.Split(spec, "|")
	var keep []*Variant
	for _, v := range vs {
		for _, part := range parts {
			if part != "" && strings.Contains(v.Name, part) {
				keep = append(keep, v)
				break
			}
		}
	}
	return keep
}
