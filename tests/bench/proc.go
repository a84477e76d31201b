package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Config is one bench run's settings.
type Config struct {
	Quick bool
	// Rounds of A B A B interleaving (≥5 for a full run).
	Rounds int
	// Duration of one datapath measurement.
	Duration time.Duration
	// Self is the podscope-bench binary, exec'd inside pod netns.
	Self string
	// Out is the scratch directory (bench/out).
	Out string
	// RunID names this run's kernel objects.
	RunID string
	// CNIBin holds the reference plugins and podscope's CNI plugin.
	CNIBin string
	// CNIRuns is the ADD/DEL count per CNI variant; ScalePods the pods
	// attached at once in the scale test.
	CNIRuns, ScalePods int
	// NoScalePolicy leaves the scale test's 100,000-CIDR network policy
	// variant out (it doubles the scale test's time).
	NoScalePolicy bool
	// AuditOps per audit loop measurement; AuditBurst the burst size.
	AuditOps, AuditBurst int
	// Auditd adds the auditd rows (enables kernel audit for a while).
	Auditd bool
	Log    func(format string, args ...any)

	ctx      context.Context
	cleanups []func()
}

// onExit registers f to run when the run ends (last registered first).
func (c *Config) onExit(f func()) { c.cleanups = append(c.cleanups, f) }

// runCleanups runs what onExit registered.
func (c *Config) runCleanups() {
	for i := len(c.cleanups) - 1; i >= 0; i-- {
		c.cleanups[i]()
	}
	c.cleanups = nil
}

// stopped reports whether the run was interrupted.
func (c *Config) stopped() bool { return c.ctx != nil && c.ctx.Err() != nil }

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		c.Log(format, args...)
	}
}

// daemon is a long-running helper process (load server, proxy) started
// inside a netns; it is stopped by its own PID.
type daemon struct {
	cmd *exec.Cmd
}

// pinArgs returns the taskset prefix that pins a process to cpu (nothing
// when cpu < 0 or the machine has one CPU or no taskset).
func pinArgs(cpu int) []string {
	if cpu < 0 || runtime.NumCPU() < 2 {
		return nil
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return nil
	}
	return []string{"taskset", "-c", strconv.Itoa(cpu)}
}

// Where the load runs: client, server and proxy on the same CPU, so every
// measurement sees the same placement and no cross-CPU wake-ups. On this VM
// a wake-up on the other CPU is an IPI (a VM exit): unpinned, RR rates
// varied 2.5x between runs; cross-CPU pinned, RR fell to a third and was
// dominated by IPIs; same-CPU pinned, runs agree within a few percent and
// the datapath's own cost is what changes between variants. The 4-stream
// client is left unpinned to use both CPUs.
const (
	clientCPU = 1
	serverCPU = 1
)

// startDaemon execs `self args...` inside netns, pinned to cpu (-1: not
// pinned), and waits for it to print "ready".
func startDaemon(netns string, cpu int, self string, args ...string) (*daemon, error) {
	argv := append([]string{"--net=" + NetnsPath(netns)}, pinArgs(cpu)...)
	argv = append(argv, self)
	cmd := exec.Command("nsenter", append(argv, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			ready <- fmt.Errorf("%v: %w: %s", cmd.Args, err, strings.TrimSpace(stderr.String()))
			return
		}
		if strings.TrimSpace(line) != "ready" {
			ready <- fmt.Errorf("%v: unexpected %q", cmd.Args, line)
			return
		}
		ready <- nil
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("%v: not ready after 10s", cmd.Args)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	return &daemon{cmd: cmd}, nil
}

func (d *daemon) stop() {
	if d == nil || d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = d.cmd.Process.Kill()
		<-done
	}
}

// runClient runs one load measurement inside netns in a fresh process,
// pinned to clientCPU unless it runs several streams.
func runClient(self, netns string, o LoadOptions) (LoadResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+30*time.Second)
	defer cancel()
	args := []string{"--net=" + NetnsPath(netns)}
	if o.Streams <= 1 {
		args = append(args, pinArgs(clientCPU)...)
	}
	args = append(args, self, "load",
		"--mode", o.Mode, "--target", o.Target.String(), "--streams", fmt.Sprint(o.Streams),
		"--duration", o.Duration.String())
	if o.Control.IsValid() {
		args = append(args, "--control", o.Control.String())
	}
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return LoadResult{}, fmt.Errorf("load %s: %w: %s", o.Mode, err, strings.TrimSpace(stderr.String()))
	}
	var r LoadResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return LoadResult{}, fmt.Errorf("load %s output %q: %w", o.Mode, stdout.String(), err)
	}
	return r, nil
}
