package sshd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	gssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"silo/users"
)

// connState is what the server knows of one connection, from accept to
// close. Lifecycle: created by acceptConn (counted as unauthenticated, under
// the login grace timer); login moves it to its user's connections and
// starts its monitor; closed, called once when the socket closes, uncounts
// it and, if it never logged in, penalises its source.
type connState struct {
	s      *Server
	raw    net.Conn
	addr   netip.Addr
	remote string

	mu            sync.Mutex
	user          string // set once logged in
	attempted     bool   // a login attempt (other than "none") failed
	invalidUser   bool   // ... for a user that does not exist
	graceExceeded bool
	grace         *time.Timer
	isClosed      bool

	sessions   atomic.Int32 // session channels open
	handles    atomic.Int32 // SFTP file handles open
	running    atomic.Int32 // exec commands running
	lastActive atomic.Int64 // unix nanoseconds of the last SFTP request or command
}

type stateKey struct{}

func stateOf(ctx gssh.Context) *connState {
	st, _ := ctx.Value(stateKey{}).(*connState)
	return st
}

func (st *connState) touch() { st.lastActive.Store(time.Now().UnixNano()) }

// busy reports a transfer in progress: an open file or a running command.
func (st *connState) busy() bool { return st.handles.Load() > 0 || st.running.Load() > 0 }

// acceptConn admits a new connection, or closes it before key exchange: a
// penalised source, or too many unauthenticated connections.
func (s *Server) acceptConn(ctx gssh.Context, c net.Conn) net.Conn {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		c.Close()
		return nil
	}
	addr := ap.Addr().Unmap()
	if ok, why := s.gate.admit(addr); !ok {
		s.log.Debug("connection refused", "remote", c.RemoteAddr().String(), "reason", why)
		c.Close()
		return nil
	}
	st := &connState{s: s, raw: c, addr: addr, remote: c.RemoteAddr().String()}
	st.touch()
	st.grace = time.AfterFunc(s.gate.limits().LoginGraceTime, st.graceExpired)
	s.mu.Lock()
	s.all[st] = struct{}{}
	s.mu.Unlock()
	ctx.SetValue(stateKey{}, st)
	return newFlushConn(c, st.closed)
}

