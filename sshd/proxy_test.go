package sshd_test

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"golang.org/x/crypto/ssh"

	"silo/activity"
	"silo/internal/proxytest"
	"silo/sshd"
	"silo/users"
)

// balancer is a load balancer in front of a test server (package
// proxytest).
type balancer struct {
	port string
}

// balancer starts one that connects from the loopback address from and,
// if client is valid, names client in a PROXY v2 header.
func (ts *testServer) balancer(from string, client netip.AddrPort) *balancer {
	addr := proxytest.Start(ts.t, func() (net.Conn, error) { return ts.dialFrom(from) }, client)
	b := &balancer{}
	_, b.port, _ = net.SplitHostPort(addr)
	return b
}

// sftp runs OpenSSH's sftp through the balancer, checking the server's
// host key as if it were reached directly.
func (b *balancer) sftp(ts *testServer, user string, a auth, batch string) (string, error) {
	ts.t.Helper()
	return ts.sftpTo(b.port, user, a, batch, "-o", "HostKeyAlias=[127.0.0.1]:"+ts.port)
}

// login logs in through the balancer with x/crypto's client.
func (b *balancer) login(ts *testServer, user, key string) (*ssh.Client, error) {
	c, err := net.Dial("tcp", "127.0.0.1:"+b.port)
	if err != nil {
		return nil, err
	}
	cc, chans, reqs, err := ssh.NewClientConn(c, ts.addr, ts.clientConfig(user, ssh.PublicKeys(shared.keys[key].signer)))
	if err != nil {
		c.Close()
		return nil, err
	}
	return ssh.NewClient(cc, chans, reqs), nil
}

// eventLog is a monitor's subscriber that keeps every event.
type eventLog struct {
	mu   sync.Mutex
	list []activity.Event
}

func (l *eventLog) Observe(e activity.Event) {
	l.mu.Lock()
	l.list = append(l.list, e)
	l.mu.Unlock()
}

// proxyServer starts a server that takes PROXY headers from 127.0.0.1
// only, waiting for one for as long as wait, with penalties that block a
// source after one failed login; its monitor's events are kept.
func proxyServer(t *testing.T, wait time.Duration) (*testServer, *activity.Monitor, *eventLog) {
	pen := testPenalties()
	pen.AuthFail, pen.Min = time.Minute, 15*time.Second
	mon, events := activity.New(nil), &eventLog{}
	mon.Subscribe(events)
	ts := startServerWith(t, t.TempDir(), sshd.DefaultLimits(), pen, func(c *sshd.Config) {
		c.ProxyProtocol = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		c.ProxyHeaderTimeout = wait
		c.Monitor = mon
	})
	ts.addUser("alice", "", "alice")
	return ts, mon, events
}

