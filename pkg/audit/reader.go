package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

const (
	// pollInterval bounds the latency of an event: the programs wake the
	// reader only when an eighth of the ring is waiting (BPF_RB_NO_WAKEUP
	// otherwise), so the reader polls with this timeout.
	pollInterval = 100 * time.Millisecond
	// foldWindow matches AUDIT_DEDUP_WINDOW_NS in bpf/audit.h.
	foldWindow = time.Second
	// sweepInterval: how often Run looks for folded repeats to flush (cheap
	// when nothing was folded: one per-CPU counter read).
	sweepInterval = foldWindow / 4
	headerSize    = int(unsafe.Sizeof(auditEvent{}))
)

// Run reads the ring buffer until ctx ends, calling sink for each event in
// order (sink runs on Run's goroutine; a slow sink makes the ring fill and
// the programs count losses). Repeats folded by the programs arrive as a
// fold line (Count repeats, Time..Last): from the programs, right before
// the next record of the same key, or from Run's sweep of the fold map
// once the window has passed. Only one Run per node should read the ring.
func (a *Auditor) Run(ctx context.Context, sink func(Event)) error {
	rd, err := ringbuf.NewReader(a.maps.AuditEvents)
	if err != nil {
		return fmt.Errorf("audit: ring buffer reader: %w", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
		case <-stop:
		}
		rd.Close()
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	d := a.newDecoder()
	var rec ringbuf.Record
	nextSweep := time.Now().Add(sweepInterval)
	for {
		rd.SetDeadline(time.Now().Add(pollInterval))
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			if ev, ok := d.decode(rec.RawSample); ok {
				sink(ev)
			}
			if d.n++; d.n&1023 != 0 {
				continue
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed):
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("audit: ring buffer closed: %w", err)
		default:
			return fmt.Errorf("audit: reading ring buffer: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		if now := time.Now(); now.After(nextSweep) {
			d.clockSync() // follow wall-clock steps (NTP) in event times
			a.sweepFolds(d, sink)
			d.prune(now)
			nextSweep = now.Add(sweepInterval)
		}
	}
}

// decoder turns ring records into Events: boot-time to wall-clock, cgroup
// id to identity (cached), and remembers the strings of each fold key's
// last record, so that a fold flushed by the sweep (which has only the key
// and the counts) can name its path. Keys are compared in full: a sweep
// line only ever gets the strings of a record with exactly its key.
type decoder struct {
	a        *Auditor
	bootBase time.Time
	n        uint64
	recent   map[foldKey]foldInfo
	lastComm string
	// sweptFolds: audit_folds at the last sweep; sweepLeft: that sweep saw
	// repeats still inside their window.
	sweptFolds uint64
	sweepLeft  bool
	lastPrune  time.Time
}

// foldKey is struct dedup_key: what two operations must share to fold.
type foldKey struct {
	cgid, hash     uint64
	op, uid, flags uint32
	denied         bool
}

type foldInfo struct {
	path, target, value string
	seen                time.Time // wall clock of the record (pruning)
}

// foldMemory: how long (by the record's own time) the strings of a key are
// kept. A window's repeats are flushed by the first sweep after it ended,
// and the sweep runs after the records read before it, so a record older
// than a few windows has had its repeats flushed; pruning runs after the
// sweep. Memory stays bounded by the record rate over these seconds.
const foldMemory = 5 * foldWindow

func (d *decoder) remember(k foldKey, ev *Event) {
	d.recent[k] = foldInfo{ev.Path, ev.Target, ev.Value, ev.Time}
}

func (d *decoder) recall(k foldKey) (foldInfo, bool) {
	fi, ok := d.recent[k]
	return fi, ok
}

// prune forgets keys whose last record is older than foldMemory (run
// after the sweep, at most once a second).
func (d *decoder) prune(now time.Time) {
	if now.Sub(d.lastPrune) < time.Second {
		return
	}
	d.lastPrune = now
	for k, fi := range d.recent {
		if now.Sub(fi.seen) > foldMemory {
			delete(d.recent, k)
		}
	}
}

// comm returns the record's comm as a string, reusing the previous one
// when equal (bursts come from one process): one allocation less per event.
func (d *decoder) comm(c *[16]int8) string {
	n := 0
	for n < len(c) && c[n] != 0 {
		n++
	}
	if len(d.lastComm) == n {
		same := true
		for i := 0; i < n; i++ {
			if d.lastComm[i] != byte(c[i]) {
				same = false
				break
			}
		}
		if same {
			return d.lastComm
		}
	}
	d.lastComm = cstr(c[:n])
	return d.lastComm
}

func (a *Auditor) newDecoder() *decoder {
	d := &decoder{a: a, recent: map[foldKey]foldInfo{}, lastPrune: time.Now()}
	d.clockSync()
	return d
}

// clockStep is how far the wall-clock time of boot must move before
// clockSync follows it. Reading the two clocks is never simultaneous (on a
// slow or emulated CPU the reads sit tens of microseconds apart, more if
// the thread is preempted between them), so a base taken afresh at every
// sweep would shift event times back and forth by that much, and a fold
// line could carry a time before the record that opened its window. Below
// this step the base stays put and events keep the kernel's order; a
// wall-clock step (settimeofday, NTP) is followed, and a slew is followed
// in steps of this size.
const clockStep = time.Millisecond

// clockSync sets the wall-clock time of boot (records carry CLOCK_BOOTTIME)
// the first time, and afterwards only when it has moved by clockStep or
// more.
func (d *decoder) clockSync() {
	base := bootBaseNow()
	if moved := base.Sub(d.bootBase); d.bootBase.IsZero() || moved >= clockStep || moved <= -clockStep {
		d.bootBase = base
	}
}

// bootBaseNow estimates the wall-clock time of boot: the wall clock read
// between two CLOCK_BOOTTIME reads, the boot time taken as their middle,
// best (narrowest) of three tries.
func bootBaseNow() time.Time {
	var base time.Time
	best := time.Duration(-1)
	for i := 0; i < 3; i++ {
		b1 := bootTime()
		wall := time.Now()
		b2 := bootTime()
		if gap := b2 - b1; best < 0 || gap < best {
			best = gap
			base = wall.Add(-(b1 + gap/2))
		}
	}
	return base
}

func bootTime() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return time.Duration(ts.Nano())
}

