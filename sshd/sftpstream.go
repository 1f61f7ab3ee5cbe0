package sshd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sync/semaphore"
)

// SFTP limits, announced with limits@openssh.com and enforced by pkg/sftp,
// which ends a session on a packet over 256 KiB. Reads and writes may carry
// 255 KiB, as with OpenSSH's sftp-server; without the announcement OpenSSH's
// sftp moves 32 KiB per request.
const (
	maxSFTPPacket = 256 << 10
	maxSFTPData   = maxSFTPPacket - 1024
)

// What a session, and all the sessions of one account together, may have
// in flight: requests read and not yet answered, counted by the bytes they
// hold (a READ by the data it asks for, a WRITE by its size, anything else
// by smallCost). Past that the stream stops reading requests, and the SSH
// window pushes back on the client. Eight 255 KiB requests keep a transfer
// at full speed. Requests other than READ and WRITE count against the
// session's budget only, so that an account whose stalled sessions hold
// its budget can still log in, list and look around.
const (
	sessionInflight = 2 << 20
	accountInflight = 8 << 20
	smallCost       = 1 << 10
)

// SFTP packet types (draft-ietf-secsh-filexfer-02, section 3).
const (
	fxpInit          = 1
	fxpVersion       = 2
	fxpOpen          = 3
	fxpClose         = 4
	fxpRead          = 5
	fxpWrite         = 6
	fxpOpendir       = 11
	fxpRealpath      = 16
	fxpSymlink       = 20
	fxpStatus        = 101
	fxpHandle        = 102
	fxpData          = 103
	fxpName          = 104
	fxpExtended      = 200
	fxpExtendedReply = 201

	fxOK               = 0
	fxEOF              = 1
	fxPermissionDenied = 3
	fxFailure          = 4
	fxOpUnsupported    = 8
)

// defaultRSIdle is how long a session's RequestServer is kept once it has
// nothing to do: long enough for the requests of one command of a person's
// sftp, short against the time between them.
const defaultRSIdle = time.Second

// smallBody is the largest request body the stream reads into a buffer it
// keeps: the heads of READ and WRITE, opens and closes of usual paths.
const smallBody = 4 << 10

// maxHandleLen bounds the handles the stream looks at: pkg/sftp's are short
// decimal numbers, and a longer one is not a handle it gave out.
const maxHandleLen = 64

// inflight is what one request handed on holds of the budgets.
type inflight struct {
	cost int64
	bulk bool // a READ or WRITE: the account's budget too
}

