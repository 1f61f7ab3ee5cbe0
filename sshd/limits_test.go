package sshd_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"silo/sshd"
)

// A connection that sends nothing is closed at the login grace time, and
// its source penalised; 200 of them held from one address do not keep a
// real user from logging in.
func TestLoginGraceAndStartups(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		lim := sshd.DefaultLimits()
		ts := startMemServer(t, lim, testPenalties())
		ts.addUser("alice", "", "alice")

		silent, err := ts.dialFrom("127.0.0.5")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(lim.LoginGraceTime - time.Nanosecond)
		synctest.Wait()
		if closedByPeer(silent) {
			t.Fatal("a silent connection was closed before the login grace time")
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if !closedByPeer(silent) {
			t.Fatal("a silent connection was not closed at the login grace time")
		}
		if !strings.Contains(ts.logs.String(), `msg="login grace time exceeded" remote=127.0.0.5:`) {
			t.Error("no log line for the grace time")
		}

		var flood []net.Conn
		for range 200 {
			c, err := ts.dialFrom("127.0.0.2")
			if err != nil {
				t.Fatal(err)
			}
			flood = append(flood, c)
		}
		synctest.Wait()
		open := func() (n int) {
			for _, c := range flood {
				if !closedByPeer(c) {
					n++
				}
			}
			return n
		}
		if n := open(); n != lim.PerSourceMaxStartups {
			t.Fatalf("%d flood connections open, want the per-source limit %d", n, lim.PerSourceMaxStartups)
		}
		c, err := ts.loginFrom("127.0.0.1", "alice", ssh.PublicKeys(shared.keys["alice"].signer))
		if err != nil {
			t.Fatalf("login during the flood: %v", err)
		}
		c.Close()
		time.Sleep(lim.LoginGraceTime)
		synctest.Wait()
		if n := open(); n > 0 {
			t.Fatalf("%d flood connections still open after the grace time", n)
		}
		for _, c := range flood {
			c.Close()
		}
	})
}

// After failed logins pass the penalty threshold, even a correct login from
// that source is refused until the penalty runs out; an exempt source never
// is.
func TestPerSourcePenalties(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		pen := sshd.DefaultPenalties()
		pen.Exempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}
		ts := startMemServer(t, sshd.DefaultLimits(), pen)
		ts.addUser("alice", "", "alice")
		right, wrong := ssh.PublicKeys(shared.keys["alice"].signer), ssh.PublicKeys(shared.keys["other"].signer)
		login := func(ip string, method ssh.AuthMethod) error {
			c, err := ts.loginFrom(ip, "alice", method)
			if err == nil {
				c.Close()
			}
			synctest.Wait() // the server has seen the connection end
			return err
		}
		// Four failures add 4*AuthFail = 20 s, past Min (15 s).
		for _, ip := range []string{"127.0.0.3", "127.0.0.4"} {
			for range 4 {
				if login(ip, wrong) == nil {
					t.Fatal("a wrong key was accepted")
				}
			}
		}
		if login("127.0.0.3", right) == nil {
			t.Fatal("penalised source logged in")
		}
		if err := login("127.0.0.4", right); err != nil {
			t.Fatalf("exempt source refused: %v", err)
		}
		if err := login("127.0.0.6", right); err != nil {
			t.Fatalf("other source refused: %v", err)
		}
		time.Sleep(4*pen.AuthFail - time.Nanosecond)
		if login("127.0.0.3", right) == nil {
			t.Fatal("penalised source logged in before its penalty ran out")
		}
		time.Sleep(time.Nanosecond)
		if err := login("127.0.0.3", right); err != nil {
			t.Fatalf("after the penalty ran out: %v", err)
		}
		if n := strings.Count(ts.logs.String(), `msg="source blocked" source=127.0.0.3/32`); n != 1 {
			t.Errorf("%d log lines for the blocked source, want 1", n)
		}
		if strings.Contains(ts.logs.String(), "source=127.0.0.4") {
			t.Error("the exempt source was blocked")
		}
	})
}

