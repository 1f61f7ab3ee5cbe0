package admin_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"silo/activity"
	"silo/admin"
)

func serve(t *testing.T, mon *activity.Monitor, path string) *admin.Server {
	t.Helper()
	l, err := admin.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := admin.New(mon, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// The socket is mode 0600 from the start; a second server (an upgrade)
// takes the path over, and the first one's end leaves it in place.
func TestSocketLifecycle(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "admin.sock")
	old := activity.New(nil)
	s1 := serve(t, old, path)
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", fi, err)
	}
	mon := activity.New(nil)
	c := mon.Connect(activity.ConnInfo{Remote: "192.0.2.1:1"})
	c.LoggedIn("alice", "s1", "SSH-2.0-x", "password")
	serve(t, mon, path)
	s1.Close()
	st, err := admin.NewClient(path).Status(context.Background())
	if err != nil || len(st.Connections) != 1 || st.Connections[0].User != "alice" {
		t.Fatalf("status from the new server: %+v %v", st, err)
	}
	if _, err := admin.NewClient(path).Kick(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "target") {
		t.Fatalf("kick without a target: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("left beside the socket: %v", entries)
	}
}

func TestListenRefusesWhatIsNotASocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	os.WriteFile(path, []byte("keep"), 0o644)
	if _, err := admin.Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("the file was replaced")
	}
	if _, err := admin.NewClient(filepath.Join(t.TempDir(), "none")).Status(context.Background()); !errors.Is(err, admin.ErrNotRunning) {
		t.Fatalf("status without a server: %v", err)
	}
}
