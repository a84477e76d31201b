// Package pods owns the pinned pod identity registry: for every pod podscope
// attached to, its PodID (the datapath's stable index), Kubernetes identity,
// container ID, interfaces, IPs, attach time and mode. It lives in a pinned
// BPF hash map (read by user space only) so that podscopectl and the metrics
// exporter can name pods from the pins alone, with no podscope process
// running.
//
// Writers (the CNI plugin, its reaper) serialise on the state-dir lock; the
// registry itself does no locking.
package pods

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/blobs"
	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
)

// Owner is the pins.Root owner directory of the registry.
const Owner = "pods"

// MapName is the registry map's pin name (and kernel name).
const MapName = "podscope_pods"

// MaxPods bounds the registry (and so PodIDs). BPF_F_NO_PREALLOC keeps
// the memory proportional to the pods actually attached.
const MaxPods = 65535

// Pod is one attached pod. The IPs keep the prefix length of the CNI result.
type Pod struct {
	ID            datapath.PodID `json:"id"`
	Namespace     string         `json:"namespace"`
	Name          string         `json:"name"`
	UID           string         `json:"uid"`
	ContainerID   string         `json:"containerID"`
	Netns         string         `json:"netns"`
	Interface     string         `json:"interface"`
	HostInterface string         `json:"hostInterface"`
	HostIfindex   int            `json:"hostIfindex"`
	IPs           []netip.Prefix `json:"ips"`
	AttachedAt    time.Time      `json:"attachedAt"`
	Mode          datapath.Mode  `json:"mode"`
	// Network is the CNI network (conflist name) the pod was attached
	// through: GC of one network must not touch another's pods.
	Network string `json:"network,omitempty"`
	// Unobserved, when set, says why podscope let the pod start without
	// attaching (no accounting, no policy): e.g. its interface is a macvlan,
	// with no host veth to attach to. Such a pod has no datapath state.
	Unobserved string `json:"unobserved,omitempty"`
	// AccountingOffset is 1 + the size of the accounting log when teardown
	// of this pod began (0: it has not): the pod's line is at or after it.
	AccountingOffset int64 `json:"accountingOffset,omitempty"`
}

// Ref is NS/NAME, or the container ID when the pod has no Kubernetes name.
func (p Pod) Ref() string {
	if p.Namespace == "" && p.Name == "" {
		return p.ContainerID
	}
	return p.Namespace + "/" + p.Name
}

// ErrNoRegistry means nothing has been attached under this bpffs root yet.
var ErrNoRegistry = errors.New("no pod registry pinned")

// Registry is the pinned pod map, with the blob store that holds the pods
// whose identity does not fit it (layout.go).
type Registry struct {
	m     *ebpf.Map
	root  pins.Root
	blobs *blobs.Store // nil until a pod needs it (or one did before)
	// idx and ids are the index (index.go), opened by the first writer
	// that needs them; nil in readers.
	idx, ids *ebpf.Map
}

func newRegistry(m *ebpf.Map, root pins.Root) (*Registry, error) {
	r := &Registry{m: m, root: root}
	b, err := blobs.OpenPinned(root)
	switch {
	case err == nil:
		r.blobs = b
	case !errors.Is(err, blobs.ErrNoStore):
		m.Close()
		return nil, fmt.Errorf("pod registry: %w", err)
	}
	return r, nil
}

func spec() *ebpf.MapSpec { return pins.UserMapSpec(MapName, 4, valueSize, MaxPods) }

// Path is where the registry is pinned under root.
func Path(root pins.Root) string { return root.Pin(Owner, MapName) }

// OpenRegistry opens the pinned registry, creating and pinning it if absent.
func OpenRegistry(root pins.Root) (*Registry, error) {
	m, err := root.CreateMap(Owner, spec(), "pod registry")
	if err != nil {
		return nil, err
	}
	return newRegistry(m, root)
}

// OpenPinnedRegistry opens an existing registry and never creates one; it
// returns an error wrapping ErrNoRegistry when none is pinned.
func OpenPinnedRegistry(root pins.Root) (*Registry, error) {
	m, err := root.OpenMap(Owner, spec(), "pod registry")
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", ErrNoRegistry, Path(root))
	}
	if err != nil {
		return nil, err
	}
	return newRegistry(m, root)
}

// Close drops the file descriptors; the pins stay.
func (r *Registry) Close() error {
	if r.blobs != nil {
		r.blobs.Close()
	}
	if r.idx != nil {
		r.idx.Close()
		r.ids.Close()
	}
	return r.m.Close()
}

