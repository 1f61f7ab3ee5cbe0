package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"silo/activity"
	"silo/users"
)

// connState is what the server knows of one connection, from accept to
// close. Lifecycle: serveConn creates it (counted as unauthenticated, under
// the login grace timer) and runs the SSH connection on it; login moves it
// to its user's connections and starts its monitor; when the socket
// closes, serveConn waits for everything started for the connection (its
// sessions, its monitor, a keepalive probe), uncounts it and, if it never
// logged in, penalises its source.
type connState struct {
	s      *Server
	raw    net.Conn
	addr   netip.Addr
	remote string
	ctx    context.Context // ends when the connection does
	cancel context.CancelFunc

	mu            sync.Mutex
	authUser      string // the name of the first login attempt
	user          string // set once logged in
	attempted     bool   // a login attempt (other than "none") failed
	invalidUser   bool   // ... for a user that does not exist
	graceExceeded bool
	grace         *time.Timer
	fc            *sockConn      // what the SSH connection reads and writes
	ended         bool           // the connection is closed: no new session starts
	wg            sync.WaitGroup // sessions, monitor and probes of this connection
	sshConn       func() *gossh.ServerConn
	recheck       chan struct{} // the users file changed: the monitor rereads the account's expiry

	sessions   atomic.Int32 // session channels open
	handles    atomic.Int32 // SFTP file handles open
	running    atomic.Int32 // exec commands running
	working    atomic.Int32 // ... of which not waiting on their channel
	lastActive atomic.Int64 // unix nanoseconds of the last SFTP request, command I/O or command end

	mon *activity.Conn // what the monitor knows of it; set before the SSH handshake starts
}

// connAddr is the remote address of a connection served by silo: the one
// thing that x/crypto hands back both to the auth callbacks (ConnMetadata)
// and to the channel handlers (ServerConn), so it also carries the
// connection's state.
type connAddr struct {
	net.Addr
	st *connState
}

func stateOf(c interface{ RemoteAddr() net.Addr }) *connState {
	return c.RemoteAddr().(*connAddr).st
}

func (st *connState) touch() { st.lastActive.Store(time.Now().UnixNano()) }

// busy reports a transfer in progress: an open file or a running command.
func (st *connState) busy() bool { return st.handles.Load() > 0 || st.running.Load() > 0 }

// quiet is called after a reply that may have ended a transfer has been
// sent (an SFTP reply, a command's exit status): a server shutting down
// closes a connection once nothing is being transferred on it.
func (st *connState) quiet() {
	if !st.busy() && st.s.shuttingDown() {
		st.close()
	}
}

// close sends what the connection has waiting (the reply that ended its
// last transfer), then closes it.
func (st *connState) close() {
	st.mu.Lock()
	fc := st.fc
	st.mu.Unlock()
	if fc != nil {
		fc.Close()
	} else {
		st.raw.Close()
	}
}

// commandStarted and commandEnded bracket an exec command; waitIO and
// doneIO bracket each wait of a command on its channel, during which the
// connection may go idle: a command that waits for input that never comes
// is no more working than an SFTP session without requests.
func (st *connState) commandStarted() {
	st.running.Add(1)
	st.working.Add(1)
	st.touch()
}

func (st *connState) commandEnded() {
	st.touch()
	st.working.Add(-1)
	st.running.Add(-1)
}

func (st *connState) waitIO() { st.touch(); st.working.Add(-1) }
func (st *connState) doneIO() { st.working.Add(1); st.touch() }

// serveConn serves one accepted connection until it closes and everything
// started for it has finished. Connections refused before key exchange (a
// penalised source, too many unauthenticated connections) are closed at
// once.
func (s *Server) serveConn(c net.Conn) {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		c.Close()
		return
	}
	addr := ap.Addr().Unmap()
	if ok, why := s.gate.admit(addr); !ok {
		s.log.Debug("connection refused", "remote", c.RemoteAddr().String(), "reason", why)
		c.Close()
		return
	}
	st := &connState{s: s, raw: c, addr: addr, remote: c.RemoteAddr().String(), recheck: make(chan struct{}, 1)}
	st.ctx, st.cancel = context.WithCancel(context.Background())
	st.touch()
	st.mu.Lock()
	st.grace = time.AfterFunc(s.gate.limits().LoginGraceTime, st.graceExpired)
	st.mu.Unlock()
	if s.track(st) {
		st.mon = s.mon.Connect(activity.ConnInfo{Remote: st.remote, Close: func() { st.raw.Close() },
			LastActive: func() time.Time { return time.Unix(0, st.lastActive.Load()) }})
		defer st.mon.Close()
		fc := newSockConn(c, &connAddr{c.RemoteAddr(), st})
		st.mu.Lock()
		st.fc = fc
		st.mu.Unlock()
		s.ssh.HandleConn(s.peek(fc)) // returns once the connection is closed
		fc.Close()
	}
	c.Close()
	st.mu.Lock()
	st.ended = true
	st.grace.Stop()
	st.mu.Unlock()
	st.cancel()
	st.wg.Wait()
	s.untrack(st)
	st.account()
}

