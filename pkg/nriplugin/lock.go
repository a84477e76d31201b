package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// instanceLockName is the file in the state dir whose flock makes
// podscope-nri a single instance per node: two readers of the one audit
// ring buffer would each get part of the events, so each log would be
// silently incomplete; two registrations would arm everything twice. A
// second instance (a DaemonSet update with surge, a debugging run next to
// the DaemonSet) waits until the first exits. The kernel drops the lock
// when its holder dies.
const instanceLockName = "podscope-nri.lock"

// lockInstance takes the instance lock, waiting (and saying so once) while
// another podscope-nri holds it. The returned func releases it.
func lockInstance(ctx context.Context, stateDir string, log *slog.Logger) (func(), error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir %s: %w", stateDir, err)
	}
	p := filepath.Join(stateDir, instanceLockName)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening instance lock %s: %w", p, err)
	}
	release := func() { f.Close() } // closing the descriptor drops the flock
	for said := false; ; {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			if said {
				log.Info("instance lock acquired: the other podscope-nri has exited", "lock", p)
			}
			return release, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			release()
			return nil, fmt.Errorf("locking %s: %w", p, err)
		}
		if !said {
			said = true
			log.Warn("another podscope-nri runs on this node (it holds the instance lock); waiting for it to exit", "lock", p)
		}
		select {
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