func TestMaxSessions(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		lim := sshd.DefaultLimits()
		ts := startMemServer(t, lim, testPenalties())
		ts.addUser("alice", "", "alice")
		c := ts.connect("alice", "alice")
		var sessions []*ssh.Session
		for i := range lim.MaxSessions {
			s, err := c.NewSession()
			if err != nil {
				t.Fatalf("session %d: %v", i+1, err)
			}
			sessions = append(sessions, s)
		}
		if _, err := c.NewSession(); err == nil || !strings.Contains(err.Error(), "too many sessions") {
			t.Fatalf("session %d: %v", lim.MaxSessions+1, err)
		}
		sessions[0].Close()
		synctest.Wait()
		s, err := c.NewSession()
		if err != nil {
			t.Fatalf("no session after one closed: %v", err)
		}
		s.Close()
	})
}

// liveHeap is the heap in use after a collection: unlike the RSS, it does
// not depend on what the runtime has not yet given back.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// Rejected channel opens leave nothing behind. Not parallel: it measures
// the whole process's heap.
func TestRejectedChannelsKeepMemoryFlat(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.connect("alice", "alice")
	reject := func(n int) {
		for range n {
			if _, _, err := c.OpenChannel("direct-tcpip", ssh.Marshal(struct {
				Host  string
				Port  uint32
				OHost string
				OPort uint32
			}{"127.0.0.1", 22, "127.0.0.1", 1})); err == nil {
				t.Fatal("direct-tcpip accepted")
			}
		}
	}
	reject(1000)
	before := liveHeap()
	reject(10000)
	// A leak of 100 bytes a channel would show.
	if after := liveHeap(); after > before+1<<20 {
		t.Fatalf("the live heap grew from %d to %d bytes over 10,000 rejected channels", before, after)
	}
	if _, err := c.NewSession(); err != nil {
		t.Fatalf("connection unusable afterwards: %v", err)
	}
}

func TestMaxOpenHandlesAndUnknownExtension(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "f"), []byte("x"))
	c := ts.rawSFTP("alice", "alice")
	var handles []string
	for i := range 256 {
		var r reply
		if i%2 == 0 {
			r = c.open("/f", fxfRead)
		} else {
			r = c.call(fxpOpendir, str("/"))
		}
		if r.typ != fxpHandle {
			t.Fatalf("handle %d: %q", i+1, r.msg)
		}
		handles = append(handles, r.str)
	}
	if r := c.open("/f", fxfRead); r.code != fxFailure || r.msg != "too many open handles in this session" {
		t.Fatalf("257th handle: %+v", r)
	}
	if r := c.call(fxpOpendir, str("/")); r.code != fxFailure {
		t.Fatalf("257th handle (opendir): %+v", r)
	}
	c.close(handles[0])
	if r := c.open("/f", fxfRead); r.typ != fxpHandle {
		t.Fatalf("after closing one: %+v", r)
	}
	if r := c.extended("frobnicate@example.com", str("x")); r.code != fxOpUnsupported {
		t.Fatalf("unknown extension: %+v", r)
	}
	if r := c.call(fxpStat, str("/f")); r.typ != fxpAttrs {
		t.Fatalf("the session did not go on: %+v", r)
	}
}

func TestMaxConnectionsPerUser(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		lim := sshd.DefaultLimits()
		lim.MaxConnectionsPerUser = 2
		ts := startMemServer(t, lim, testPenalties())
		ts.addUser("alice", "", "alice")
		ts.addUser("bob", "", "bob")
		login := func(user string) (*ssh.Client, error) {
			return ts.dial(user, ssh.PublicKeys(shared.keys[user].signer))
		}
		a1, err := login("alice")
		if err != nil {
			t.Fatal(err)
		}
		a2, err := login("alice")
		if err != nil {
			t.Fatal(err)
		}
		defer a2.Close()
		if c, err := login("alice"); err == nil {
			c.Close()
			t.Fatal("third connection of alice accepted")
		}
		if c, err := login("bob"); err != nil {
			t.Fatalf("another user refused: %v", err)
		} else {
			c.Close()
		}
		a1.Close()
		synctest.Wait()
		c, err := login("alice")
		if err != nil {
			t.Fatalf("no login after one connection closed: %v", err)
		}
		c.Close()
	})
}

