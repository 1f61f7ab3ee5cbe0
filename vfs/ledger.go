package vfs

import (
	"errors"
	"time"
)

// Ledger keeps a home's usage where every server that serves the home sees
// it, when several do (a cluster on a shared filesystem). vfs consumes it;
// whoever builds the FS implements it (a database). Without one, an FS's
// usage is its own and exact for the one server that has the home.
//
// The model: the ledger holds the home's committed usage and, for each
// server, a lease of room that server may grow into without asking again.
// Its invariant, over all servers: committed + leases <= limits. An FS
// grows into its lease locally, at the cost of a mutex, as without a
// ledger; it calls Settle only when the lease has no room left, to fold in
// its changes and take a new lease, and when it has no writer left, to give
// the lease back. What an FS reserved but has not yet folded in never
// exceeds its lease, so the home's real usage never passes the limits.
type Ledger interface {
	// Open is called once when the FS opens the home, with the usage its
	// walk found; it returns the usage the ledger holds, which is found
	// itself when no other server has the home open.
	Open(found Usage) (Usage, error)
	// Settle adds delta to the committed usage and sets this server's
	// lease to need plus at most extra, if the limits allow need; else it
	// still adds delta, sets the lease to zero and returns a *QuotaError.
	// It returns the lease and the committed usage. On any other error
	// nothing is changed, or it is not known whether it was.
	Settle(l Limits, delta, need, extra Usage) (lease, committed Usage, err error)
	// Recount sets the committed usage to found, a new walk of the home
	// whose count includes what this server's writers have reserved.
	Recount(found Usage) error
	// Close is called when the FS closes, after a last Settle: this
	// server no longer has the home open.
	Close()
}

// Lease sizes. A lease is taken in chunks so that a write rarely waits for
// the ledger: leaseChunk beyond the write at first, twice the last chunk
// each time a lease runs out while the home is written, up to leaseMax, so
// that a long upload or a run of many small files asks a few times, not
// once per chunk (each ask waits for a commit). The ledger gives less when
// the quota has less room, so that what one server holds unused never
// starves the others for long.
var (
	leaseChunk = Usage{Bytes: 64 << 20, Files: 64}
	leaseMax   = Usage{Bytes: 256 << 20, Files: 1024}
)

// leaseLinger is how long an FS with no writer left keeps its lease before
// giving it back: a client that uploads many small files, one after
// another, does not pay two round trips to the ledger for each. A writer
// that starts meanwhile cancels the give-back; the next last close arms it
// again.
var leaseLinger = 200 * time.Millisecond

// reserveLeased is reserve with a ledger: from the lease while it has room,
// else through Settle.
func (f *FS) reserveLeased(bytes, files int64) error {
	f.mu.Lock()
	ok := f.takeLocked(bytes, files)
	f.mu.Unlock()
	if ok {
		return nil
	}
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	f.mu.Lock()
	if f.takeLocked(bytes, files) { // another caller took a lease meanwhile
		f.mu.Unlock()
		return nil
	}
	f.stopReturnLocked()
	if f.chunk == (Usage{}) {
		f.chunk = leaseChunk
	} else {
		f.chunk = Usage{min(2*f.chunk.Bytes, leaseMax.Bytes), min(2*f.chunk.Files, leaseMax.Files)}
	}
	_, err := f.settleLocked(Usage{bytes, files}, f.chunk)
	if err == nil {
		f.delta.Bytes += bytes
		f.delta.Files += files
		f.used.Bytes += bytes
		f.used.Files += files
	}
	f.mu.Unlock()
	return err
}

// takeLocked grows the usage by bytes and files if the lease has room for
// them. Caller holds mu.
func (f *FS) takeLocked(bytes, files int64) bool {
	if f.settling || f.delta.Bytes+bytes > f.lease.Bytes && bytes > 0 ||
		f.delta.Files+files > f.lease.Files && files > 0 {
		return false
	}
	f.delta.Bytes += bytes
	f.delta.Files += files
	f.used.Bytes += bytes
	f.used.Files += files
	return true
}

// settleLocked calls Settle with the changes so far, and returns with mu
// held again. Caller holds leaseMu and mu. While Settle runs, the lease is
// not grown into (settling), and what is given back meanwhile stays in
// delta for the next call.
func (f *FS) settleLocked(need, extra Usage) (Usage, error) {
	f.settling = true
	d, l := f.delta, f.limits
	f.mu.Unlock()
	lease, committed, err := f.ledger.Settle(l, d, need, extra)
	f.mu.Lock()
	f.settling = false
	var qe *QuotaError
	if err != nil && !errors.As(err, &qe) {
		// Folded in or not, no room is left to grow into without asking:
		// either the old lease covers delta still, or the new one covers
		// what delta became, which is at most nothing.
		f.lease = f.delta
		return Usage{}, err
	}
	f.delta.Bytes -= d.Bytes
	f.delta.Files -= d.Files
	f.lease = lease
	if lease == (Usage{}) {
		f.chunk = Usage{} // given back or refused: the next writer starts small
	}
	f.used = Usage{max(0, committed.Bytes+f.delta.Bytes), max(0, committed.Files+f.delta.Files)}
	return lease, err
}

// addLocked changes the usage by what was freed (or found on disk), without
// a check. Caller holds mu.
func (f *FS) addLocked(bytes, files int64) {
	f.used.Bytes = max(0, f.used.Bytes+bytes)
	f.used.Files = max(0, f.used.Files+files)
	if f.ledger != nil {
		f.delta.Bytes += bytes
		f.delta.Files += files
		f.armReturnLocked()
	}
}

// armReturnLocked schedules giving the lease back and folding in what
// changed, once the home has no writer. Caller holds mu.
func (f *FS) armReturnLocked() {
	if f.ledger == nil || f.closing || len(f.writers) > 0 || f.returner != nil ||
		f.delta == (Usage{}) && f.lease == (Usage{}) {
		return
	}
	f.returner = time.AfterFunc(leaseLinger, f.giveBack)
}

func (f *FS) stopReturnLocked() {
	if f.returner != nil {
		f.returner.Stop()
		f.returner = nil
	}
}

// giveBack folds in what changed and returns the lease, unless a writer
// has started meanwhile. Should the ledger be unreachable, it tries again
// later.
func (f *FS) giveBack() {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.returner = nil
	if f.closing || len(f.writers) > 0 || f.delta == (Usage{}) && f.lease == (Usage{}) {
		return
	}
	if _, err := f.settleLocked(Usage{}, Usage{}); err != nil && !f.closing {
		f.returner = time.AfterFunc(time.Second, f.giveBack)
	}
}

// closeLedger settles what is left and tells the ledger the home is closed.
func (f *FS) closeLedger() {
	if f.ledger == nil {
		return
	}
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	f.mu.Lock()
	f.closing = true
	f.stopReturnLocked()
	if f.delta != (Usage{}) || f.lease != (Usage{}) {
		f.settleLocked(Usage{}, Usage{})
	}
	f.mu.Unlock()
	f.ledger.Close()
}
