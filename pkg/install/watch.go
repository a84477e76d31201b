package install

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultResync is how often the watch loop re-checks everything even
// without a notification: it picks up a changed podscope config (a
// ConfigMap update arrives as a symlink swap in another directory) and
// covers anything inotify cannot see (a conf dir that was replaced).
const DefaultResync = 10 * time.Second

// settle is how long the watch loop waits after a notification for more of
// them, so a primary CNI writing its file in several steps is read once,
// complete.
const settle = 50 * time.Millisecond

// Watch keeps podscope chained until ctx is done: it re-runs Install when
// the CNI conf dir changes (inotify on the directory, via x/sys/unix: create,
// write-close, rename, delete of config files) and every resync interval.
// Install is idempotent, so the loop's own writes wake it once and change
// nothing. Errors of a round (a primary CNI caught mid-write, no config yet)
// are logged and retried on the next change or tick; Watch returns nil when
// ctx ends.
func (in *Installer) Watch(ctx context.Context, resync time.Duration) error {
	if resync <= 0 {
		resync = DefaultResync
	}
	// A persistent error (an unsupported cniVersion, a broken file) is
	// logged when it starts and when it changes, not every resync.
	var lastErr string
	in.onChange(ctx, resync, func() bool {
		err := in.Install()
		switch {
		case err != nil && err.Error() != lastErr:
			in.cfg.Logf("chaining: %v", err)
			lastErr = err.Error()
		case err == nil && lastErr != "":
			in.cfg.Logf("chaining works again")
			lastErr = ""
		}
		return true
	})
	return nil
}

// InstallWhenReady is Install that, while the conf dir holds no network
// config yet (ErrNoConfig), waits for one to appear until ctx ends, then
// installs at once: an init container on a node whose primary CNI is still
// starting chains podscope the moment the conflist is written, instead of
// after the kubelet's restart back-off. Other errors return immediately; at
// the end of ctx the last ErrNoConfig is returned.
func (in *Installer) InstallWhenReady(ctx context.Context) error {
	err := in.Install()
	if !errors.Is(err, ErrNoConfig) {
		return err
	}
	in.cfg.Logf("%v; waiting for it", err)
	// Polling every second as well: the conf dir itself may not exist yet.
	in.onChange(ctx, time.Second, func() bool {
		err = in.Install()
		return errors.Is(err, ErrNoConfig)
	})
	return err
}

// onChange calls f now, then after every change in the CNI conf dir (inotify
// on the directory, via x/sys/unix: create, write-close, rename, delete of
// config files; once a burst of writes has settled) and every interval, until
// ctx ends or f returns false. Without inotify it polls.
func (in *Installer) onChange(ctx context.Context, interval time.Duration, f func() bool) {
	wake := make(chan struct{}, 1)
	w, err := newDirWatch(in.cfg.CNIConfDir)
	if err != nil {
		in.cfg.Logf("inotify on %s unavailable (%v): polling every %s", in.cfg.CNIConfDir, err, interval)
	} else {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		defer func() { cancel(); w.close(); <-done }()
		go func() { defer close(done); w.run(wctx, wake, in.cfg.Logf) }()
	}
	if !f() {
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
			// Let a burst of writes finish, then look once.
			select {
			case <-ctx.Done():
				return
			case <-time.After(settle):
			}
			select {
			case <-wake:
			default:
			}
		case <-tick.C:
		}
		if !f() {
			return
		}
	}
}

// dirWatch is an inotify watch on one directory.
type dirWatch struct {
	fd  int
	dir string
}

const watchMask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

func newDirWatch(dir string) (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	w := &dirWatch{fd: fd, dir: dir}
	if err := w.add(); err != nil {
		_ = unix.Close(fd) // the add error is the one to report
		return nil, err
	}
	return w, nil
}

func (w *dirWatch) add() error {
	if _, err := unix.InotifyAddWatch(w.fd, w.dir, watchMask); err != nil {
		return fmt.Errorf("inotify_add_watch %s: %w", w.dir, err)
	}
	return nil
}

func (w *dirWatch) close() { _ = unix.Close(w.fd) } // nothing to do about a failed close of an inotify fd

// run reads events until ctx ends, signalling wake for each batch that
// touches a config file or the directory itself. Polling with a short
// timeout keeps the goroutine responsive to ctx without closing the fd
// under a blocked read.
func (w *dirWatch) run(ctx context.Context, wake chan<- struct{}, logf func(string, ...any)) {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	lost := false
	for ctx.Err() == nil {
		if lost {
			// The directory was removed or moved: re-add when it is back;
			// the resync ticker covers the gap.
			if w.add() == nil {
				lost = false
				notify(wake)
			}
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			logf("inotify poll: %v", err)
			return
		}
		if n <= 0 {
			continue
		}
		nr, err := unix.Read(w.fd, buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			logf("inotify read: %v", err)
			return
		}
		relevant := false
		for off := 0; off+unix.SizeofInotifyEvent <= nr; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameLen := int(ev.Len)
			name := ""
			if nameLen > 0 {
				raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+nameLen]
				for i, b := range raw {
					if b == 0 {
						raw = raw[:i]
						break
					}
				}
				name = string(raw)
			}
			off += unix.SizeofInotifyEvent + nameLen
			switch {
			case ev.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
				lost = true
				relevant = true
			case ev.Mask&unix.IN_Q_OVERFLOW != 0:
				relevant = true
			case name != "" && isConfigName(name):
				relevant = true
			}
		}
		if relevant {
			notify(wake)
		}
	}
}

func notify(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
