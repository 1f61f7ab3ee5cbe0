// Package sshd is silo's SSH edge: it authenticates clients, routes their
// session channels to the SFTP subsystem or to built-in exec commands, and
// refuses everything else (shells, PTYs, forwarding, agents). Each user's
// files are reached only through that user's vfs.FS.
//
// Lifecycle: New builds a Server; Serve accepts connections on a listener
// until Shutdown (graceful) or Close (immediate), and both return only when
// every goroutine started for a connection has ended. gliderlabs/ssh runs
// each connection's SSH protocol (HandleConn) and starts a goroutine per
// channel; silo accepts, owns each connection from accept to close
// (connState, conn.go) and waits for what was started for it.
package sshd

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"silo/activity"
	"silo/users"
	"silo/vfs"
)

// ErrUnavailable, wrapped by a UserDB's error, refuses a login because the
// account store cannot answer now: the client is not at fault, and its
// source earns no penalty.
var ErrUnavailable = errors.New("account store unavailable")

// UserDB is what the server needs from the account store.
type UserDB interface {
	Lookup(name string) (users.User, bool)
	CheckPassword(name, password string) (users.User, error)
	CheckKey(name string, key gossh.PublicKey) (users.User, error)
}

// Config is everything a Server is built from.
type Config struct {
	HostSigners []gossh.Signer // at least one
	Users       UserDB
	Homes       string // directory of the default homes, homes/NAME
	Fsync       bool   // make written files durable at close (see vfs.Options)
	// Ledger, if set, returns the shared usage ledger of a user's home,
	// for servers that share the homes (see vfs.Ledger).
	Ledger func(user string) vfs.Ledger
	// HomeIdleClose is how long a home nobody uses stays open; 0 means
	// defaultHomeIdleClose.
	HomeIdleClose time.Duration
	Limits        Limits
	Penalties     Penalties
	// Penalised, if set, is told of every penalty a source earns here,
	// for servers that share penalties (see Server.Penalise).
	Penalised func(a netip.Addr, d time.Duration)
	// ProxyProtocol lists the sources (a load balancer's addresses) that
	// must open every connection with a PROXY protocol header, whose
	// client address then stands for the connection everywhere: limits,
	// penalties, allow_from, logs, status, hooks (see proxy.go). A
	// connection from elsewhere is taken as it comes. Empty: off.
	ProxyProtocol []netip.Prefix
	// ProxyHeaderTimeout bounds the wait for that header; 0 means
	// defaultProxyHeaderTimeout.
	ProxyHeaderTimeout time.Duration
	Logger             *slog.Logger
	// Monitor receives every connection, transfer and change (package
	// activity); New subscribes the audit log, written to Logger, to it.
	// nil: a monitor of the server's own.
	Monitor *activity.Monitor
}

// Server is an SSH server for silo's users.
type Server struct {
	cfg Config
	log *slog.Logger
	ssh *gssh.Server
	mon *activity.Monitor

	gate *gate

	accounts   accounts
	handles    atomic.Int64 // SFTP file handles open, all sessions
	maxHandles int64        // the descriptors they may take (fdBudget)

	homes *homes

	// testCommands are commands only tests add (export_test.go): a command
	// that works for as long as a test says.
	testCommands map[string]func(ctx context.Context, stdin io.Reader, stdout io.Writer) int

	// How long an SFTP session's RequestServer is kept with nothing to
	// do (0: defaultRSIdle), and a hook told of each idle check; set by
	// tests (export_test.go).
	rsIdle     time.Duration
	rsIdleHook func(ended bool)
	// rsHandOnHook is called as the stream is about to hand a request
	// on, with the idle check, which it may run as the idle timer would.
	rsHandOnHook func(typ byte, idleCheck func())

	wg sync.WaitGroup // one per accepted connection, done when everything it started has ended

	mu        sync.Mutex
	all       map[*connState]struct{}            // every open connection, logged in or not
	conns     map[string]map[*connState]struct{} // logged-in connections by user
	listeners map[net.Listener]struct{}
	heading   map[net.Conn]struct{} // accepted, their PROXY header not read yet
	closing   bool                  // Shutdown or Close was called: no new connection is served

	proxyHeaderTimeout time.Duration

	draining atomic.Bool // Shutdown: connections close as soon as nothing is transferred
}

// defaultHomeIdleClose keeps a home open across a client's reconnects, and
// closes it (one descriptor, and the memory of its usage) once its user
// has gone.
const defaultHomeIdleClose = 5 * time.Minute

