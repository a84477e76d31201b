package audit

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// BenchmarkWriteOverhead measures what the audit costs a writer: a loop of
// open(O_TRUNC) + 4 KiB write + close, timed inside a child process, in an
// armed cgroup, in an unarmed cgroup (programs attached), and with the
// programs detached ("none": podscope not loaded). Rounds interleave the
// three conditions (rotating their order); medians are reported.
//
//	go test ./pkg/audit/ -run '^$' -bench WriteOverhead -benchtime=1x
//
// PODSCOPE_BENCH_ROUNDS / PODSCOPE_BENCH_ITERS change the size.
func BenchmarkWriteOverhead(b *testing.B) {
	testenv.RequireRoot(b)
	root := testenv.BPFFSRoot(b)
	a, err := Open(root, Options{Mode: testMode()})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("mode %s", a.Probe())
	b.Cleanup(func() { a.Close(); Cleanup(root) })
	cgRoot, err := cgroup2Root()
	if err != nil {
		b.Fatal(err)
	}
	armedCg, unarmedCg := benchCgroup(b, cgRoot), benchCgroup(b, cgRoot)
	if _, err := a.Arm(armedCg, Identity{Identity: pods.Identity{Namespace: "bench", Pod: "bench"}}); err != nil {
		b.Fatal(err)
	}
	var seen atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, func(ev Event) { seen.Add(uint64(ev.Count)) }) }()
	b.Cleanup(func() { cancel(); <-done })

	rounds, iters := envInt("PODSCOPE_BENCH_ROUNDS", 7), envInt("PODSCOPE_BENCH_ITERS", 20000)
	dir := shmDir(b)
	for i := 0; i < iters; i++ {
		if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(i)), nil, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	names := progNames(mustSpec(b), a.mode)
	detach := func() {
		for _, n := range names {
			os.Remove(filepath.Join(a.dir, linkPrefix+n))
			os.Remove(filepath.Join(a.dir, linkPrefix+exitLinkName(n)))
		}
	}
	attach := func() {
		if _, err := attachGlobal(a.root, a.mode, a.progs, names, false, b.Logf); err != nil {
			b.Fatal(err)
		}
	}
	conds := []string{"none", "unarmed", "armed"}
	for _, kind := range []string{"distinct", "same", "getppid"} {
		res, cpu := map[string][]float64{}, map[string][]float64{}
		for r := 0; r < rounds; r++ {
			for k := range conds {
				c := conds[(k+r)%len(conds)]
				cg := unarmedCg
				switch c {
				case "none":
					detach()
				case "armed":
					attach()
					cg = armedCg
				default:
					attach()
				}
				w, c2 := benchChild(b, cg, dir, iters, kind)
				res[c] = append(res[c], w)
				cpu[c] = append(cpu[c], c2)
			}
		}
		attach()
		label, suffix := map[string]string{
			"distinct": "distinct files (every op emitted)", "same": "one file (repeats folded)",
			"getppid": "getppid (not a write: what every other syscall pays)",
		}[kind], map[string]string{"distinct": "", "same": "-same", "getppid": "-getppid"}[kind]
		for _, kind := range []struct {
			name string
			v    map[string][]float64
		}{{"wall", res}, {"cpu", cpu}} {
			med := map[string]float64{}
			for _, c := range conds {
				med[c] = median(kind.v[c])
				b.ReportMetric(med[c], kind.name+"-ns/iter-"+c+suffix)
			}
			b.Logf("%s, %d rounds x %d iterations, median %s ns/iter: none %.0f, unarmed %.0f (x%.3f), armed %.0f (x%.3f); all: %v",
				label, rounds, iters, kind.name, med["none"], med["unarmed"], med["unarmed"]/med["none"],
				med["armed"], med["armed"]/med["none"], kind.v)
		}
	}
	time.Sleep(foldWindow + 3*pollInterval) // let the sweep flush the last folded repeats
	lost, _ := a.Lost()
	b.Logf("write operations in armed rounds %d; delivered (sum of counts) %d, lost %v", 2*rounds*iters, seen.Load(), lost)
}

