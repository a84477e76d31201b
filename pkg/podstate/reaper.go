package podstate

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

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

// links is a snapshot of the node's links (ifindex -> name): one netlink
// dump per reap instead of one request per registered pod.
type links map[int]string

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS of the kernel's
// <linux/rtnetlink.h>, a bit of IFLA_EXT_MASK (a kernel without it ignores
// the bit and sends the counters).
const rtextFilterSkipStats = 1 << 3

// linkSnapshot dumps the netns's links and keeps only each one's index and
// name. The dump is most of the reaper's time at 1,000 pods (30-46 ms of
// ~50 in the bench's node netns, most of it the kernel filling each bridged
// veth's attributes); netlink.LinkList also decoded every attribute of every
// link into a Link, and the counters are not asked for
// (BenchmarkLinkSnapshot, 1,000 veths: 7.2 ms against 12.3 ms). A dump the
// kernel reports as interrupted (links came or went during it) is an
// error, never a partial answer: a live veth missing from the snapshot
// would get its pod torn down.
func linkSnapshot() (links, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	// Without the counters the kernel does not sum every device's per-CPU
	// statistics into the answer.
	req.AddData(nl.NewRtAttr(unix.IFLA_EXT_MASK, nl.Uint32Attr(rtextFilterSkipStats)))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, fmt.Errorf("dumping links: %w", err)
	}
	out := make(links, len(msgs))
	for _, m := range msgs {
		if len(m) < unix.SizeofIfInfomsg {
			return nil, fmt.Errorf("dumping links: short message (%d bytes)", len(m))
		}
		ifi := nl.DeserializeIfInfomsg(m)
		attrs, err := nl.ParseRouteAttr(m[ifi.Len():])
		if err != nil {
			return nil, fmt.Errorf("dumping links: %w", err)
		}
		name := ""
		for _, a := range attrs {
			if a.Attr.Type == unix.IFLA_IFNAME {
				name = strings.TrimRight(string(a.Value), "\x00")
				break
			}
		}
		out[int(ifi.Index)] = name
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

// HostVethAlive reports whether p's host veth still exists in the current
// netns under its name (an ifindex is reused once the veth is gone).
func HostVethAlive(p pods.Pod) bool { return linkAlive(p.HostIfindex, p.HostInterface) }

func linkAlive(ifindex int, name string) bool {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false
	}
	return name == "" || l.Attrs().Name == name
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

// Reap is the reaper on an already opened state (ADD holds the lock and
// has the registry and datapath open): it tears down every pod whose host
// veth or netns is gone, stopping after budget.
func (s *State) Reap(budget time.Duration) ([]pods.Pod, error) {
	deadline := time.Now().Add(budget)
	// Blobs of long identities whose pod entry is gone (a kill between the
	// two deletes): nothing else would remove them.
	if _, err := s.Registry.PruneBlobs(); err != nil {
		return nil, err
	}
	all, err := s.Registry.List()
	if err != nil {
		return nil, err
	}
	// The registry's index (ADD's lookups) gets what a podscope without it
	// wrote; the teardowns below keep it up to date themselves.
	var errs []error
	if err := s.Registry.Reconcile(all); err != nil {
		errs = append(errs, err)
	}
	if len(all) == 0 {
		return nil, errors.Join(errs...)
	}
	if s.Datapath == nil && s.DatapathErr == nil {
		s.DatapathErr = fmt.Errorf("datapath pins under %s unavailable", s.Root.Path)
	}
	ls, err := linkSnapshot()
	if err != nil {
		ls = nil // fall back to one lookup per pod
	}
	var reaped []pods.Pod
	for _, p := range all {
		if time.Now().After(deadline) {
			break
		}
		why := staleReason(p, ls)
		if why == "" {
			continue
		}
		if err := s.Teardown(p, "reaped: "+why); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, p)
	}
	// Policy sets a crashed ADD or DEL left without users, or half-written.
	if s.Datapath != nil {
		if _, err := s.Datapath.GCPolicySets(); err != nil {
			errs = append(errs, err)
		}
	}
	return reaped, errors.Join(errs...)
}