// OpenSSH's ssh shows why a connection over the per-user limit is refused.
func TestMaxConnectionsPerUserBanner(t *testing.T) {
	t.Parallel()
	lim := sshd.DefaultLimits()
	lim.MaxConnectionsPerUser = 1
	ts := startServerWith(t, t.TempDir(), lim, testPenalties())
	ts.addUser("alice", "", "alice")
	ts.connect("alice", "alice")
	_, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", "md5sum")
	if code != 255 || !strings.Contains(stderr, "alice already has 1 connections, the most allowed") {
		t.Errorf("ssh at the limit: %d %q", code, stderr)
	}
}

// gone reports, once the bubble is quiet, whether the server has closed c.
func gone(c interface{ Wait() error }) func() bool {
	done := make(chan struct{})
	go func() {
		c.Wait()
		close(done)
	}()
	return func() bool {
		synctest.Wait()
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
}

// A connection is closed after the idle timeout without SFTP requests or a
// working command. A command that waits for input (md5sum reading stdin,
// scp -t receiving nothing) is idle; one that works is not, however long
// it takes; input keeps a command from being idle.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	lim := sshd.DefaultLimits()
	lim.KeepaliveInterval = 0 // only idleness closes these connections
	run := func(name string, fn func(t *testing.T, ts *testServer, c *ssh.Client, closed func() bool)) {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ts := startMemServer(t, lim, testPenalties())
				ts.addUser("alice", "", "alice")
				c := ts.connect("alice", "alice")
				fn(t, ts, c, gone(c))
			})
		})
	}
	// idleAt checks that the connection closes exactly an idle timeout
	// after the last activity.
	idleAt := func(t *testing.T, closed func() bool) {
		t.Helper()
		time.Sleep(lim.IdleTimeout - time.Nanosecond)
		if closed() {
			t.Fatal("closed before the idle timeout")
		}
		time.Sleep(time.Nanosecond)
		if !closed() {
			t.Fatal("still open at the idle timeout")
		}
	}

	run("sftp", func(t *testing.T, ts *testServer, c *ssh.Client, closed func() bool) {
		sc, err := sftp.NewClient(c)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			time.Sleep(lim.IdleTimeout - time.Nanosecond)
			if _, err := sc.Stat("/"); err != nil {
				t.Fatalf("active session closed: %v", err)
			}
		}
		idleAt(t, closed)
	})
	for _, cmd := range []string{"md5sum", "scp -t /"} {
		run(cmd+" waiting for input", func(t *testing.T, ts *testServer, c *ssh.Client, closed func() bool) {
			sess, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			stdin, _ := sess.StdinPipe() // left open, nothing sent
			defer stdin.Close()
			if err := sess.Start(cmd); err != nil {
				t.Fatal(err)
			}
			idleAt(t, closed)
		})
	}
	run("md5sum fed slowly", func(t *testing.T, ts *testServer, c *ssh.Client, closed func() bool) {
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		stdin, _ := sess.StdinPipe()
		var out strings.Builder
		sess.Stdout = &out
		if err := sess.Start("md5sum"); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			time.Sleep(lim.IdleTimeout - time.Nanosecond)
			stdin.Write([]byte("hello\n"))
		}
		stdin.Close()
		if err := sess.Wait(); err != nil || closed() {
			t.Fatalf("md5sum fed within the idle timeout: %v, closed %v", err, closed())
		}
		if want := "a9a7903de4c81627f1fed054f7ce99ce  -\n"; out.String() != want {
			t.Errorf("md5sum printed %q, want %q", out.String(), want)
		}
	})
	run("working command", func(t *testing.T, ts *testServer, c *ssh.Client, closed func() bool) {
		release := make(chan struct{})
		ts.srv.AddTestCommand("work", func(ctx context.Context, _ io.Reader, stdout io.Writer) int {
			select {
			case <-release:
				fmt.Fprintln(stdout, "done")
				return 0
			case <-ctx.Done():
				return 1
			}
		})
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		sess.Stdout = &out
		if err := sess.Start("work"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * lim.IdleTimeout)
		if closed() {
			t.Fatal("a working command was taken for idle")
		}
		close(release)
		if err := sess.Wait(); err != nil || out.String() != "done\n" {
			t.Fatalf("working command: %v, output %q", err, out.String())
		}
		idleAt(t, closed)
	})
}

