package vfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// sharedLedger is the ledger of one home as a database would keep it, in
// memory: the committed usage and each member's lease. The tests check the
// FS's side of the contract against it.
type sharedLedger struct {
	mu        sync.Mutex
	committed Usage
	leases    map[int]Usage
	maxSeen   int64   // the most committed + leases ever held, in bytes
	asked     []Usage // the extra room of each Settle, in order
}

type memberLedger struct {
	s  *sharedLedger
	id int
}

func (m memberLedger) Open(found Usage) (Usage, error) {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	if len(m.s.leases) == 0 && m.s.committed == (Usage{}) {
		m.s.committed = found
	}
	return m.s.committed, nil
}

func (m memberLedger) Settle(l Limits, delta, need, extra Usage) (Usage, Usage, error) {
	s := m.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed.Bytes += delta.Bytes
	s.committed.Files += delta.Files
	s.asked = append(s.asked, extra)
	var others int64
	for id, u := range s.leases {
		if id != m.id {
			others += u.Bytes
		}
	}
	room := l.Bytes - s.committed.Bytes - others
	if l.Bytes > 0 && need.Bytes > room {
		delete(s.leases, m.id)
		return Usage{}, s.committed, &QuotaError{Left: max(0, room), Limit: l.Bytes}
	}
	lease := Usage{need.Bytes + min(extra.Bytes, max(0, room-need.Bytes)/4), need.Files + extra.Files}
	s.leases[m.id] = lease
	s.maxSeen = max(s.maxSeen, s.committed.Bytes+others+lease.Bytes)
	return lease, s.committed, nil
}

func (m memberLedger) Recount(found Usage) error {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.s.committed = found
	return nil
}

func (m memberLedger) Close() {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	delete(m.s.leases, m.id)
}

// Two servers' FS on one home write at once through one ledger until
// refused: the ledger never holds more than the quota, the files stay
// within it, and once the writers close every lease is given back and the
// committed usage is what the files hold.
func TestLedgerSharedQuota(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home")
	const quota = 8 << 20
	s := &sharedLedger{leases: make(map[int]Usage)}
	var fss []*FS
	for id := range 2 {
		f, err := Open(dir, Options{Limits: Limits{Bytes: quota}, Ledger: memberLedger{s, id}})
		if err != nil {
			t.Fatal(err)
		}
		fss = append(fss, f)
	}
	buf := make([]byte, 32<<10)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			f, err := fss[w%2].OpenFile(fmt.Sprintf("/f%d", w), os.O_WRONLY|os.O_CREATE)
			if err != nil {
				errs[w] = err
				return
			}
			for off := int64(0); ; off += int64(len(buf)) {
				if _, err = f.WriteAt(buf, off); err != nil {
					break
				}
			}
			f.Close()
			errs[w] = err
		})
	}
	wg.Wait()
	for w, err := range errs {
		if !errors.Is(err, ErrQuotaExceeded) {
			t.Errorf("writer %d ended with %v, want quota exceeded", w, err)
		}
	}
	if s.maxSeen > quota {
		t.Fatalf("the ledger held %d bytes committed and leased, over the quota of %d", s.maxSeen, quota)
	}
	for _, f := range fss {
		f.Close()
	}
	found, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if found.Bytes > quota || found.Bytes <= quota-4*int64(len(buf)) {
		t.Fatalf("the files hold %d bytes against a quota of %d", found.Bytes, quota)
	}
	if len(s.leases) != 0 || s.committed != found {
		t.Fatalf("after close: committed %+v, leases %v; the files hold %+v", s.committed, s.leases, found)
	}
}

// A run of many small files asks the ledger a few times, not once per
// chunk: each lease that runs out while the home is written is followed
// by one with twice the extra room, up to leaseMax. A writer is held open
// throughout, so that the lease is never given back in between.
func TestLedgerLeaseGrows(t *testing.T) {
	s := &sharedLedger{leases: make(map[int]Usage)}
	f, err := Open(filepath.Join(t.TempDir(), "home"), Options{Ledger: memberLedger{s, 0}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	held, err := f.OpenFile("/held", os.O_WRONLY|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		w, err := f.OpenFile(fmt.Sprintf("/f%d", i), os.O_WRONLY|os.O_CREATE)
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	// Once the lease is given back (as the linger timer would), the next
	// writer starts with a first chunk again.
	held.Close()
	f.mu.Lock()
	f.stopReturnLocked()
	f.mu.Unlock()
	f.giveBack()
	w, err := f.OpenFile("/after", os.O_WRONLY|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	var got []int64
	for _, u := range s.asked {
		got = append(got, u.Files)
	}
	// 2,001 files: 1+64, +1+128, +1+256, +1+512, +1+1024, then the cap;
	// the give-back asks for nothing; the next file 64 again.
	want := []int64{64, 128, 256, 512, 1024, 1024, 0, 64}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("2,001 files, a give-back and a file asked the ledger for %v extra files, want %v", got, want)
	}
}

// The lease is given back leaseLinger after the last writer closes, not
// after the first of a run of writers that come and go: a writer that
// starts cancels the pending give-back, and its close arms a new one.
func TestLedgerGiveBackWaitsForLastWriter(t *testing.T) {
	// No give-back fires while the test looks: it sees only which is
	// pending.
	linger := leaseLinger
	leaseLinger = time.Hour
	t.Cleanup(func() { leaseLinger = linger })
	s := &sharedLedger{leases: make(map[int]Usage)}
	f, err := Open(filepath.Join(t.TempDir(), "home"), Options{Ledger: memberLedger{s, 0}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pending := func() *time.Timer {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.returner
	}
	a, err := f.OpenFile("/a", os.O_WRONLY|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	first := pending()
	if first == nil {
		t.Fatal("no give-back pending after the last writer closed")
	}
	b, err := f.OpenFile("/b", os.O_WRONLY|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	if pending() != nil {
		t.Fatal("a give-back is still pending while a writer is open")
	}
	b.Close()
	if r := pending(); r == nil || r == first {
		t.Fatalf("after the next last close the pending give-back is %p, want a new one (the first was %p)", r, first)
	}
}