// New checks cfg and builds a server.
func New(cfg Config) (*Server, error) {
	if len(cfg.HostSigners) == 0 {
		return nil, errors.New("sshd: no host keys")
	}
	if cfg.Users == nil || cfg.Homes == "" {
		return nil, errors.New("sshd: Users and Homes are required")
	}
	if cfg.Limits.LoginGraceTime <= 0 || cfg.Limits.MaxSessions <= 0 || cfg.Limits.MaxOpenHandles <= 0 ||
		cfg.Limits.MaxOpenHandlesPerUser <= 0 {
		return nil, errors.New("sshd: LoginGraceTime, MaxSessions, MaxOpenHandles and MaxOpenHandlesPerUser must be positive")
	}
	for _, p := range cfg.ProxyProtocol {
		if !p.IsValid() {
			return nil, errors.New("sshd: an invalid ProxyProtocol prefix")
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Monitor == nil {
		cfg.Monitor = activity.New(nil)
	}
	cfg.Monitor.Subscribe(activity.NewAudit(cfg.Logger))
	s := &Server{
		cfg:   cfg,
		log:   cfg.Logger,
		mon:   cfg.Monitor,
		homes: newHomes(cfg.Homes, cfg.Fsync, cmp.Or(cfg.HomeIdleClose, defaultHomeIdleClose), cfg.Ledger),
		all:   make(map[*connState]struct{}),
		conns: make(map[string]map[*connState]struct{}),

		listeners: make(map[net.Listener]struct{}),
		heading:   make(map[net.Conn]struct{}),

		proxyHeaderTimeout: cmp.Or(cfg.ProxyHeaderTimeout, defaultProxyHeaderTimeout),
	}
	var fdLimit int64
	fdLimit, s.maxHandles = fdBudget()
	s.log.Info("file descriptors", "limit", fdLimit, "sftp_handles", s.maxHandles)
	s.gate = newGate(cfg.Limits, cfg.Penalties, func(src netip.Prefix, until time.Time) {
		s.log.Warn("source blocked", "source", src.String(), "until", until.Format(time.RFC3339))
		s.mon.Report(activity.Event{Kind: activity.Blocked, Remote: src.String(), Detail: until.Format(time.RFC3339)})
	})
	hostSigners := make([]gssh.Signer, len(cfg.HostSigners))
	for i, k := range cfg.HostSigners {
		hostSigners[i] = k
	}
	s.ssh = &gssh.Server{
		HostSigners:          hostSigners,
		Version:              strings.TrimPrefix(serverVersion, "SSH-2.0-"),
		ConnCallback:         rememberOffer,
		ServerConfigCallback: s.serverConfig,
		// Only session channels exist; every other channel type (direct-tcpip,
		// x11, forwarded-tcpip) is rejected as unknown.
		ChannelHandlers: map[string]gssh.ChannelHandler{"session": s.handleSession},
		// No global request is honoured: tcpip-forward and the like get
		// a failure reply.
		RequestHandlers:   map[string]gssh.RequestHandler{},
		SubsystemHandlers: map[string]gssh.SubsystemHandler{},
		ConnectionFailedCallback: func(c net.Conn, err error) {
			s.log.Debug("connection ended before login", "remote", c.RemoteAddr().String(), "err", err)
		},
	}
	return s, nil
}

// Serve accepts connections on l until Shutdown or Close, and serves each
// in a goroutine of its own, which those wait for. It always returns a
// non-nil error; after Shutdown or Close it is ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors, say: wait for some to be released
				// rather than spin, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Error("accept failed; retrying", "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			if c := s.proxied(c); c != nil {
				s.serveConn(c)
			}
		}()
	}
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("sshd: server closed")

// track registers a new connection, unless the server is closing.
func (s *Server) track(st *connState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.all[st] = struct{}{}
	return true
}

func (s *Server) untrack(st *connState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.all, st)
	if st.user != "" {
		delete(s.conns[st.user], st)
		if len(s.conns[st.user]) == 0 {
			delete(s.conns, st.user)
		}
	}
}

// shuttingDown is asked after every SFTP reply: an atomic, not mu.
func (s *Server) shuttingDown() bool { return s.draining.Load() }

// stop closes the listeners and, from now on, every new connection; it
// closes the open connections that pass quit.
func (s *Server) stop(drain bool, quit func(*connState) bool) {
	s.mu.Lock()
	s.closing = true
	if drain {
		s.draining.Store(true)
	}
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.heading {
		c.Close()
	}
	var close []*connState
	for st := range s.all {
		if quit(st) {
			close = append(close, st)
		}
	}
	s.mu.Unlock()
	for _, st := range close {
		if drain {
			st.close()
		} else {
			st.raw.Close()
		}
	}
}