func (d *decoder) decode(raw []byte) (Event, bool) {
	if len(raw) < headerSize {
		return Event{}, false
	}
	h := (*auditEvent)(unsafe.Pointer(&raw[0]))
	body := raw[headerSize:]
	pl, al := int(h.PathLen), int(h.AuxLen)
	if pl+al > len(body) {
		return Event{}, false
	}
	ev := Event{
		Time:        d.bootBase.Add(time.Duration(h.TimeNs)),
		CgroupID:    h.CgroupId,
		PID:         h.Pid,
		Comm:        d.comm(&h.Comm),
		UID:         h.Uid,
		Op:          opNames[auditWriteOp(h.Op)],
		Path:        string(body[:pl]),
		Flags:       h.Flags,
		Denied:      h.Denied != 0,
		Count:       h.Count,
		SeveralPIDs: h.SeveralPids != 0,
	}
	if h.LastNs != 0 {
		ev.Last = d.bootBase.Add(time.Duration(h.LastNs))
	}
	switch auditAuxKind(h.AuxKind) {
	case auditAuxKindAAUX_TARGET:
		ev.Target = string(body[pl : pl+al])
	case auditAuxKindAAUX_VALUE:
		ev.Value = string(body[pl : pl+al])
	}
	d.a.identify(&ev)
	d.remember(foldKey{h.CgroupId, h.Key, uint32(h.Op), h.Uid, h.Flags, h.Denied != 0}, &ev)
	return ev, true
}

// sweepFolds emits the repeats that the programs folded and that no later
// record of the same key carried: fold-map entries whose window has passed
// with pending repeats are taken out (lookup-and-delete) and sent as one
// fold line each, with the strings of the record that opened the window.
func (a *Auditor) sweepFolds(d *decoder, sink func(Event)) {
	m := a.maps.AuditFoldmap
	// Nothing folded since the last pass (and nothing left over from it):
	// skip the scan of the fold map.
	if folds, err := a.foldsSoFar(); err == nil && folds == d.sweptFolds && !d.sweepLeft {
		return
	}
	d.sweptFolds, _ = a.foldsSoFar()
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	now := uint64(ts.Nano())
	take, left := expiredFolds(m, now)
	d.sweepLeft = left
	var v auditDedupVal
	for _, k := range take {
		if err := m.LookupAndDelete(k, &v); err != nil || v.Pending == 0 {
			continue
		}
		fk := foldKey{k.CgroupId, k.Hash, k.Op, k.Uid, k.Flags, k.Denied != 0}
		// Missing only when this reader never saw the window's record
		// (it started after it): the line then has no path.
		info, _ := d.recall(fk)
		ev := Event{
			Time:        d.bootBase.Add(time.Duration(v.FirstNs)),
			Last:        d.bootBase.Add(time.Duration(v.LastNs)),
			CgroupID:    k.CgroupId,
			PID:         v.Pid,
			UID:         k.Uid,
			Comm:        cstr(v.Comm[:]),
			Op:          opNames[auditWriteOp(k.Op)],
			Path:        info.path,
			Target:      info.target,
			Value:       info.value,
			Flags:       k.Flags,
			Denied:      k.Denied != 0,
			Count:       uint32(v.Pending),
			SeveralPIDs: v.SeveralPids != 0,
		}
		a.identify(&ev)
		sink(ev)
	}
}

