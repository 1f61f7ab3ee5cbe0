package activity

import (
	"errors"
	"sync/atomic"
	"time"
)

// ErrAborted ends a transfer that the client broke off (the session went
// away with the file open).
var ErrAborted = errors.New("aborted")

// Transfer is one file being sent or received.
type Transfer struct {
	c        *Conn
	id       uint64
	protocol string
	kind     Kind // Upload or Download
	path     string
	start    time.Time
	size     atomic.Int64 // -1: not known
	done     atomic.Int64
	sha256   atomic.Pointer[string]

	// The rate, sampled by Status; guarded by the monitor's mu.
	sampleAt    time.Time
	sampleBytes int64
	rate        float64
}

// Start begins a transfer of path (kind Upload or Download) of size bytes,
// or -1 if the size is not known yet.
func (c *Conn) Start(protocol string, kind Kind, path string, size int64) *Transfer {
	if c == nil {
		return nil
	}
	t := &Transfer{c: c, protocol: protocol, kind: kind, path: path, start: c.m.now()}
	t.size.Store(size)
	c.m.mu.Lock()
	c.m.nextID++
	t.id = c.m.nextID
	t.sampleAt = t.start
	if !c.closed {
		c.transfers[t] = struct{}{}
	}
	c.m.mu.Unlock()
	return t
}

// Add counts n more bytes transferred.
func (t *Transfer) Add(n int64) {
	if t == nil || n <= 0 {
		return
	}
	t.done.Add(n)
	if t.kind == Upload {
		t.c.m.bytesIn.Add(n)
	} else {
		t.c.m.bytesOut.Add(n)
	}
}

// SetSize records the size once it is known.
func (t *Transfer) SetSize(n int64) {
	if t != nil {
		t.size.Store(n)
	}
}

// SetSHA256 records the file's SHA-256 (hex), for the upload event.
func (t *Transfer) SetSHA256(sum string) {
	if t != nil {
		t.sha256.Store(&sum)
	}
}

// End finishes the transfer with err (nil: complete; ErrAborted: broken off)
// and reports it, with the bytes transferred. It is called once.
func (t *Transfer) End(err error) { t.EndBytes(t.Done(), err) }

// EndBytes is End reporting n as the bytes transferred, for a protocol
// that counts what it sent differently from its progress (rsync's literal
// data, say).
func (t *Transfer) EndBytes(n int64, err error) {
	if t == nil {
		return
	}
	m := t.c.m
	m.mu.Lock()
	delete(t.c.transfers, t)
	user, session := t.c.user, t.c.session
	m.mu.Unlock()
	e := Event{Kind: t.kind, User: user, Session: session, Remote: t.c.info.Remote, Protocol: t.protocol,
		Path: t.path, Size: n, Duration: m.now().Sub(t.start), Err: err}
	if s := t.sha256.Load(); s != nil {
		e.SHA256 = *s
	}
	m.emit(e)
}

// Done returns the bytes transferred so far.
func (t *Transfer) Done() int64 {
	if t == nil {
		return 0
	}
	return t.done.Load()
}

// Discard drops a transfer that moved nothing worth reporting (a file
// opened for reading and closed unread), without an event.
func (t *Transfer) Discard() {
	if t == nil {
		return
	}
	t.c.m.mu.Lock()
	delete(t.c.transfers, t)
	t.c.m.mu.Unlock()
}
