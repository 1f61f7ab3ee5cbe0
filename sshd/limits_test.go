package sshd_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"silo/sshd"
)

// dialFrom opens a TCP connection to the server from a given loopback
// address (Linux routes all of 127/8 to lo).
func (ts *testServer) dialFrom(ip string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return d.Dial("tcp", ts.addr)
}

// loginFrom logs in over a connection from ip.
func (ts *testServer) loginFrom(ip, user string, method ssh.AuthMethod) (*ssh.Client, error) {
	c, err := ts.dialFrom(ip)
	if err != nil {
		return nil, err
	}
	cc, chans, reqs, err := ssh.NewClientConn(c, ts.addr, ts.clientConfig(user, method))
	if err != nil {
		c.Close()
		return nil, err
	}
	return ssh.NewClient(cc, chans, reqs), nil
}

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			ne, ok := err.(net.Error)
			return !(ok && ne.Timeout())
		}
	}
}

// A connection that sends nothing is closed at the login grace time; 200 of
// them held from one address do not keep a real user from logging in.
func TestLoginGraceAndStartups(t *testing.T) {
	lim := sshd.DefaultLimits()
	lim.LoginGraceTime = time.Second
	ts := startServerWith(t, t.TempDir(), lim, testPenalties())
	ts.addUser("alice", "", "alice")

	silent, err := ts.dialFrom("127.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if !closedWithin(silent, 5*time.Second) {
		t.Fatal("a silent connection was not closed")
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("silent connection closed after %v, want about the 1 s grace time", d)
	}

	var flood []net.Conn
	for range 200 {
		c, err := ts.dialFrom("127.0.0.2")
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, c)
	}
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	start = time.Now()
	c, err := ts.loginFrom("127.0.0.1", "alice", ssh.PublicKeys(shared.keys["alice"].signer))
	if err != nil {
		t.Fatalf("login during the flood: %v", err)
	}
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("login during the flood took %v", d)
	}
	// The flood is gone: refused at once beyond the per-source limit, the
	// rest at the grace time.
	var wg sync.WaitGroup
	open := 0
	var mu sync.Mutex
	for _, c := range flood {
		wg.Go(func() {
			if !closedWithin(c, 3*time.Second) {
				mu.Lock()
				open++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if open > 0 {
		t.Fatalf("%d flood connections still open after the grace time", open)
	}
}

// After failed logins pass the penalty threshold, even a correct login from
// that source is refused until the penalty runs out; an exempt source never
// is.
func TestPerSourcePenalties(t *testing.T) {
	pen := sshd.DefaultPenalties()
	pen.AuthFail, pen.Min, pen.Max = 400*time.Millisecond, time.Second, 3*time.Second
	pen.Exempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}
	ts := startServerWith(t, t.TempDir(), sshd.DefaultLimits(), pen)
	ts.addUser("alice", "alice-pw")
	fail := func(ip string) {
		if c, err := ts.loginFrom(ip, "alice", ssh.Password("wrong")); err == nil {
			c.Close()
			t.Fatal("wrong password accepted")
		}
	}
	for _, ip := range []string{"127.0.0.3", "127.0.0.4"} {
		for range 4 { // 1.6 s of penalty: past min
			fail(ip)
		}
	}
	if c, err := ts.loginFrom("127.0.0.3", "alice", ssh.Password("alice-pw")); err == nil {
		c.Close()
		t.Fatal("penalised source logged in")
	}
	c, err := ts.loginFrom("127.0.0.4", "alice", ssh.Password("alice-pw"))
	if err != nil {
		t.Fatalf("exempt source refused: %v", err)
	}
	c.Close()
	// Another source is not affected.
	c, err = ts.loginFrom("127.0.0.6", "alice", ssh.Password("alice-pw"))
	if err != nil {
		t.Fatalf("other source refused: %v", err)
	}
	c.Close()
	time.Sleep(2 * time.Second) // the penalty runs out
	c, err = ts.loginFrom("127.0.0.3", "alice", ssh.Password("alice-pw"))
	if err != nil {
		t.Fatalf("after the penalty ran out: %v", err)
	}
	c.Close()
	if n := strings.Count(ts.logs.String(), `msg="source blocked" source=127.0.0.3/32`); n != 1 {
		t.Errorf("%d log lines for the blocked source, want 1:\n%s", n, ts.logs.String())
	}
	if strings.Contains(ts.logs.String(), "source=127.0.0.4") {
		t.Error("the exempt source was blocked")
	}
}

func TestMaxSessions(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.connect("alice", "alice")
	var sessions []*ssh.Session
	for i := range 10 {
		s, err := c.NewSession()
		if err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
		sessions = append(sessions, s)
	}
	if _, err := c.NewSession(); err == nil || !strings.Contains(err.Error(), "too many sessions") {
		t.Fatalf("11th session: %v", err)
	}
	sessions[0].Close()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		s, err := c.NewSession()
		if err == nil {
			s.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session after one closed: %v", err)
		}
	}
}

func rss(t *testing.T) int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip("no /proc/self/statm")
	}
	pages, _ := strconv.ParseInt(strings.Fields(string(data))[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// Rejected channel opens leave nothing behind.
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
	before := rss(t)
	reject(10000)
	after := rss(t)
	if after > before+before/10 {
		t.Fatalf("RSS grew from %d to %d bytes over 10,000 rejected channels", before, after)
	}
	if _, err := c.NewSession(); err != nil {
		t.Fatalf("connection unusable afterwards: %v", err)
	}
}

func TestMaxOpenHandlesAndUnknownExtension(t *testing.T) {
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
	lim := sshd.DefaultLimits()
	lim.MaxConnectionsPerUser = 2
	ts := startServerWith(t, t.TempDir(), lim, testPenalties())
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
	// OpenSSH's ssh shows the reason.
	_, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", "md5sum")
	if code != 255 || !strings.Contains(stderr, "alice already has 2 connections, the most allowed") {
		t.Errorf("ssh at the limit: %d %q", code, stderr)
	}
	if c, err := login("bob"); err != nil {
		t.Fatalf("another user refused: %v", err)
	} else {
		c.Close()
	}
	a1.Close()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := login("alice")
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no login after one connection closed: %v", err)
		}
	}
}

