package gcpace_test

import (
	"runtime"
	"runtime/metrics"
	"testing"

	"silo/internal/gcpace"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 400}, {1 << 20, 400}, {4 << 20, 400}, {5 << 20, 320}, {8 << 20, 200},
		{16<<20 - 1, 100}, {16 << 20, 100}, {1 << 30, 100},
	} {
		if got := gcpace.Percent(c.live); got != c.want {
			t.Errorf("Percent(%d) = %d, want %d", c.live, got, c.want)
		}
	}
}

func read(names ...string) []uint64 {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	v := make([]uint64, len(s))
	for i := range s {
		v[i] = s[i].Value.Uint64()
	}
	return v
}

// collectUntil collects until the pacer reports a percentage that done
// accepts.
func collectUntil(t *testing.T, adjusted <-chan int, done func(int) bool) {
	t.Helper()
	for range 100 {
		runtime.GC()
		select {
		case p := <-adjusted:
			if done(p) {
				return
			}
		default:
		}
	}
	t.Fatal("100 collections and the pacer did not adjust")
}

// The heap goal is the live heap plus the headroom for a small heap, and
// what the runtime gives a heap past the headroom; after stop, the
// runtime's default again.
func TestRunPacesByTheLiveHeap(t *testing.T) {
	adjusted := make(chan int, 100)
	stop := gcpace.Run(func(p int) { adjusted <- p })
	defer stop()

	runtime.GC()
	v := read("/gc/heap/live:bytes", "/gc/heap/goal:bytes", "/gc/gogc:percent")
	if live, goal := v[0], v[1]; goal+1<<20 < gcpace.Headroom || goal > live+gcpace.Headroom {
		t.Errorf("small heap: live %d, goal %d (GOGC %d), want %d to %d", live, goal, v[2],
			max(2*live, gcpace.Headroom), live+gcpace.Headroom)
	}

	// 8 MiB live: the goal is live + Headroom exactly, stacks and globals
	// included in what the percentage is computed from.
	mid := make([][]byte, 8)
	for i := range mid {
		mid[i] = make([]byte, 1<<20)
	}
	collectUntil(t, adjusted, func(p int) bool { return p < 400 && p > 100 })
	runtime.GC()
	v = read("/gc/heap/live:bytes", "/gc/heap/goal:bytes", "/gc/gogc:percent")
	// The slack is for stacks that grew since the percentage was set.
	if live, goal := v[0], v[1]; goal > live+gcpace.Headroom+4<<10 || goal+1<<20 < live+gcpace.Headroom {
		t.Errorf("8 MiB live: live %d, goal %d (GOGC %d), want about %d and no more", live, goal, v[2], live+gcpace.Headroom)
	}
	runtime.KeepAlive(mid)
	mid = nil

	big := make([][]byte, 32) // 32 MiB live, past the headroom
	for i := range big {
		big[i] = make([]byte, 1<<20)
	}
	collectUntil(t, adjusted, func(p int) bool { return p == 100 })
	v = read("/gc/heap/live:bytes", "/gc/heap/goal:bytes", "/gc/gogc:percent")
	if v[2] != 100 || v[1] < 2*v[0]-1<<20 {
		t.Errorf("large heap: live %d, goal %d, GOGC %d; want GOGC 100 and the goal twice the live heap", v[0], v[1], v[2])
	}
	runtime.KeepAlive(big)
	big = nil

	collectUntil(t, adjusted, func(p int) bool { return p > 100 })
	stop()
	if v := read("/gc/gogc:percent"); v[0] != 100 {
		t.Errorf("after stop: GOGC %d, want 100", v[0])
	}
}

func TestRunLeavesAnOperatorsGOGC(t *testing.T) {
	t.Setenv("GOGC", "100")
	defer gcpace.Run(func(p int) { t.Errorf("adjusted to %d with GOGC set", p) })()
	runtime.GC()
	runtime.GC()
	if v := read("/gc/gogc:percent"); v[0] != 100 {
		t.Errorf("GOGC %d, want 100", v[0])
	}
}