// BenchmarkReaderDrain measures the reader alone: a burst fills the ring
// while no reader runs, then Run drains it; events/s of the drain, with a
// counting sink and with the JSONL LogWriter as sink.
//
//	go test ./pkg/audit/ -run '^$' -bench ReaderDrain -benchtime=1x
func BenchmarkReaderDrain(b *testing.B) {
	testenv.RequireRoot(b)
	root := testenv.BPFFSRoot(b)
	a, err := Open(root, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close(); Cleanup(root) })
	cgRoot, err := cgroup2Root()
	if err != nil {
		b.Fatal(err)
	}
	cg := benchCgroup(b, cgRoot)
	cgid, err := a.Arm(cg, Identity{Identity: pods.Identity{Namespace: "bench", Pod: "bench"}})
	if err != nil {
		b.Fatal(err)
	}
	n := envInt("PODSCOPE_BENCH_EVENTS", 150000)
	for _, sinkName := range []string{"count", "logwriter"} {
		dir := shmDir(b)
		if out, err := benchExec(cg, "writes", dirEnv+"="+dir, countEnv+"="+strconv.Itoa(n)); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		lostBefore, _ := a.Lost()
		var got atomic.Uint64
		sink := func(ev Event) { got.Add(uint64(ev.Count)) }
		if sinkName == "logwriter" {
			lw, err := NewLogWriter(filepath.Join(b.TempDir(), "audit.jsonl"), 1<<30, 1)
			if err != nil {
				b.Fatal(err)
			}
			defer lw.Close()
			sink = func(ev Event) { lw.Write(ev); got.Add(uint64(ev.Count)) }
		}
		want := uint64(n) - lostBefore[cgid]
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- a.Run(ctx, sink) }()
		for got.Load() < want && time.Since(start) < time.Minute {
			time.Sleep(time.Millisecond)
		}
		took := time.Since(start)
		cancel()
		<-done
		b.ReportMetric(float64(got.Load())/took.Seconds(), "events/s-"+sinkName)
		b.Logf("drain with %s sink: %d events in %v = %.0f events/s (lost while filling: %d)",
			sinkName, got.Load(), took, float64(got.Load())/took.Seconds(), lostBefore[cgid])
		a.maps.AuditLost.Delete(cgid) // next round starts from zero
	}
}

// shmDir is a directory on tmpfs (/dev/shm): a disk's latency would drown
// the cost being measured.
func shmDir(tb testing.TB) string {
	d, err := os.MkdirTemp("/dev/shm", testenv.Prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func benchCgroup(b *testing.B, cgRoot string) string {
	dir := filepath.Join(cgRoot, testenv.Name(b))
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.Remove(dir) })
	return dir
}

func benchExec(cg, w string, env ...string) (string, error) {
	cgfd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(cgfd)
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), workloadEnv+"="+w), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	out, err := cmd.Output()
	return string(out), err
}

func benchChild(b *testing.B, cg, dir string, iters int, kind string) (wall, cpu float64) {
	env := []string{dirEnv + "=" + dir, countEnv + "=" + strconv.Itoa(iters)}
	switch kind {
	case "same":
		env = append(env, "PODSCOPE_AUDIT_TEST_SAME=1")
	case "getppid":
		env = append(env, "PODSCOPE_AUDIT_TEST_GETPPID=1")
	}
	out, err := benchExec(cg, "loop", env...)
	if err != nil {
		b.Fatalf("loop: %v: %s", err, out)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		b.Fatalf("loop output %q: want wall and cpu ns/iter", out)
	}
	wall, err1 := strconv.ParseFloat(f[0], 64)
	cpu, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("loop output %q: %v %v", out, err1, err2)
	}
	return wall, cpu
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func mustSpec(b *testing.B) *ebpf.CollectionSpec {
	s, err := loadAudit()
	if err != nil {
		b.Fatal(err)
	}
	return s
}
