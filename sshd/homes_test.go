package sshd_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"silo/sshd"
	"silo/users"
	"silo/vfs"
)

// Opening a home (the walk that counts it) holds up nobody else: while one
// home's opening is held, another user logs in and transfers.
func TestHomeOpenDoesNotBlockOthers(t *testing.T) {
	needClient(t, "sftp")
	ts := startServer(t)
	ts.addUser("big", "", "bob")
	ts.addUser("alice", "", "alice")
	bigHome, _ := filepath.EvalSymlinks(ts.home("big"))
	held, release := make(chan struct{}), make(chan struct{})
	sshd.SetHomeHooks(ts.srv, time.Hour, func(dir string) {
		if dir == bigHome {
			close(held)
			<-release
		}
	}, nil)
	done := make(chan error, 1)
	go func() {
		_, err := ts.sftpBatch("big", auth{key: "bob"}, "ls\n")
		done <- err
	}()
	<-held
	type result struct {
		out string
		err error
	}
	alice := make(chan result, 1)
	go func() {
		out, err := ts.sftpBatch("alice", auth{key: "alice"}, "put /etc/hostname h\nls -l h\n")
		alice <- result{out, err}
	}()
	select {
	case r := <-alice:
		if r.err != nil {
			t.Fatalf("alice while big's home is being opened: %v\n%s", r.err, r.out)
		}
	case <-time.After(time.Minute): // a hang bound, not a speed floor
		close(release)
		t.Fatal("alice's session waited for big's home to open")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("big: %v", err)
	}
}

// A home nobody uses is closed, and counted again when next opened; a home
// replaced on disk while open is counted afresh, not mixed with the old.
func TestHomesCloseWhenIdleAndFollowTheDisk(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 1<<20, 0)
	closed := make(chan string, 4)
	sshd.SetHomeHooks(ts.srv, time.Millisecond, nil, func(dir string) { closed <- dir })
	home := ts.home("alice")
	used := func(c *rawSFTP) uint64 { size, free := c.statvfs(); return size - free }

	c := ts.rawSFTP("alice", "alice")
	if u := used(c); u != 0 {
		t.Fatalf("new home uses %d", u)
	}
	c.sess.Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("an unused home was not closed")
	}
	writeFile(t, filepath.Join(home, "outside"), make([]byte, 1000))
	if u := used(ts.rawSFTP("alice", "alice")); u != 1000 {
		t.Fatalf("reopened home uses %d, want 1000", u)
	}

	// Still open (a session holds it), the home moves away and another
	// directory takes its place.
	keep := ts.rawSFTP("alice", "alice")
	if err := os.Rename(home, home+".old"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, "new"), make([]byte, 3000))
	if u := used(ts.rawSFTP("alice", "alice")); u != 3000 {
		t.Fatalf("replaced home uses %d, want 3000", u)
	}
	if u := used(keep); u != 1000 {
		t.Fatalf("the session on the old home sees %d, want 1000", u)
	}
}

// heldLedger is a usage ledger for every user of a server whose first
// Close for one user waits until the test lets it go, as a database that
// does not answer holds it for its timeout. It records every Open of a user
// whose previous home is still closing.
type heldLedger struct {
	hold    string        // the user whose first Close is held
	held    chan struct{} // closed once that Close has started
	release chan struct{} // closed by the test to let it end
	once    sync.Once

	mu        sync.Mutex
	committed map[string]vfs.Usage
	closing   map[string]bool
	opens     map[string]int
	overlaps  []string
}

func newHeldLedger(hold string) *heldLedger {
	return &heldLedger{hold: hold, held: make(chan struct{}), release: make(chan struct{}),
		committed: map[string]vfs.Usage{}, closing: map[string]bool{}, opens: map[string]int{}}
}

func (l *heldLedger) of(user string) vfs.Ledger { return userLedger{l, user} }

type userLedger struct {
	l    *heldLedger
	user string
}

func (u userLedger) Open(found vfs.Usage) (vfs.Usage, error) {
	u.l.mu.Lock()
	defer u.l.mu.Unlock()
	if u.l.closing[u.user] {
		u.l.overlaps = append(u.l.overlaps, u.user)
	}
	u.l.opens[u.user]++
	u.l.committed[u.user] = found
	return found, nil
}

// Settle grants what is asked: the users of these tests have no quota.
func (u userLedger) Settle(_ vfs.Limits, delta, need, extra vfs.Usage) (vfs.Usage, vfs.Usage, error) {
	u.l.mu.Lock()
	defer u.l.mu.Unlock()
	c := u.l.committed[u.user]
	c.Bytes += delta.Bytes
	c.Files += delta.Files
	u.l.committed[u.user] = c
	return vfs.Usage{Bytes: need.Bytes + extra.Bytes, Files: need.Files + extra.Files}, c, nil
}

func (u userLedger) Recount(found vfs.Usage) error {
	u.l.mu.Lock()
	defer u.l.mu.Unlock()
	u.l.committed[u.user] = found
	return nil
}

