package vfs

import (
	"os"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Rates cap the bytes per second read from and written to the home's files,
// over all of its sessions together, whatever the protocol. Zero is
// unlimited. Every read of a file counts, whether its data goes to the
// client (a download) or not (a checksum, rsync reading the old version of
// a file it updates).
type Rates struct {
	Read, Write int64
}

// Clock is what rate limits measure time with and wait on. Tests replace
// it; nil in Options is the system's.
type Clock interface {
	Now() time.Time
	// Sleep waits for d, or until done is closed, and reports whether it
	// waited all of d.
	Sleep(d time.Duration, done <-chan struct{}) bool
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) Sleep(d time.Duration, done <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// minBurst is the least a limiter lets through at once: small enough that
// the average holds within a second at any rate, large enough that a 32
// KiB SFTP write at a high rate is one reservation.
const minBurst = 64 << 10

// throttle is one direction's limiter. Lifecycle: made with the home, its
// rate changed in place by SetRates; reservations made before a change keep
// their delays.
type throttle struct {
	mu  sync.Mutex // guards on, against SetRates
	on  bool
	lim *rate.Limiter
}

func (t *throttle) set(bps int64, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.on = bps > 0
	if !t.on {
		return
	}
	burst := int(max(bps, minBurst))
	if t.lim == nil {
		t.lim = rate.NewLimiter(rate.Limit(bps), burst)
		return
	}
	t.lim.SetLimitAt(now, rate.Limit(bps))
	t.lim.SetBurstAt(now, burst)
}

// wait takes n bytes from the limiter, waiting as long as the rate
// requires, in pieces of at most a burst. It returns false if done closed
// first.
func (t *throttle) wait(clock Clock, n int, done <-chan struct{}) bool {
	t.mu.Lock()
	on, lim := t.on, t.lim
	t.mu.Unlock()
	if !on {
		return true
	}
	for n > 0 {
		k := min(n, lim.Burst())
		now := clock.Now()
		r := lim.ReserveN(now, k)
		if !r.OK() {
			// The burst shrank since Burst() was read: try a smaller piece.
			continue
		}
		if d := r.DelayFrom(now); d > 0 && !clock.Sleep(d, done) {
			r.CancelAt(clock.Now())
			return false
		}
		n -= k
	}
	return true
}

// SetRates changes the rate limits; transfers under way go on at the new
// rates.
func (f *FS) SetRates(r Rates) {
	now := f.clock.Now()
	f.readRate.set(r.Read, now)
	f.writeRate.set(r.Write, now)
}

// throttleRead and throttleWrite wait until the rates allow n more bytes,
// or until the file is closed; they fail with os.ErrClosed then.
func (file *File) throttleRead(n int) error {
	if !file.fs.readRate.wait(file.fs.clock, n, file.done) {
		return wrap("read", file.name, os.ErrClosed)
	}
	return nil
}

func (file *File) throttleWrite(n int) error {
	if !file.fs.writeRate.wait(file.fs.clock, n, file.done) {
		return wrap("write", file.name, os.ErrClosed)
	}
	return nil
}