// sftpStream reads an SFTP session's requests from its channel. It serves
// some itself and hands the others on to pkg/sftp's RequestServer, which
// parses them, runs them on silo's handlers (sftp.go) and orders its
// replies; the stream reads each reply's head on the way out. What it adds
// to pkg/sftp:
//
//   - READ and WRITE on the files the handlers opened, served here, on the
//     stream's goroutine, in buffers shared by all sessions (serveBulk):
//     pkg/sftp would allocate a 256 KiB buffer for each and copy every
//     reply, and its per-session allocator keeps its pages for the
//     session's life;
//   - a RequestServer, and its eleven goroutines, only while it has work
//     (startRS and the comment above it);
//   - the extensions pkg/sftp does not know (limits@openssh.com), answered
//     here and announced in the VERSION reply;
//   - packet types it does not know, answered SSH_FX_OP_UNSUPPORTED (it
//     would end the session);
//   - a READ on a handle not open for reading, or a WRITE on one not open
//     for writing, refused;
//   - SSH_FXF_APPEND: each WRITE on such a handle is moved to the end of
//     what the handle has written, in the order the requests arrive, as
//     O_APPEND does for OpenSSH's sftp-server;
//   - a bound on what a session and an account have in flight;
//   - requests behind an open wait until the open is answered: pkg/sftp
//     registers a handle before it has finished setting it up, and a
//     request for that handle sent right behind the open (no honest client
//     does that; it needs the handle first) would race with the setup.
//
// Replies leave in the order of the requests: a request answered here
// waits until pkg/sftp has answered those before it. The stream relies on
// pkg/sftp answering every request it is handed once, in the order
// received, and writing each reply's head (everything but a DATA reply's
// payload) in one call; each is guarded by a test.
type sftpStream struct {
	ch         io.ReadWriteCloser
	ctx        context.Context // the session's: ends waits for budget
	log        *slog.Logger
	touch      func() // called for every request: the session is not idle
	maxHandles uint64
	quirks     clientQuirks
	// realPath answers REALPATH (sftp.go).
	realPath func(string) (string, error)
	// ext answers the extensions of the handler's (sftpext.go).
	ext     func(name string, args []byte) (typ byte, body []byte, err error, ok bool)
	session *semaphore.Weighted
	account *semaphore.Weighted

	// Reading: the head of the current incoming packet, and a buffer for
	// small bodies.
	hdr [5]byte
	buf []byte

	// newRS builds a RequestServer on a connection to the stream.
	newRS func(io.ReadWriteCloser) *sftp.RequestServer
	// idle is how long a RequestServer with nothing to do is kept;
	// onIdle, if set, is told of each idle check's outcome (tests).
	idle   time.Duration
	onIdle func(ended bool)
	// handingOn, if set, is called as a request is about to be handed on
	// (tests).
	handingOn func(typ byte)

	omu      sync.Mutex
	ocond    *sync.Cond
	requests uint64     // handed to pkg/sftp
	replies  uint64     // written by pkg/sftp
	openRank uint64     // the rank of the open in flight, 0 for none
	costs    []inflight // of the requests handed on and not yet answered, in order
	closed   bool
	rs       *rsConn             // the running RequestServer's connection, nil for none
	rsOpen   map[string]struct{} // the handles it has open
	quietAt  time.Time           // when it last had everything answered
	timer    *time.Timer         // the idle check, armed when it is quiet
	rsErr    error               // what the first RequestServer that failed ended with
	rsWG     sync.WaitGroup      // the RequestServers' goroutines

	// Handles: the file an open in flight made, bound to the handle
	// pkg/sftp answers with.
	hmu     sync.Mutex
	openID  uint32
	opening *sftpFile
	files   map[string]*sftpFile

	// Writing: pkg/sftp writes a packet in several calls; wmu is held from
	// a packet's first byte to its last, so that an injected reply never
	// lands inside one.
	wmu   sync.Mutex
	wneed uint32                // bytes left in the packet being written
	whead []byte                // its head, when split across writes
	werr  atomic.Pointer[error] // the first write error: the stream is broken
}

func newSFTPStream(ctx context.Context, ch io.ReadWriteCloser, touch func(), maxHandles int, account *semaphore.Weighted) *sftpStream {
	s := &sftpStream{ch: ch, ctx: ctx, touch: touch, maxHandles: uint64(maxHandles),
		session: semaphore.NewWeighted(sessionInflight), account: account,
		files: make(map[string]*sftpFile)}
	s.ocond = sync.NewCond(&s.omu)
	return s
}

// opened is called by the handler when an open succeeds: the handle in the
// reply about to be written is f's.
func (s *sftpStream) opened(f *sftpFile) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	s.opening = f
}

// file returns the open file behind a handle, nil for a directory or an
// unknown handle.
func (s *sftpStream) file(handle []byte) *sftpFile {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	return s.files[string(handle)]
}

// waitOpen blocks until the open in flight, if any, has been answered, or
// the stream is closed.
func (s *sftpStream) waitOpen() {
	s.omu.Lock()
	defer s.omu.Unlock()
	for s.openRank > s.replies && !s.closed {
		s.ocond.Wait()
	}
}

