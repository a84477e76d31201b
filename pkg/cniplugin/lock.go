package cniplugin

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// stateLock is an exclusive flock on stateDir/lock. The runtime runs many
// ADD/DEL in parallel; PodID allocation, the registry and the accounting log
// are read-modify-write, so every writer (plugin, reaper, podscopectl
// cleanup) holds it. The kernel drops it if the holder dies.
type stateLock struct{ f *os.File }

func lockStateDir(dir string) (*stateLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir %s: %w", dir, err)
	}
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening state lock %s: %w", p, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", p, err)
	}
	return &stateLock{f: f}, nil
}

func (l *stateLock) Unlock() {
	// Closing the descriptor releases the flock.
	l.f.Close()
}
