package sshd_test

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// memListener is a net.Listener whose connections are in-memory pipes. A
// server on it can run inside a testing/synctest bubble, where time is fake
// and moves only when every goroutine waits: timeouts, grace times and
// penalties then take no wall-clock time and do not depend on how loaded
// the machine is. (A goroutine blocked on a real socket never counts as
// waiting, so a bubble cannot use the loopback network.)
type memListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	ports int
}

func newMemListener() *memListener {
	return &memListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22} }

// dial connects from the address ip, with a port of its own.
func (l *memListener) dial(ip string) (net.Conn, error) {
	l.mu.Lock()
	l.ports++
	port := 40000 + l.ports
	l.mu.Unlock()
	remote := net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port)))
	a, b := &pipeHalf{}, &pipeHalf{}
	a.cond, b.cond = sync.NewCond(&a.mu), sync.NewCond(&b.mu)
	client := &memConn{r: a, w: b, local: remote, remote: l.Addr()}
	server := &memConn{r: b, w: a, local: l.Addr(), remote: remote}
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// pipeHalf is one direction of a memConn: an unbounded buffer (SSH's own
// windows bound it), so that both sides may write before reading, as they
// do when they exchange versions.
type pipeHalf struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
}

type memConn struct {
	r, w          *pipeHalf
	local, remote net.Addr
}

func (c *memConn) Read(p []byte) (int, error) {
	h := c.r
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.buf) == 0 && !h.closed {
		h.cond.Wait()
	}
	if len(h.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(p, h.buf)
	h.buf = h.buf[n:]
	return n, nil
}

func (c *memConn) Write(p []byte) (int, error) {
	h := c.w
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, net.ErrClosed
	}
	h.buf = append(h.buf, p...)
	h.cond.Broadcast()
	return len(p), nil
}

// Close ends both directions: the peer reads what was sent, then EOF.
func (c *memConn) Close() error {
	for _, h := range []*pipeHalf{c.r, c.w} {
		h.mu.Lock()
		h.closed = true
		h.cond.Broadcast()
		h.mu.Unlock()
	}
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

// Neither x/crypto nor gliderlabs (without its own timeouts) sets
// deadlines; silo's timeouts are its own timers.
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// closedByPeer reports whether the other side has closed the connection,
// without blocking: inside a bubble, after synctest.Wait, the answer is
// final.
func closedByPeer(c net.Conn) bool {
	h := c.(*memConn).r
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}