// Behind a balancer that sends the PROXY protocol, the client's address
// is the connection's: in the log, in the status, for the account's
// allow_from and for penalties, which block that client and not the
// balancer.
func TestProxyProtocolClientAddress(t *testing.T) {
	needClient(t, "sftp")
	ts, mon, events := proxyServer(t, time.Hour)
	client := netip.MustParseAddrPort("203.0.113.7:40001")
	lb := ts.balancer("127.0.0.1", client)
	alice := auth{key: "alice"}

	if out, err := lb.sftp(ts, "alice", alice, "put /etc/hostname h\n"); err != nil {
		t.Fatalf("sftp through the balancer: %v\n%s", err, out)
	}
	ts.logs.waitFor(t, "msg=login remote=203.0.113.7:40001 user=alice")
	ts.logs.waitFor(t, "msg=transfer")
	for _, line := range strings.Split(ts.logs.String(), "\n") {
		if strings.Contains(line, "msg=transfer") && !strings.Contains(line, "remote=203.0.113.7:40001") {
			t.Errorf("the audit log's transfer line does not name the client: %s", line)
		}
	}
	// What hooks and metrics are told (the monitor's events).
	events.mu.Lock()
	for _, e := range events.list {
		if e.Remote != client.String() {
			t.Errorf("a %v event names %q, want the client %s", e.Kind, e.Remote, client)
		}
	}
	if len(events.list) == 0 {
		t.Error("no event reached the monitor's subscribers")
	}
	events.mu.Unlock()

	c, err := lb.login(ts, "alice", "alice")
	if err != nil {
		t.Fatal(err)
	}
	var remotes []string
	for _, cs := range mon.Status().Connections {
		remotes = append(remotes, cs.Remote)
	}
	c.Close()
	if len(remotes) != 1 || remotes[0] != client.String() {
		t.Errorf("status lists connections from %v, want [%s]", remotes, client)
	}

	// allow_from applies to the client's address, not the balancer's.
	// (The refusal is a failed login: its client is blocked after.)
	ts.set("alice", func(u *users.User) { u.AllowFrom = []string{"127.0.0.0/8"} })
	outsider := ts.balancer("127.0.0.1", netip.MustParseAddrPort("203.0.113.9:40005"))
	if out, err := outsider.sftp(ts, "alice", alice, "ls\n"); err == nil {
		t.Errorf("a client outside allow_from logged in through a balancer inside it:\n%s", out)
	}
	ts.logs.waitFor(t, `reason="address not in the account's allow_from: 203.0.113.9"`)
	ts.set("alice", func(u *users.User) { u.AllowFrom = []string{"203.0.113.0/24"} })
	if out, err := lb.sftp(ts, "alice", alice, "ls\n"); err != nil {
		t.Errorf("a client inside allow_from, through the balancer: %v\n%s", err, out)
	}

	// A failed login blocks the client it came from; other clients of the
	// same balancer go on.
	attacker := ts.balancer("127.0.0.1", netip.MustParseAddrPort("198.51.100.20:40002"))
	if out, err := attacker.sftp(ts, "alice", auth{key: "other"}, "ls\n"); err == nil {
		t.Fatalf("a wrong key logged in:\n%s", out)
	}
	ts.logs.waitFor(t, "source blocked\" source=198.51.100.20/32")
	if out, err := attacker.sftp(ts, "alice", alice, "ls\n"); err == nil {
		t.Errorf("a blocked client logged in through the balancer:\n%s", out)
	}
	ts.logs.waitFor(t, `msg="connection refused" remote=198.51.100.20:40002 reason=penalty`)
	if out, err := lb.sftp(ts, "alice", alice, "ls\n"); err != nil {
		t.Errorf("another client of the same balancer, after the block: %v\n%s", err, out)
	}
	if strings.Contains(ts.logs.String(), "source=127.0.0.1") {
		t.Error("the balancer's own address was penalised")
	}
}

