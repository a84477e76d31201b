package flock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// held reports whether another open file description could not take the
// lock: the kernel is the oracle, not this package.
func held(t *testing.T, path string) bool {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return false
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatal(err)
	}
	return true
}

func TestFileCreatesLocksAndReleases(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "lock")
	release, err := File(p)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode %v, want 0600", st.Mode().Perm())
	}
	if !held(t, p) {
		t.Fatal("lock not held after File")
	}
	release()
	if held(t, p) {
		t.Fatal("lock still held after release")
	}
}

func TestFileBlocksUntilReleased(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	release, err := File(p)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		r, err := File(p)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	select {
	case <-got:
		t.Fatal("second File returned while the first held the lock")
	case <-time.After(100 * time.Millisecond):
	}
	release()
	select {
	case r := <-got:
		if r != nil {
			r()
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second File still blocked after release")
	}
}

func TestWaitSaysOnceAndGivesUpWithContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	release, err := File(p)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 3*PollInterval)
	defer cancel()
	said := 0
	_, err = Wait(ctx, p, func() { said++ })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a held lock: %v, want deadline exceeded", err)
	}
	if said != 1 {
		t.Errorf("waiting called %d times, want 1", said)
	}
}

func TestWaitTakesAFreeLockWithoutWaiting(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	release, err := Wait(context.Background(), p, func() { t.Error("waiting called for a free lock") })
	if err != nil {
		t.Fatal(err)
	}
	if !held(t, p) {
		t.Fatal("lock not held after Wait")
	}
	release()
	if held(t, p) {
		t.Fatal("lock still held after release")
	}
}

func TestDir(t *testing.T) {
	d := t.TempDir()
	release, err := Dir(d)
	if err != nil {
		t.Fatal(err)
	}
	if !held(t, d) {
		t.Fatal("directory lock not held")
	}
	release()
	if held(t, d) {
		t.Fatal("directory lock still held after release")
	}
	if _, err := Dir(filepath.Join(d, "missing")); err == nil {
		t.Error("Dir of a missing directory succeeded")
	}
}