// request hands a request on to pkg/sftp: pkt is the whole packet, its
// length field included. Its cost is taken from the budgets (acquire) and
// given back when its reply is written; an open is waited for (waitOpen).
// A RequestServer is started if none runs.
func (s *sftpStream) request(typ byte, pkt []byte, cost int64) error {
	if s.handingOn != nil {
		s.handingOn(typ)
	}
	bulk := typ == fxpRead || typ == fxpWrite
	if err := s.acquire(cost, bulk); err != nil {
		return err
	}
	s.omu.Lock()
	if s.closed {
		s.omu.Unlock()
		s.release(cost, bulk)
		return errStreamClosed
	}
	r := s.rs
	if r == nil {
		r = s.startRS()
	}
	s.requests++
	s.costs = append(s.costs, inflight{cost, bulk})
	switch typ {
	case fxpOpen, fxpOpendir:
		s.openRank = s.requests
	case fxpClose:
		// Forgotten as the CLOSE is counted, not before: the idle check
		// sees the handle open or the CLOSE in flight, never neither.
		s.forget(pkt[len(s.hdr):])
	}
	s.omu.Unlock()
	// r cannot be ended for being idle now: it has a request to answer.
	select {
	case r.in <- pkt:
		return nil
	case <-r.done: // it failed, and the session ends
		return errStreamClosed
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

var errStreamClosed = errors.New("sftp: stream closed")

// forget drops the handle a CLOSE (body after the type byte) closes: a
// READ or WRITE behind it is refused here, and it no longer keeps the
// RequestServer. omu is held.
func (s *sftpStream) forget(body []byte) {
	h, _, ok := handleOf(body)
	if !ok {
		return
	}
	delete(s.rsOpen, string(h))
	s.hmu.Lock()
	delete(s.files, string(h))
	s.hmu.Unlock()
}

// acquire takes cost from the session's budget and, for a READ or WRITE,
// from the account's, waiting while they are spent.
func (s *sftpStream) acquire(cost int64, bulk bool) error {
	cost = min(cost, sessionInflight)
	if err := s.session.Acquire(s.ctx, cost); err != nil {
		return err
	}
	if bulk {
		if err := s.account.Acquire(s.ctx, cost); err != nil {
			s.session.Release(cost)
			return err
		}
	}
	return nil
}

// release gives back what acquire took.
func (s *sftpStream) release(cost int64, bulk bool) {
	cost = min(cost, sessionInflight)
	s.session.Release(cost)
	if bulk {
		s.account.Release(cost)
	}
}

// replied counts a reply of pkg/sftp's whose head is going out.
func (s *sftpStream) replied() {
	s.omu.Lock()
	defer s.omu.Unlock()
	s.replies++
	s.ocond.Broadcast()
}

// The RequestServer's lifecycle. One is started for the first request the
// stream hands on (request), and ends, EOF on its input, once it has been
// quiet for s.idle with no handle of its own open (idleCheck), so that an
// idle session holds none of its eleven goroutines. The next request
// starts another. A RequestServer keeps nothing a client could miss
// across that: it answers any request without an INIT, its handles are
// all closed when it ends, and its order ids are its own. All of it is
// decided under omu, where request counts what it hands on, so a request
// is either handed to a RequestServer that cannot end before answering
// it, or starts a new one.

// startRS starts a RequestServer; omu is held.
func (s *sftpStream) startRS() *rsConn {
	r := &rsConn{s: s, in: make(chan []byte, 1), done: make(chan struct{})}
	rs := s.newRS(r)
	s.rs = r
	s.rsWG.Add(1)
	go s.runRS(r, rs)
	return r
}

// runRS serves rs until its input ends. Any other end of it ends the
// session: pkg/sftp ends a session on a request it cannot parse.
func (s *sftpStream) runRS(r *rsConn, rs *sftp.RequestServer) {
	defer s.rsWG.Done()
	defer close(r.done)
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("sftp server panic", "panic", p, "stack", string(debug.Stack()))
				err = errors.New("sftp: internal error")
			}
		}()
		return rs.Serve()
	}()
	if err == io.EOF {
		if r.idled && s.onIdle != nil {
			s.onIdle(true)
		}
		return
	}
	s.omu.Lock()
	if s.rsErr == nil {
		s.rsErr = err
	}
	s.omu.Unlock()
	s.Close()
}

// idleCheck, the idle timer's function, ends the RequestServer if it has
// been quiet for s.idle and has no handle open.
func (s *sftpStream) idleCheck() {
	s.omu.Lock()
	r := s.rs
	quiet := time.Since(s.quietAt)
	switch {
	case r == nil || len(s.costs) > 0:
		// Ended, or busy: its next quiet moment arms the check again.
		s.omu.Unlock()
		return
	case quiet < s.idle:
		s.timer.Reset(s.idle - quiet)
		s.omu.Unlock()
		return
	case len(s.rsOpen) > 0:
		s.omu.Unlock()
		if s.onIdle != nil {
			s.onIdle(false)
		}
		return
	}
	s.rs = nil
	r.idled = true
	close(r.in)
	s.omu.Unlock()
}

