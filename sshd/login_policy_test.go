package sshd_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"silo/sshd"
	"silo/users"
)

// set changes one user's record and applies it, as a reload does.
func (ts *testServer) set(name string, fn func(u *users.User)) {
	ts.t.Helper()
	ts.update(func(f *users.File) { fn(&f.Users[f.Find(name)]) })
}

// closedWithin waits for the connection to end: the event a test of
// closing waits for; the bound is for a test that would hang.
func closedWithin(t *testing.T, c *ssh.Client, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s: the connection stayed open", what)
	}
}

// A login refused by the account's policy gets the client the answer a
// wrong password gets; the server log says why.
func TestLoginPolicy(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "alice-pw", "alice")
	ts.home("alice")
	pw := func(p string) ssh.AuthMethod { return ssh.Password(p) }
	_, wrongErr := ts.dial("alice", pw("wrong"))
	if wrongErr == nil {
		t.Fatal("a wrong password logged in")
	}
	login := func(ip string, m ssh.AuthMethod) error {
		c, err := ts.loginFrom(ip, "alice", m)
		if err == nil {
			c.Close()
		}
		return err
	}
	key := ssh.PublicKeys(shared.keys["alice"].signer)
	for _, tc := range []struct {
		name   string
		change func(u *users.User)
		ip     string
		ok     bool
		reason string
	}{
		{"allowed network", func(u *users.User) { u.AllowFrom = []string{"127.0.0.1/32"} }, "127.0.0.1", true, ""},
		{"other network", func(u *users.User) { u.AllowFrom = []string{"192.0.2.0/24"} }, "127.0.0.1", false, "address not in the account's allow_from: 127.0.0.1"},
		{"other loopback address", func(u *users.User) { u.AllowFrom = []string{"127.0.0.1/32"} }, "127.0.0.2", false, "address not in the account's allow_from: 127.0.0.2"},
		{"disabled", func(u *users.User) { u.Disabled = true }, "127.0.0.1", false, "account disabled"},
		{"enabled again", func(u *users.User) {}, "127.0.0.1", true, ""},
		{"expired", func(u *users.User) { u.Expires = "2001-02-03" }, "127.0.0.1", false, "account expired on 2001-02-03"},
		{"expires later", func(u *users.User) { u.Expires = time.Now().Add(time.Hour).UTC().Format(time.RFC3339) }, "127.0.0.1", true, ""},
	} {
		ts.set("alice", func(u *users.User) {
			u.AllowFrom, u.Disabled, u.Expires = nil, false, ""
			tc.change(u)
		})
		for _, m := range []struct {
			name string
			auth ssh.AuthMethod
		}{{"password", pw("alice-pw")}, {"publickey", key}} {
			err := login(tc.ip, m.auth)
			if (err == nil) != tc.ok {
				t.Errorf("%s, %s: login error %v, want ok %v", tc.name, m.name, err, tc.ok)
			}
			if tc.ok {
				continue
			}
			if m.name == "password" && err.Error() != wrongErr.Error() {
				t.Errorf("%s: the client got %q, a wrong password gets %q", tc.name, err, wrongErr)
			}
			ts.logs.waitFor(t, "reason=\""+tc.reason+"\"")
		}
	}
	// OpenSSH's sftp, refused and let in.
	ts.set("alice", func(u *users.User) { u.AllowFrom = []string{"192.0.2.0/24"} })
	if out, err := ts.sftpBatch("alice", alice, "ls\n"); err == nil {
		t.Errorf("sftp from outside allow_from logged in:\n%s", out)
	}
	ts.set("alice", func(u *users.User) { u.AllowFrom = []string{"192.0.2.0/24", "127.0.0.1/32"} })
	if out, err := ts.sftpBatch("alice", alice, "ls\n"); err != nil {
		t.Errorf("sftp from inside allow_from: %v\n%s", err, out)
	}
}

// The open connections of an account that is disabled, expires, is
// deleted or no longer allowed from their address are closed when the
// server reads the users file; other accounts' stay.
func TestPolicyClosesOpenSessions(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	for _, n := range []string{"alice", "bob"} {
		ts.addUser(n, "", "alice")
		ts.home(n)
	}
	bob := ts.connect("bob", "alice")
	for _, tc := range []struct {
		name   string
		change func(f *users.File)
	}{
		{"disabled", func(f *users.File) { f.Users[f.Find("alice")].Disabled = true }},
		{"expired", func(f *users.File) { f.Users[f.Find("alice")].Expires = "2001-01-01" }},
		{"allow_from", func(f *users.File) { f.Users[f.Find("alice")].AllowFrom = []string{"192.0.2.0/24"} }},
	} {
		ts.update(func(f *users.File) {
			u := &f.Users[f.Find("alice")]
			u.Disabled, u.Expires, u.AllowFrom = false, "", nil
		})
		c := ts.connect("alice", "alice")
		sc, err := sftp.NewClient(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sc.Getwd(); err != nil {
			t.Fatal(err)
		}
		ts.update(tc.change)
		closedWithin(t, c, tc.name)
		if _, err := sc.Stat("/"); err == nil {
			t.Errorf("%s: the SFTP session still answers", tc.name)
		}
	}
	if _, _, err := bob.SendRequest("keepalive@openssh.com", true, nil); err != nil {
		t.Fatalf("bob's connection was closed too: %v", err)
	}
}

// An account's max_connections replaces the server's limit for it, lower
// or higher.
func TestAccountMaxConnections(t *testing.T) {
	t.Parallel()
	lim := sshd.DefaultLimits()
	lim.MaxConnectionsPerUser = 2
	ts := startServerWith(t, t.TempDir(), lim, testPenalties())
	ts.addUser("alice", "", "alice")
	ts.addUser("bob", "", "bob")
	key := func(n string) ssh.AuthMethod { return ssh.PublicKeys(shared.keys[n].signer) }
	ts.set("alice", func(u *users.User) { u.MaxConnections = 1 })
	ts.set("bob", func(u *users.User) { u.MaxConnections = 3 })
	for _, tc := range []struct {
		user string
		n    int
	}{{"alice", 1}, {"bob", 3}} {
		for i := range tc.n {
			c, err := ts.dial(tc.user, key(tc.user))
			if err != nil {
				t.Fatalf("%s: connection %d of %d: %v", tc.user, i+1, tc.n, err)
			}
			t.Cleanup(func() { c.Close() })
		}
		// OpenSSH's ssh shows the refusal's banner.
		_, stderr, code := ts.ssh(tc.user, auth{key: tc.user}, "", "md5sum")
		if want := fmt.Sprintf("%s already has %d connections, the most allowed", tc.user, tc.n); code != 255 || !strings.Contains(stderr, want) {
			t.Errorf("%s: connection %d: exit %d %q, want the banner %q", tc.user, tc.n+1, code, stderr, want)
		}
	}
}

// fakeClock stands still and records every wait the rate limits ask for,
// so that the limits are seen without timing anything: with time standing
// still, the longest wait asked for is what the bytes charged so far,
// beyond the burst, take at the rate.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	waits  int
	maxGap time.Duration
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) Sleep(d time.Duration, _ <-chan struct{}) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits++
	c.maxGap = max(c.maxGap, d)
	return true
}