// Put stores (or replaces) the pod under p.ID. A pod that does not fit the
// fixed record has its blob written first, so a reader never finds a
// version 2 record without its blob; a blob left by an earlier, longer
// identity under the same ID is removed after the record no longer needs it.
func (r *Registry) Put(p Pod) error {
	if p.ID == 0 {
		return errors.New("pod registry: PodID 0 is invalid")
	}
	v, blob, err := encode(p)
	if err != nil {
		return err
	}
	if blob != nil {
		if r.blobs == nil {
			if r.blobs, err = blobs.Open(r.root); err != nil {
				return fmt.Errorf("pod registry: pod %d needs the blob store: %w", p.ID, err)
			}
		}
		if err := r.blobs.Put(blobs.KindPod, uint64(p.ID), blob); err != nil {
			return fmt.Errorf("pod registry: pod %d: %w", p.ID, err)
		}
	}
	if err := r.indexPut(p); err != nil {
		return err
	}
	if err := r.m.Put(uint32(p.ID), v); err != nil {
		return fmt.Errorf("pod registry: storing pod %d: %w", p.ID, err)
	}
	r.indexMark(p.ID, true)
	if blob == nil && r.blobs != nil {
		if err := r.blobs.Delete(blobs.KindPod, uint64(p.ID)); err != nil {
			return fmt.Errorf("pod registry: pod %d: %w", p.ID, err)
		}
	}
	return nil
}

// blobOf returns the reader of pod id's blob for decode.
func (r *Registry) blobOf(id datapath.PodID) func() ([]byte, error) {
	return func() ([]byte, error) {
		if r.blobs == nil {
			// Written by another process after this one opened the registry.
			b, err := blobs.OpenPinned(r.root)
			if err != nil {
				return nil, err
			}
			r.blobs = b
		}
		b, ok, err := r.blobs.Get(blobs.KindPod, uint64(id))
		if err == nil && !ok {
			err = fmt.Errorf("no blob for pod %d in %s", id, blobs.Path(r.root))
		}
		return b, err
	}
}