// enter registers a new session of the connection, unless it has ended.
// gliderlabs starts the goroutine of each channel itself, so this is where
// the connection takes ownership of it.
func (st *connState) enter() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ended {
		return false
	}
	st.wg.Add(1)
	return true
}

func (st *connState) graceExpired() {
	st.mu.Lock()
	if st.user != "" || st.ended {
		st.mu.Unlock()
		return
	}
	st.graceExceeded = true
	st.mu.Unlock()
	st.s.log.Info("login grace time exceeded", "remote", st.remote)
	st.raw.Close()
}

// failedAttempt records a failed login attempt, for the penalty at close.
func (st *connState) failedAttempt(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.attempted = true
	if errors.Is(err, users.ErrUnknownUser) {
		st.invalidUser = true
	}
}

// sameUser ends the connection if the client switches user names between
// attempts: one connection, one account.
func (st *connState) sameUser(name string) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.authUser == "" {
		st.authUser = name
		return nil
	}
	if name != st.authUser {
		st.raw.Close()
		return fmt.Errorf("%w: %q then %q", errUserChanged, st.authUser, name)
	}
	return nil
}

var errTooManyConns = errors.New("too many connections for this user")

// login makes the connection its user's, unless the user has too many:
// maxConns of its own if positive, else the server's limit. The refusal
// carries a banner, which OpenSSH's ssh prints. sshConn gives the
// connection once its handshake is done, for keepalive probes.
func (st *connState) login(name string, maxConns int, sshConn func() *gossh.ServerConn) error {
	s := st.s
	lim := s.gate.limits()
	if maxConns <= 0 {
		maxConns = lim.MaxConnectionsPerUser
	}
	s.mu.Lock()
	if n := len(s.conns[name]); maxConns > 0 && n >= maxConns {
		s.mu.Unlock()
		return &gossh.BannerError{Err: errTooManyConns,
			Message: fmt.Sprintf("silo: %s already has %d connections, the most allowed\r\n", name, n)}
	}
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		s.mu.Unlock()
		return net.ErrClosed
	}
	st.user = name
	st.sshConn = sshConn
	st.grace.Stop()
	// Runs inside HandleConn, before serveConn waits.
	st.wg.Go(func() { st.monitor(lim) })
	st.mu.Unlock()
	m := s.conns[name]
	if m == nil {
		m = make(map[*connState]struct{})
		s.conns[name] = m
	}
	m[st] = struct{}{}
	s.mu.Unlock()
	s.gate.leave(st.addr)
	st.touch()
	return nil
}

// account uncounts a connection that never logged in and penalises its
// source for the way it ended.
func (st *connState) account() {
	st.mu.Lock()
	user, graceExceeded, invalidUser, attempted := st.user, st.graceExceeded, st.invalidUser, st.attempted
	st.mu.Unlock()
	if user != "" {
		return
	}
	s := st.s
	s.gate.leave(st.addr)
	pen := s.gate.penaltiesNow()
	switch {
	case graceExceeded:
		s.penalise(st.addr, pen.GraceExceeded)
	case invalidUser:
		s.penalise(st.addr, pen.InvalidUser)
	case attempted:
		s.penalise(st.addr, pen.AuthFail)
	default:
		s.penalise(st.addr, pen.NoAuth)
	}
}

// expiresIn returns how long the connection's account has until it
// expires, and false if it does not expire (or is gone: the reload that
// removed it closes the connection).
func (st *connState) expiresIn() (time.Duration, bool) {
	u, ok := st.s.cfg.Users.Lookup(st.user)
	if !ok {
		return 0, false
	}
	exp, _ := users.ParseExpiry(u.Expires)
	if exp.IsZero() {
		return 0, false
	}
	return max(0, time.Until(exp)), true
}