// sweepMargin: an entry is taken only this long after its window ended,
// so a program that read the clock just before the end cannot still be
// adding a repeat to it.
const sweepMargin = 50 * time.Millisecond

// expiredFolds reads the fold map in batches and returns the keys whose
// window has passed with repeats pending, and whether any entry still has
// repeats pending inside its window (the next pass must scan again).
func expiredFolds(m *ebpf.Map, now uint64) (take []auditDedupKey, left bool) {
	keys := make([]auditDedupKey, 4096)
	vals := make([]auditDedupVal, 4096)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if vals[i].Pending == 0 {
				continue
			}
			if now-vals[i].WindowStartNs >= uint64(foldWindow+sweepMargin) {
				take = append(take, keys[i])
			} else {
				left = true
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return take, left
		}
		if err != nil {
			// No batch support: walk the map one key at a time.
			take, left = take[:0], false
			var (
				k auditDedupKey
				v auditDedupVal
			)
			it := m.Iterate()
			for it.Next(&k, &v) {
				if v.Pending > 0 && now-v.WindowStartNs >= uint64(foldWindow+sweepMargin) {
					take = append(take, k)
				} else if v.Pending > 0 {
					left = true
				}
			}
			return take, left
		}
	}
}

// foldsSoFar sums the programs' per-CPU count of folded repeats.
func (a *Auditor) foldsSoFar() (uint64, error) {
	var vs []uint64
	if err := a.maps.AuditFolds.Lookup(uint32(0), &vs); err != nil {
		return 0, err
	}
	var s uint64
	for _, v := range vs {
		s += v
	}
	return s, nil
}

func (a *Auditor) identify(ev *Event) {
	id, ok := a.cache.get(ev.CgroupID)
	if !ok {
		id = a.lookupIdentity(ev.CgroupID)
	}
	ev.Identity = id
}

func (a *Auditor) lookupIdentity(cgid uint64) Identity {
	var ki auditIdentity
	if a.maps.AuditIdentity == nil || a.maps.AuditIdentity.Lookup(cgid, &ki) != nil {
		// Unknown (disarmed long ago, or armed by another process a moment
		// ago): remember the miss briefly.
		a.cache.putFor(cgid, Identity{}, time.Second)
		return Identity{}
	}
	id := a.identityOf(cgid, &ki)
	a.cache.put(cgid, id)
	return id
}

// Lost is, per cgroup id, how many operations were not delivered because the
// ring was full (or the per-CPU scratch was busy), summed over CPUs. Key 0
// collects losses of cgroups that did not fit in the map.
func (a *Auditor) Lost() (map[uint64]uint64, error) {
	return sumPerCPU(a.maps.AuditLost)
}

func sumPerCPU(m *ebpf.Map) (map[uint64]uint64, error) {
	out := map[uint64]uint64{}
	var (
		k  uint64
		vs []uint64
	)
	it := m.Iterate()
	for it.Next(&k, &vs) {
		var s uint64
		for _, v := range vs {
			s += v
		}
		out[k] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("audit: reading loss counters: %w", err)
	}
	return out, nil
}

// identityCache maps cgroup ids to identities for the reader; entries put
// by Arm never expire, misses and disarmed cgroups do.
type identityCache struct {
	mu sync.Mutex
	m  map[uint64]cachedIdentity
}

type cachedIdentity struct {
	id      Identity
	expires time.Time // zero: never
}

func (c *identityCache) get(cgid uint64) (Identity, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[cgid]
	if !ok {
		return Identity{}, false
	}
	if !e.expires.IsZero() && time.Now().After(e.expires) {
		delete(c.m, cgid)
		return Identity{}, false
	}
	return e.id, true
}

func (c *identityCache) put(cgid uint64, id Identity) { c.set(cgid, cachedIdentity{id: id}) }

func (c *identityCache) putFor(cgid uint64, id Identity, d time.Duration) {
	c.set(cgid, cachedIdentity{id: id, expires: time.Now().Add(d)})
}

func (c *identityCache) set(cgid uint64, e cachedIdentity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[uint64]cachedIdentity{}
	}
	c.m[cgid] = e
}

func (c *identityCache) expire(cgid uint64, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[cgid]; ok {
		e.expires = at
		c.m[cgid] = e
	}
}
