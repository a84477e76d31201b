package podstate

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/fault"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// Teardown writes pod's accounting line first, then detaches it and removes
// its entries. Without a datapath (its pins are gone) the identity is still
// logged and the registry entry dropped. When the line cannot be written the
// pod is kept: removing it would lose its counters for good.
//
// Exactly once, even when killed at any step and run again (the runtime
// retries DEL; the reaper finds what is left): before the line is written
// the registry entry records where in the log it goes, and a teardown that
// finds that mark looks for the line there instead of writing it again.
func (s *State) Teardown(pod pods.Pod, reason string) error {
	c, cerr := s.Counters(pod)
	logged := false
	if pod.AccountingOffset > 0 {
		var err error
		if logged, err = Logged(s.Dir, pod.AccountingOffset-1, pod); err != nil {
			return fmt.Errorf("podscope: %w; pod %s left attached", err, pod.Ref())
		}
	} else {
		size, err := logSize(s.Dir)
		if err != nil {
			return fmt.Errorf("podscope: %w; pod %s left attached", err, pod.Ref())
		}
		pod.AccountingOffset = size + 1
		if err := s.Registry.Put(pod); err != nil {
			return fmt.Errorf("podscope: marking the teardown of pod %s: %w", pod.Ref(), err)
		}
		fault.Point("del:marked")
	}
	if !logged {
		if err := Append(s.Dir, NewRecord(pod, reason, c, cerr)); err != nil {
			return fmt.Errorf("podscope: %w; pod %s left attached", err, pod.Ref())
		}
	}
	fault.Point("del:logged")
	var errs []error
	if dp := s.Datapath; dp != nil {
		if err := dp.Detach(pod.ID); err != nil {
			errs = append(errs, fmt.Errorf("detaching pod %s: %w", pod.Ref(), err))
		}
		fault.Point("del:detached")
		if err := dp.RemovePod(pod.ID); err != nil {
			errs = append(errs, fmt.Errorf("removing map entries of pod %s: %w", pod.Ref(), err))
		}
		fault.Point("del:removed")
	}
	if err := s.Registry.Delete(pod.ID); err != nil {
		errs = append(errs, err)
	}
	fault.Point("del:unregistered")
	if len(errs) > 0 {
		return fmt.Errorf("podscope: %w", errors.Join(errs...))
	}
	return nil
}

// Reap removes pods whose host veth or netns is gone without a DEL having
// come (containerd never calls CNI GC), writing their accounting line first.
// It stops after budget. It must run in the netns the pods' host veths live
// in (the node's). podscope-nri calls it periodically.
func Reap(root pins.Root, dir string, budget time.Duration) ([]pods.Pod, error) {
	var reaped []pods.Pod
	err := WithPinned(root, dir, func(s *State) (err error) {
		reaped, err = s.Reap(budget)
		return err
	})
	return reaped, err
}

// TeardownAll logs and removes every registered pod under the state-dir
// lock (podscopectl cleanup), returning the pods it logged.
func TeardownAll(root pins.Root, dir, reason string) ([]pods.Pod, error) {
	var done []pods.Pod
	err := WithPinned(root, dir, func(s *State) error {
		all, err := s.Registry.List()
		if err != nil {
			return err
		}
		var errs []error
		for _, p := range all {
			if err := s.Teardown(p, reason); err != nil {
				errs = append(errs, err)
				continue
			}
			done = append(done, p)
		}
		return errors.Join(errs...)
	})
	return done, err
}

// AddReapInterval is how often, at most, an ADD runs the reaper on a node.
// The reaper lists every registered pod and every link; paying that on each
// ADD made ADD latency grow with the number of pods (measured: 36 ms at pods
// 1-10, 179 ms at pods 991-1000). podscope-nri reaps on its own schedule, so
// ADD only needs to catch what happens while no daemon runs (see
// MarkDaemonReaped).
const AddReapInterval = 10 * time.Second

// ReapStamp is the file in the state dir that records the last reap: its
// mtime is when, its content how long that reap holds (a duration; empty,
// as older plugins wrote it, or unparsable means AddReapInterval). ADD
// writes AddReapInterval; podscope-nri writes twice its own interval, so
// while the daemon reaps, ADD does not.
const ReapStamp = "reap.stamp"

// stampReap records a reap at now that holds for holds.
func stampReap(dir string, now time.Time, holds time.Duration) error {
	stamp := filepath.Join(dirOr(dir), ReapStamp)
	if err := os.WriteFile(stamp, []byte(holds.String()+"\n"), 0o600); err != nil {
		return err
	}
	return os.Chtimes(stamp, now, now)
}