// stopRS ends the RequestServer, once the stream reads no more, and waits
// until every one started has ended: their handles are then closed, an
// upload still open aborted.
func (s *sftpStream) stopRS() {
	s.omu.Lock()
	r := s.rs
	s.rs = nil
	if s.timer != nil {
		s.timer.Stop()
	}
	s.omu.Unlock()
	if r != nil {
		close(r.in)
	}
	s.rsWG.Wait()
}

// rsConn is a RequestServer's connection: it reads the packets the stream
// hands on, and writes its replies through the stream.
type rsConn struct {
	s     *sftpStream
	in    chan []byte   // whole packets; closed, EOF: the RequestServer is to end
	done  chan struct{} // closed when it has ended
	cur   []byte        // what is left of the packet being read
	idled bool          // ended for being idle
}

func (c *rsConn) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		pkt, ok := <-c.in
		if !ok {
			return 0, io.EOF
		}
		c.cur = pkt
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

func (c *rsConn) Write(p []byte) (int, error) { return c.s.Write(p) }

// Close, called by pkg/sftp on a request it cannot parse, ends the session.
func (c *rsConn) Close() error { return c.s.Close() }

// answered gives back the cost of the request whose reply has gone out.
// When that was the last request in flight, the RequestServer is quiet,
// and the idle check is armed.
func (s *sftpStream) answered() {
	s.omu.Lock()
	if len(s.costs) == 0 {
		s.omu.Unlock()
		return
	}
	c := s.costs[0]
	s.costs = s.costs[1:]
	if len(s.costs) == 0 && s.rs != nil {
		s.quietAt = time.Now()
		if s.timer == nil {
			s.timer = time.AfterFunc(s.idle, s.idleCheck)
		} else {
			s.timer.Reset(s.idle)
		}
	}
	s.omu.Unlock()
	s.release(c.cost, c.bulk)
}

// releaseAll gives back the costs of requests that will never be
// answered: the session is over.
func (s *sftpStream) releaseAll() {
	for {
		s.omu.Lock()
		n := len(s.costs)
		s.omu.Unlock()
		if n == 0 {
			return
		}
		s.answered()
	}
}

// shut wakes a reader waiting for a reply that will never be written.
func (s *sftpStream) shut() {
	s.omu.Lock()
	defer s.omu.Unlock()
	s.closed = true
	s.ocond.Broadcast()
}

// serve reads requests until the channel ends, serving some here and
// handing the others on to pkg/sftp, then ends the RequestServer and waits
// for it. A RequestServer that failed ends the session with its error.
func (s *sftpStream) serve() error {
	err := s.loop()
	s.omu.Lock()
	rsErr := s.rsErr
	s.omu.Unlock()
	if rsErr != nil {
		return rsErr
	}
	return err
}

func (s *sftpStream) loop() error {
	defer s.stopRS()
	for {
		if err := s.next(); err != nil {
			return err
		}
	}
}

// next reads the next request and serves it here or hands it on to
// pkg/sftp.
func (s *sftpStream) next() error {
	s.waitOpen()
	if _, err := io.ReadFull(s.ch, s.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return errors.New("sftp: truncated packet")
		}
		return err
	}
	s.touch()
	length := binary.BigEndian.Uint32(s.hdr[:4])
	typ := s.hdr[4]
	switch {
	case length > maxSFTPPacket:
		return fmt.Errorf("sftp: packet of %d bytes, more than %d", length, maxSFTPPacket)
	case length < 1:
		return errors.New("sftp: empty packet")
	}
	body := length - 1
	switch {
	case typ == fxpRead, typ == fxpWrite:
		return s.readOrWrite(typ, body)
	case !isRequest(typ), typ == fxpInit, typ == fxpRealpath, typ == fxpOpen,
		typ == fxpExtended, typ == fxpSymlink && s.quirks.draftSymlink:
		// Looked at here.
	default:
		return s.handOn(typ, nil, body, smallCost)
	}
	b, err := s.readBody(body)
	if err != nil {
		return err
	}
	switch {
	case !isRequest(typ):
		if len(b) >= 4 {
			s.status(b[:4], fxOpUnsupported, fmt.Sprintf("packet type %d is not supported", typ))
		}
		return nil
	case typ == fxpInit:
		// Answered here, as are most sessions' first REALPATH, so that a
		// session that does no more starts no RequestServer.
		s.inject(versionReply)
		return nil
	case typ == fxpRealpath && s.realpath(b):
		return nil
	case typ == fxpExtended && s.extended(b):
		return nil
	case typ == fxpSymlink && s.quirks.draftSymlink:
		b = swapSymlink(b)
	case typ == fxpOpen && len(b) >= 4:
		s.hmu.Lock()
		s.openID, s.opening = binary.BigEndian.Uint32(b), nil
		s.hmu.Unlock()
	}
	return s.handOn(typ, b, 0, smallCost)
}

