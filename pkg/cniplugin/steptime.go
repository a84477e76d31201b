package cniplugin

import (
	"encoding/json"
	"os"
	"syscall"
	"time"
)

// TimingEnv names a file that ADD appends its step durations to, one JSON
// line per ADD ({"container":…,"steps":[["lookup",0.41],…],"totalMs":…,
// "cpuMs":…}; cpuMs is the process's user+system CPU time, which the
// machine's load changes much less than wall time), when
// set in the plugin's environment (the runtime passes its own environment
// on; the bench sets it to break ADD down by step at 10 and at 1,000 pods).
// A debugging aid: a failure to write is ignored.
const TimingEnv = "PODSCOPE_ADD_TIMING"

// Timing is one line of the timing log.
type Timing struct {
	Container string `json:"container"`
	// Steps are [name, milliseconds] in the order ADD ran them.
	Steps   [][2]any `json:"steps"`
	TotalMs float64  `json:"totalMs"`
	CPUMs   float64  `json:"cpuMs"`
}

// StepReap is the step of an ADD that ran the reaper.
const StepReap = "reap"

// Ran reports whether the ADD ran the named step.
func (t Timing) Ran(step string) bool {
	for _, s := range t.Steps {
		if s[0] == step {
			return true
		}
	}
	return false
}

type stepTimer struct {
	path        string
	start, last time.Time
	steps       [][2]any
}

func newStepTimer() *stepTimer {
	now := time.Now()
	return &stepTimer{path: os.Getenv(TimingEnv), start: now, last: now}
}

// step records the time since the previous step under name.
func (t *stepTimer) step(name string) {
	if t == nil || t.path == "" {
		return
	}
	now := time.Now()
	t.steps = append(t.steps, [2]any{name, float64(now.Sub(t.last).Microseconds()) / 1000})
	t.last = now
}

func (t *stepTimer) write(container string) {
	if t == nil || t.path == "" {
		return
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	b, err := json.Marshal(Timing{Container: container, Steps: t.steps,
		TotalMs: float64(time.Since(t.start).Microseconds()) / 1000, CPUMs: float64(cpu.Microseconds()) / 1000})
	if err != nil {
		return
	}
	f, err := os.OpenFile(t.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	_, _ = f.Write(append(b, '\n'))
	_ = f.Close()
}
