package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// writerEnv makes the test binary a writer "container" (see runWriter).
const writerEnv = "PSTEST_AUDIT_WRITER"

func init() {
	if spec := os.Getenv(writerEnv); spec != "" {
		os.Exit(runWriter(spec))
	}
}

// runWriter opens files for writing at a fixed rate until its time is up,
// after one line on stdin (the parent has moved it into its cgroup by
// then), and prints how many opens it performed. spec is
// "dir,opsPerSecond,seconds,same": same=1 opens one file over and over (the
// audit folds the repeats), 0 cycles through 100,000 names (nothing folds).
func runWriter(spec string) int {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		return 2
	}
	dir := f[0]
	rate, _ := strconv.Atoi(f[1])
	secs, _ := strconv.Atoi(f[2])
	same := f[3] == "1"
	bufio.NewReader(os.Stdin).ReadString('\n')
	start := time.Now()
	end := start.Add(time.Duration(secs) * time.Second)
	n := 0
	for now := start; now.Before(end); now = time.Now() {
		// Pace in 10 ms steps: rate/100 opens, then wait for the step's end.
		due := int(now.Sub(start).Seconds()*float64(rate)) + rate/100
		for ; n < due; n++ {
			name := "f0"
			if !same {
				name = "f" + strconv.Itoa(n%100000)
			}
			fd, err := syscall.Open(filepath.Join(dir, name), syscall.O_WRONLY|syscall.O_CREAT|syscall.O_CLOEXEC, 0o600)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			syscall.Close(fd)
		}
		time.Sleep(time.Until(start.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))))
	}
	fmt.Println(n)
	return 0
}

// TestAuditSustainedLoad: several writer containers (cgroups) perform file
// writes at a fixed total rate while the audit reader runs, with dedup
// folding (one path) and without (distinct paths): for every container,
// events delivered (folded repeats counted) + events counted lost ==
// operations performed. Reduced in CI; PODSCOPE_AUDIT_LOAD_SECONDS=300
// PODSCOPE_AUDIT_LOAD_RATE=16667 (1,000,000 operations a minute) is the
// full size (`make audit-load`).
func TestAuditSustainedLoad(t *testing.T) {
	testenv.RequireRoot(t)
	secs, rate, writers := 5, 16667, 4
	if v, err := strconv.Atoi(os.Getenv("PODSCOPE_AUDIT_LOAD_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	if v, err := strconv.Atoi(os.Getenv("PODSCOPE_AUDIT_LOAD_RATE")); err == nil && v > 0 {
		rate = v
	}
	mnt, _, a := openTestAudit(t)
	var report []string
	for _, same := range []bool{true, false} {
		name := map[bool]string{true: "dedup (one path, repeats fold)", false: "no dedup (distinct paths)"}[same]
		t.Run(map[bool]string{true: "dedup", false: "nodedup"}[same], func(t *testing.T) {
			line := loadRound(t, a, mnt.Point, writers, rate, secs, same)
			report = append(report, name+": "+line)
		})
	}
	msg := fmt.Sprintf("audit sustained load: %d writers, %d ops/s in total, %d s per round\n  %s\n",
		writers, rate, secs, strings.Join(report, "\n  "))
	t.Log(msg)
	if f := os.Getenv("PODSCOPE_AUDIT_LOAD_REPORT"); f != "" {
		os.MkdirAll(filepath.Dir(f), 0o755)
		os.WriteFile(f, []byte(msg), 0o644)
	}
}

func loadRound(t *testing.T, a *audit.Auditor, cgRoot string, writers, rate, secs int, same bool) string {
	type writer struct {
		cgid  uint64
		cmd   *exec.Cmd
		out   strings.Builder
		stdin interface{ Write([]byte) (int, error) }
	}
	sameArg := "0"
	if same {
		sameArg = "1"
	}
	ws := make([]*writer, writers)
	delivered := map[uint64]*atomic.Uint64{}
	for i := range ws {
		dir := filepath.Join(cgRoot, testenv.Name(t))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(dir) })
		cgid, err := a.Arm(dir, audit.Identity{Identity: pods.Identity{Namespace: "load", Pod: fmt.Sprintf("w%d", i)}, Container: "w"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Disarm(cgid) })
		w := &writer{cgid: cgid}
		w.cmd = exec.Command(os.Args[0])
		w.cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d,%s", writerEnv, t.TempDir(), rate/writers, secs, sameArg))
		w.cmd.Stdout, w.cmd.Stderr = &w.out, os.Stderr
		stdin, err := w.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		w.stdin = stdin
		if err := w.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.cmd.Process.Kill(); stdin.Close() })
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(w.cmd.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		ws[i] = w
		delivered[cgid] = &atomic.Uint64{}
	}
	lostBefore, err := a.Lost()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	go func() {
		done <- a.Run(ctx, func(ev audit.Event) {
			if c := delivered[ev.CgroupID]; c != nil {
				c.Add(uint64(ev.Count))
			}
		})
	}()
	start := time.Now()
	for _, w := range ws {
		fmt.Fprintln(w.stdin, "go")
	}
	var performed uint64
	perW := map[uint64]uint64{}
	for _, w := range ws {
		if err := w.cmd.Wait(); err != nil {
			t.Fatalf("writer: %v", err)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(w.out.String()), 10, 64)
		if err != nil {
			t.Fatalf("writer output %q", w.out.String())
		}
		perW[w.cgid] = n
		performed += n
	}
	took := time.Since(start)
	// Drain: every operation delivered or counted lost (folded repeats
	// are swept out after their window), bounded.
	account := func() (del, lost uint64, ok bool) {
		ls, err := a.Lost()
		if err != nil {
			t.Fatal(err)
		}
		ok = true
		for cg, n := range perW {
			d, l := delivered[cg].Load(), ls[cg]-lostBefore[cg]
			del, lost = del+d, lost+l
			if d+l != n {
				ok = false
			}
		}
		return del, lost, ok
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, _, ok := account(); !ok && time.Now().Before(deadline); _, _, ok = account() {
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // anything extra would show now
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	del, lost, _ := account()
	ls, _ := a.Lost()
	for cg, n := range perW {
		d, l := delivered[cg].Load(), ls[cg]-lostBefore[cg]
		if d+l != n {
			t.Errorf("cgroup %d: delivered %d + lost %d = %d, performed %d", cg, d, l, d+l, n)
		}
	}
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	wall := time.Since(start)
	return fmt.Sprintf("performed %d in %s (%.0f/min), delivered %d + lost %d = %d; reader CPU %s over %s (%.1f%% of one core), reader RSS %d MiB",
		performed, took.Round(time.Second), float64(performed)/took.Minutes(), del, lost, del+lost,
		cpu.Round(time.Millisecond), wall.Round(time.Second), 100*cpu.Seconds()/wall.Seconds(), ru1.Maxrss/1024)
}