// PruneBlobs removes blobs whose pod is no longer registered: left when a
// process died between removing a pod's entry and its blob. Callers hold
// the writers' lock.
func (r *Registry) PruneBlobs() (int, error) {
	if r.blobs == nil {
		return 0, nil
	}
	ids, err := r.blobs.IDs(blobs.KindPod)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, id := range ids {
		var v []byte
		err := r.m.Lookup(uint32(id), &v)
		if err == nil {
			continue
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		if err := r.blobs.Delete(blobs.KindPod, id); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// Get returns the pod with id.
func (r *Registry) Get(id datapath.PodID) (Pod, bool, error) {
	var v []byte
	err := r.m.Lookup(uint32(id), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Pod{}, false, nil
	}
	if err != nil {
		return Pod{}, false, fmt.Errorf("pod registry: looking up pod %d: %w", id, err)
	}
	p, err := decode(id, v, r.blobOf(id))
	return p, err == nil, err
}

// Delete removes the pod with id (and its blob); a missing entry is not an
// error.
func (r *Registry) Delete(id datapath.PodID) error {
	old, had, _ := r.Get(id) // for its index entry; undecodable: the reaper's Reconcile drops it
	err := r.m.Delete(uint32(id))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("pod registry: deleting pod %d: %w", id, err)
	}
	if had {
		r.indexDelete(id, old)
	} else {
		r.indexMark(id, false)
	}
	if r.blobs != nil {
		if err := r.blobs.Delete(blobs.KindPod, uint64(id)); err != nil {
			return fmt.Errorf("pod registry: pod %d: %w", id, err)
		}
	}
	return nil
}

// List returns every registered pod ordered by PodID.
func (r *Registry) List() ([]Pod, error) {
	var out []Pod
	err := r.scan(func(id datapath.PodID, v []byte) error {
		p, err := decode(id, v, r.blobOf(id))
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// scanBatch is how many entries one BPF_MAP_LOOKUP_BATCH reads.
const scanBatch = 32

// scan calls fn with every entry's PodID and raw value (valid only during
// the call). It reads the map in batches, one syscall per scanBatch
// entries, instead of a next-key and a lookup per pod: the registry is
// read on every ADD and DEL, so this is part of pod start latency on a
// node with many pods. Kernels without batch ops get the one-by-one walk.
func (r *Registry) scan(fn func(id datapath.PodID, v []byte) error) error {
	var ferr error
	err := pins.EachEntry(r.m, scanBatch, func(k *uint32, v *rawRecord) error {
		ferr = fn(datapath.PodID(*k), v[:])
		return ferr
	})
	if err != nil && err != ferr {
		return fmt.Errorf("pod registry: reading: %w", err)
	}
	return err
}

// Lookup answers both questions of ADD: the pod registered for
// (containerID, ifname), if any, and the lowest free PodID (0 when all
// MaxPods are in use). It asks the index (index.go), a few map lookups
// whatever the number of pods; when the index cannot answer, it reads the
// whole registry (lookupScan) and rebuilds the index. Callers hold the
// state-dir lock (the index may be built).
func (r *Registry) Lookup(containerID, ifname string) (p Pod, found bool, free datapath.PodID, err error) {
	stale := false
	if ifname != "" && r.openIndex() == nil {
		p, found, free, err = r.indexed(containerID, ifname)
		if err == nil {
			return p, found, free, nil
		}
		stale = true
	}
	p, found, free, err = r.lookupScan(containerID, ifname)
	if err == nil && stale {
		// Best effort: the next lookup reads the registry again if this fails.
		_ = r.rebuildIndex()
	}
	return p, found, free, err
}

// lookupScan is Lookup in one read of the registry. Only the matching
// entry is decoded: the others are compared in their fixed record, so it
// does not decode every pod on the node.
func (r *Registry) lookupScan(containerID, ifname string) (p Pod, found bool, free datapath.PodID, err error) {
	var ids []datapath.PodID
	p, found, err = r.find(containerID, ifname, func(id datapath.PodID) { ids = append(ids, id) })
	if err != nil || found {
		return p, found, 0, err
	}
	free, _ = freeID(ids) // 0: the registry is full
	return p, false, free, nil
}

// find returns the pod of the lowest PodID whose attachment matches, and
// calls each with every PodID it saw.
func (r *Registry) find(containerID, ifname string, each func(datapath.PodID)) (Pod, bool, error) {
	var (
		best  Pod
		found bool
	)
	err := r.scan(func(id datapath.PodID, v []byte) error {
		each(id)
		if found && id > best.ID {
			return nil
		}
		if !rawMayMatch(v, containerID, ifname) {
			return nil
		}
		p, err := decode(id, v, r.blobOf(id))
		if err != nil {
			return err
		}
		if matches(p, containerID, ifname) {
			best, found = p, true
		}
		return nil
	})
	return best, found, err
}

func matches(p Pod, containerID, ifname string) bool {
	return p.ContainerID == containerID && (ifname == "" || p.Interface == ifname)
}

// ByContainerID returns the first pod (lowest PodID) of a container ID.
func (r *Registry) ByContainerID(id string) (Pod, bool, error) {
	return r.ByAttachment(id, "")
}

// ByAttachment finds the pod of a (container ID, interface) pair; an empty
// ifname matches any interface. With several (never written by podscope),
// the lowest PodID.
func (r *Registry) ByAttachment(containerID, ifname string) (Pod, bool, error) {
	return r.find(containerID, ifname, func(datapath.PodID) {})
}

// FindAttachment is ByAttachment over pods already listed, for a caller
// that needs the list for more than one question (ADD: find, then allocate).
func FindAttachment(all []Pod, containerID, ifname string) (Pod, bool) {
	for _, p := range all {
		if matches(p, containerID, ifname) {
			return p, true
		}
	}
	return Pod{}, false
}

// ByName finds a pod by NS/NAME (or by container ID, as Ref prints it).
func (r *Registry) ByName(ref string) (Pod, bool, error) {
	all, err := r.List()
	if err != nil {
		return Pod{}, false, err
	}
	for _, p := range all {
		if p.Ref() == ref || p.ContainerID == ref {
			return p, true, nil
		}
	}
	return Pod{}, false, nil
}

// Allocate returns the lowest PodID not in use. The caller must hold the
// state-dir lock until it has Put the pod, or two ADDs get the same ID.
func (r *Registry) Allocate() (datapath.PodID, error) {
	var ids []datapath.PodID
	if err := r.scan(func(id datapath.PodID, _ []byte) error { ids = append(ids, id); return nil }); err != nil {
		return 0, err
	}
	return freeID(ids)
}

// FreeID is the lowest pod ID that none of all uses.
func FreeID(all []Pod) (datapath.PodID, error) {
	ids := make([]datapath.PodID, len(all))
	for i, p := range all {
		ids[i] = p.ID
	}
	return freeID(ids)
}

func freeID(ids []datapath.PodID) (datapath.PodID, error) {
	used := make(map[datapath.PodID]bool, len(ids))
	for _, id := range ids {
		used[id] = true
	}
	for id := datapath.PodID(1); id <= MaxPods; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("pod registry full: %d pods attached", MaxPods)
}

// Remove unpins the registry (podscopectl cleanup).
func Remove(root pins.Root) error {
	if err := removeIndex(root); err != nil {
		return err
	}
	err := os.Remove(Path(root))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	dir := root.Dir(Owner)
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
