// Package activity is where silo's sessions report what happens: the
// connections open, the transfers running and how far along they are, and
// every change a user makes or is refused. It is the one source that the
// audit log, the metrics, the hooks and the live status view read; the
// protocol engines (sshd's SFTP, scp, rsync, the checksum commands) report
// to it and never to those directly.
//
// Lifecycle: a Monitor lives as long as the server. sshd calls Connect for
// each accepted connection and Conn.Close when it ends; Conn.Start begins a
// transfer, Transfer.End finishes it. Every method of *Conn and *Transfer
// may be called on nil, which reports nothing: engines run in tests without
// a monitor.
//
// Subscribers are called synchronously, on the reporting goroutine, in the
// order they were added, after the monitor's lock is released: they must
// not block (the hooks hand events to a bounded queue).
package activity

import (
	"errors"
	"io/fs"
	"sync"
	"sync/atomic"
	"time"

	"silo/vfs"
)

// Kind names what an Event records.
type Kind string

// The kinds of events. Upload and Download are finished transfers; the
// others are single operations.
const (
	Login    Kind = "login"    // a successful login; failed ones are LoginFailed
	Upload   Kind = "upload"   // a file written, complete or not (see Err)
	Download Kind = "download" // a file read
	Remove   Kind = "remove"
	Rename   Kind = "rename"
	Mkdir    Kind = "mkdir"
	Rmdir    Kind = "rmdir"
	Symlink  Kind = "symlink"
	Setstat  Kind = "setstat" // chmod, times, truncate: Detail says which
	Open     Kind = "open"    // reported only when refused
	List     Kind = "list"    // reported only when refused
	Stat     Kind = "stat"    // a stat or readlink, reported only when refused

	LoginFailed Kind = "login_failed"
	Blocked     Kind = "source_blocked" // a source address penalised past its limit
	Kicked      Kind = "kicked"         // a connection closed by `silo kick`
)

// Event is one thing that happened. Paths are virtual ("/" is the home).
type Event struct {
	Kind     Kind
	Time     time.Time
	User     string
	Session  string // the connection's short session id
	Remote   string // the client's address, host:port
	Protocol string // sftp, scp, rsync, checksum
	Method   string // Login, LoginFailed: the auth method
	Path     string
	Target   string // Rename: the new path; Symlink: the link's target
	Detail   string // Setstat: "chmod 0644", "times", "truncate 10"
	Size     int64  // Upload, Download: bytes transferred
	SHA256   string // Upload: the file's SHA-256, if the protocol computed it
	Duration time.Duration
	Err      error // nil: it succeeded
}

// Reason classifies a refusal: "quota", "file_limit", "jail" or
// "permission"; "" for success and for failures that are not refusals (a
// missing file, a broken connection).
func (e Event) Reason() string { return Reason(e.Err) }

// Reason classifies err as Event.Reason does.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, vfs.ErrQuotaExceeded):
		return "quota"
	case errors.Is(err, vfs.ErrFileLimit):
		return "file_limit"
	case errors.Is(err, vfs.ErrEscape):
		return "jail"
	case errors.Is(err, fs.ErrPermission):
		return "permission"
	}
	return ""
}

// Subscriber receives every event. Observe must not block.
type Subscriber interface {
	Observe(Event)
}

// Timer is a subscriber that also wants the latency of each protocol
// operation (an SFTP request, say), successful or not.
type Timer interface {
	Operation(protocol, op string, d time.Duration)
}

// Monitor is the registry of connections and transfers, and the fan-out of
// events to subscribers.
type Monitor struct {
	now func() time.Time

	subs   []Subscriber // set before the first event; read without a lock
	timers []Timer

	bytesIn, bytesOut atomic.Int64 // every transfer's bytes so far, finished or not
	sessions          atomic.Int64 // session channels open

	mu     sync.Mutex
	conns  map[*Conn]struct{}
	nextID uint64 // transfer ids
}

// New returns a monitor that reads the time from now (time.Now if nil).
func New(now func() time.Time) *Monitor {
	if now == nil {
		now = time.Now
	}
	return &Monitor{now: now, conns: make(map[*Conn]struct{})}
}

// Subscribe adds s. Call it before the server starts: subscribers are read
// without a lock.
func (m *Monitor) Subscribe(s Subscriber) {
	m.subs = append(m.subs, s)
	if t, ok := s.(Timer); ok {
		m.timers = append(m.timers, t)
	}
}

func (m *Monitor) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = m.now()
	}
	for _, s := range m.subs {
		s.Observe(e)
	}
}

