package pods

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
)

// The registry's index answers ADD's two questions (is this attachment
// known, which PodID is free) without reading every pod: a full read copies
// 1 KB per pod, and at 1,000 pods it cost each ADD ~2 ms, the part of ADD
// that grew with the number of pods (bench: "ADD flat at scale").
//
// Two pinned maps beside the registry, read and written by user space only:
//
//   - podscope_pod_index (hash): SHA-256 of "<container ID>\x00<ifname>" ->
//     PodID of that attachment;
//   - podscope_pod_ids (array, one entry): a word that says the index is
//     complete, then a bitmap of the PodIDs in use (bit i = PodID i).
//
// Both are a cache of the registry, which stays the only truth, and neither
// is trusted further than it can be checked cheaply:
//   - an index entry is checked against the registry record it names; one
//     that does not match (a process died between the writes, or a podscope
//     without the index removed the pod) sends the lookup to a full read of
//     the registry, which then rebuilds the index;
//   - a PodID the bitmap calls free is checked to have no registry entry
//     before it is handed out; one that has is marked and the next tried.
//
// Writers keep them up to date under the state-dir lock: Put writes the
// index entry before the registry record, Delete removes it after, so a kill
// between two writes leaves an entry that fails its check, never a pod the
// index does not name. What the checks cannot see is a pod added by a
// podscope that predates the index (a downgrade and upgrade again, or an old
// plugin binary still running an ADD while the new one is installed): the
// reaper reconciles the index with the registry on every run (Reconcile), so
// such a pod is indexed at the next reap. Missing or never completed maps
// (a node upgraded from a podscope without them) are built from the
// registry by the first writer that needs them.
const (
	IndexMapName = "podscope_pod_index"
	IDsMapName   = "podscope_pod_ids"
)

type indexKey [sha256.Size]byte

func attachmentKey(containerID, ifname string) indexKey {
	h := sha256.New()
	h.Write([]byte(containerID))
	h.Write([]byte{0})
	h.Write([]byte(ifname))
	var k indexKey
	h.Sum(k[:0])
	return k
}

// idsComplete marks a podscope_pod_ids value whose bitmap and index were
// built in full ("psid"); an array entry starts zeroed, i.e. incomplete.
const idsComplete = 0x64697370

// idsValue is the one entry of podscope_pod_ids: 4 bytes mark, 4 reserved,
// then one bit per PodID 0..MaxPods.
type idsValue [8 + (MaxPods+1+7)/8]byte

func (v *idsValue) complete() bool { return binary.LittleEndian.Uint32(v[:4]) == idsComplete }
func (v *idsValue) setComplete(ok bool) {
	var w uint32
	if ok {
		w = idsComplete
	}
	binary.LittleEndian.PutUint32(v[:4], w)
}
func (v *idsValue) used(id datapath.PodID) bool { return v[8+id/8]&(1<<(id%8)) != 0 }
func (v *idsValue) mark(id datapath.PodID, used bool) {
	if used {
		v[8+id/8] |= 1 << (id % 8)
	} else {
		v[8+id/8] &^= 1 << (id % 8)
	}
}

func indexSpec() *ebpf.MapSpec { return pins.UserMapSpec(IndexMapName, sha256.Size, 4, MaxPods) }

func idsSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name: IDsMapName, Type: ebpf.Array, KeySize: 4, ValueSize: uint32(len(idsValue{})),
		MaxEntries: 1, Pinning: ebpf.PinByName,
	}
}

// maxFreeProbes bounds how many PodIDs the bitmap may wrongly call free
// before the lookup gives up on it and reads the registry.
const maxFreeProbes = 16

// errIndexStale says the index cannot answer; the caller reads the registry.
var errIndexStale = errors.New("pod registry index is stale")

// openIndex opens the index maps, creating them and building them from the
// registry when they are missing or were never completed. Only writers,
// holding the state-dir lock, call it.
func (r *Registry) openIndex() error {
	if r.idx != nil {
		return nil
	}
	if err := r.openIndexMaps(); err != nil {
		return err
	}
	var v idsValue
	if err := r.ids.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("pod ID map: %w", err)
	}
	if !v.complete() {
		return r.rebuildIndex()
	}
	return nil
}

// openIndexMaps opens (creating if absent) the two index maps, as they are.
func (r *Registry) openIndexMaps() error {
	idx, err := r.root.CreateMap(Owner, indexSpec(), "pod registry index")
	if err != nil {
		return err
	}
	ids, err := r.root.CreateMap(Owner, idsSpec(), "pod ID map")
	if err != nil {
		idx.Close()
		return err
	}
	r.idx, r.ids = idx, ids
	return nil
}

// rebuildIndex builds the index and the bitmap from a full read of the
// registry.
func (r *Registry) rebuildIndex() error {
	all, err := r.List()
	if err != nil {
		return err
	}
	return r.Reconcile(all)
}

