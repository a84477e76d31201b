package cniplugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// Reap removes pods whose host veth or netns is gone without a DEL having
// come (containerd never calls CNI GC), writing their accounting line first.
// It stops after budget. It must run in the netns the pods' host veths live
// in (the node's). Exported for podscope-nri to call periodically.
func Reap(root pins.Root, stateDir string, budget time.Duration) ([]pods.Pod, error) {
	return withPinnedPods(root, stateDir, func(stateDir string, reg *pods.Registry, dp *datapath.Datapath, _ error) ([]pods.Pod, error) {
		return reapLocked(root, stateDir, reg, dp, budget)
	})
}

// withPinnedPods runs fn under the state-dir lock with the pinned pod
// registry and datapath (dp nil and dperr set when the datapath pins are
// gone). Without a registry nothing was ever attached: fn is not called.
func withPinnedPods(root pins.Root, stateDir string,
	fn func(stateDir string, reg *pods.Registry, dp *datapath.Datapath, dperr error) ([]pods.Pod, error)) ([]pods.Pod, error) {
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
	if dperr != nil {
		dp = nil
	} else {
		defer dp.Close()
	}
	return fn(stateDir, reg, dp, dperr)
}

// AddReapInterval is how often, at most, an ADD runs the reaper on a node.
// The reaper lists every registered pod and every link; paying that on each
// ADD made ADD latency grow with the number of pods (measured: 36 ms at pods
// 1-10, 179 ms at pods 991-1000). podscope-nri reaps on its own schedule, so
// ADD only needs to catch what happens while no daemon runs.
const AddReapInterval = 10 * time.Second

// reapDue reports whether the ADD-time reaper should run now, and if so
// records that it ran. The stamp is a file in the state dir; callers hold
// the state-dir lock.
func reapDue(stateDir string, now time.Time) bool {
	stamp := filepath.Join(stateDir, "reap.stamp")
	if st, err := os.Stat(stamp); err == nil {
		if age := now.Sub(st.ModTime()); age >= 0 && age < AddReapInterval {
			return false
		}
	}
	// A stamp that cannot be written means reaping on every ADD: slower,
	// never wrong, so its errors are not the ADD's.
	if f, err := os.OpenFile(stamp, os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		f.Close()
		os.Chtimes(stamp, now, now)
	}
	return true
}

// links is a snapshot of the node's links (ifindex -> name): one netlink
// dump per reap instead of one request per registered pod.
type links map[int]string

func linkSnapshot() (links, error) {
	all, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	out := make(links, len(all))
	for _, l := range all {
		out[l.Attrs().Index] = l.Attrs().Name
	}
	return out, nil
}

func (ls links) alive(ifindex int, name string) bool {
	if ls == nil {
		return linkAlive(ifindex, name)
	}
	got, ok := ls[ifindex]
	return ok && (name == "" || got == name)
}

// staleReason says why a registered pod is stale, or "" if it is alive.
// ls may be nil: then each link is asked for by itself.
func staleReason(p pods.Pod, ls links) string {
	if p.Unobserved == "" && !ls.alive(p.HostIfindex, p.HostInterface) {
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
	if len(all) == 0 {
		return nil, nil
	}
	ls, err := linkSnapshot()
	if err != nil {
		ls = nil // fall back to one lookup per pod
	}
	for _, p := range all {
		if time.Now().After(deadline) {
			break
		}
		why := staleReason(p, ls)
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
	return withPinnedPods(root, stateDir, func(stateDir string, reg *pods.Registry, dp *datapath.Datapath, dperr error) ([]pods.Pod, error) {
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
	})
}
