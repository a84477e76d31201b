package pins

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// EachEntry calls fn with every entry of m, read with BPF_MAP_LOOKUP_BATCH
// (one syscall per batch entries instead of a next-key and a lookup per
// entry: the flow table holds up to 131,072, the pod registry is read on
// every ADD and DEL) where the kernel has it, else one by one. An entry
// deleted or added meanwhile may be missed or seen, as with any walk of a
// live map. The pointers fn gets are valid only during the call; an error
// of fn ends the walk and is returned as it is.
func EachEntry[K, V any](m *ebpf.Map, batch int, fn func(*K, *V) error) error {
	keys := make([]K, batch)
	vals := make([]V, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if ferr := fn(&keys[i], &vals[i]); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err == nil {
			continue
		}
		if n > 0 || !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("batch lookup: %w", err)
		}
		break // no batch ops in this kernel
	}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if err := fn(&k, &v); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterating: %w", err)
	}
	return nil
}
