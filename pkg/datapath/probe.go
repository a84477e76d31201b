package datapath

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ModeEnv forces the attach mode ("tcx" or "tc") over the configured one:
// a way for tests and operators to exercise or work around the tc fallback
// without a config change. ModeFromEnv is the one place it is read.
const ModeEnv = "PODSCOPE_ATTACH_MODE"

// ModeFromEnv returns the mode ModeEnv forces; set is false when it is unset.
func ModeFromEnv() (m Mode, set bool, err error) {
	env := os.Getenv(ModeEnv)
	if env == "" {
		return ModeAuto, false, nil
	}
	if m = Mode(env); m != ModeTCX && m != ModeTC {
		return ModeAuto, true, fmt.Errorf("%s=%q: want \"tcx\" or \"tc\"", ModeEnv, env)
	}
	return m, true, nil
}

var tcxProbe struct {
	once sync.Once
	err  error
}

// probeTCX asks the kernel with a real TCX link_create of our program on an
// ifindex that cannot exist (the raw syscall, see tcxLinkCreate): ENODEV means the kernel knows TCX and only
// lacks the device. Anything else is a "no" (a probe that is unsure is not
// a yes). The answer is cached per process.
func (d *Datapath) probeTCX() error {
	tcxProbe.once.Do(func() {
		err := tcxLinkCreate(d.objs.HostIngress, ^uint32(0)>>1, ebpf.AttachTCXIngress)
		switch {
		case err == nil:
			tcxProbe.err = errTCXProbeAttached
		case errors.Is(err, unix.ENODEV):
			tcxProbe.err = nil
		case errors.Is(err, unix.EINVAL):
			// An attach type the kernel does not know (before 6.6).
			tcxProbe.err = fmt.Errorf("kernel has no TCX: %w: %w", ebpf.ErrNotSupported, err)
		default:
			tcxProbe.err = fmt.Errorf("tcx probe inconclusive: %w", err)
		}
	})
	return tcxProbe.err
}

// ResolveMode turns a requested mode into the one Attach will use: tcx or tc
// as asked (tcx refused with the probe's reason if the kernel lacks it), or
// for ModeAuto the environment's PODSCOPE_ATTACH_MODE, else tcx when the
// probe says the kernel has it, else tc.
func (d *Datapath) ResolveMode(m Mode) (Mode, error) {
	if m == ModeAuto {
		env, set, err := ModeFromEnv()
		if err != nil {
			return "", err
		}
		if set {
			m = env
		}
	}
	switch m {
	case ModeTC:
		return ModeTC, nil
	case ModeTCX:
		if err := d.probeTCX(); err != nil {
			return "", fmt.Errorf("attach mode tcx: %w (use mode \"tc\")", err)
		}
		return ModeTCX, nil
	case ModeAuto:
		if d.probeTCX() == nil {
			return ModeTCX, nil
		}
		return ModeTC, nil
	}
	return "", fmt.Errorf("unknown attach mode %q: want \"tcx\", \"tc\" or empty for auto", m)
}