// versionReply answers INIT: version 3 (draft-ietf-secsh-filexfer-02),
// and the extensions of pkg/sftp's that silo announces, then its own.
var versionReply = func() []byte {
	b := []byte{fxpVersion, 0, 0, 0, 3}
	for _, e := range append(sftpExtensions, sftpExtensionsAdded...) {
		b = appendString(appendString(b, e[0]), e[1])
	}
	return b
}()

// realpath answers a REALPATH request (body after the type byte) with
// the handler's RealPath, once what came before is answered, and reports
// whether the request parsed; one that does not is left to pkg/sftp to
// refuse.
func (s *sftpStream) realpath(body []byte) bool {
	f := &fields{b: body[min(4, len(body)):]}
	p := f.str()
	if len(body) < 4 || f.bad || s.realPath == nil {
		return false
	}
	id := body[:4]
	name, err := s.realPath(p)
	if err != nil {
		s.statusOf(id, err)
		return true
	}
	s.inject(append(append([]byte{fxpName}, id...), nameReply(name)...))
	return true
}

// handOn hands the current packet on to pkg/sftp: b is what was read of
// its body, rest what is left of it on the channel.
func (s *sftpStream) handOn(typ byte, b []byte, rest uint32, cost int64) error {
	pkt := make([]byte, len(s.hdr)+len(b)+int(rest))
	copy(pkt, s.hdr[:])
	copy(pkt[len(s.hdr):], b)
	if _, err := io.ReadFull(s.ch, pkt[len(s.hdr)+len(b):]); err != nil {
		return err
	}
	return s.request(typ, pkt, cost)
}

// isRequest reports a packet type that a client may send
// (draft-ietf-secsh-filexfer-02, section 3).
func isRequest(typ byte) bool {
	return typ == fxpInit || typ >= fxpOpen && typ <= fxpSymlink || typ == fxpExtended
}

// readOrWrite looks at the head of a READ or WRITE (id, handle, offset,
// length) against the handle's open mode, and serves it here (serveBulk).
// Only a head that does not parse goes on to pkg/sftp, which ends the
// session.
func (s *sftpStream) readOrWrite(typ byte, body uint32) error {
	head := min(body, 4+4+maxHandleLen+8+4)
	b, err := s.readBody(head)
	if err != nil {
		return err
	}
	rest := body - head
	h, after, ok := handleOf(b)
	f := (*sftpFile)(nil)
	if ok {
		f = s.file(h)
	}
	if ok && (f == nil || typ == fxpRead && !f.canRead || typ == fxpWrite && !f.write) {
		if _, err := io.CopyN(io.Discard, s.ch, int64(rest)); err != nil {
			return err
		}
		switch {
		case f == nil:
			// A directory's handle, or one closed or never given:
			// pkg/sftp would run the request beside a CLOSE in flight.
			s.status(b[:4], fxFailure, "invalid handle")
		case typ == fxpRead:
			s.status(b[:4], fxPermissionDenied, fmt.Sprintf("permission denied: %s is not open for reading", f.f.Name()))
		default:
			s.status(b[:4], fxPermissionDenied, fmt.Sprintf("permission denied: %s is not open for writing", f.f.Name()))
		}
		return nil
	}
	cost := int64(min(length(b, after+8), maxSFTPData)) // a READ's length
	if typ == fxpWrite {
		cost = int64(body)
	}
	if f != nil && len(b) >= after+12 && (typ == fxpRead || uint32(after+12)+length(b, after+8) <= body) {
		return s.serveBulk(typ, f, b, after, rest, max(cost, smallCost))
	}
	return s.handOn(typ, b, rest, max(cost, smallCost))
}