// Report emits an event that belongs to no logged-in connection (a failed
// login, a blocked source).
func (m *Monitor) Report(e Event) { m.emit(e) }

// ConnInfo describes a new connection.
type ConnInfo struct {
	Remote string
	// LastActive reports when the connection last did something (an SFTP
	// request, command I/O); nil means never since it opened.
	LastActive func() time.Time
	// Close closes the connection, for Kick.
	Close func()
}

// Conn is one connection as the monitor sees it.
type Conn struct {
	m      *Monitor
	info   ConnInfo
	since  time.Time
	closed bool // guarded by m.mu

	// Set by LoggedIn; guarded by m.mu.
	user, session, client string
	transfers             map[*Transfer]struct{}
}

// Connect registers a connection.
func (m *Monitor) Connect(info ConnInfo) *Conn {
	c := &Conn{m: m, info: info, since: m.now(), transfers: make(map[*Transfer]struct{})}
	m.mu.Lock()
	m.conns[c] = struct{}{}
	m.mu.Unlock()
	return c
}

// LoggedIn records the connection's account, and reports the login.
func (c *Conn) LoggedIn(user, session, clientVersion, method string) {
	if c == nil {
		return
	}
	c.m.mu.Lock()
	c.user, c.session, c.client = user, session, clientVersion
	c.m.mu.Unlock()
	c.m.emit(Event{Kind: Login, User: user, Session: session, Remote: c.info.Remote, Method: method})
}

// Close unregisters the connection. Transfers still running on it are
// dropped from the view (their End still reports them).
func (c *Conn) Close() {
	if c == nil {
		return
	}
	c.m.mu.Lock()
	c.closed = true
	delete(c.m.conns, c)
	c.m.mu.Unlock()
}

// SessionOpened and SessionClosed bracket a session channel.
func (c *Conn) SessionOpened() {
	if c != nil {
		c.m.sessions.Add(1)
	}
}

// SessionClosed: see SessionOpened.
func (c *Conn) SessionClosed() {
	if c != nil {
		c.m.sessions.Add(-1)
	}
}

func (c *Conn) ident() (user, session string) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	return c.user, c.session
}

// Op reports an operation of protocol on path (and target, for a rename, a
// copy or a link) that ended with err: a change if err is nil, a failure
// or a refusal otherwise.
func (c *Conn) Op(protocol string, kind Kind, path, target, detail string, err error) {
	if c == nil {
		return
	}
	user, session := c.ident()
	c.m.emit(Event{Kind: kind, User: user, Session: session, Remote: c.info.Remote, Protocol: protocol,
		Path: path, Target: target, Detail: detail, Err: err})
}

// Refused reports an operation that changes nothing (an open, a listing)
// only if err refuses it: quota, file limit, permission, jail.
func (c *Conn) Refused(protocol string, kind Kind, path string, err error) {
	if Reason(err) != "" {
		c.Op(protocol, kind, path, "", "", err)
	}
}

// Timed reports how long an operation took, for the latency histograms.
func (c *Conn) Timed(protocol, op string, start time.Time) {
	if c == nil || len(c.m.timers) == 0 {
		return
	}
	d := c.m.now().Sub(start)
	for _, t := range c.m.timers {
		t.Operation(protocol, op, d)
	}
}

// Now is the monitor's clock, for the start of a Timed operation.
func (c *Conn) Now() time.Time {
	if c == nil {
		return time.Time{}
	}
	return c.m.now()
}

// Kick closes every connection whose user or session id is target, and
// reports how many it closed.
func (m *Monitor) Kick(target string) int {
	var kick []*Conn
	m.mu.Lock()
	for c := range m.conns {
		if target != "" && (c.user == target || c.session == target) {
			kick = append(kick, c)
		}
	}
	m.mu.Unlock()
	for _, c := range kick {
		user, session := c.ident()
		m.emit(Event{Kind: Kicked, User: user, Session: session, Remote: c.info.Remote})
		if c.info.Close != nil {
			c.info.Close()
		}
	}
	return len(kick)
}

// Counts are the monitor's running totals.
type Counts struct {
	Connections int   // open, logged in or not
	Sessions    int64 // session channels open
	BytesIn     int64 // received from clients, all transfers so far
	BytesOut    int64 // sent to clients
}

// Counts returns the running totals.
func (m *Monitor) Counts() Counts {
	m.mu.Lock()
	n := len(m.conns)
	m.mu.Unlock()
	return Counts{Connections: n, Sessions: m.sessions.Load(), BytesIn: m.bytesIn.Load(), BytesOut: m.bytesOut.Load()}
}
