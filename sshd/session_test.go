package sshd_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"silo/users"
)

func TestUnknownCommandExits127(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	for _, tc := range []struct {
		remote []string
		name   string
	}{
		{[]string{"ls", "-la"}, "ls"},
		{[]string{"'rm -rf /'"}, "rm -rf /"},
		{[]string{"bash", "-c", "id"}, "bash"},
		{[]string{"cat /etc/passwd; id"}, "cat"},
	} {
		stdout, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", tc.remote...)
		want := "silo: command not supported: " + tc.name + "\n"
		if code != 127 || stderr != want || stdout != "" {
			t.Errorf("ssh %v: exit %d, stdout %q, stderr %q; want 127 and %q", tc.remote, code, stdout, stderr, want)
		}
	}
}

// PTYs, environment, agent and X11 forwarding are refused on the session
// channel, which stays usable. (A shell or another subsystem ends it:
// TestShellRefusedAtOnce.)
func TestSessionRequestsRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.connect("alice", "alice")
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm", 24, 80, nil); err == nil {
		t.Error("pty-req accepted")
	}
	if err := sess.Setenv("LD_PRELOAD", "/tmp/x.so"); err == nil {
		t.Error("env accepted")
	}
	for _, req := range []string{"auth-agent-req@openssh.com", "x11-req"} {
		payload := []byte(nil)
		if req == "x11-req" {
			payload = ssh.Marshal(struct {
				Single        bool
				Proto, Cookie string
				Screen        uint32
			}{false, "MIT-MAGIC-COOKIE-1", "00", 0})
		}
		if ok, err := sess.SendRequest(req, true, payload); ok || err != nil {
			t.Errorf("%s: ok=%v err=%v, want refused", req, ok, err)
		}
	}
	// After all that, the channel still runs one command.
	out, err := sess.CombinedOutput("frobnicate")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 127 || !strings.Contains(string(out), "command not supported: frobnicate") {
		t.Errorf("exec after refused requests: %q, %v", out, err)
	}

	// OpenSSH's ssh without a command asks for a shell and is refused.
	_, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", "-T")
	if code == 0 || !strings.Contains(stderr, "This service allows sftp, scp, rsync and checksum commands only.") {
		t.Errorf("ssh without a command: exit %d, stderr %q", code, stderr)
	}
}

// Only session channels exist: port forwarding is refused, and so are
// global requests such as tcpip-forward.
func TestForwardingRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.connect("alice", "alice")
	if conn, err := c.Dial("tcp", ts.addr); err == nil {
		conn.Close()
		t.Fatal("direct-tcpip channel accepted")
	} else if !strings.Contains(err.Error(), "unknown channel type") {
		t.Errorf("direct-tcpip: %v", err)
	}
	if _, _, err := c.OpenChannel("x11", nil); err == nil {
		t.Error("x11 channel accepted")
	}
	if ln, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
		t.Error("tcpip-forward accepted")
	}
	// The connection is still good.
	sess, err := c.NewSession()
	if err != nil {
		t.Fatalf("session after refused channels: %v", err)
	}
	sess.Close()
}

// Removing a user ends that user's open sessions; other users carry on.
func TestRemovedUserSessionsClosed(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	ts.addUser("bob", "", "bob")
	ca := ts.sftpClient("alice", "alice")
	cb := ts.sftpClient("bob", "bob")
	if _, err := ca.Getwd(); err != nil {
		t.Fatal(err)
	}
	ts.update(func(f *users.File) {
		f.Users = f.Users[1:] // alice was added first
	})
	ended := make(chan error, 1)
	go func() { ended <- ca.Wait() }()
	select {
	case <-ended:
	case <-time.After(2 * time.Minute):
		t.Fatal("removed user's session still open")
	}
	if _, err := cb.Stat("/"); err != nil {
		t.Fatalf("another user's session broke: %v", err)
	}
	if _, err := ts.dial("alice", ssh.PublicKeys(shared.keys["alice"].signer)); err == nil {
		t.Fatal("removed user logged in")
	}
}