// longest returns the longest wait asked for and how many there were since
// the last call.
func (c *fakeClock) longest() (time.Duration, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, n := c.maxGap, c.waits
	c.maxGap, c.waits = 0, 0
	return d, n
}

// Upload and download rates hold over all of an account's sessions
// together, on every protocol: two OpenSSH sftp uploads and an rsync push
// at once are charged to one limiter, downloads through scp to another.
func TestAccountRates(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	sshd.SetRateClock(ts.srv, clock)
	ts.addUser("alice", "", "alice")
	const up, down = 64 << 10, 128 << 10 // bytes per second; the burst is 64 KiB or the rate
	ts.set("alice", func(u *users.User) { u.UploadRate, u.DownloadRate = up, down })
	home := ts.home("alice")
	local := t.TempDir()
	const size = 512 << 10
	for _, n := range []string{"a", "b", "c"} {
		writeFile(t, filepath.Join(local, n), randomBytes(size))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 3)
	for _, n := range []string{"a", "b"} {
		wg.Go(func() {
			if out, err := ts.sftpBatch("alice", alice, "put "+filepath.Join(local, n)+" "+n+"\n"); err != nil {
				errs <- "sftp put " + n + ": " + out
			}
		})
	}
	wg.Go(func() {
		if out, ok := rsyncRun(ts, filepath.Join(local, "c"), "alice@127.0.0.1:c"); !ok {
			errs <- "rsync push: " + out
		}
	})
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	// 1.5 MiB written at 64 KiB/s, less the 64 KiB burst: 23 s of waiting
	// by the limiter's own accounting, however the uploads interleaved.
	want := time.Duration(float64(3*size-up) / up * float64(time.Second))
	got, waits := clock.longest()
	if d := got - want; d < -time.Millisecond || d > time.Millisecond {
		t.Errorf("uploads: the longest wait asked for is %v (%d waits), want %v", got, waits, want)
	}

	// Downloads are charged to their own limiter, which the uploads left
	// untouched: 1 MiB read through scp at 128 KiB/s, less a 128 KiB
	// burst, is 7 s.
	writeFile(t, filepath.Join(home, "big"), randomBytes(1<<20))
	if out, ok := scpRun(ts, "alice@127.0.0.1:big", filepath.Join(local, "got")); !ok {
		t.Fatalf("scp get: %s", out)
	}
	if got, err := os.ReadFile(filepath.Join(local, "got")); err != nil || len(got) != 1<<20 {
		t.Fatalf("scp get: %d bytes, %v", len(got), err)
	}
	want = time.Duration(float64(1<<20-down) / down * float64(time.Second))
	if got, waits := clock.longest(); got-want > time.Millisecond || want-got > time.Millisecond {
		t.Errorf("download: the longest wait asked for is %v (%d waits), want %v", got, waits, want)
	}
}

// An open connection ends when its account expires, on a fake clock; an
// expiry set or moved later meanwhile is the one that counts.
func TestExpiryClosesOpenConnection(t *testing.T) {
	t.Parallel()
	lim := sshd.DefaultLimits()
	lim.KeepaliveInterval, lim.IdleTimeout = 0, 0 // only the expiry closes these connections
	synctest.Test(t, func(t *testing.T) {
		ts := startMemServer(t, lim, testPenalties())
		ts.addUser("alice", "", "alice")
		start := time.Now()
		at := func(d time.Duration) string { return start.Add(d).UTC().Format(time.RFC3339) }
		c := ts.connect("alice", "alice")
		closed := gone(c)
		time.Sleep(10 * time.Minute)
		ts.set("alice", func(u *users.User) { u.Expires = at(time.Hour) })
		time.Sleep(20 * time.Minute)
		ts.set("alice", func(u *users.User) { u.Expires = at(2 * time.Hour) })
		time.Sleep(2*time.Hour - 30*time.Minute - time.Second)
		if closed() {
			t.Fatal("closed before the expiry, which was moved to 2 h")
		}
		time.Sleep(time.Second)
		if !closed() {
			t.Fatal("still open when the account expired")
		}
		if _, err := ts.dial("alice", ssh.PublicKeys(shared.keys["alice"].signer)); err == nil {
			t.Fatal("an expired account logged in")
		}
	})
}
