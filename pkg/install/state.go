package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podscope/podscope/pkg/flock"
)

// The installer's record of what it changed, so --uninstall removes exactly
// that: the binaries it copied and, per config file it wrote, the content
// before and after. It lives outside the CNI conf dir (by default in
// /var/lib/podscope/install) so nothing in it is ever read as a network
// config, and survives the DaemonSet pod because the directory is a
// hostPath.
const (
	stateFileName = "install-state.json"
	lockFileName  = "install.lock"
	stateVersion  = 1
)

type state struct {
	Version  int          `json:"version"`
	Binaries []binRecord  `json:"binaries,omitempty"`
	Configs  []confRecord `json:"configs,omitempty"`
}

type binRecord struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// confRecord is one config file podscope-install wrote.
type confRecord struct {
	// Path is the file written (always a file with a plugins list).
	Path string `json:"path"`
	// Original is the single-plugin .conf that Path replaced, when the
	// installer converted one; uninstall writes it back and removes Path.
	Original string `json:"original,omitempty"`
	// Before is the content to restore: Path's (or Original's) content
	// without podscope. After is exactly what the installer wrote.
	Before []byte      `json:"before"`
	After  []byte      `json:"after"`
	Mode   os.FileMode `json:"mode"`
}

func (s *state) config(path string) *confRecord {
	for i := range s.Configs {
		if s.Configs[i].Path == path {
			return &s.Configs[i]
		}
	}
	return nil
}

func (s *state) setConfig(r confRecord) {
	if old := s.config(r.Path); old != nil {
		*old = r
		return
	}
	s.Configs = append(s.Configs, r)
}

// setBinary records r and reports whether the record changed.
func (s *state) setBinary(r binRecord) bool {
	for i := range s.Binaries {
		if s.Binaries[i].Path == r.Path {
			changed := s.Binaries[i] != r
			s.Binaries[i] = r
			return changed
		}
	}
	s.Binaries = append(s.Binaries, r)
	return true
}

func (in *Installer) statePath() string { return filepath.Join(in.cfg.StateDir, stateFileName) }

func (in *Installer) loadState() (*state, error) {
	data, err := os.ReadFile(in.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return &state{Version: stateVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading install state: %w", err)
	}
	var s state
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("install state %s is corrupt (%v): move it away to start over; podscope entries are then found by their type", in.statePath(), err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("install state %s has version %d, this podscope-install knows %d", in.statePath(), s.Version, stateVersion)
	}
	return &s, nil
}

func (in *Installer) saveState(s *state) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(in.statePath(), append(data, '\n'), 0o600)
}

// lockState takes the installers' lock and reads the state under it. The
// lock serialises installers on one node (an init container and a watcher,
// or a person running podscope-install by hand) with a flock on the state
// directory; the caller releases it with unlock once it saved its changes.
func (in *Installer) lockState() (st *state, unlock func(), err error) {
	unlock, err = flock.File(filepath.Join(in.cfg.StateDir, lockFileName))
	if err != nil {
		return nil, nil, err
	}
	if st, err = in.loadState(); err != nil {
		unlock()
		return nil, nil, err
	}
	return st, unlock, nil
}