// An SFTP session with no requests is closed after the idle timeout; a
// command that runs longer is not idle.
func TestIdleTimeout(t *testing.T) {
	lim := sshd.DefaultLimits()
	lim.IdleTimeout = 700 * time.Millisecond
	ts := startServerWith(t, t.TempDir(), lim, testPenalties())
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	c := ts.sftpClient("alice", "alice")
	if _, err := c.Getwd(); err != nil {
		t.Fatal(err)
	}
	for range 5 { // busy: requests every 300 ms
		time.Sleep(300 * time.Millisecond)
		if _, err := c.Stat("/"); err != nil {
			t.Fatalf("active session closed: %v", err)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := c.Stat("/"); err == nil {
		t.Fatal("idle session still open after twice the idle timeout")
	}

	f, _ := os.Create(filepath.Join(home, "huge"))
	f.Truncate(2 << 30) // seconds of sha512
	f.Close()
	start := time.Now()
	_, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", "sha512sum", "huge")
	if code != 0 || time.Since(start) < 2*lim.IdleTimeout {
		t.Fatalf("long hash: exit %d after %v (%s); want it to finish, longer than the idle timeout", code, time.Since(start), stderr)
	}
}

// A peer that stops answering keepalive probes is dropped.
func TestKeepaliveDropsDeadPeer(t *testing.T) {
	lim := sshd.DefaultLimits()
	lim.KeepaliveInterval, lim.KeepaliveCountMax = 200*time.Millisecond, 3
	ts := startServerWith(t, t.TempDir(), lim, testPenalties())
	ts.addUser("alice", "", "alice")
	for _, answer := range []bool{true, false} {
		conn, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		cc, chans, reqs, err := ssh.NewClientConn(conn, ts.addr, ts.clientConfig("alice", ssh.PublicKeys(shared.keys["alice"].signer)))
		if err != nil {
			t.Fatal(err)
		}
		go ssh.DiscardRequests(nil)
		go func() {
			for ch := range chans {
				ch.Reject(ssh.Prohibited, "")
			}
		}()
		if answer {
			go ssh.DiscardRequests(reqs) // answers probes (with a failure, as OpenSSH)
		}
		done := make(chan error, 1)
		go func() { done <- cc.Wait() }()
		select {
		case <-done:
			if answer {
				t.Fatal("a peer that answers keepalives was dropped")
			}
		case <-time.After(2 * time.Second):
			if !answer {
				t.Fatal("a peer that never answers keepalives is still connected after 2 s")
			}
		}
		cc.Close()
	}
}

// ssh -vvv shows strict key exchange (the Terrapin countermeasure).
func TestStrictKex(t *testing.T) {
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