func (st *connState) graceExpired() {
	st.mu.Lock()
	if st.user != "" || st.isClosed {
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

var errTooManyConns = errors.New("too many connections for this user")

// login makes the connection its user's, unless the user has too many.
// The refusal carries a banner, which OpenSSH's ssh prints.
func (st *connState) login(ctx gssh.Context, name string) error {
	s := st.s
	lim := s.gate.limits()
	s.mu.Lock()
	if n := len(s.conns[name]); lim.MaxConnectionsPerUser > 0 && n >= lim.MaxConnectionsPerUser {
		s.mu.Unlock()
		return &gossh.BannerError{Err: errTooManyConns,
			Message: fmt.Sprintf("silo: %s already has %d connections, the most allowed\r\n", name, n)}
	}
	st.mu.Lock()
	if st.isClosed {
		st.mu.Unlock()
		s.mu.Unlock()
		return net.ErrClosed
	}
	st.user = name
	st.grace.Stop()
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
	go st.monitor(ctx)
	return nil
}

// closed runs once, when the connection's socket closes.
func (st *connState) closed() {
	st.mu.Lock()
	st.isClosed = true
	user, graceExceeded, invalidUser, attempted := st.user, st.graceExceeded, st.invalidUser, st.attempted
	st.grace.Stop()
	st.mu.Unlock()
	s := st.s
	s.mu.Lock()
	delete(s.all, st)
	if user != "" {
		delete(s.conns[user], st)
		if len(s.conns[user]) == 0 {
			delete(s.conns, user)
		}
	}
	s.mu.Unlock()
	if user != "" {
		return
	}
	s.gate.leave(st.addr)
	pen := s.gate.penaltiesNow()
	switch {
	case graceExceeded:
		s.gate.penalise(st.addr, pen.GraceExceeded)
	case invalidUser:
		s.gate.penalise(st.addr, pen.InvalidUser)
	case attempted:
		s.gate.penalise(st.addr, pen.AuthFail)
	default:
		s.gate.penalise(st.addr, pen.NoAuth)
	}
}

// monitor closes the connection when it has been idle too long (no SFTP
// request and no command running), or when its peer stops answering
// keepalive probes. It ends with the connection.
func (st *connState) monitor(ctx gssh.Context) {
	// gliderlabs stores the *ServerConn once the handshake is done, just
	// after the login that started this goroutine.
	var conn *gossh.ServerConn
	for conn == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
		conn, _ = ctx.Value(gssh.ContextKeyConn).(*gossh.ServerConn)
	}
	lim := st.s.gate.limits()
	tick := lim.KeepaliveInterval
	if tick <= 0 || (lim.IdleTimeout > 0 && lim.IdleTimeout/4 < tick) {
		tick = max(lim.IdleTimeout/4, 10*time.Millisecond)
	}
	if lim.KeepaliveInterval <= 0 && lim.IdleTimeout <= 0 {
		return
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var answered chan struct{}
	misses := 0
	lastProbe := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if lim.IdleTimeout > 0 && st.running.Load() == 0 &&
			time.Since(time.Unix(0, st.lastActive.Load())) > lim.IdleTimeout {
			st.s.log.Info("closing idle connection", "user", st.user, "remote", st.remote, "idle", lim.IdleTimeout)
			conn.Close()
			return
		}
		if lim.KeepaliveInterval <= 0 || time.Since(lastProbe) < lim.KeepaliveInterval {
			continue
		}
		lastProbe = time.Now()
		if answered != nil {
			select {
			case <-answered:
				misses = 0
			default:
				if misses++; misses >= lim.KeepaliveCountMax {
					st.s.log.Info("closing unresponsive connection", "user", st.user, "remote", st.remote, "probes", misses)
					conn.Close()
					return
				}
				continue // the probe in flight still counts
			}
		}
		answered = make(chan struct{})
		go func(done chan struct{}) {
			// OpenSSH answers keepalive@openssh.com with a failure: an
			// answer all the same.
			conn.SendRequest("keepalive@openssh.com", true, nil)
			close(done)
		}(answered)
	}
}

// flushConn hands writes to a flusher goroutine, so that encrypting the next
// SSH packets overlaps the system call that sends the previous ones, and
// packets that pile up meanwhile leave in one write. x/crypto otherwise
// encrypts and writes each packet in turn on one goroutine. A lone write is
// sent at once.
type flushConn struct {
	net.Conn
	onClose func()

	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
	err    error
	done   chan struct{}
	once   sync.Once
}

// flushLimit bounds the bytes a connection may have waiting.
const flushLimit = 128 << 10

func newFlushConn(c net.Conn, onClose func()) *flushConn {
	f := &flushConn{Conn: c, onClose: onClose, done: make(chan struct{})}
	f.cond = sync.NewCond(&f.mu)
	go f.flusher()
	return f
}

func (f *flushConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.buf) >= flushLimit && f.err == nil && !f.closed {
		f.cond.Wait()
	}
	if f.err != nil {
		return 0, f.err
	}
	if f.closed {
		return 0, net.ErrClosed
	}
	f.buf = append(f.buf, p...)
	f.cond.Broadcast()
	return len(p), nil
}

func (f *flushConn) flusher() {
	defer close(f.done)
	var batch []byte
	f.mu.Lock()
	for {
		for len(f.buf) == 0 && !f.closed && f.err == nil {
			f.cond.Wait()
		}
		if len(f.buf) == 0 || f.err != nil {
			f.mu.Unlock()
			return
		}
		batch, f.buf = f.buf, batch[:0]
		f.mu.Unlock()
		_, err := f.Conn.Write(batch)
		f.mu.Lock()
		if err != nil {
			f.err = err
		}
		f.cond.Broadcast()
	}
}

// closeFlushWait bounds how long Close waits for a peer that does not read.
const closeFlushWait = 2 * time.Second

// Close sends what is waiting (a final disconnect message, say), then
// closes the connection.
func (f *flushConn) Close() error {
	f.mu.Lock()
	f.closed = true
	f.cond.Broadcast()
	f.mu.Unlock()
	select {
	case <-f.done:
	case <-time.After(closeFlushWait):
	}
	err := f.Conn.Close()
	f.once.Do(f.onClose)
	return err
}
