// Package flock is podscope's one way to hold an exclusive flock(2): the
// state-dir lock of the pod-state store, podscope-nri's instance lock, the
// installer's lock, the datapath's directory lock and the benchmark's.
//
// The lock lives in the kernel with the open file: closing the descriptor
// drops it, and so does the death of the holder, so a crashed writer never
// leaves a node locked.
package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// PollInterval is how often Wait retries a lock another process holds.
const PollInterval = 500 * time.Millisecond

// File takes an exclusive flock on the file at path, creating the file (mode
// 0600) and its directory (0700) if needed, and blocks until it is free.
// The returned func releases it.
func File(path string) (func(), error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	if err := lock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// Wait is File for a lock that may be held for a long time (another daemon
// instance): while another process holds it, waiting is called once and the
// lock is retried every PollInterval until ctx ends.
func Wait(ctx context.Context, path string, waiting func()) (func(), error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	for said := false; ; {
		err := lock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if !said && waiting != nil {
			said = true
			waiting()
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(PollInterval):
		}
	}
}

// Dir takes an exclusive flock on an existing directory, blocking until it
// is free: for directories that can hold no lock file (bpffs holds only
// pins).
func Dir(dir string) (func(), error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s for locking: %w", dir, err)
	}
	if err := lock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}

func open(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the directory of lock %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	return f, nil
}

// lock is flock(2) restarted when a signal interrupts the wait.
func lock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
