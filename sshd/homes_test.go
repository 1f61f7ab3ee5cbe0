package sshd_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"silo/sshd"
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