// bulkBufs holds the buffers READs and WRITEs are served in, shared by all
// sessions: a session holds one only while it serves a request, so that an
// idle session holds none, and the in-flight budgets bound how many are out.
var bulkBufs = sync.Pool{New: func() any { b := make([]byte, maxSFTPPacket); return &b }}

// dataHead is the size of a DATA reply's head: length, type, id, data length.
const dataHead = 4 + 1 + 4 + 4

// serveBulk serves a READ or WRITE on an open file, on the stream's own
// goroutine, from one pooled buffer: a READ's data is read in behind room
// for the reply's head and leaves in one write; a WRITE's data goes from the
// channel into the buffer and from there to the file. b is the request's
// head (id, handle, offset, length, perhaps the first data bytes); rest is
// what is left of the packet on the channel.
//
// The requests handed to pkg/sftp before are answered first, and the next
// request is read only once this one is answered, so that replies leave in
// the order of the requests as pkg/sftp's do: a client may rely on a SETSTAT
// before a WRITE, or a WRITE before a CLOSE, taking effect in that order.
func (s *sftpStream) serveBulk(typ byte, f *sftpFile, b []byte, after int, rest uint32, cost int64) error {
	s.waitAnswered()
	if err := s.acquire(cost, true); err != nil {
		return err
	}
	defer s.release(cost, true)
	bp := bulkBufs.Get().(*[]byte)
	defer bulkBufs.Put(bp)
	buf := *bp
	off := int64(binary.BigEndian.Uint64(b[after:]))
	n := length(b, after+8)

	var data []byte
	if typ == fxpWrite {
		// The data, and whatever follows it in the packet, which
		// pkg/sftp too would ignore.
		all := buf[:len(b)-after-12+int(rest)]
		k := copy(all, b[after+12:])
		if _, err := io.ReadFull(s.ch, all[k:]); err != nil {
			return err
		}
		data = all[:n]
		if f.appending {
			off = f.appendAt.Add(int64(n)) - int64(n)
		}
	}
	switch {
	case off < 0:
		s.statusOf(b[:4], &statusError{sftp.ErrSSHFxBadMessage, "negative offset"})
	case typ == fxpWrite:
		_, err := f.WriteAt(data, off)
		s.statusOf(b[:4], err)
	default:
		data = buf[dataHead : dataHead+min(n, maxSFTPData)]
		got, err := f.ReadAt(data, off)
		if err != nil && (err != io.EOF || got == 0) {
			s.statusOf(b[:4], err)
			break
		}
		pkt := buf[:dataHead+got]
		binary.BigEndian.PutUint32(pkt, uint32(len(pkt)-4))
		pkt[4] = fxpData
		binary.BigEndian.PutUint32(pkt[5:], binary.BigEndian.Uint32(b))
		binary.BigEndian.PutUint32(pkt[9:], uint32(got))
		s.send(pkt)
	}
	// A reply that could not be sent ends the session.
	if err := s.werr.Load(); err != nil {
		return *err
	}
	return nil
}

// swapSymlink turns a SYMLINK body (id, linkpath, targetpath) in the
// draft's order into OpenSSH's (id, targetpath, linkpath), which pkg/sftp
// reads. A body that does not parse is left to pkg/sftp to refuse.
func swapSymlink(b []byte) []byte {
	f := &fields{b: b[min(4, len(b)):]}
	link, target := f.str(), f.str()
	if len(b) < 4 || f.bad {
		return b
	}
	out := append([]byte(nil), b[:4]...)
	return append(appendString(appendString(out, target), link), f.rest()...)
}