// reapHolds reports whether the last reap recorded in the stamp still holds
// at now. A stamp that cannot be read says no: reaping again is slower,
// never wrong.
func reapHolds(dir string, now time.Time) bool {
	f, err := os.Open(filepath.Join(dirOr(dir), ReapStamp))
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false
	}
	holds := AddReapInterval
	if b, err := io.ReadAll(io.LimitReader(f, 64)); err == nil {
		if d, err := time.ParseDuration(strings.TrimSpace(string(b))); err == nil && d > 0 {
			holds = d
		}
	}
	age := now.Sub(st.ModTime())
	return age >= 0 && age < holds
}

// MarkDaemonReaped records that the node daemon reaped at now and reaps
// again every interval: for twice that, ADD leaves reaping to it (at 1,000
// pods a reap costs the ADD that runs it ~50 ms).
func MarkDaemonReaped(dir string, now time.Time, interval time.Duration) error {
	return stampReap(dir, now, 2*interval)
}

// ClearDaemonReaped removes the stamp when the daemon stops reaping: the
// next ADD reaps.
func ClearDaemonReaped(dir string) error {
	err := os.Remove(filepath.Join(dirOr(dir), ReapStamp))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// ReapDue reports whether the ADD-time reaper should run now, and if so
// records that it ran: not while the last reap holds (AddReapInterval after
// an ADD's, twice its interval after podscope-nri's). Callers hold the
// state-dir lock.
func ReapDue(dir string, now time.Time) bool {
	if reapHolds(dir, now) {
		return false
	}
	// A stamp that cannot be written means reaping on every ADD: slower,
	// never wrong, so its errors are not the ADD's.
	_ = stampReap(dir, now, AddReapInterval)
	return true
}

// linkQuery asks the kernel whether a link exists, and under which name,
// one link at a time: SIOCGIFNAME on a socket of the current netns (the
// kernel looks the index up in its table and copies the name; what
// if_indextoname(3) does). The reaper used to dump every link of the node
// over netlink instead, and the kernel fills each link's attributes into a
// dump (bridge port, IPv6 settings and statistics): 30-46 ms at 1,000
// bridged veths, the most of a reap; asking for one link over netlink cost
// 50-80 µs in the same netns.
type linkQuery struct {
	fd int // -1: no socket (every question then fails, and says alive)
}

// newLinkQuery opens the socket in the current netns: the caller runs in
// the netns its pods' host veths live in.
func newLinkQuery() *linkQuery {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd = -1
	}
	return &linkQuery{fd: fd}
}

func (q *linkQuery) Close() {
	if q.fd >= 0 {
		unix.Close(q.fd)
		q.fd = -1
	}
}

// alive reports whether the link ifindex exists under name (any name when
// name is empty: an ifindex is reused once its device is gone). Only the
// kernel's "no such device" says gone: any other error says alive, since
// tearing down a live pod loses its accounting and policy, and a pod left
// for a later reap loses nothing.
func (q *linkQuery) alive(ifindex int, name string) bool {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return true
	}
	ifr.SetUint32(uint32(ifindex))
	switch err := unix.IoctlIfreq(q.fd, unix.SIOCGIFNAME, ifr); {
	case errors.Is(err, unix.ENODEV):
		return false
	case err != nil:
		return true
	}
	return name == "" || ifr.Name() == name
}

// HostVethAlive reports whether p's host veth still exists in the current
// netns under its name (an ifindex is reused once the veth is gone).
func HostVethAlive(p pods.Pod) bool {
	q := newLinkQuery()
	defer q.Close()
	return q.alive(p.HostIfindex, p.HostInterface)
}

// staleReason says why a registered pod is stale, or "" if it is alive.
func staleReason(p pods.Pod, ls *linkQuery) string {
	if p.Unobserved == "" && !ls.alive(p.HostIfindex, p.HostInterface) {
		return fmt.Sprintf("host veth %s (ifindex %d) gone", p.HostInterface, p.HostIfindex)
	}
	// A bind-mounted netns file (/var/run/netns/…) is removed only when the
	// runtime destroys the sandbox. A /proc/<pid>/ns/net path vanishes when
	// that one process exits, while the netns may live on: not a signal.
	// Nor is a file whose directory this process cannot see (podscope-nri
	// in a container without the runtime's netns dir mounted): only the
	// file missing from a directory that is there.
	if p.Netns != "" && !strings.HasPrefix(p.Netns, "/proc/") {
		if _, err := os.Stat(p.Netns); errors.Is(err, os.ErrNotExist) {
			if _, err := os.Stat(filepath.Dir(p.Netns)); err == nil {
				return "netns " + p.Netns + " gone"
			}
		}
	}
	return ""
}

