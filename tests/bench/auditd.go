package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The auditd reference: `auditctl -w DIR -p wa` with an auditd of the
// bench's own (scratch config and log) consuming the records. Kernel audit
// is global, so the run saves the enabled flag and the rule list, and puts
// them back. One thing cannot be put back: once audit has been enabled, the
// kernel (audit_ever_enabled) gives every process forked afterwards a
// syscall-audit context (every syscall on the slow path) until reboot, unless
// a task rule says "never". So when audit was off before the run, the run
// leaves `-a never,task` behind: new processes then pay nothing, as before.
// The rows run last and not in bench-quick.

const auditdKey = "pstestbn"

func auditStatus() (enabled, pid int, err error) {
	out, err := output("auditctl", "-s")
	if err != nil {
		return 0, 0, err
	}
	enabled, pid = -1, -1
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "enabled":
			enabled, _ = strconv.Atoi(f[1])
		case "pid":
			pid, _ = strconv.Atoi(f[1])
		}
	}
	if enabled < 0 || pid < 0 {
		return 0, 0, fmt.Errorf("auditctl -s: unexpected output %q", firstLine(out))
	}
	return enabled, pid, nil
}

func addAuditdRows(cfg *Config, env *auditEnv, writeT, cheapT *Table, sec *Section) {
	name := "auditd -w DIR -p wa"
	na := func(reason string) {
		writeT.AddNA(name, reason)
		cheapT.AddNA(name, reason)
	}
	for _, b := range []string{"auditctl", "auditd"} {
		if _, err := exec.LookPath(b); err != nil {
			na(b + " not installed (apt-get install auditd)")
			return
		}
	}
	enabled, pid, err := auditStatus()
	if err != nil {
		na("kernel audit unsupported here: " + firstLine(err.Error()))
		return
	}
	if enabled == 2 {
		na("kernel audit configuration is locked (enabled 2)")
		return
	}
	if pid != 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			// A daemon that died without unregistering: a new one replaces
			// it (the kernel checks the old one is gone).
			pid = 0
		}
	}
	var daemon *exec.Cmd
	if pid == 0 {
		// auditd chdirs to / at start: its config dir must be absolute.
		out, err := filepath.Abs(cfg.Out)
		if err != nil {
			na(err.Error())
			return
		}
		conf, err := os.MkdirTemp(out, "auditd-")
		if err != nil {
			na(err.Error())
			return
		}
		defer os.RemoveAll(conf)
		if err := os.Chmod(conf, 0o750); err != nil {
			na(err.Error())
			return
		}
		if err := os.Mkdir(filepath.Join(conf, "plugins.d"), 0o750); err != nil {
			na(err.Error())
			return
		}
		text := fmt.Sprintf("log_file = %s\nlog_format = RAW\nflush = INCREMENTAL_ASYNC\nfreq = 50\nmax_log_file = 1024\nmax_log_file_action = ROTATE\nnum_logs = 2\n"+
			"space_left = 10\nspace_left_action = IGNORE\nadmin_space_left = 5\nadmin_space_left_action = IGNORE\ndisk_full_action = IGNORE\ndisk_error_action = IGNORE\n"+
			"plugin_dir = %s\n", filepath.Join(conf, "audit.log"), filepath.Join(conf, "plugins.d"))
		if err := os.WriteFile(filepath.Join(conf, "auditd.conf"), []byte(text), 0o640); err != nil {
			na(err.Error())
			return
		}
		daemon = exec.Command("auditd", "-n", "-s", "nochange", "-c", conf)
		var stderr strings.Builder
		daemon.Stderr = &stderr
		if err := daemon.Start(); err != nil {
			na("starting auditd: " + err.Error())
			return
		}
		defer func() {
			// SIGTERM: auditd's clean shutdown, which unregisters it.
			_ = daemon.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = daemon.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = daemon.Process.Kill()
				<-done
			}
		}()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, p, err := auditStatus()
			if err == nil && p == daemon.Process.Pid {
				break
			}
			if time.Now().After(deadline) {
				na("auditd did not register with the kernel: " + firstLine(stderr.String()))
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	} else {
		sec.Notes = append(sec.Notes, fmt.Sprintf("an auditd (pid %d) was already running; the rule was added to it", pid))
	}
	rules, err := output("auditctl", "-l")
	if err != nil {
		na("auditctl -l: " + firstLine(err.Error()))
		return
	}
	hadNever := strings.Contains(rules, "-a never,task")
	if hadNever {
		// Left by an earlier run: it would keep the watch from firing.
		if err := run("auditctl", "-d", "never,task"); err != nil {
			na("removing -a never,task: " + firstLine(err.Error()))
			return
		}
	}
	defer func() {
		if hadNever || enabled == 0 {
			if err := run("auditctl", "-a", "never,task"); err != nil {
				cfg.logf("adding -a never,task back: %v", err)
			}
		}
	}()
	rule := []string{"-w", env.dir, "-p", "wa", "-k", auditdKey}
	if err := run("auditctl", rule...); err != nil {
		na("adding the watch: " + firstLine(err.Error()))
		return
	}
	defer func() {
		if err := run("auditctl", "-W", env.dir, "-p", "wa", "-k", auditdKey); err != nil {
			cfg.logf("removing the audit watch: %v", err)
		}
		if err := run("auditctl", "-e", strconv.Itoa(enabled)); err != nil {
			cfg.logf("restoring audit enabled=%d: %v", enabled, err)
		}
	}()
	sec.Notes = append(sec.Notes,
		"auditd rows: the bench's own auditd (scratch config, RAW log on the same disk as bench/out) with `auditctl -w DIR -p wa`; per round kernel audit off (podscope not loaded) then on; ratio vs that same-round baseline. Enabling audit makes every process forked afterwards carry a syscall-audit context until reboot (audit_ever_enabled), so it runs last, never in bench-quick, and leaves \"-a never,task\" when audit was off before (new processes then skip syscall audit, as before the run)")
	var ws, cs, wp, cp []float64
	var errs []string
	for round := 0; round < cfg.Rounds && !cfg.stopped(); round++ {
		cfg.logf("auditd round %d/%d", round+1, cfg.Rounds)
		// Off: as before audit was ever enabled (no syscall-audit context
		// for new processes). On: the watch, with auditd reading.
		if err := run("auditctl", "-e", "0"); err != nil {
			errs = append(errs, err.Error())
			break
		}
		if err := run("auditctl", "-a", "never,task"); err != nil {
			errs = append(errs, err.Error())
			break
		}
		bw, err1 := env.loop("write", env.unarmed)
		bc, err2 := env.loop("getppid", env.unarmed)
		if err := run("auditctl", "-d", "never,task"); err != nil {
			errs = append(errs, err.Error())
			break
		}
		if err := run("auditctl", "-e", "1"); err != nil {
			errs = append(errs, err.Error())
			break
		}
		w, err3 := env.loop("write", env.unarmed)
		c, err4 := env.loop("getppid", env.unarmed)
		for _, e := range []error{err1, err2, err3, err4} {
			if e != nil {
				errs = append(errs, firstLine(e.Error()))
			}
		}
		if err1 == nil && err3 == nil {
			ws = append(ws, w)
			wp = append(wp, Ratio(w, bw))
		}
		if err2 == nil && err4 == nil {
			cs = append(cs, c)
			cp = append(cp, Ratio(c, bc))
		}
	}
	for _, x := range []struct {
		t    *Table
		s, p []float64
	}{{writeT, ws, wp}, {cheapT, cs, cp}} {
		if len(x.s) == 0 {
			reason := "no sample"
			if len(errs) > 0 {
				reason = errs[0]
			}
			x.t.AddNA(name, reason)
			continue
		}
		r := x.t.Add(name, x.s)
		r.Paired = x.p
		r.Note = "ratio vs kernel audit off, same round"
	}
}
