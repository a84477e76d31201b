// Package podstate is the node's pod-state store: the state directory and
// its lock, the pinned pod registry joined with the datapath's counters, the
// accounting log of finished pods, teardown and the reaper of pods whose
// veth or netns vanished without a DEL.
//
// The CNI plugin (ADD, DEL, GC), podscope-nri (reaper, metrics) and
// podscopectl (pods, cleanup) all reach the pod state through this package
// only.
package podstate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/flock"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// DefaultDir is the state directory (lock, accounting.jsonl) when none is
// configured.
const DefaultDir = "/var/lib/podscope"

// lockFile is the state-dir lock's file name.
const lockFile = "lock"

// Lock takes the exclusive lock of the state directory dir ("" is
// DefaultDir), creating it if needed. The runtime runs many ADD/DEL in
// parallel; PodID allocation, the registry and the accounting log are
// read-modify-write, so every writer (plugin, reaper, podscopectl cleanup)
// holds it. The returned func releases it; the kernel drops it if the
// holder dies.
func Lock(dir string) (func(), error) {
	return flock.File(filepath.Join(dirOr(dir), lockFile))
}

func dirOr(dir string) string {
	if dir == "" {
		return DefaultDir
	}
	return dir
}

// State is the pod state of one node, opened under the state-dir lock.
type State struct {
	Root     pins.Root
	Dir      string // the state directory
	Registry *pods.Registry
	// Datapath is nil when its pins are gone (DatapathErr says why): the
	// pods' identities can still be logged and their entries dropped.
	Datapath    *datapath.Datapath
	DatapathErr error
}

// ErrUnobserved: the pod was let start without podscope attaching (its
// interface is not a veth…), so it has no counters; the accounting line and
// podscopectl say why.
var ErrUnobserved = errors.New("not observed")

// Counters are p's datapath counters, or why there are none.
func (s *State) Counters(p pods.Pod) (datapath.Counters, error) {
	return counters(s.Datapath, s.DatapathErr, p)
}

// counters is the one join of a registered pod with the datapath's
// counters, for teardown, List and so `podscopectl pods` and the metrics.
func counters(dp *datapath.Datapath, dperr error, p pods.Pod) (datapath.Counters, error) {
	if p.Unobserved != "" {
		return datapath.Counters{}, fmt.Errorf("%w: %s", ErrUnobserved, p.Unobserved)
	}
	if dp == nil {
		return datapath.Counters{}, dperr
	}
	return dp.Counters(p.ID)
}

// WithPinned runs fn under the state-dir lock with the pinned pod registry
// and datapath. Without a registry nothing was ever attached: fn is not
// called.
func WithPinned(root pins.Root, dir string, fn func(*State) error) error {
	dir = dirOr(dir)
	if _, err := os.Stat(pods.Path(root)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	unlock, err := Lock(dir)
	if err != nil {
		return err
	}
	defer unlock()
	reg, err := pods.OpenPinnedRegistry(root)
	if errors.Is(err, pods.ErrNoRegistry) {
		return nil
	}
	if err != nil {
		return err
	}
	defer reg.Close()
	s := &State{Root: root, Dir: dir, Registry: reg}
	s.Datapath, s.DatapathErr = datapath.OpenPinned(root)
	if s.DatapathErr != nil {
		s.Datapath = nil
	} else {
		defer s.Datapath.Close()
	}
	return fn(s)
}

// Pod is a registered pod with its datapath counters: what `podscopectl
// pods` prints and the metrics exporter serves.
type Pod struct {
	pods.Pod
	Counters datapath.Counters
	// CountersErr says why Counters could not be read: the datapath pins
	// are gone (datapath.ErrNotLoaded), the pod's entries were already
	// removed by a DEL in progress (datapath.ErrUnknownPod), or a read failed.
	CountersErr error
}

// List returns every registered pod with its counters, read from the pins
// under root without the state-dir lock (readers never block ADD). Nothing
// attached yet is an empty list.
func List(root pins.Root) ([]Pod, error) {
	reg, err := pods.OpenPinnedRegistry(root)
	if errors.Is(err, pods.ErrNoRegistry) {
		return []Pod{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	list, err := reg.List()
	if err != nil {
		return nil, err
	}
	out := make([]Pod, 0, len(list))
	if len(list) == 0 {
		return out, nil
	}
	dp, dperr := datapath.OpenPinned(root)
	if dperr != nil {
		dp = nil
	} else {
		defer dp.Close()
	}
	for _, p := range list {
		r := Pod{Pod: p}
		r.Counters, r.CountersErr = counters(dp, dperr, p)
		out = append(out, r)
	}
	return out, nil
}
