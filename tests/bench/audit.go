package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// auditLoopResult is what one audit-loop child measured.
type auditLoopResult struct {
	Kind    string  `json:"kind"`
	Ops     int     `json:"ops"`
	NsPerOp float64 `json:"nsPerOp"`
}

// cmdAuditLoop moves itself into a cgroup and times a loop of file writes
// or cheap syscalls on one locked thread.
func cmdAuditLoop(args []string) error {
	fs := flag.NewFlagSet("audit-loop", flag.ContinueOnError)
	cg := fs.String("cgroup", "", "cgroup v2 directory to run in")
	kind := fs.String("kind", "write", "write (open O_WRONLY|O_CREAT|O_TRUNC + 4 KiB write + close) or getppid")
	n := fs.Int("n", 100000, "operations")
	dir := fs.String("dir", "", "write: directory of the files")
	files := fs.Int("files", 1, "write: distinct files cycled through (f0..f<files-1>)")
	unique := fs.Bool("unique", false, "write: a new file per operation (u<i>), the loss burst")
	if err := fs.Parse(args); err != nil {
		return err
	}
	runtime.LockOSThread()
	if *cg != "" {
		if err := os.WriteFile(filepath.Join(*cg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("joining cgroup %s: %w", *cg, err)
		}
	}
	var start time.Time
	switch *kind {
	case "getppid":
		start = time.Now()
		for i := 0; i < *n; i++ {
			unix.Getppid()
		}
	case "write":
		buf := bytes.Repeat([]byte{'x'}, 4096)
		if *unique {
			buf = buf[:16]
		}
		paths := make([]string, *files)
		for i := range paths {
			paths[i] = filepath.Join(*dir, "f"+strconv.Itoa(i))
		}
		start = time.Now()
		for i := 0; i < *n; i++ {
			p := paths[i%len(paths)]
			if *unique {
				p = filepath.Join(*dir, "u"+strconv.Itoa(i))
			}
			fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
			if err != nil {
				return err
			}
			if _, err := unix.Write(fd, buf); err != nil {
				unix.Close(fd)
				return err
			}
			unix.Close(fd)
		}
	default:
		return fmt.Errorf("unknown --kind %q", *kind)
	}
	el := time.Since(start)
	return json.NewEncoder(os.Stdout).Encode(auditLoopResult{Kind: *kind, Ops: *n, NsPerOp: float64(el.Nanoseconds()) / float64(*n)})
}

// getppidFactor: getppid calls per write-loop op (a getppid is ~40x
// cheaper; this makes both loops run for similar times).
const getppidFactor = 20

// settle lets deferred kernel work of a load or unload (tracepoint
// unregistration, RCU grace periods, freeing programs) pass before the next
// measurement. With 300 ms, "not loaded" getppid right after an unload ran
// at 280 ns instead of 168 ns and made podscope look free; with 2 s every
// round's baseline is back at 168-191 ns.
const settle = 2 * time.Second

// auditEnv is the shared state of the audit section.
type auditEnv struct {
	cfg            *Config
	armed, unarmed string // cgroup dirs
	dir            string // tmpfs dir of the write loop's files
	files          int
}

func (e *auditEnv) loop(kind, cg string) (float64, error) {
	n := e.cfg.AuditOps
	if kind == "getppid" {
		n *= getppidFactor
	}
	out, err := exec.Command(e.cfg.Self, "audit-loop", "--cgroup", cg, "--kind", kind, "--n", strconv.Itoa(n),
		"--dir", e.dir, "--files", strconv.Itoa(e.files)).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return 0, fmt.Errorf("audit-loop %s: %w: %s", kind, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return 0, err
	}
	var r auditLoopResult
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("audit-loop output %q: %w", out, err)
	}
	return r.NsPerOp, nil
}

// AuditBackend is what the section needs of podscope's audit (pkg/audit),
// kept behind an interface so the section runs (with "n/a" rows) before
// the audit lands.
type AuditBackend interface {
	// Load loads the programs under a fresh root (podscope loaded).
	Load() error
	// Arm arms the cgroup dir; Unload detaches and unpins everything.
	Arm(cgroupDir string) (uint64, error)
	Unload() error
	Mode() string
	// Read runs the ring reader until ctx ends.
	Read(ctx context.Context, sink func(path string, count uint32)) error
	Lost(cgid uint64) (uint64, error)
}