func (u userLedger) Close() {
	u.l.mu.Lock()
	u.l.closing[u.user] = true
	u.l.mu.Unlock()
	if u.user == u.l.hold {
		u.l.once.Do(func() {
			close(u.l.held)
			<-u.l.release
		})
	}
	u.l.mu.Lock()
	u.l.closing[u.user] = false
	u.l.mu.Unlock()
}

// heldLedgerServer starts a server on a heldLedger whose first Close of
// big's home is held until release, with the users big (key bob) and
// alice.
func heldLedgerServer(t *testing.T) (*testServer, *heldLedger, func()) {
	needClient(t, "sftp")
	l := newHeldLedger("big")
	ts := startServerWith(t, t.TempDir(), sshd.DefaultLimits(), testPenalties(), func(c *sshd.Config) { c.Ledger = l.of })
	var letGo sync.Once
	release := func() { letGo.Do(func() { close(l.release) }) }
	t.Cleanup(release) // before the server's cleanup, which waits for every close
	ts.addUser("big", "", "bob")
	ts.addUser("alice", "", "alice")
	return ts, l, release
}

// Closing a home (which settles its usage with the ledger, a database that
// may not answer) holds up nobody else: while one home's close is held in
// its ledger, another user logs in and transfers; and the same user, back
// meanwhile, waits for the close to end before the home is opened again,
// so that the old instance's last settle and the new one's count never
// overlap.
func TestHomeCloseDoesNotBlockOthers(t *testing.T) {
	ts, l, release := heldLedgerServer(t)
	bigHome, _ := filepath.EvalSymlinks(ts.home("big"))
	sshd.SetHomeHooks(ts.srv, time.Millisecond, nil, nil)
	waited := make(chan struct{}, 1)
	sshd.SetHomeWaitHook(ts.srv, func(dir string) {
		if dir == bigHome {
			select {
			case waited <- struct{}{}:
			default:
			}
		}
	})
	type result struct {
		out string
		err error
	}
	sftp := func(user, key, batch string) <-chan result {
		c := make(chan result, 1)
		go func() {
			out, err := ts.sftpBatch(user, auth{key: key}, batch)
			c <- result{out, err}
		}()
		return c
	}
	// Bounds for a test that would hang, not speed floors.
	wait := func(what string, c <-chan struct{}) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(time.Minute):
			t.Fatalf("never: %s", what)
		}
	}
	if r := <-sftp("big", "bob", "put /etc/hostname h\n"); r.err != nil {
		t.Fatalf("big: %v\n%s", r.err, r.out)
	}
	wait("big's home closed for being idle", l.held)

	select {
	case r := <-sftp("alice", "alice", "put /etc/hostname h\nls -l h\n"):
		if r.err != nil {
			t.Fatalf("alice while big's home is being closed: %v\n%s", r.err, r.out)
		}
	case <-time.After(time.Minute):
		t.Fatal("alice's session waited for big's home to close")
	}

	again := sftp("big", "bob", "ls -l h\n")
	wait("big's new session waiting for his home's close", waited)
	release()
	if r := <-again; r.err != nil || !strings.Contains(r.out, " h\n") {
		t.Fatalf("big after the close: %v\n%s", r.err, r.out)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.overlaps) > 0 || l.opens["big"] != 2 {
		t.Fatalf("big's home opened %d times, %d of them while the previous one was closing; want 2 and none",
			l.opens["big"], len(l.overlaps))
	}
}

// Removing a user whose home is open closes that home apart: the account
// change, and every change behind it, is applied while the ledger holds
// the close.
func TestRemovedUsersHomeClosesApart(t *testing.T) {
	ts, l, release := heldLedgerServer(t)
	sshd.SetHomeHooks(ts.srv, time.Hour, nil, nil)
	if out, err := ts.sftpBatch("big", auth{key: "bob"}, "put /etc/hostname h\n"); err != nil {
		t.Fatalf("big: %v\n%s", err, out)
	}

	applied := make(chan error, 1)
	go func() {
		err := users.Update(ts.usersFile, func(f *users.File) error {
			f.Users = slices.DeleteFunc(f.Users, func(u users.User) bool { return u.Name == "big" })
			return nil
		})
		if err == nil {
			var removed []string
			if removed, err = ts.store.Reload(); err == nil {
				ts.srv.Reloaded(removed)
			}
		}
		applied <- err
	}()
	// Bounds for a test that would hang, not speed floors.
	select {
	case <-l.held:
	case <-time.After(time.Minute):
		t.Fatal("never: big's home closed after big was removed")
	}
	select {
	case err := <-applied:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("removing big waited for his home's ledger to close")
	}
	ts.addUser("carol", "", "alice")
	if out, err := ts.sftpBatch("carol", auth{key: "alice"}, "put /etc/hostname h\n"); err != nil {
		t.Fatalf("carol, added while big's home is closing: %v\n%s", err, out)
	}
	release()
}
