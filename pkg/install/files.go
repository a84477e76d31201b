package install

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// tempPrefix starts the name of every temporary file the installer creates.
// It has no CNI config extension, so neither the runtime nor the watch loop
// ever reads a temp file as a network config.
const tempPrefix = ".podscope-install-"

// writeFileAtomic replaces path with data: a temp file in the same directory
// is written, synced and renamed over path, then the directory is synced.
// A reader sees the old file or the new one, never a half-written one; a
// crash leaves at worst a stray temp file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeFileAtomicIf(path, data, mode, nil)
}

// writeFileAtomicIf is writeFileAtomic with a last check right before the
// rename (nil: none): everything slow (write, fsync) happens before it, so
// the window between the check and the rename is as small as it can be.
func writeFileAtomicIf(path string, data []byte, mode os.FileMode, check func() error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()      // already failing; the write error is the one to report
			_ = os.Remove(tmp) // best effort: a stray temp file has no CNI extension
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	// CreateTemp makes 0600 files; chmod explicitly so umask plays no part.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if check != nil {
		if err := check(); err != nil {
			_ = os.Remove(tmp) // nothing else to do about it
			ok = true          // closed and removed already
			return err
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp, path, err)
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// removeFile removes path and syncs its directory; a missing file is fine.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return syncDir(filepath.Dir(path))
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// copyBinary installs src as dst (mode 0755) atomically, unless dst already
// has the same content and mode. It returns the content's sha256 and whether
// dst was written.
func copyBinary(src, dst string) (sum string, written bool, err error) {
	data, err := readRegular(src)
	if err != nil {
		return "", false, fmt.Errorf("reading binary to install: %w", err)
	}
	sum = sha256Hex(data)
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == 0o755 {
			return sum, false, nil
		}
	}
	// The rename replaces the directory entry; a runtime that is executing
	// the old binary keeps its inode, so there is no "text file busy".
	if err := writeFileAtomic(dst, data, 0o755); err != nil {
		return "", false, err
	}
	return sum, true, nil
}

func readRegular(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // read-only
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return io.ReadAll(f)
}
