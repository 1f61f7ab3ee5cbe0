package sshd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pkg/sftp"

	"silo/sshd"
)

// Shutdown closes at once what transfers nothing (a connection that has not
// logged in, a session without open files), lets an upload finish, closes
// its connection when it does, and returns after that.
func TestShutdownLetsTransfersFinish(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ts := startMemServer(t, sshd.DefaultLimits(), testPenalties())
		ts.addUser("alice", "", "alice")
		unauth, err := ts.dialFrom("127.0.0.7")
		if err != nil {
			t.Fatal(err)
		}
		idle := ts.connect("alice", "alice")
		idleGone := gone(idle)
		busy := ts.connect("alice", "alice")
		busyGone := gone(busy)
		sc, err := sftp.NewClient(busy)
		if err != nil {
			t.Fatal(err)
		}
		f, err := sc.Create("/up")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte("first half,")); err != nil {
			t.Fatal(err)
		}

		shut := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			shut <- ts.srv.Shutdown(ctx)
		}()
		synctest.Wait()
		if !closedByPeer(unauth) || !idleGone() {
			t.Fatal("connections without transfers still open after Shutdown")
		}
		if _, err := ts.dialFrom("127.0.0.1"); err == nil {
			t.Fatal("a new connection was accepted during Shutdown")
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned (%v) while an upload was open", err)
		default:
		}
		if _, err := f.Write([]byte(" second half")); err != nil {
			t.Fatalf("the upload was cut: %v", err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("closing the upload: %v", err)
		}
		synctest.Wait()
		if !busyGone() {
			t.Fatal("the connection stayed open after its upload ended")
		}
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if data, err := os.ReadFile(filepath.Join(ts.homes, "alice", "up")); err != nil || string(data) != "first half, second half" {
			t.Fatalf("the upload on disk: %q, %v", data, err)
		}
	})
}

// When the grace runs out, Shutdown closes what is left and returns only
// after its sessions have finished.
func TestShutdownGraceRunsOut(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ts := startMemServer(t, sshd.DefaultLimits(), testPenalties())
		ts.addUser("alice", "", "alice")
		busy := ts.connect("alice", "alice")
		busyGone := gone(busy)
		sc, err := sftp.NewClient(busy)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sc.Create("/up"); err != nil {
			t.Fatal(err)
		}
		const grace = 30 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		start := time.Now()
		if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v, want the deadline", err)
		}
		if d := time.Since(start); d != grace {
			t.Errorf("Shutdown returned after %v, want the grace %v", d, grace)
		}
		if !busyGone() {
			t.Fatal("the busy connection is still open after the grace")
		}
	})
}

// Close closes every connection, logged in or not, and returns when their
// sessions have ended.
func TestCloseClosesEveryConnection(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ts := startMemServer(t, sshd.DefaultLimits(), testPenalties())
		ts.addUser("alice", "", "alice")
		unauth, err := ts.dialFrom("127.0.0.7")
		if err != nil {
			t.Fatal(err)
		}
		c := ts.connect("alice", "alice")
		closed := gone(c)
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		stdin, _ := sess.StdinPipe()
		defer stdin.Close()
		if err := sess.Start("md5sum"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		ts.srv.Close()
		if !closedByPeer(unauth) {
			t.Error("an unauthenticated connection survived Close")
		}
		if !closed() {
			t.Error("a logged-in connection survived Close")
		}
	})
}
