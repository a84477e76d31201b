package datapath

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMonotonicToTime(t *testing.T) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	got := MonotonicToTime(uint64(ts.Nano()))
	if d := time.Since(got); d < 0 || d > time.Second {
		t.Fatalf("now on CLOCK_MONOTONIC converts to %v, %v from now", got, d)
	}
	if !MonotonicToTime(0).IsZero() {
		t.Fatal("0 must stay the zero time")
	}
}
