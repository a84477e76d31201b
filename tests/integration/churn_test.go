package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/podscope/podscope/pkg/ctl"
	"github.com/podscope/podscope/pkg/testenv"
)

// Churn size: CI runs the reduced default; `make churn` the full size
// (PODSCOPE_CHURN_CYCLES=10000 PODSCOPE_CHURN_PARALLEL=100).
func churnSize() (cycles, parallel int) {
	cycles, parallel = 150, 10
	if v, err := strconv.Atoi(os.Getenv("PODSCOPE_CHURN_CYCLES")); err == nil && v > 0 {
		cycles = v
	}
	if v, err := strconv.Atoi(os.Getenv("PODSCOPE_CHURN_PARALLEL")); err == nil && v > 0 {
		parallel = v
	}
	return cycles, parallel
}

// churnDeadline is when a long run stops starting cycles
// (PODSCOPE_CHURN_DEADLINE: a duration from the start or an RFC 3339 time).
// The cycles started finish and everything is checked as after a whole run;
// the report says how many of the cycles ran.
func churnDeadline(start time.Time) time.Time {
	v := os.Getenv("PODSCOPE_CHURN_DEADLINE")
	if d, err := time.ParseDuration(v); err == nil {
		return start.Add(d)
	}
	if at, err := time.Parse(time.RFC3339, v); err == nil {
		return at
	}
	return time.Time{}
}

