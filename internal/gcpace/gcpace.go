// Package gcpace gives the Go collector a fixed amount of headroom above the
// live heap, so that a server with a small heap does not collect every few
// megabytes while it moves data.
//
// golang.org/x/crypto/ssh copies every packet it reads into a fresh 32 KiB
// buffer, so an upload allocates as many bytes as it receives. With the
// runtime's default pacing (collect when the heap doubles, at least every
// 4 MiB) a server whose live heap is a few megabytes collects hundreds of
// times per GiB received, and returns and faults in the same pages between
// collections. Run keeps the heap goal at the live heap plus at least
// Headroom, and the pacing the runtime gives a large heap (double it) where
// that is more: a server holds at most Headroom more heap than the
// runtime's default would let it.
package gcpace

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Headroom is how many bytes of garbage may accumulate above the live heap
// before a collection, at the least.
const Headroom = 16 << 20

// minBase is the runtime's own minimum heap goal at GOGC=100. The runtime
// scales that minimum with GOGC too, so the percentage is never computed
// from a smaller base: that would lift the goal above live + Headroom.
const minBase = 4 << 20

// Percent is the GOGC value that gives the heap the goal live + Headroom,
// or the runtime's default where that is more. base is what the runtime
// multiplies GOGC by: the live heap plus the stacks and globals the last
// collection scanned.
func Percent(base uint64) int {
	if base < minBase {
		base = minBase
	}
	if base >= Headroom {
		return 100
	}
	return int(Headroom * 100 / base)
}

// Run paces the collector until the returned function is called, after
// each collection from the heap that collection found. It does
// nothing if GOGC is set: the operator's choice stands. adjusted, if not
// nil, is called with each new percentage, outside the pacer's lock
// (tests wait on it).
func Run(adjusted func(percent int)) (stop func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	p := &pacer{adjusted: adjusted, current: 100}
	p.sample[0].Name = "/gc/heap/live:bytes"
	p.sample[1].Name = "/gc/scan/stack:bytes"
	p.sample[2].Name = "/gc/scan/globals:bytes"
	p.adjust()
	p.arm()
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.stopped {
			p.stopped = true
			debug.SetGCPercent(100)
		}
	}
}

type pacer struct {
	adjusted func(int)

	mu      sync.Mutex
	stopped bool
	sample  [3]metrics.Sample
	current int
}

// sentinel is the object whose collection tells the pacer a cycle ended.
// It holds a pointer so the tiny allocator does not batch it with others.
type sentinel struct{ _ *byte }

// arm allocates a sentinel that the next collection finds unreachable; its
// cleanup adjusts the pacing and arms the next one.
func (p *pacer) arm() {
	runtime.AddCleanup(new(sentinel), func(p *pacer) {
		if p.adjust() {
			p.arm()
		}
	}, p)
}

// adjust sets the percentage for the heap now; false once stopped.
func (p *pacer) adjust() bool {
	p.mu.Lock()
	metrics.Read(p.sample[:])
	var base uint64
	for _, v := range p.sample {
		if v.Value.Kind() == metrics.KindUint64 {
			base += v.Value.Uint64()
		}
	}
	want, stopped := Percent(base), p.stopped
	changed := !stopped && want != p.current
	if changed {
		p.current = want
		debug.SetGCPercent(want)
	}
	p.mu.Unlock()
	if changed && p.adjusted != nil {
		p.adjusted(want)
	}
	return !stopped
}
