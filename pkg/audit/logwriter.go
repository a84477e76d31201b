package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// LogWriter appends events as JSON lines to a file created with mode 0600
// and rotates it by size: when a write would take the file past MaxBytes,
// path.N-1 → path.N … path → path.1 (path.Keep is dropped) and a new path
// is started. Writes are buffered; Flush (or Close) pushes them out, and
// Write flushes by itself when its buffer fills.
type LogWriter struct {
	path     string
	maxBytes int64
	keep     int

	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	size int64
	buf  []byte
}

// DefaultLogPath is where podscope-nri writes the audit log and
// podscopectl reads it unless told otherwise.
const DefaultLogPath = "/var/log/podscope/audit.jsonl"

// Default rotation when NewLogWriter gets zeros.
const (
	DefaultLogMaxBytes = 100 << 20
	DefaultLogKeep     = 5
)

// NewLogWriter opens (appending) the log at path, creating its directory
// (0700) and the file (0600) if missing. maxBytes <= 0 and keep <= 0 take
// the defaults.
func NewLogWriter(path string, maxBytes int64, keep int) (*LogWriter, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultLogMaxBytes
	}
	if keep <= 0 {
		keep = DefaultLogKeep
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	l := &LogWriter{path: path, maxBytes: maxBytes, keep: keep}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *LogWriter) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	// A file that existed with wider permissions is narrowed: it holds
	// what containers wrote where.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	l.f, l.size = f, st.Size()
	l.w = bufio.NewWriterSize(f, 64<<10)
	return nil
}

// Write appends one event as a JSON line.
func (l *LogWriter) Write(ev Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("audit log: closed")
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	l.buf = append(append(l.buf[:0], b...), '\n')
	if l.size > 0 && l.size+int64(len(l.buf)) > l.maxBytes {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.w.Write(l.buf)
	l.size += int64(n)
	return err
}

// Flush writes buffered lines to the file.
func (l *LogWriter) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		return nil
	}
	return l.w.Flush()
}

func (l *LogWriter) rotate() error {
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	l.f = nil
	for i := l.keep - 1; i >= 1; i-- {
		from := l.path + "." + strconv.Itoa(i)
		if err := os.Rename(from, l.path+"."+strconv.Itoa(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("audit log rotate: %w", err)
		}
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("audit log rotate: %w", err)
	}
	return l.open()
}

// Close flushes and closes the file.
func (l *LogWriter) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := errors.Join(l.w.Flush(), l.f.Close())
	l.f = nil
	return err
}
