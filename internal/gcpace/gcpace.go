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
// that is more: idle sessions, which allocate nothing, cost no more memory,
// and at most Headroom more is held while data flows.
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

// minLive is the runtime's own minimum heap goal at GOGC=100. The runtime
// scales that minimum with GOGC too, so the percentage is never computed
// from a smaller heap: that would lift the goal above live + Headroom.
const minLive = 4 << 20

// Percent is the GOGC value that gives a heap of live bytes the goal
// live + max(live, Headroom), bounded above by live + Headroom for
// small heaps.
func Percent(live uint64) int {
	if live < minLive {
		live = minLive
	}
	if live >= Headroom {
		return 100
	}
	return int((Headroom*100 + live - 1) / live)
}

// Run paces the collector until the returned function is called, after
// each collection from the live heap that collection found. It does
// nothing if GOGC is set: the operator's choice stands. adjusted, if not
// nil, is called with each new percentage (tests wait on it).
func Run(adjusted func(percent int)) (stop func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	p := &pacer{adjusted: adjusted, current: 100}
	p.sample[0].Name = "/gc/heap/live:bytes"
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
	sample  [1]metrics.Sample
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

// adjust sets the percentage for the live heap now; false once stopped.
func (p *pacer) adjust() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return false
	}
	metrics.Read(p.sample[:])
	if p.sample[0].Value.Kind() != metrics.KindUint64 {
		return true
	}
	if want := Percent(p.sample[0].Value.Uint64()); want != p.current {
		p.current = want
		debug.SetGCPercent(want)
		if p.adjusted != nil {
			p.adjusted(want)
		}
	}
	return true
}
