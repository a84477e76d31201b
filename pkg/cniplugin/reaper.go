package cniplugin

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// Reap removes pods whose host veth or netns is gone without a DEL having
// come (containerd never calls CNI GC), writing their accounting line first.
// It stops after budget. It must run in the netns the pods' host veths live
// in (the node's). Exported for podscope-nri to call periodically.
func Reap(root pins.Root, stateDir string, budget time.Duration) ([]pods.Pod, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	if _, err := os.Stat(pods.Path(root)); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	lock, err := lockStateDir(stateDir)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	reg, err := pods.OpenPinnedRegistry(root)
	if errors.Is(err, pods.ErrNoRegistry) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	dp, err := datapath.OpenPinned(root)
	if err != nil {
		dp = nil
	} else {
		defer dp.Close()
	}
	return reapLocked(root, stateDir, reg, dp, budget)
}

// staleReason says why a registered pod is stale, or "" if it is alive.
func staleReason(p pods.Pod) string {
	if !linkAlive(p.HostIfindex, p.HostInterface) {
		return fmt.Sprintf("host veth %s (ifindex %d) gone", p.HostInterface, p.HostIfindex)
	}
	// A bind-mounted netns file (/var/run/netns/…) is removed only when the
	// runtime destroys the sandbox. A /proc/<pid>/ns/net path vanishes when
	// that one process exits, while the netns may live on: not a signal.
	if p.Netns != "" && !strings.HasPrefix(p.Netns, "/proc/") {
		if _, err := os.Stat(p.Netns); errors.Is(err, os.ErrNotExist) {
			return "netns " + p.Netns + " gone"
		}
	}
	return ""
}

func reapLocked(root pins.Root, stateDir string, reg *pods.Registry, dp *datapath.Datapath, budget time.Duration) ([]pods.Pod, error) {
	deadline := time.Now().Add(budget)
	all, err := reg.List()
	if err != nil {
		return nil, err
	}
	var (
		reaped []pods.Pod
		errs   []error
	)
	var dperr error
	if dp == nil {
		dperr = fmt.Errorf("datapath pins under %s unavailable", root.Path)
	}
	for _, p := range all {
		if time.Now().After(deadline) {
			break
		}
		why := staleReason(p)
		if why == "" {
			continue
		}
		if err := teardown(stateDir, reg, dp, dperr, p, "reaped: "+why); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, p)
	}
	return reaped, errors.Join(errs...)
}

// TeardownAll logs and removes every registered pod under the state-dir
// lock (podscopectl cleanup), returning the pods it logged.
func TeardownAll(root pins.Root, stateDir, reason string) ([]pods.Pod, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	if _, err := os.Stat(pods.Path(root)); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	lock, err := lockStateDir(stateDir)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	reg, err := pods.OpenPinnedRegistry(root)
	if errors.Is(err, pods.ErrNoRegistry) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	dp, dperr := datapath.OpenPinned(root)
	if dp != nil {
		defer dp.Close()
	}
	all, err := reg.List()
	if err != nil {
		return nil, err
	}
	var (
		done []pods.Pod
		errs []error
	)
	for _, p := range all {
		if err := teardown(stateDir, reg, dp, dperr, p, reason); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, p)
	}
	return done, errors.Join(errs...)
}
