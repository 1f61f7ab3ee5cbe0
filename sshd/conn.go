package sshd

import (
	"net"
	"sync"
	"time"
)

// flushConn hands writes to a flusher goroutine, so that encrypting the next
// SSH packets overlaps the system call that sends the previous ones, and
// packets that pile up meanwhile leave in one write. x/crypto otherwise
// encrypts and writes each packet in turn on one goroutine. A lone write is
// sent at once.
type flushConn struct {
	net.Conn

	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
	err    error
	done   chan struct{}
}

// flushLimit bounds the bytes a connection may have waiting.
const flushLimit = 1 << 20

func newFlushConn(c net.Conn) *flushConn {
	f := &flushConn{Conn: c, done: make(chan struct{})}
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
	return f.Conn.Close()
}