// RunAudit measures what the audit costs writers and cheap syscalls.
func RunAudit(cfg *Config) (*Section, error) {
	sec := &Section{Name: "Audit: cost to the audited (and not audited) processes"}
	cgRoot, err := cgroup2Root()
	if err != nil {
		return nil, err
	}
	env := &auditEnv{cfg: cfg, files: 20000}
	if env.files > cfg.AuditOps {
		env.files = cfg.AuditOps
	}
	base := fmt.Sprintf("%s%s", RunPrefix, cfg.RunID)
	env.armed = filepath.Join(cgRoot, base+"-armed")
	env.unarmed = filepath.Join(cgRoot, base+"-unarmed")
	for _, d := range []string{env.armed, env.unarmed} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
		defer os.Remove(d)
	}
	env.dir, err = os.MkdirTemp("/dev/shm", base+"-audit")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(env.dir)
	for i := 0; i < env.files; i++ {
		if err := os.WriteFile(filepath.Join(env.dir, "f"+strconv.Itoa(i)), nil, 0o644); err != nil {
			return nil, err
		}
	}
	be, beNA := newAuditBackend(cfg)
	writeT := &Table{Title: "open(O_WRONLY|O_CREAT|O_TRUNC) + 4 KiB write + close", Unit: "ns/op", Baseline: "podscope not loaded"}
	cheapT := &Table{Title: "getppid()", Unit: "ns/op", Baseline: "podscope not loaded"}
	sec.Notes = append(sec.Notes,
		fmt.Sprintf("%d rounds; per round: podscope not loaded, then loaded with one cgroup armed: unarmed and armed cgroup (order rotated), then unloaded; ratio = median over rounds of variant / not-loaded of the same round", cfg.Rounds),
		fmt.Sprintf("write loop: %d ops cycling over %d distinct files on tmpfs (/dev/shm), so in the armed cgroup repeats of a path may be folded by the audit; getppid: %d calls; each measurement is a fresh process that joins its cgroup and times itself; %s pause after every load/unload", cfg.AuditOps, env.files, cfg.AuditOps*getppidFactor, settle))

	type series struct{ write, cheap, pw, pc []float64 }
	res := map[string]*series{"none": {}, "unarmed": {}, "armed": {}}
	var errs []string
	measure := func(name, cg string) (float64, float64) {
		w, err := env.loop("write", cg)
		if err != nil {
			errs = append(errs, name+": "+firstLine(err.Error()))
			w = nan()
		}
		c, err := env.loop("getppid", cg)
		if err != nil {
			errs = append(errs, name+": "+firstLine(err.Error()))
			c = nan()
		}
		s := res[name]
		s.write = append(s.write, w)
		s.cheap = append(s.cheap, c)
		return w, c
	}
	var reader *auditReader
	var dirty int
	var clean []bool // per round: no foreign tracing at the baseline
	for round := 0; round < cfg.Rounds && !cfg.stopped(); round++ {
		cfg.logf("audit round %d/%d", round+1, cfg.Rounds)
		time.Sleep(settle)
		// Any syscall tracepoint program on the machine (another session's
		// test on a shared host) puts every process on the syscall slow
		// path: such a "not loaded" sample is not a baseline. Wait a
		// little for it to go; rounds where it stayed are used only if no
		// round was clean.
		foreign := foreignTracing()
		for i := 0; foreign > 0 && i < 10; i++ {
			time.Sleep(time.Second)
			foreign = foreignTracing()
		}
		nw, nc := measure("none", env.unarmed)
		clean = append(clean, foreign == 0)
		if foreign > 0 {
			dirty++
			cfg.logf("  %d foreign tracing links attached during this round's baseline", foreign)
		}
		if be == nil {
			continue
		}
		if err := be.Load(); err != nil {
			beNA = "loading podscope audit: " + firstLine(err.Error())
			be = nil
			continue
		}
		if _, err := be.Arm(env.armed); err != nil {
			beNA = "arming: " + firstLine(err.Error())
			_ = be.Unload()
			be = nil
			continue
		}
		reader = startAuditReader(be)
		time.Sleep(settle)
		order := []string{"unarmed", "armed"}
		if round%2 == 1 {
			order = []string{"armed", "unarmed"}
		}
		for _, v := range order {
			cg := env.unarmed
			if v == "armed" {
				cg = env.armed
			}
			w, c := measure(v, cg)
			res[v].pw = append(res[v].pw, Ratio(w, nw))
			res[v].pc = append(res[v].pc, Ratio(c, nc))
		}
		reader.stop()
		if err := be.Unload(); err != nil {
			errs = append(errs, "unload: "+err.Error())
		}
	}
	mode := ""
	if be != nil {
		mode = be.Mode()
	}
	for _, x := range []struct {
		t       *Table
		pick    func(*series) []float64
		ratios  func(*series) []float64
		variant string
		key     string
		note    string
	}{
		{writeT, func(s *series) []float64 { return s.write }, func(s *series) []float64 { return s.pw }, "podscope not loaded", "none", ""},
		{writeT, func(s *series) []float64 { return s.write }, func(s *series) []float64 { return s.pw }, "podscope loaded, unarmed cgroup", "unarmed", "mode " + mode},
		{writeT, func(s *series) []float64 { return s.write }, func(s *series) []float64 { return s.pw }, "podscope loaded, armed cgroup", "armed", "mode " + mode + "; every op goes through the audit"},
		{cheapT, func(s *series) []float64 { return s.cheap }, func(s *series) []float64 { return s.pc }, "podscope not loaded", "none", ""},
		{cheapT, func(s *series) []float64 { return s.cheap }, func(s *series) []float64 { return s.pc }, "podscope loaded, unarmed cgroup", "unarmed", "mode " + mode},
		{cheapT, func(s *series) []float64 { return s.cheap }, func(s *series) []float64 { return s.pc }, "podscope loaded, armed cgroup", "armed", "mode " + mode},
	} {
		s := res[x.key]
		if x.key != "none" && beNA != "" {
			x.t.AddNA(x.variant, beNA)
			continue
		}
		if Summarize(x.pick(s)).N == 0 {
			reason := "no sample"
			if len(errs) > 0 {
				reason = errs[0]
			}
			x.t.AddNA(x.variant, reason)
			continue
		}
		samples, ratios := x.pick(s), x.ratios(s)
		if dirty > 0 && dirty < len(clean) {
			samples, ratios = keepClean(samples, clean), keepClean(ratios, clean)
		}
		r := x.t.Add(x.variant, samples)
		r.Paired = ratios
		r.Note = x.note
	}
	if len(errs) > 0 {
		sec.Notes = append(sec.Notes, fmt.Sprintf("%d failed measurements, first: %s", len(errs), errs[0]))
	}
	if dirty > 0 {
		msg := "those rounds' baselines and ratios were dropped"
		if dirty == len(clean) {
			msg = "no round was clean, so the baselines include that slow path: the unarmed ratios understate podscope's cost"
		}
		sec.Notes = append(sec.Notes, fmt.Sprintf("%d of %d rounds had other tracing programs (perf_event/raw_tp/tracing links, e.g. another session's test) attached on the machine at the \"not loaded\" measurement; %s", dirty, len(clean), msg))
	}

	// auditd: the reference, measured last because enabling the kernel's
	// audit cannot be fully undone (see auditd.go).
	if cfg.Auditd && !cfg.stopped() {
		addAuditdRows(cfg, env, writeT, cheapT, sec)
	} else {
		why := "not run in bench-quick (enabling kernel audit leaves every later process on the syscall-audit path until reboot)"
		if !cfg.Quick {
			why = "disabled (--auditd=false)"
		}
		writeT.AddNA("auditd -w DIR -p wa", why)
		cheapT.AddNA("auditd -w DIR -p wa", why)
	}
	writeT.ComputeRatios()
	cheapT.ComputeRatios()
	sec.Tables = append(sec.Tables, writeT, cheapT)

	burstT := &Table{Title: fmt.Sprintf("Reader at a %d-write burst (armed cgroup, a new file per write, one writer per CPU)", cfg.AuditBurst), Unit: "see row"}
	if be == nil {
		burstT.AddNA("events/s the reader sustained", beNA)
	} else if !cfg.stopped() {
		runBurst(cfg, env, be, burstT, sec)
	}
	sec.Tables = append(sec.Tables, burstT)
	return sec, nil
}

