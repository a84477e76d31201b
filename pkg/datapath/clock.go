package datapath

import (
	"time"

	"golang.org/x/sys/unix"
)

// MonotonicToTime converts a bpf_ktime_get_ns() value (CLOCK_MONOTONIC, time
// since boot without suspend) to wall-clock time, using the current offset
// between the two clocks. 0 stays the zero time.
func MonotonicToTime(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return timeAt(BootOffset(), ns)
}

func timeAt(offset int64, ns uint64) time.Time {
	return time.Unix(0, offset+int64(ns))
}

// BootOffset is wall-clock time minus CLOCK_MONOTONIC, in nanoseconds.
func BootOffset() int64 {
	var ts unix.Timespec
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return before.UnixNano() - ts.Nano()
}