// A PROXY header counts only from a trusted source: from any other, its
// address is never taken; a trusted source must send one.
func TestProxyProtocolTrust(t *testing.T) {
	needClient(t, "sftp")
	ts, _, _ := proxyServer(t, time.Hour)
	alice := auth{key: "alice"}
	ts.set("alice", func(u *users.User) { u.AllowFrom = []string{"203.0.113.0/24"} })

	// From 127.0.0.2, not trusted: the header is not read, and the address
	// it claims, which alice's allow_from would let in, is never used.
	spoof := ts.balancer("127.0.0.2", netip.MustParseAddrPort("203.0.113.66:40003"))
	if out, err := spoof.sftp(ts, "alice", alice, "ls\n"); err == nil {
		t.Errorf("an untrusted source's PROXY header let alice in:\n%s", out)
	}
	ts.logs.waitFor(t, "remote=127.0.0.2:")
	if strings.Contains(ts.logs.String(), "203.0.113.66") {
		t.Errorf("the address an untrusted source claimed reached the log:\n%s", ts.logs.String())
	}

	// From 127.0.0.1, trusted, without a header: refused.
	ts.set("alice", func(u *users.User) { u.AllowFrom = nil })
	if out, err := ts.sftpBatch("alice", alice, "ls\n"); err == nil {
		t.Errorf("a trusted source logged in without a PROXY header:\n%s", out)
	}
	ts.logs.waitFor(t, `msg="connection from a trusted proxy refused: it does not start with a PROXY header" proxy=127.0.0.1:`)
	// A LOCAL header (the balancer's own connection, a health check): the
	// connection is the balancer's.
	conn, err := ts.dialFrom("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	local := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if _, err := local.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	cc, chans, reqs, err := ssh.NewClientConn(conn, ts.addr, ts.clientConfig("alice", ssh.PublicKeys(shared.keys["alice"].signer)))
	if err != nil {
		t.Fatalf("login after a LOCAL header: %v", err)
	}
	ssh.NewClient(cc, chans, reqs).Close()
	ts.logs.waitFor(t, "msg=login remote="+conn.LocalAddr().String()+" user=alice")

	// ... and from anywhere else, without one, in as always.
	lb := ts.balancer("127.0.0.3", netip.AddrPort{})
	if out, err := lb.sftp(ts, "alice", alice, "ls\n"); err != nil {
		t.Errorf("a direct client from an untrusted source: %v\n%s", err, out)
	}
}

// A trusted source that sends nothing is dropped once the wait for its
// header runs out; meanwhile, and while another one waits for as long as
// the server runs, the others are served.
func TestProxyProtocolHeaderWait(t *testing.T) {
	needClient(t, "sftp")
	short, _, _ := proxyServer(t, 10*time.Millisecond)
	silent, err := short.dialFrom("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(time.Minute)) // a hang bound
	if n, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a trusted source that sent nothing: read %d, %v; want the server to close it", n, err)
	}
	short.logs.waitFor(t, `msg="connection from a trusted proxy refused: no PROXY header" proxy=127.0.0.1:`)

	long, _, _ := proxyServer(t, time.Hour)
	waiting, err := long.dialFrom("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	lb := long.balancer("127.0.0.1", netip.MustParseAddrPort("203.0.113.8:40004"))
	if out, err := lb.sftp(long, "alice", auth{key: "alice"}, "ls\n"); err != nil {
		t.Fatalf("while a trusted source's header is awaited: %v\n%s", err, out)
	}
	// Close ends the wait.
	long.srv.Close()
	waiting.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := waiting.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after Close, the connection awaiting its header: read %d, %v; want closed", n, err)
	}
}

// The pre-auth limits count the client a balancer names: with one
// unauthenticated connection allowed per source, a second one of the same
// client is refused, one of another client of the same balancer is not.
func TestProxyProtocolStartupsPerClient(t *testing.T) {
	lim := sshd.DefaultLimits()
	lim.PerSourceMaxStartups = 1
	ts := startServerWith(t, t.TempDir(), lim, testPenalties(), func(c *sshd.Config) {
		c.ProxyProtocol = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	// open connects through a balancer that names client, and returns
	// the first line the server sends: its version line if it admitted
	// the connection, "" if it closed it.
	open := func(client string) string {
		b := ts.balancer("127.0.0.1", netip.MustParseAddrPort(client))
		c, err := net.Dial("tcp", "127.0.0.1:"+b.port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(time.Minute)) // a hang bound
		line := make([]byte, len("SSH-2.0-silo"))
		if _, err := io.ReadFull(c, line); err != nil {
			return ""
		}
		return string(line)
	}
	if got := open("203.0.113.7:40001"); got != "SSH-2.0-silo" {
		t.Fatalf("first connection of a client: %q, want silo's version line", got)
	}
	if got := open("203.0.113.7:40002"); got != "" {
		t.Errorf("second unauthenticated connection of the same client: %q, want it refused", got)
	}
	ts.logs.waitFor(t, `msg="connection refused" remote=203.0.113.7:40002 reason="per-source startups"`)
	if got := open("203.0.113.8:40003"); got != "SSH-2.0-silo" {
		t.Errorf("another client of the same balancer: %q, want silo's version line", got)
	}
}