// Shutdown stops accepting connections and closes those with no transfer
// running, the others as soon as their last transfer ends. It returns when
// every connection has closed and its sessions have finished, or, when ctx
// is done first, closes what is left, waits for it and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	busy := 0
	s.stop(true, func(st *connState) bool {
		if st.busy() {
			busy++
			return false
		}
		return true
	})
	s.log.Info("no longer accepting connections; waiting for transfers to finish", "transfers", busy)
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.stop(true, func(*connState) bool { return true })
		<-done
	}
	s.closeHomes()
	return err
}

// Close closes the listeners and every connection, logged in or not, at
// once, and returns when their sessions have finished.
func (s *Server) Close() error {
	s.stop(false, func(*connState) bool { return true })
	s.wg.Wait()
	s.closeHomes()
	return nil
}

// SetLimits applies new limits and penalties (a reloaded configuration) to
// new connections; a penalty already earned stays.
func (s *Server) SetLimits(l Limits, p Penalties) {
	s.gate.set(l, p)
}

func (s *Server) closeHomes() { s.homes.closeAll() }

// penalise adds d to the penalty of a's source, and tells the servers it
// shares penalties with.
func (s *Server) penalise(a netip.Addr, d time.Duration) {
	if d <= 0 {
		return
	}
	s.gate.penalise(a, d)
	if s.cfg.Penalised != nil {
		s.cfg.Penalised(a, d)
	}
}

// Penalise adds d to the penalty of a's source, as another server that
// shares penalties with this one reports it: an attacker spread across
// servers by a balancer adds up on each. Exempt sources stay exempt.
func (s *Server) Penalise(a netip.Addr, d time.Duration) {
	s.gate.penalise(a, min(d, time.Hour))
}

func limitsOf(u users.User) vfs.Limits {
	return vfs.Limits{Bytes: int64(u.Quota), Files: u.MaxFiles}
}

// Reloaded applies a new version of the users file: the connections of
// removed users end, and those of users who may no longer log in (disabled,
// expired, or connected from outside a new allow_from); open homes take
// their users' new limits, permissions and rates; and a home whose user
// asked for a rescan (`silo user rescan`) recomputes its usage.
func (s *Server) Reloaded(removed []string) {
	var rescans []*openHome
	s.homes.each(func(name string, oh *openHome) {
		u, ok := s.cfg.Users.Lookup(name)
		if !ok {
			return
		}
		applyAccount(oh.fs, u)
		if u.Rescan != oh.rescan {
			oh.rescan = u.Rescan
			oh.refs++ // kept open for the walk
			rescans = append(rescans, oh)
		}
	})
	for _, oh := range rescans {
		if err := oh.fs.Rescan(); err != nil {
			s.log.Error("rescan failed", "user", oh.user, "err", err)
		} else {
			u := oh.fs.Usage()
			s.log.Info("usage rescanned", "user", oh.user, "bytes", u.Bytes, "files", u.Files)
		}
		s.homes.release(oh)
	}
	s.usersRemoved(removed)
	s.closeRefused()
}

// closeRefused ends every connection whose user would not be let in now,
// and has the others reread their account's expiry.
// The account store is asked outside mu: it may be slow (a database).
func (s *Server) closeRefused() {
	s.mu.Lock()
	byUser := make(map[string][]*connState, len(s.conns))
	for name, conns := range s.conns {
		for st := range conns {
			byUser[name] = append(byUser[name], st)
		}
	}
	s.mu.Unlock()
	now := time.Now()
	for name, conns := range byUser {
		u, ok := s.cfg.Users.Lookup(name)
		if !ok {
			continue // removed: usersRemoved closes those
		}
		for _, st := range conns {
			if err := u.LoginAllowed(st.addr, now); err != nil {
				s.log.Info("closing connection of user no longer allowed", "user", name, "remote", st.remote, "reason", err.Error())
				st.raw.Close()
				continue
			}
			select {
			case st.recheck <- struct{}{}: // the expiry may have changed
			default:
			}
		}
	}
}

// usersRemoved ends every connection of the named users, which no longer
// exist.
func (s *Server) usersRemoved(names []string) {
	s.mu.Lock()
	var drop []*connState
	for _, name := range names {
		for st := range s.conns[name] {
			drop = append(drop, st)
		}
	}
	s.mu.Unlock()
	s.homes.drop(names)
	for _, st := range drop {
		s.log.Info("closing connection of removed user", "user", st.user, "remote", st.remote)
		st.raw.Close()
	}
}
