// Package blobs owns the pinned side store of values that do not fit the
// fixed-size fields of podscope's other maps: a pod UID of 48 bytes, a
// container ID over 128, a netns path over 256, more than four IPs. The CRI
// and CNI set no length on these, and an observer must never be the reason
// a pod cannot start, so the owner of a fixed-size record keeps the whole
// value here, exact (DEL and the audit match on it), and marks its record.
//
// A blob is a byte string of any length up to MaxLen, stored in chunks of a
// pinned BPF hash map read and written by user space only. Like every pin it
// outlives the process that wrote it.
//
// Map layout "podscope_blobs" (pins layout v1, owner "blobs"):
//
//	key   16 bytes: kind u32, chunk u32, id u64 (host endian)
//	value 4096 bytes: total length u32, reserved u32, 4088 data bytes
//
// Every chunk repeats the blob's total length, so a reader that finds
// chunk 0 knows how many chunks to read and can detect a torn write (a chunk
// whose length differs). Writers serialise on their owner's lock.
package blobs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/pins"
)

// Owner is the pins.Root owner directory of the store.
const Owner = "blobs"

// MapName is the store's pin name (and kernel map name).
const MapName = "podscope_blobs"

// Kind says which owner's record a blob belongs to; ids of different kinds
// never collide.
type Kind uint32

const (
	// KindPod: the registry entry of a pod (id = PodID).
	KindPod Kind = 1
	// KindAuditIdentity: the identity of an audited cgroup (id = cgroup id).
	KindAuditIdentity Kind = 2
)

const (
	valueSize  = 4096
	headerSize = 8
	chunkData  = valueSize - headerSize
	// MaxChunks bounds one blob; MaxEntries bounds the map. Only values that
	// overflow a fixed field come here, so most nodes hold none.
	MaxChunks  = 64
	MaxLen     = MaxChunks * chunkData
	maxEntries = 65536
)

type key struct {
	Kind  uint32
	Chunk uint32
	ID    uint64
}

// Store is the pinned blob map.
type Store struct {
	m *ebpf.Map
}

func spec() *ebpf.MapSpec { return pins.UserMapSpec(MapName, 16, valueSize, maxEntries) }

// Path is where the store is pinned under root.
func Path(root pins.Root) string { return root.Pin(Owner, MapName) }

// Open opens the pinned store, creating and pinning it if absent.
func Open(root pins.Root) (*Store, error) {
	m, err := root.CreateMap(Owner, spec(), "blob store")
	if err != nil {
		return nil, err
	}
	return &Store{m: m}, nil
}

// ErrNoStore means no blob store is pinned under the root (no value has
// ever overflowed there).
var ErrNoStore = errors.New("no blob store pinned")

// OpenPinned opens an existing store and never creates one.
func OpenPinned(root pins.Root) (*Store, error) {
	m, err := root.OpenMap(Owner, spec(), "blob store")
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", ErrNoStore, Path(root))
	}
	if err != nil {
		return nil, err
	}
	return &Store{m: m}, nil
}

// Close drops the file descriptor; the pin stays.
func (s *Store) Close() error { return s.m.Close() }

func chunks(n int) int {
	if n == 0 {
		return 1
	}
	return (n + chunkData - 1) / chunkData
}

// Put stores b under (kind, id), replacing any earlier blob. Chunks are
// written last to first, so a reader that sees chunk 0 with the new length
// finds the others already written; chunks a longer earlier blob left
// beyond the new end are removed.
func (s *Store) Put(kind Kind, id uint64, b []byte) error {
	if len(b) > MaxLen {
		return fmt.Errorf("blob store: %d bytes, at most %d", len(b), MaxLen)
	}
	n := chunks(len(b))
	for c := n - 1; c >= 0; c-- {
		var v [valueSize]byte
		binary.NativeEndian.PutUint32(v[0:4], uint32(len(b)))
		end := min((c+1)*chunkData, len(b))
		copy(v[headerSize:], b[c*chunkData:end])
		if err := s.m.Put(key{uint32(kind), uint32(c), id}, v[:]); err != nil {
			return fmt.Errorf("blob store: writing %d/%d chunk %d: %w", kind, id, c, err)
		}
	}
	return s.deleteFrom(kind, id, n)
}

// Get returns the blob under (kind, id).
func (s *Store) Get(kind Kind, id uint64) ([]byte, bool, error) {
	var v []byte
	err := s.m.Lookup(key{uint32(kind), 0, id}, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("blob store: reading %d/%d: %w", kind, id, err)
	}
	total := int(binary.NativeEndian.Uint32(v[0:4]))
	if total > MaxLen {
		return nil, false, fmt.Errorf("blob store: %d/%d claims %d bytes, at most %d", kind, id, total, MaxLen)
	}
	out := make([]byte, 0, total)
	for c := 0; c < chunks(total); c++ {
		if c > 0 {
			if err := s.m.Lookup(key{uint32(kind), uint32(c), id}, &v); err != nil {
				return nil, false, fmt.Errorf("blob store: reading %d/%d chunk %d: %w", kind, id, c, err)
			}
			if got := int(binary.NativeEndian.Uint32(v[0:4])); got != total {
				return nil, false, fmt.Errorf("blob store: %d/%d chunk %d is of a %d-byte blob, chunk 0 of a %d-byte one (written concurrently?)", kind, id, c, got, total)
			}
		}
		end := min(total-c*chunkData, chunkData)
		out = append(out, v[headerSize:headerSize+end]...)
	}
	return out, true, nil
}

// Delete removes the blob under (kind, id); a missing blob is no error.
func (s *Store) Delete(kind Kind, id uint64) error { return s.deleteFrom(kind, id, 0) }

func (s *Store) deleteFrom(kind Kind, id uint64, from int) error {
	for c := from; c < MaxChunks; c++ {
		err := s.m.Delete(key{uint32(kind), uint32(c), id})
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("blob store: deleting %d/%d chunk %d: %w", kind, id, c, err)
		}
	}
	return nil
}

// IDs lists the ids that hold a blob of kind (for finding orphans).
func (s *Store) IDs(kind Kind) ([]uint64, error) {
	var (
		k   key
		v   []byte
		out []uint64
	)
	it := s.m.Iterate()
	for it.Next(&k, &v) {
		if k.Kind == uint32(kind) && k.Chunk == 0 {
			out = append(out, k.ID)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("blob store: iterating: %w", err)
	}
	return out, nil
}

// Len is the number of chunks stored (every kind), for leak checks.
func (s *Store) Len() (int, error) {
	var (
		k key
		v []byte
		n int
	)
	it := s.m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