// handleOf finds the handle after the id in a request body, and the offset
// of what follows it.
func handleOf(b []byte) ([]byte, int, bool) {
	if len(b) < 8 {
		return nil, 0, false
	}
	n := binary.BigEndian.Uint32(b[4:8])
	if n > maxHandleLen || uint32(len(b)-8) < n {
		return nil, 0, false
	}
	return b[8 : 8+n], 8 + int(n), true
}

// length reads the uint32 at off, 0 if b is shorter.
func length(b []byte, off int) uint32 {
	if off < 0 || len(b) < off+4 {
		return 0
	}
	return binary.BigEndian.Uint32(b[off:])
}

// readBody reads n bytes of the current packet, valid until the next call:
// into a small buffer of the stream's, or, for the rare large body (an
// extended request or an unknown packet of up to 256 KiB), into one that
// is not kept, so that an idle session holds no more than the small one.
func (s *sftpStream) readBody(n uint32) ([]byte, error) {
	var b []byte
	switch {
	case n > smallBody:
		b = make([]byte, n)
	case s.buf == nil:
		s.buf = make([]byte, smallBody)
		fallthrough
	default:
		b = s.buf[:n]
	}
	if _, err := io.ReadFull(s.ch, b); err != nil {
		return nil, err
	}
	return b, nil
}

// extended answers an SSH_FXP_EXTENDED request (body after the type byte) if
// it is one silo handles here, and reports whether it did.
func (s *sftpStream) extended(body []byte) bool {
	if len(body) < 8 {
		return false
	}
	id := body[:4]
	n := binary.BigEndian.Uint32(body[4:8])
	if uint32(len(body)-8) < n {
		return false
	}
	name, args := string(body[8:8+n]), body[8+n:]
	if name == "limits@openssh.com" {
		reply := []byte{fxpExtendedReply}
		reply = append(reply, id...)
		reply = binary.BigEndian.AppendUint64(reply, maxSFTPPacket)
		reply = binary.BigEndian.AppendUint64(reply, maxSFTPData) // read
		reply = binary.BigEndian.AppendUint64(reply, maxSFTPData) // write
		reply = binary.BigEndian.AppendUint64(reply, s.maxHandles)
		s.inject(reply)
		return true
	}
	if s.ext == nil {
		return false
	}
	// What the client sent before (writes to a handle it now syncs or
	// copies from, say) is done before the extension runs.
	s.waitAnswered()
	typ, reply, err, ok := s.ext(name, args)
	switch {
	case !ok:
		return false
	case err != nil || reply == nil:
		s.statusOf(id, err)
	default:
		s.inject(append(append([]byte{typ}, id...), reply...))
	}
	return true
}

// statusCode is the number of one of pkg/sftp's ErrSSHFx* codes.
func statusCode(code error) uint32 {
	for i, e := range []error{sftp.ErrSSHFxOk, sftp.ErrSSHFxEOF, sftp.ErrSSHFxNoSuchFile,
		sftp.ErrSSHFxPermissionDenied, sftp.ErrSSHFxFailure, sftp.ErrSSHFxBadMessage,
		sftp.ErrSSHFxNoConnection, sftp.ErrSSHFxConnectionLost, sftp.ErrSSHFxOpUnsupported} {
		if code == e {
			return uint32(i)
		}
	}
	return fxFailure
}

// waitAnswered blocks until every request handed to pkg/sftp has been
// answered, or the stream is closed.
func (s *sftpStream) waitAnswered() {
	s.omu.Lock()
	defer s.omu.Unlock()
	for s.replies < s.requests && !s.closed {
		s.ocond.Wait()
	}
}

// statusOf injects the SSH_FXP_STATUS reply for the outcome of a request
// served here: OK for nil, EOF, or the code and words of a statusError.
func (s *sftpStream) statusOf(id []byte, err error) {
	var se *statusError
	switch {
	case err == nil:
		s.status(id, fxOK, "")
	case err == io.EOF:
		s.status(id, fxEOF, "EOF")
	case errors.As(err, &se):
		s.status(id, statusCode(se.code), se.msg)
	default:
		s.status(id, fxFailure, err.Error())
	}
}

