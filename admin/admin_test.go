package admin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// Another user is kept out by the socket's mode, and, were the mode
// opened, by the check of the peer's uid. The other user is this test's
// binary run again as nobody (TestPeerClient).
func TestOtherUsersAreRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to connect as another user")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	path := filepath.Join(dir, "admin.sock")
	serve(t, activity.New(nil), path)
	// A copy of the test binary that nobody may run.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	client := filepath.Join(dir, "client")
	if err := os.WriteFile(client, self, 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func() string {
		cmd := exec.Command(client, "-test.run=^TestPeerClient$")
		cmd.Env = append(os.Environ(), "SILO_ADMIN_TEST_SOCKET="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := asNobody(); !strings.Contains(out, "dial: ") || !strings.Contains(out, "permission denied") {
		t.Fatalf("nobody through a 0600 socket: %s", out)
	}
	os.Chmod(path, 0o666)
	if out := asNobody(); !strings.Contains(out, "connected; no answer") {
		t.Fatalf("nobody through an opened socket: %s", out)
	}
	if _, err := admin.NewClient(path).Status(context.Background()); err != nil {
		t.Fatalf("the server's own user: %v", err)
	}
}

// TestPeerClient is TestOtherUsersAreRefused's client: it asks for the
// status on the socket it is given, and says how far it got.
func TestPeerClient(t *testing.T) {
	path := os.Getenv("SILO_ADMIN_TEST_SOCKET")
	if path == "" {
		t.Skip("run by TestOtherUsersAreRefused")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.Close()
	fmt.Fprint(c, "GET /v1/status HTTP/1.0\r\nHost: silo\r\n\r\n")
	if b, err := io.ReadAll(c); len(b) > 0 {
		fmt.Printf("answered: %q\n", b)
	} else {
		fmt.Println("connected; no answer:", err)
	}
}
