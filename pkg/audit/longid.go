package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/podscope/podscope/pkg/blobs"
	"github.com/podscope/podscope/pkg/pins"
)

// longIdentities keeps the identities whose fields do not fit the fixed
// char arrays of struct identity (bpf/audit.h): the CRI sets no length on
// a pod UID or container ID, and a container must never run unaudited
// because of its name. The kernel never reads struct identity (user space
// names events with it), so the whole identity lives in the blob store
// (pkg/blobs, kind KindAuditIdentity, id = cgroup id) and the kernel entry
// keeps the fields that fit, the others empty. Only podscope-nri writes
// this kind, serialised by Auditor.mu.
type longIdentities struct {
	mu     sync.Mutex
	store  *blobs.Store
	probed bool // looked for a pinned store once (none: no long identity yet)
}

// get returns the store, creating it when create is set; nil when there is
// none and create is not set.
func (l *longIdentities) get(root pins.Root, create bool) (*blobs.Store, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.store != nil {
		return l.store, nil
	}
	if !l.probed || create {
		s, err := blobs.OpenPinned(root)
		if err == nil {
			l.store, l.probed = s, true
			return s, nil
		}
		if !errors.Is(err, blobs.ErrNoStore) {
			return nil, err
		}
		l.probed = true
	}
	if !create {
		return nil, nil
	}
	s, err := blobs.Open(root)
	if err != nil {
		return nil, err
	}
	l.store = s
	return s, nil
}

func (l *longIdentities) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.store != nil {
		l.store.Close()
		l.store = nil
	}
}

// putLongIdentity stores id whole when it did not fit the kernel entry, and
// removes an earlier long identity of the cgroup when it now fits.
func (a *Auditor) putLongIdentity(cgid uint64, id Identity, long bool) error {
	s, err := a.long.get(a.root, long)
	if err != nil {
		return fmt.Errorf("identity does not fit the kernel entry and the blob store: %w", err)
	}
	if s == nil {
		return nil
	}
	if !long {
		return s.Delete(blobs.KindAuditIdentity, cgid)
	}
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	return s.Put(blobs.KindAuditIdentity, cgid, b)
}

func (a *Auditor) dropLongIdentity(cgid uint64) error {
	s, err := a.long.get(a.root, false)
	if s == nil || err != nil {
		return err
	}
	return s.Delete(blobs.KindAuditIdentity, cgid)
}

// identityOf is the identity of an armed cgroup: the kernel entry, or the
// whole identity from the blob store when it did not fit there.
func (a *Auditor) identityOf(cgid uint64, k *auditIdentity) Identity {
	id := identityFromKernel(k)
	s, err := a.long.get(a.root, false)
	if s == nil || err != nil {
		return id
	}
	b, ok, err := s.Get(blobs.KindAuditIdentity, cgid)
	if err != nil || !ok {
		return id
	}
	var whole Identity
	if json.Unmarshal(b, &whole) != nil {
		return id
	}
	return whole
}