// Reconcile makes the index and the PodID bitmap match all, the registry's
// pods as List returns them (ordered by PodID: where two pods share an
// attachment, the lowest PodID is indexed, as a full read would answer).
// The reaper calls it with the list it reads anyway. Callers hold the
// state-dir lock.
func (r *Registry) Reconcile(all []Pod) error {
	// all is the whole registry: whatever the maps hold, they are made to
	// match it, so they are only opened here, never rebuilt first.
	if r.idx == nil {
		if err := r.openIndexMaps(); err != nil {
			return err
		}
	}
	var bm idsValue
	want := make(map[indexKey]uint32, len(all))
	for _, p := range all {
		if p.ID == 0 || p.ID > MaxPods {
			continue
		}
		bm.mark(p.ID, true)
		k := attachmentKey(p.ContainerID, p.Interface)
		if _, ok := want[k]; !ok {
			want[k] = uint32(p.ID)
		}
	}
	have := make(map[indexKey]uint32, len(all))
	if err := pins.EachEntry(r.idx, scanBatch, func(k *indexKey, v *uint32) error {
		have[*k] = *v
		return nil
	}); err != nil {
		return fmt.Errorf("pod registry index: reading: %w", err)
	}
	for k, v := range have {
		if w, ok := want[k]; !ok || w != v {
			if err := r.idx.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("pod registry index: %w", err)
			}
		}
	}
	for k, v := range want {
		if h, ok := have[k]; !ok || h != v {
			if err := r.idx.Put(k, v); err != nil {
				return fmt.Errorf("pod registry index: %w", err)
			}
		}
	}
	bm.setComplete(true)
	if err := r.ids.Put(uint32(0), &bm); err != nil {
		return fmt.Errorf("pod ID map: %w", err)
	}
	return nil
}

// invalidateIndex marks the index incomplete, so that the next writer
// rebuilds it: what a failed index update leaves. If even that fails, the
// bitmap's pin is removed, which has the same effect.
func (r *Registry) invalidateIndex() error {
	var v idsValue
	if err := r.ids.Put(uint32(0), &v); err == nil {
		return nil
	}
	err := os.Remove(r.root.Pin(Owner, IDsMapName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pod registry index: cannot mark it for rebuilding: %w", err)
	}
	r.ids.Close()
	r.idx.Close()
	r.idx, r.ids = nil, nil
	return nil
}

// indexed answers Lookup from the index: the pod of (containerID, ifname)
// or the lowest free PodID. errIndexStale when the index cannot tell.
func (r *Registry) indexed(containerID, ifname string) (Pod, bool, datapath.PodID, error) {
	var id uint32
	err := r.idx.Lookup(attachmentKey(containerID, ifname), &id)
	switch {
	case err == nil:
		p, ok, err := r.Get(datapath.PodID(id))
		if err != nil || !ok || !matches(p, containerID, ifname) {
			return Pod{}, false, 0, errIndexStale
		}
		return p, true, 0, nil
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return Pod{}, false, 0, err
	}
	free, err := r.freeFromBitmap()
	return Pod{}, false, free, err
}

// freeFromBitmap returns the lowest PodID the bitmap calls free and the
// registry confirms (0 when all MaxPods are in use).
func (r *Registry) freeFromBitmap() (datapath.PodID, error) {
	var v idsValue
	if err := r.ids.Lookup(uint32(0), &v); err != nil {
		return 0, err
	}
	if !v.complete() {
		return 0, errIndexStale
	}
	var rec []byte
	probes := 0
	for id := datapath.PodID(1); id <= MaxPods; id++ {
		if v.used(id) {
			continue
		}
		err := r.m.Lookup(uint32(id), &rec)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return id, nil
		}
		if err != nil {
			return 0, fmt.Errorf("pod registry: looking up pod %d: %w", id, err)
		}
		if probes++; probes > maxFreeProbes {
			return 0, errIndexStale
		}
	}
	return 0, nil
}

// indexPut records p in the index before its registry record is written.
// An index that cannot be opened or written is marked for rebuilding (its
// bitmap's pin removed), so that no other process trusts it without this
// pod; only when that fails too is the error returned, and Put writes
// nothing.
func (r *Registry) indexPut(p Pod) error {
	if err := r.openIndex(); err != nil {
		if r.idx != nil {
			return r.invalidateIndex()
		}
		err := os.Remove(r.root.Pin(Owner, IDsMapName))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pod registry index: cannot mark it for rebuilding: %w", err)
		}
		return nil
	}
	k := attachmentKey(p.ContainerID, p.Interface)
	// Where two records share an attachment (never written by podscope),
	// the lowest PodID is the one found, as in a full read.
	// A pod written again (ADD's second Put, teardown's mark) finds its
	// entry already there.
	var cur uint32
	if r.idx.Lookup(k, &cur) == nil && cur != 0 && cur <= uint32(p.ID) {
		if cur == uint32(p.ID) {
			return nil
		}
		if q, ok, err := r.Get(datapath.PodID(cur)); err == nil && ok && matches(q, p.ContainerID, p.Interface) {
			return nil
		}
	}
	if err := r.idx.Put(k, uint32(p.ID)); err != nil {
		return r.invalidateIndex()
	}
	return nil
}

// indexMark sets or clears id's bit after its registry record was written
// or removed.
func (r *Registry) indexMark(id datapath.PodID, used bool) {
	if r.idx == nil || id > MaxPods {
		return
	}
	var v idsValue
	if err := r.ids.Lookup(uint32(0), &v); err != nil || !v.complete() {
		return
	}
	if v.used(id) == used {
		return
	}
	v.mark(id, used)
	if err := r.ids.Put(uint32(0), &v); err != nil {
		_ = r.invalidateIndex()
	}
}

// indexDelete removes the index entry of the attachment a removed record
// held, if it still names that record's PodID.
func (r *Registry) indexDelete(id datapath.PodID, p Pod) {
	if r.openIndex() != nil {
		return
	}
	k := attachmentKey(p.ContainerID, p.Interface)
	var got uint32
	if r.idx.Lookup(k, &got) == nil && got == uint32(id) {
		if err := r.idx.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			_ = r.invalidateIndex()
			return
		}
	}
	r.indexMark(id, false)
}

// removeIndex unpins the index maps (podscopectl cleanup).
func removeIndex(root pins.Root) error {
	for _, name := range []string{IndexMapName, IDsMapName} {
		if err := os.Remove(root.Pin(Owner, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