// status injects an SSH_FXP_STATUS reply.
func (s *sftpStream) status(id []byte, code uint32, msg string) {
	reply := append([]byte{fxpStatus}, id...)
	reply = binary.BigEndian.AppendUint32(reply, code)
	reply = binary.BigEndian.AppendUint32(reply, uint32(len(msg)))
	reply = append(reply, msg...)
	reply = binary.BigEndian.AppendUint32(reply, 2)
	reply = append(reply, "en"...)
	s.inject(reply)
}

// inject writes a whole reply packet between pkg/sftp's packets.
func (s *sftpStream) inject(body []byte) {
	s.send(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
}

// send writes a whole packet, length field included, between pkg/sftp's
// packets, once pkg/sftp has answered the requests handed on before: every
// reply served here leaves in the order of the requests.
func (s *sftpStream) send(pkt []byte) {
	s.waitAnswered()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr.Load() == nil {
		if _, err := s.ch.Write(pkt); err != nil {
			s.werr.Store(&err)
		}
	}
}

// Write passes the RequestServer's packets through. Each packet's head is looked at
// (see headDone); what follows it goes out as given, so that a 255 KiB
// payload is never copied.
func (s *sftpStream) Write(p []byte) (int, error) {
	if err := s.werr.Load(); err != nil {
		s.shut()
		return 0, *err
	}
	total := len(p)
	for len(p) > 0 {
		if s.wneed > 0 {
			k := min(uint32(len(p)), s.wneed)
			s.wneed -= k
			out := p[:k]
			p = p[k:]
			if err := s.flush(out); err != nil {
				return 0, err
			}
			continue
		}
		// A packet starts, or its head is still being gathered.
		if len(s.whead) == 0 {
			s.wmu.Lock()
		}
		var out []byte
		if len(s.whead) == 0 && len(p) >= headLen(p) {
			out = p[:min(len(p), packetSize(p))] // all of it in this call
			p = p[len(out):]
		} else {
			for len(p) > 0 && len(s.whead) < headLen(s.whead) {
				k := min(len(p), headLen(s.whead)-len(s.whead))
				s.whead, p = append(s.whead, p[:k]...), p[k:]
			}
			if len(s.whead) < headLen(s.whead) {
				continue
			}
			out = s.whead
		}
		s.wneed = uint32(packetSize(out) - len(out))
		s.headDone(out)
		s.whead = s.whead[:0] // before flush, which may let the next writer in
		if err := s.flush(out); err != nil {
			return 0, err
		}
	}
	return total, nil
}

// packetSize is the size of the packet whose start b holds, with its
// length field.
func packetSize(b []byte) int {
	return 4 + int(binary.BigEndian.Uint32(b))
}

// headLen is how much of a reply the stream looks at before it lets the
// reply go: the length, type and id; a HANDLE reply whole.
func headLen(b []byte) int {
	if len(b) < 4 {
		return 4
	}
	size := packetSize(b)
	if len(b) >= 5 && b[4] == fxpHandle {
		return min(size, 4+1+4+4+maxHandleLen)
	}
	return min(size, 9)
}

// headDone learns from a reply's head: the handle an open was answered
// with is bound to its file, then the reply is counted, which lets the
// requests behind the open be read: they find the handle bound.
func (s *sftpStream) headDone(head []byte) {
	defer s.replied()
	if len(head) < 9 {
		return
	}
	h, _, isHandle := handleOf(head[5:])
	isHandle = isHandle && head[4] == fxpHandle
	if isHandle {
		s.omu.Lock()
		if s.rsOpen == nil {
			s.rsOpen = make(map[string]struct{})
		}
		s.rsOpen[string(h)] = struct{}{}
		s.omu.Unlock()
	}
	id := binary.BigEndian.Uint32(head[5:])
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if s.opening == nil || id != s.openID {
		return
	}
	if isHandle {
		s.files[string(h)] = s.opening
	}
	s.opening = nil
}

// flush writes part of the current packet; at its end, wmu is released and
// the request's cost given back.
func (s *sftpStream) flush(b []byte) error {
	_, err := s.ch.Write(b)
	if err != nil {
		s.werr.Store(&err)
		s.wneed = 0
		s.shut()
	}
	if s.wneed == 0 {
		s.wmu.Unlock()
		s.answered()
	}
	return err
}

func (s *sftpStream) Close() error {
	s.shut()
	return s.ch.Close()
}