// monitor closes the connection when it has been idle for the idle timeout
// (no SFTP request, no command working: a command waiting on its channel
// does not count), when KeepaliveCountMax keepalive probes in a row go
// unanswered, or when its account expires. It ends with the connection.
func (st *connState) monitor(lim Limits) {
	expiry := time.NewTimer(0)
	expiry.Stop()
	defer expiry.Stop()
	var expire <-chan time.Time
	arm := func() {
		expiry.Stop()
		expire = nil
		if d, ok := st.expiresIn(); ok {
			expiry.Reset(d)
			expire = expiry.C
		}
	}
	arm()
	var idle, probe <-chan time.Time
	var idleTimer *time.Timer
	if lim.IdleTimeout > 0 {
		idleTimer = time.NewTimer(lim.IdleTimeout)
		defer idleTimer.Stop()
		idle = idleTimer.C
	}
	if lim.KeepaliveInterval > 0 {
		t := time.NewTicker(lim.KeepaliveInterval)
		defer t.Stop()
		probe = t.C
	}
	answered := make(chan struct{}, 1)
	inFlight, misses := false, 0
	for {
		select {
		case <-st.ctx.Done():
			return
		case <-st.recheck:
			arm()
		case <-expire:
			if d, ok := st.expiresIn(); !ok || d > 0 {
				arm() // extended or lifted meanwhile
				continue
			}
			st.s.log.Info("closing connection of expired account", "user", st.user, "remote", st.remote)
			st.raw.Close()
			return
		case <-idle:
			quiet := time.Since(time.Unix(0, st.lastActive.Load()))
			switch {
			case st.working.Load() > 0:
				// A working command touches the connection when it stops
				// or waits; look again a full timeout later.
				idleTimer.Reset(lim.IdleTimeout)
			case quiet < lim.IdleTimeout:
				idleTimer.Reset(lim.IdleTimeout - quiet)
			default:
				st.s.log.Info("closing idle connection", "user", st.user, "remote", st.remote, "idle", lim.IdleTimeout)
				st.raw.Close()
				return
			}
		case <-answered:
			inFlight, misses = false, 0
		case <-probe:
			if inFlight {
				if misses++; misses >= lim.KeepaliveCountMax {
					st.s.log.Info("closing unresponsive connection", "user", st.user, "remote", st.remote, "probes", misses)
					st.raw.Close()
					return
				}
				continue
			}
			conn := st.sshConn()
			if conn == nil {
				continue // the handshake is not over yet
			}
			inFlight = true
			st.wg.Go(func() {
				// OpenSSH answers keepalive@openssh.com with a failure: an
				// answer all the same. The call returns when the
				// connection closes, at the latest.
				if _, _, err := conn.SendRequest("keepalive@openssh.com", true, nil); err == nil {
					answered <- struct{}{}
				}
			})
		}
	}
}

// sockConn is the connection x/crypto reads and writes. Each write goes to
// the socket at once, on the goroutine that encrypted it: x/crypto writes
// one packet at a time under its own lock anyway, and handing packets to a
// second goroutine, to overlap encryption with the system call, cost a
// copy and a wakeup of another thread per packet, more than it gained
// when client and server share the cores.
type sockConn struct {
	net.Conn
	remote  net.Addr
	writing chan struct{} // holds a token while a write is in the socket
	closed  atomic.Bool

	fd    syscall.RawConn // nil: reads go to Conn as they come
	ahead *[]byte         // bytes read ahead, [r:w] not yet taken
	r, w  int
}

func newSockConn(c net.Conn, remote net.Addr) *sockConn {
	f := &sockConn{Conn: c, remote: remote, writing: make(chan struct{}, 1)}
	// Only a plain TCP connection: a wrapper may hold bytes of its own
	// ahead of the descriptor.
	if tc, ok := c.(*net.TCPConn); ok {
		f.fd, _ = tc.SyscallConn()
	}
	return f
}

// readAhead is what one socket read may take in. x/crypto reads through a
// 4 KiB buffer of its own, which costs about two system calls per 32 KiB
// packet; one read of up to readAhead serves several packets.
const readAhead = 256 << 10

// readAheadPool holds the read-ahead buffers of all connections. A
// connection holds one only while it has bytes in it that x/crypto has not
// taken yet: never while it waits for the client.
var readAheadPool = sync.Pool{New: func() any { b := make([]byte, readAhead); return &b }}

// Read is called by x/crypto's reading goroutine only.
func (f *sockConn) Read(p []byte) (int, error) {
	if f.ahead != nil {
		n := copy(p, (*f.ahead)[f.r:f.w])
		if f.r += n; f.r == f.w {
			readAheadPool.Put(f.ahead)
			f.ahead = nil
		}
		return n, nil
	}
	if f.fd == nil || len(p) >= readAhead/2 {
		return f.Conn.Read(p)
	}
	var n int
	var rerr error
	// The buffer is taken once the socket is readable, so that a
	// connection waiting for its client holds none.
	err := f.fd.Read(func(fd uintptr) bool {
		b := readAheadPool.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *b)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			readAheadPool.Put(b)
			return false
		}
		if n > 0 {
			f.ahead, f.r, f.w = b, 0, n
		} else {
			readAheadPool.Put(b)
		}
		return true
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: f.LocalAddr(), Addr: f.Conn.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		return 0, io.EOF
	}
	return f.Read(p)
}

func (f *sockConn) Write(p []byte) (int, error) {
	f.writing <- struct{}{}
	defer func() { <-f.writing }()
	if f.closed.Load() {
		return 0, net.ErrClosed
	}
	return f.Conn.Write(p)
}

// closeFlushWait bounds how long Close waits for a peer that does not read.
const closeFlushWait = 2 * time.Second

// Close lets a write under way finish (a final disconnect message, say),
// then closes the connection.
func (f *sockConn) Close() error {
	f.closed.Store(true)
	select {
	case f.writing <- struct{}{}:
		<-f.writing
	case <-time.After(closeFlushWait):
	}
	return f.Conn.Close()
}

func (f *sockConn) RemoteAddr() net.Addr { return f.remote }