// Reap is the reaper on an already opened state: it tears down every pod
// whose host veth or netns is gone, stopping after budget, and does the
// node-wide chores (see reap).
func (s *State) Reap(budget time.Duration) ([]pods.Pod, error) {
	deadline := time.Now().Add(budget)
	all, err := s.Registry.List()
	if err != nil {
		return nil, err
	}
	return s.reap(all, all, true, deadline)
}

// AddReapSlice is how many registered pods one ADD-time reap checks (each
// a link question and a stat of its netns), so that the ADD that reaps
// costs about as much at 1,000 pods as at 128 (see ReapSlice).
const AddReapSlice = 128

// ReapCursor is the file in the state dir holding the pod ID where the
// next ADD-time reap's slice starts (empty or missing: the first).
const ReapCursor = "reap.cursor"

// ReapSlice is the reaper of ADD: it checks at most n registered pods, in
// pod ID order from where the previous slice stopped (the state dir's
// ReapCursor), and tears down those that are stale, stopping after budget
// (pods of the slice left unchecked then wait for the next pass). A pass
// over all pods takes ceil(pods / n) ADD-time reaps; the node-wide chores
// (Reap's) run at the start of each pass. Callers hold the state-dir lock.
func (s *State) ReapSlice(n int, budget time.Duration) ([]pods.Pod, error) {
	deadline := time.Now().Add(budget)
	all, err := s.Registry.List() // in pod ID order
	if err != nil {
		return nil, err
	}
	start := readReapCursor(s.Dir)
	i := sort.Search(len(all), func(i int) bool { return all[i].ID >= start })
	if i == len(all) {
		i = 0 // past the last pod: a new pass
	}
	next := datapath.PodID(0)
	if i+n < len(all) {
		next = all[i+n].ID
	}
	// Written before the slice is checked: a reap killed on a pod (or
	// failing on it every time) does not stop the next slices.
	cursorErr := writeReapCursor(s.Dir, next)
	reaped, err := s.reap(all, all[i:min(i+n, len(all))], i == 0, deadline)
	return reaped, errors.Join(cursorErr, err)
}

// reap tears down the pods of check that are stale, stopping at deadline.
// With pass (a full reap, or the first slice of a pass) it also does the
// node-wide chores around them, which need all of the registry: before,
// blobs of long identities whose pod entry is gone (a kill between the two
// deletes: nothing else would remove them) and the registry's index
// reconciled with the registry (ADD's lookups get what a podscope without
// the index wrote; the teardowns keep it up to date themselves); after,
// the policy sets a crashed ADD or DEL left without users, or
// half-written.
func (s *State) reap(all, check []pods.Pod, pass bool, deadline time.Time) ([]pods.Pod, error) {
	var errs []error
	if pass {
		if _, err := s.Registry.PruneBlobs(); err != nil {
			errs = append(errs, err)
		} else if err := s.Registry.Reconcile(all); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Datapath == nil && s.DatapathErr == nil {
		s.DatapathErr = fmt.Errorf("datapath pins under %s unavailable", s.Root.Path)
	}
	q := newLinkQuery()
	defer q.Close()
	var reaped []pods.Pod
	for _, p := range check {
		if time.Now().After(deadline) {
			break
		}
		why := staleReason(p, q)
		if why == "" {
			continue
		}
		if err := s.Teardown(p, "reaped: "+why); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, p)
	}
	if pass && s.Datapath != nil {
		if _, err := s.Datapath.GCPolicySets(); err != nil {
			errs = append(errs, err)
		}
	}
	return reaped, errors.Join(errs...)
}

func readReapCursor(dir string) datapath.PodID {
	b, err := os.ReadFile(filepath.Join(dirOr(dir), ReapCursor))
	if err != nil {
		return 0
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0 // unreadable: start a pass, which is slower, never wrong
	}
	return datapath.PodID(id)
}

func writeReapCursor(dir string, next datapath.PodID) error {
	return os.WriteFile(filepath.Join(dirOr(dir), ReapCursor), []byte(strconv.FormatUint(uint64(next), 10)+"\n"), 0o600)
}
