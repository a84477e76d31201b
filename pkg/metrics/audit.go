package metrics

import (
	"errors"
	"sync"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/pins"
)

// AuditMaps is what the audit metrics read from the kernel side:
// pkg/audit's Auditor (its pinned maps, read at each call).
type AuditMaps interface {
	Mode() audit.Mode
	Lost() (map[uint64]uint64, error)
	Armed() (map[uint64]audit.Identity, error)
}

var _ AuditMaps = (*audit.Auditor)(nil)

// Audit is the AuditSource of podscope-nri: losses and armed cgroups from
// the Auditor's pinned maps at scrape time, delivered events from the
// reader's WriteCounter.
type Audit struct {
	// Maps returns the Auditor, or nil while it is not available (audit
	// failed to load); the mode then comes from the pins alone.
	Maps   func() AuditMaps
	Root   pins.Root
	Writes *WriteCounter

	// Loss counters outlive the arming (a disarmed container's losses stay
	// counted): the identity of every cgroup seen armed is remembered so
	// its losses keep their labels. Names of cgroups that are neither armed
	// nor have losses are dropped at each scrape, so the map stays as small
	// as the two sets.
	mu    sync.Mutex
	names map[uint64]Container
	armed map[uint64]bool // at the last scrape
}

var _ AuditSource = (*Audit)(nil)

// Remember records a cgroup's identity (the reader calls it for each
// event's cgroup; Armed calls it at each scrape).
func (a *Audit) Remember(cgid uint64, c Container) {
	if c == (Container{}) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.names == nil {
		a.names = map[uint64]Container{}
	}
	a.names[cgid] = c
}

func (a *Audit) name(cgid uint64) Container {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.names[cgid]
}

// prune forgets names of cgroups that have no losses and were not armed at
// the last scrape (a cgroup armed since is remembered again by Remember).
func (a *Audit) prune(lost map[uint64]uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for cgid := range a.names {
		if _, ok := lost[cgid]; !ok && !a.armed[cgid] {
			delete(a.names, cgid)
		}
	}
}

// ContainerOf turns an audit identity into metric labels.
func ContainerOf(id audit.Identity) Container {
	return Container{Identity: id.Identity, Container: id.Container}
}

// Mode implements AuditSource.
func (a *Audit) Mode() (string, error) {
	if m := a.maps(); m != nil {
		return string(m.Mode()), nil
	}
	mode, err := audit.PinnedMode(a.Root)
	if errors.Is(err, audit.ErrNotLoaded) {
		return "", nil
	}
	return string(mode), err
}

// Armed implements AuditSource.
func (a *Audit) Armed() (int, error) {
	m := a.maps()
	if m == nil {
		return 0, nil
	}
	armed, err := m.Armed()
	if err != nil {
		return 0, err
	}
	set := make(map[uint64]bool, len(armed))
	for cgid, id := range armed {
		a.Remember(cgid, ContainerOf(id))
		set[cgid] = true
	}
	a.mu.Lock()
	a.armed = set
	a.mu.Unlock()
	return len(armed), nil
}

// Lost implements AuditSource. Losses of cgroups never seen armed by this
// process (armed and disarmed while it was down, or key 0: cgroups that did
// not fit in the loss map) are summed under empty labels.
func (a *Audit) Lost() (map[Container]uint64, error) {
	m := a.maps()
	if m == nil {
		return nil, nil
	}
	lost, err := m.Lost()
	if err != nil {
		return nil, err
	}
	out := make(map[Container]uint64, len(lost))
	for cgid, n := range lost {
		out[a.name(cgid)] += n
	}
	a.prune(lost)
	return out, nil
}

// WriteEvents implements AuditSource.
func (a *Audit) WriteEvents() map[WriteKey]uint64 {
	if a.Writes == nil {
		return nil
	}
	return a.Writes.Snapshot()
}

func (a *Audit) maps() AuditMaps {
	if a.Maps == nil {
		return nil
	}
	return a.Maps()
}
