package nriplugin

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/podscope/podscope/pkg/flock"
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
	p := filepath.Join(stateDir, instanceLockName)
	waited := false
	release, err := flock.Wait(ctx, p, func() {
		waited = true
		log.Warn("another podscope-nri runs on this node (it holds the instance lock); waiting for it to exit", "lock", p)
	})
	if err == nil && waited {
		log.Info("instance lock acquired: the other podscope-nri has exited", "lock", p)
	}
	return release, err
}