func nan() float64 { return Ratio(0, 0) }

// auditReader counts what the ring delivers.
type auditReader struct {
	cancel context.CancelFunc
	done   chan error
	events atomic.Uint64 // sum of counts
	mu     sync.Mutex
	paths  map[string]bool
	prefix string
	first  atomic.Int64 // unix ns of the first/last event
	last   atomic.Int64
}

func startAuditReader(be AuditBackend) *auditReader {
	return startAuditReaderFor(be, "")
}

func startAuditReaderFor(be AuditBackend, prefix string) *auditReader {
	ctx, cancel := context.WithCancel(context.Background())
	r := &auditReader{cancel: cancel, done: make(chan error, 1), paths: map[string]bool{}, prefix: prefix}
	go func() {
		r.done <- be.Read(ctx, func(path string, count uint32) {
			if count == 0 {
				count = 1
			}
			now := time.Now().UnixNano()
			r.first.CompareAndSwap(0, now)
			r.last.Store(now)
			r.events.Add(uint64(count))
			if prefix != "" && strings.HasPrefix(path, prefix) {
				r.mu.Lock()
				r.paths[path] = true
				r.mu.Unlock()
			}
		})
	}()
	return r
}

func (r *auditReader) stop() error {
	r.cancel()
	return <-r.done
}