// TestChurn: many ADD/DEL cycles through libcni (bridge + host-local in a
// test node netns), up to `parallel` at once, while podscope-nri runs its
// reaper every second and podscopectl reads the pins. Afterwards nothing is
// left (pins, links, map entries, registry rows, IP leases, fds, goroutines),
// podscope-nri's RSS is flat and every pod has exactly one accounting line.
func TestChurn(t *testing.T) {
	cycles, parallel := churnSize()
	n := newNode(t, nodeOpts{})
	nri := startNRI(t, n)

	fdsBefore, gorBefore := openFDs(t), runtime.NumGoroutine()
	ctx, stop := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	var reads atomic.Int64
	readers.Add(1)
	go func() { // podscopectl reads, interleaved with the churn
		defer readers.Done()
		for ctx.Err() == nil {
			var out, errb bytes.Buffer
			n.inNode(func() error {
				if code := ctl.Main([]string{"pods", "-o", "json", "--bpffs-root", n.root.Path}, &out, &errb); code != 0 {
					t.Errorf("podscopectl pods during churn: %s", errb.String())
				}
				return nil
			})
			reads.Add(1)
			time.Sleep(50 * time.Millisecond)
		}
	}()

	type sample struct {
		i        int
		add, del time.Duration
	}
	samples := make([]sample, cycles)
	ids := make([]string, cycles)
	work := make(chan int)
	var wg sync.WaitGroup
	var failed, finished atomic.Int64
	start := time.Now()
	deadline := churnDeadline(start)
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				s, id, err := n.cycle(t, i)
				samples[i], ids[i] = sample{i, s[0], s[1]}, id
				if err != nil {
					failed.Add(1)
					t.Errorf("cycle %d: %v", i, err)
				}
				if f := finished.Add(1); f%1000 == 0 {
					t.Logf("churn progress: %d cycles done in %s, podscope-nri RSS %d KiB, load %s",
						f, time.Since(start).Round(time.Second), rssKiB(nri.cmd.Process.Pid), loadavg())
				}
			}
		}()
	}
	started := 0
	for ; started < cycles && failed.Load() < 5; started++ {
		if !deadline.IsZero() && time.Now().After(deadline) {
			t.Logf("churn: deadline reached after starting %d of %d cycles", started, cycles)
			break
		}
		work <- started
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	planned := cycles
	cycles = started
	samples, ids = samples[:cycles], ids[:cycles]
	stop()
	readers.Wait()
	if t.Failed() {
		return
	}

	// podscope-nri's RSS: the median of the first and last tenth of samples.
	rss := nri.stop(t)

	// Nothing left.
	n.assertClean(t, nil)
	lines := map[string]int{}
	for _, l := range n.accountingLinesAll() {
		lines[l]++
	}
	for i, id := range ids {
		if lines[id] != 1 {
			t.Errorf("cycle %d (%s): %d accounting lines, want 1", i, id, lines[id])
		}
	}
	if len(lines) != cycles {
		t.Errorf("%d containers in the accounting log, %d cycles", len(lines), cycles)
	}
	leases, _ := filepath.Glob(filepath.Join(n.ipamDir(t), "*", "1*"))
	if len(leases) != 0 {
		t.Errorf("host-local leases left: %v", leases)
	}
	var fdsAfter, gorAfter int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		runtime.GC()
		fdsAfter, gorAfter = openFDs(t), runtime.NumGoroutine()
		if (fdsAfter <= fdsBefore && gorAfter <= gorBefore) || time.Now().After(deadline) {
			break
		}
	}
	if fdsAfter > fdsBefore {
		t.Errorf("file descriptors: %d before, %d after", fdsBefore, fdsAfter)
	}
	if gorAfter > gorBefore {
		t.Errorf("goroutines: %d before, %d after", gorBefore, gorAfter)
	}

	tenth := max(cycles/10, 1)
	if cycles >= 2000 && planned >= 10000 {
		tenth = 1000 // the full size's figure: first and last 1,000
	}
	pct := func(from, to int, del bool) (p50, p99 time.Duration) {
		var d []time.Duration
		for _, s := range samples[from:to] {
			if del {
				d = append(d, s.del)
			} else {
				d = append(d, s.add)
			}
		}
		slices.Sort(d)
		return d[len(d)/2], d[min(len(d)-1, len(d)*99/100)]
	}
	a50f, a99f := pct(0, tenth, false)
	a50l, a99l := pct(cycles-tenth, cycles, false)
	d50f, d99f := pct(0, tenth, true)
	d50l, d99l := pct(cycles-tenth, cycles, true)
	ran := fmt.Sprintf("%d", cycles)
	if cycles < planned {
		ran = fmt.Sprintf("%d of %d planned (stopped at PODSCOPE_CHURN_DEADLINE)", cycles, planned)
	}
	report := fmt.Sprintf("churn: %s ADD/DEL cycles, %d parallel, in %s (%d podscopectl reads, podscope-nri reaping every 1 s)\n"+
		"  ADD p50/p99: first %d %s/%s, last %d %s/%s\n"+
		"  DEL p50/p99: first %d %s/%s, last %d %s/%s\n"+
		"  podscope-nri RSS: first tenth %d KiB, last tenth %d KiB (median)\n"+
		"  left: 0 link pins, 0 map entries, 0 registry rows, 0 leases; fds %d -> %d, goroutines %d -> %d; accounting: %d lines, each pod once\n",
		ran, parallel, elapsed.Round(time.Second), reads.Load(),
		tenth, a50f.Round(time.Millisecond), a99f.Round(time.Millisecond), tenth, a50l.Round(time.Millisecond), a99l.Round(time.Millisecond),
		tenth, d50f.Round(time.Millisecond), d99f.Round(time.Millisecond), tenth, d50l.Round(time.Millisecond), d99l.Round(time.Millisecond),
		rss[0], rss[1], fdsBefore, fdsAfter, gorBefore, gorAfter, len(lines))
	t.Log(report)
	if f := os.Getenv("PODSCOPE_CHURN_REPORT"); f != "" {
		os.MkdirAll(filepath.Dir(f), 0o755)
		if err := os.WriteFile(f, []byte(report), 0o644); err != nil {
			t.Errorf("writing the report: %v", err)
		}
	}
	// Flat: growing by more than half over the run is a leak, not noise.
	if rss[1] > rss[0]*3/2+4096 {
		t.Errorf("podscope-nri RSS grew from %d KiB to %d KiB", rss[0], rss[1])
	}
}

// cycle is one pod's life: netns, ADD, DEL twice (containerd's way), netns
// gone. It returns the ADD and DEL latencies and the container ID.
func (n *node) cycle(t *testing.T, i int) ([2]time.Duration, string, error) {
	var lat [2]time.Duration
	name := testenv.Name(t)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return lat, "", fmt.Errorf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	p := &pod{name: fmt.Sprintf("churn-%d", i), uid: fmt.Sprintf("00000000-0000-0000-0000-%012d", i),
		containerID: fmt.Sprintf("churn%059d", i), netnsPath: "/run/netns/" + name}
	rt := n.rt(p, p.netnsPath)
	err := n.inNode(func() error {
		// Generous: on a saturated machine a cycle of 100 queued chains takes
		// minutes, and libcni SIGKILLs a plugin at the deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		t0 := time.Now()
		if _, err := n.cni.AddNetworkList(ctx, n.list, rt); err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
		t1 := time.Now()
		if err := n.cni.DelNetworkList(ctx, n.list, rt); err != nil {
			return fmt.Errorf("DEL: %w", err)
		}
		lat = [2]time.Duration{t1.Sub(t0), time.Since(t1)}
		rt2 := *rt
		rt2.NetNS = ""
		if err := n.cni.DelNetworkList(ctx, n.list, &rt2); err != nil {
			return fmt.Errorf("second DEL (empty netns): %w", err)
		}
		return nil
	})
	return lat, p.containerID, err
}