// A peer that stops answering keepalive probes is dropped after
// KeepaliveCountMax probes; one that answers is not.
func TestKeepaliveDropsDeadPeer(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		lim := sshd.DefaultLimits()
		lim.IdleTimeout = 0 // only probes close these connections
		ts := startMemServer(t, lim, testPenalties())
		ts.addUser("alice", "", "alice")
		for _, answer := range []bool{true, false} {
			conn, err := ts.dialFrom("127.0.0.1")
			if err != nil {
				t.Fatal(err)
			}
			cc, chans, reqs, err := ssh.NewClientConn(conn, ts.addr, ts.clientConfig("alice", ssh.PublicKeys(shared.keys["alice"].signer)))
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				for ch := range chans {
					ch.Reject(ssh.Prohibited, "")
				}
			}()
			if answer {
				go ssh.DiscardRequests(reqs) // answers probes (with a failure, as OpenSSH)
			} else {
				go func() {
					for range reqs { // never answers
					}
				}()
			}
			closed := gone(cc)
			time.Sleep(time.Duration(lim.KeepaliveCountMax) * lim.KeepaliveInterval)
			if closed() {
				t.Fatalf("answer=%v: dropped before %d probes went unanswered", answer, lim.KeepaliveCountMax)
			}
			time.Sleep(10 * lim.KeepaliveInterval)
			if closed() != !answer {
				t.Fatalf("answer=%v: closed=%v after %d more intervals", answer, closed(), 10)
			}
			cc.Close()
		}
	})
}

// ssh -vvv shows strict key exchange (the Terrapin countermeasure).
func TestStrictKex(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	_, stderr, _ := ts.ssh("alice", auth{key: "alice"}, "", "-vvv", "md5sum")
	if !strings.Contains(stderr, "will use strict KEX ordering") {
		t.Fatalf("ssh -vvv does not show strict KEX:\n%s", stderr)
	}
}

// Every finished transfer is a log line with user, virtual path, bytes,
// duration and result; logins likewise.
func TestTransferAndLoginLogLines(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "alice-pw", "alice")
	local := t.TempDir()
	writeFile(t, filepath.Join(local, "f"), randomBytes(12345))
	if out, err := ts.sftpBatch("alice", auth{password: "alice-pw"}, "put "+filepath.Join(local, "f")+" /up\nget /up "+filepath.Join(local, "g")+"\n"); err != nil {
		t.Fatal(err, out)
	}
	ts.sftpBatch("alice", auth{password: "not-it"}, "pwd\n")
	logs := ts.logs.String()
	for _, want := range []string{
		`msg=transfer session=`, `user=alice`, `path=/up direction=upload bytes=12345 duration=`, `path=/up direction=download bytes=12345`, `result=ok`,
		`msg=login remote=127.0.0.1:`, `user=alice method=password`,
		`msg="login failed" remote=127.0.0.1:`, `reason="wrong password"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if strings.Contains(logs, "alice-pw") || strings.Contains(logs, "not-it") {
		t.Error("a password reached the log")
	}
}