// runBurst writes AuditBurst new files as fast as one process can in the
// armed cgroup and checks every write is either delivered or counted lost.
func runBurst(cfg *Config, env *auditEnv, be AuditBackend, t *Table, sec *Section) {
	fail := func(err error) { t.AddNA("events/s the reader sustained", firstLine(err.Error())) }
	if err := be.Load(); err != nil {
		fail(err)
		return
	}
	defer func() { _ = be.Unload() }()
	cgid, err := be.Arm(env.armed)
	if err != nil {
		fail(err)
		return
	}
	dir, err := os.MkdirTemp("/dev/shm", fmt.Sprintf("%s%s-burst", RunPrefix, cfg.RunID))
	if err != nil {
		fail(err)
		return
	}
	defer os.RemoveAll(dir)
	r := startAuditReaderFor(be, dir+"/")
	// One writer per CPU, each in its own directory, so the reader competes
	// with writers on every CPU.
	writers := runtime.NumCPU()
	per := cfg.AuditBurst / writers
	t0 := time.Now()
	errc := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wd := filepath.Join(dir, "w"+strconv.Itoa(w))
		if err := os.Mkdir(wd, 0o755); err != nil {
			r.stop()
			fail(err)
			return
		}
		go func() {
			out, err := exec.Command(cfg.Self, "audit-loop", "--cgroup", env.armed, "--kind", "write", "--unique",
				"--n", strconv.Itoa(per), "--dir", wd).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("burst writer: %w: %s", err, firstLine(string(out)))
			}
			errc <- err
		}()
	}
	for w := 0; w < writers; w++ {
		if err := <-errc; err != nil {
			r.stop()
			fail(err)
			return
		}
	}
	writeTime := time.Since(t0)
	// Wait until the reader is quiet (and folded repeats are swept).
	for quiet := 0; quiet < 20 && time.Since(t0) < 2*time.Minute; {
		before := r.events.Load()
		time.Sleep(100 * time.Millisecond)
		if r.events.Load() == before {
			quiet++
		} else {
			quiet = 0
		}
	}
	r.stop()
	lost, err := be.Lost(cgid)
	if err != nil {
		sec.Notes = append(sec.Notes, "reading lost counter: "+err.Error())
	}
	r.mu.Lock()
	seen := len(r.paths)
	r.mu.Unlock()
	events := r.events.Load()
	span := time.Duration(r.last.Load() - r.first.Load())
	rate := nan()
	if span > 0 {
		rate = float64(events) / span.Seconds()
	}
	n := uint64(per * writers)
	silent := int64(n) - int64(seen) - int64(lost)
	if silent < 0 {
		silent = 0
	}
	t.Add("writes issued", []float64{float64(n)}).Note = fmt.Sprintf("in %.2fs by %d processes, one per CPU (%.0f writes/s)", writeTime.Seconds(), writers, float64(n)/writeTime.Seconds())
	t.Add("events delivered (sum of counts)", []float64{float64(events)})
	t.Add("events/s the reader sustained", []float64{rate}).Note = fmt.Sprintf("first to last event %.2fs", span.Seconds())
	t.Add("written files seen in events", []float64{float64(seen)})
	t.Add("lost, counted by the kernel side", []float64{float64(lost)})
	t.Add("silent loss (writes neither seen nor counted)", []float64{float64(silent)})
}

// cgroup2Root finds the cgroup v2 mount (unified hierarchy; on this
// hybrid host /sys/fs/cgroup/unified).
func cgroup2Root() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" && len(f) > 4 {
				return f[4], nil
			}
		}
	}
	return "", fmt.Errorf("no cgroup2 mount in /proc/self/mountinfo")
}

// foreignTracing counts BPF links that hook every task's syscalls or
// kernel functions (perf_event tracepoints/kprobes, raw tracepoints,
// fentry/fexit/LSM) attached on the machine, -1 if unknown.
func foreignTracing() int {
	out, err := output("bpftool", "link", "show", "-j")
	if err != nil {
		return -1
	}
	var links []struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return -1
	}
	n := 0
	for _, l := range links {
		switch l.Type {
		case "perf_event", "raw_tracepoint", "tracing", "kprobe_multi", "uprobe_multi":
			n++
		}
	}
	return n
}

// keepClean drops the entries (one per round) of rounds that were not
// clean.
func keepClean(xs []float64, clean []bool) []float64 {
	var out []float64
	for i, x := range xs {
		if i < len(clean) && !clean[i] {
			continue
		}
		out = append(out, x)
	}
	return out
}