// accountingLinesAll returns the container ID of every accounting line.
func (n *node) accountingLinesAll() []string {
	b, err := os.ReadFile(filepath.Join(n.stateDir, "accounting.jsonl"))
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		i := strings.Index(l, `"containerID":"`)
		if i < 0 {
			continue
		}
		rest := l[i+len(`"containerID":"`):]
		out = append(out, rest[:strings.IndexByte(rest, '"')])
	}
	return out
}

// ipamDir is host-local's data dir of the node's conflist.
func (n *node) ipamDir(t *testing.T) string {
	b := n.list.Plugins[0].Bytes
	i := bytes.Index(b, []byte(`"dataDir":"`))
	if i < 0 {
		t.Fatal("no host-local dataDir in the conflist")
	}
	rest := b[i+len(`"dataDir":"`):]
	return string(rest[:bytes.IndexByte(rest, '"')])
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:min(3, len(strings.Fields(string(b))))], " ")
}

func openFDs(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// nriProc is podscope-nri running in the node netns with no runtime to
// talk to (it keeps reconnecting): its reaper and metrics run as on a node.
type nriProc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	rss  []int // KiB, one sample a second
	done chan struct{}
	logs lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startNRI(t *testing.T, n *node) *nriProc {
	t.Helper()
	bin := filepath.Join(podscopeDir, "podscope-nri")
	if _, err := os.Stat(bin); err != nil {
		cmd := exec.Command("go", "build", "-o", bin, "./plugins/podscope-nri")
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building podscope-nri: %v\n%s", err, out)
		}
	}
	p := &nriProc{done: make(chan struct{})}
	logDir := t.TempDir()
	p.cmd = exec.Command(bin, "--nri-socket", filepath.Join(logDir, "no-runtime.sock"), "--bpffs-root", n.root.Path,
		"--state-dir", n.stateDir, "--audit-log", filepath.Join(logDir, "audit.jsonl"), "--metrics-addr", "",
		"--reap-interval", "1s", "--audit-default", "off")
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	// Started from a thread in the node netns: the reaper must see the
	// node's links.
	if err := n.ns.Do(func(ns.NetNS) error { return p.cmd.Start() }); err != nil {
		t.Fatalf("starting podscope-nri: %v", err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	// Steady state starts once the audit programs are loaded (seconds on a
	// loaded machine): RSS before that is start-up, not churn.
	for deadline := time.Now().Add(2 * time.Minute); !strings.Contains(p.logs.String(), "file-write audit loaded"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("podscope-nri did not load the audit in 2 min:\n%s", p.logs.String())
		}
	}
	time.Sleep(2 * time.Second)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-tick.C:
				if kb := rssKiB(p.cmd.Process.Pid); kb > 0 {
					p.mu.Lock()
					p.rss = append(p.rss, kb)
					p.mu.Unlock()
				}
			}
		}
	}()
	return p
}

// stop ends podscope-nri and returns the median RSS of the first and the
// last tenth of the samples.
func (p *nriProc) stop(t *testing.T) [2]int {
	close(p.done)
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.rss
	if len(s) < 2 {
		t.Logf("podscope-nri: only %d RSS samples; log:\n%s", len(s), p.logs.String())
		return [2]int{}
	}
	k := max(len(s)/10, 1)
	med := func(x []int) int { y := slices.Clone(x); slices.Sort(y); return y[len(y)/2] }
	var series []string
	for i := 0; i < len(p.rss); i += max(len(p.rss)/20, 1) {
		series = append(series, strconv.Itoa(p.rss[i]/1024))
	}
	t.Logf("podscope-nri RSS (MiB, one sample every %d s): %s", max(len(p.rss)/20, 1), strings.Join(series, " "))
	return [2]int{med(s[:k]), med(s[len(s)-k:])}
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				v, _ := strconv.Atoi(f[1])
				return v
			}
		}
	}
	return 0
}
