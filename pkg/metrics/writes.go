package metrics

import "sync"

// WriteCounter counts delivered file-write events per container and op. It
// is the one number that has to live in the process: the ring buffer is
// consumed by reading it. The audit reader calls Add; the collector reads
// Snapshot through the daemon's AuditSource.
type WriteCounter struct {
	mu sync.Mutex
	m  map[WriteKey]uint64
}

// Add counts n events (an event folded from repeats counts each repeat).
func (w *WriteCounter) Add(k WriteKey, n uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[WriteKey]uint64{}
	}
	w.m[k] += n
}

// Snapshot returns a copy of the counts.
func (w *WriteCounter) Snapshot() map[WriteKey]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[WriteKey]uint64, len(w.m))
	for k, v := range w.m {
		out[k] = v
	}
	return out
}

// Total is the number of events counted for op over all containers (for
// logs and tests).
func (w *WriteCounter) Total(op string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n uint64
	for k, v := range w.m {
		if k.Op == op {
			n += v
		}
	}
	return n
}
