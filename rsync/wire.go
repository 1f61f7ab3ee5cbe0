package rsync

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Message tags (rsync.h enum msgcode). A frame header is one little-endian
// word: (mplexBase+tag)<<24 | length.
const (
	msgData       = 0
	msgErrorXfer  = 1
	msgInfo       = 2
	msgError      = 3
	msgWarning    = 4
	msgIOError    = 22
	msgNoop       = 42
	msgErrorExit  = 86
	msgSuccess    = 100
	msgDeleted    = 101
	msgNoSend     = 102
	mplexBase     = 7
	maxFrame      = 0xFFFFFF
	maxMsgPayload = 4096 // any tag but data; the longest is a path
)

// Special file indexes.
const (
	ndxDone     = -1
	ndxDelStats = -3
)

// abort is how a fatal condition unwinds the protocol code: it is raised
// with panic and recovered at the top of a role (Run, the receiver
// goroutine), which turns it into rsync's exit code and message. Input is
// read in many small pieces, and a sticky error checked after each would
// hide the one place a record went wrong.
type abort struct {
	code int
	msg  string // sent to the client when not empty
	bug  any    // a panic of the receiver goroutine that was not an abort
}

// raise re-raises, in the generator, what ended the receiver.
func (a abort) raise() {
	if a.bug != nil {
		panic(a.bug)
	}
	panic(a)
}

func fatalf(code int, format string, a ...any) {
	panic(abort{code: code, msg: fmt.Sprintf(format, a...)})
}

// errClientExit: the client sent MSG_ERROR_EXIT; it has given up.
var errClientExit = errors.New("client exited")

// conn is the protocol stream in both directions: multiplexed output, and
// input that is multiplexed from protocol 30 on (raw before). Reads happen
// on one goroutine at a time; writes may come from two (the generator and
// the receiver), under wmu.
type conn struct {
	proto int

	in        *bufio.Reader
	muxIn     bool
	frameLeft int
	msgBuf    [maxMsgPayload]byte
	// onMsg handles an out-of-band message from the client.
	onMsg func(tag byte, payload []byte)
	// beforeBlock runs when a read would wait for the client: output
	// still buffered must go out first, or both sides wait forever.
	beforeBlock func()
	rPos, rNeg  int32 // read ndx state
	ackExit     bool  // answer the client's MSG_ERROR_EXIT (as a sender)
	exitLen     int   // payload length of the last MSG_ERROR_EXIT

	wmu        sync.Mutex
	out        io.Writer
	muxOut     bool
	wbuf       []byte
	werr       error
	wPos, wNeg int32

	nread, nwritten int64 // bytes on the wire, for the statistics
}

func newConn(in io.Reader, out io.Writer) *conn {
	c := &conn{out: out, rPos: -1, rNeg: 1, wPos: -1, wNeg: 1}
	c.in = bufio.NewReaderSize(countReader{in, &c.nread}, 64<<10)
	return c
}

type countReader struct {
	r io.Reader
	n *int64
}

func (c countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// raw reads len(p) bytes from the underlying stream.
func (c *conn) raw(p []byte) {
	if c.in.Buffered() < len(p) && c.beforeBlock != nil {
		c.beforeBlock()
	}
	if _, err := io.ReadFull(c.in, p); err != nil {
		fatalf(12, "")
	}
}

// read fills p from the data stream, handling the messages met on the way.
func (c *conn) read(p []byte) {
	if !c.muxIn {
		c.raw(p)
		return
	}
	for len(p) > 0 {
		for c.frameLeft == 0 {
			c.frame()
		}
		n := min(len(p), c.frameLeft)
		c.raw(p[:n])
		p = p[n:]
		c.frameLeft -= n
	}
}

// frame reads one frame header; a message is handled whole, data is left
// to read.
func (c *conn) frame() {
	var h [4]byte
	c.raw(h[:])
	w := binary.LittleEndian.Uint32(h[:])
	tag, n := int(w>>24)-mplexBase, int(w&maxFrame)
	if tag == msgData {
		c.frameLeft = n
		return
	}
	if tag < 0 || n > maxMsgPayload {
		fatalf(12, "rsync: [silo] unexpected message tag %d (length %d) from the client", tag, n)
	}
	c.raw(c.msgBuf[:n])
	switch tag {
	case msgNoop:
	case msgErrorExit:
		c.exitLen = n
		if n == 4 && c.proto >= 31 && c.ackExit {
			// A pull's client echoes the code; rsync's sender answers
			// with an empty one, after which the client exits quietly.
			c.msg(msgErrorExit, nil)
			c.flush()
		}
		panic(errClientExit)
	default:
		if c.onMsg == nil {
			fatalf(12, "rsync: [silo] unexpected message tag %d from the client", tag)
		}
		c.onMsg(byte(tag), c.msgBuf[:n])
	}
}

func (c *conn) byte() byte {
	var b [1]byte
	c.read(b[:])
	return b[0]
}

func (c *conn) int32() int32 {
	var b [4]byte
	c.read(b[:])
	return int32(binary.LittleEndian.Uint32(b[:]))
}

func (c *conn) short() int {
	var b [2]byte
	c.read(b[:])
	return int(binary.LittleEndian.Uint16(b[:]))
}

// extraBytes is how many bytes follow a varint's or varlong's first byte:
// the count of its leading one bits.
func extraBytes(b byte) int {
	n := 0
	for b&0x80 != 0 {
		n++
		b <<= 1
	}
	return n
}

func (c *conn) varint() int32 {
	ch := c.byte()
	extra := extraBytes(ch)
	if extra == 0 {
		return int32(ch)
	}
	if extra > 4 {
		fatalf(12, "rsync: [silo] overflow in a varint from the client")
	}
	var b [5]byte
	c.read(b[:extra])
	b[extra] = ch & (1<<(8-extra) - 1)
	return int32(binary.LittleEndian.Uint32(b[:4]))
}

func (c *conn) varlong(minBytes int) int64 {
	ch := c.byte()
	extra := extraBytes(ch)
	var b [9]byte
	c.read(b[:minBytes-1])
	if extra == 0 {
		b[minBytes-1] = ch
	} else {
		if minBytes+extra > 9 {
			fatalf(12, "rsync: [silo] overflow in a varlong from the client")
		}
		c.read(b[minBytes-1 : minBytes-1+extra])
		b[minBytes+extra-1] = ch & (1<<(8-extra) - 1)
	}
	return int64(binary.LittleEndian.Uint64(b[:8]))
}

// longint is a size before protocol 30 (and a statistic).
func (c *conn) longint() int64 {
	v := c.int32()
	if v != -1 {
		return int64(v)
	}
	var b [8]byte
	c.read(b[:])
	return int64(binary.LittleEndian.Uint64(b[:]))
}

func (c *conn) varint30() int32 {
	if c.proto < 30 {
		return c.int32()
	}
	return c.varint()
}

func (c *conn) varlong30(minBytes int) int64 {
	if c.proto < 30 {
		return c.longint()
	}
	return c.varlong(minBytes)
}

// vstring reads a length-prefixed string of at most max bytes.
func (c *conn) vstring(max int) string {
	n := int(c.byte())
	if n&0x80 != 0 {
		n = (n&0x7f)<<8 | int(c.byte())
	}
	if n > max {
		fatalf(12, "rsync: [silo] string of %d bytes from the client is too long", n)
	}
	b := make([]byte, n)
	c.read(b)
	return string(b)
}

func (c *conn) ndx() int32 {
	if c.proto < 30 {
		return c.int32()
	}
	b := c.byte()
	prev := &c.rPos
	if b == 0xff {
		b = c.byte()
		prev = &c.rNeg
	} else if b == 0 {
		return ndxDone
	}
	var num int32
	if b == 0xfe {
		var x [4]byte
		c.read(x[:2])
		if x[0]&0x80 != 0 {
			x[3] = x[0] &^ 0x80
			x[0] = x[1]
			c.read(x[1:3])
			num = int32(binary.LittleEndian.Uint32(x[:]))
		} else {
			num = int32(x[0])<<8 | int32(x[1]) + *prev
		}
	} else {
		num = int32(b) + *prev
	}
	*prev = num
	if prev == &c.rNeg {
		return -num
	}
	return num
}

// Output. Data accumulates in wbuf, after room for a frame header, and
// goes out as one MSG_DATA frame when it fills, when a message is sent, or
// on flush: one write on the SSH channel per frame, not a 4-byte one for
// the header and another for the data, and the header and the data that
// fill the buffer are exactly four SSH packets of OpenSSH's 32 KiB.
const (
	wbufSize = 128 << 10 // the header included
	hdrRoom  = 4
)

func (c *conn) write(p []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wbuf == nil {
		c.wbuf = make([]byte, hdrRoom, wbufSize)
	}
	for len(p) > 0 {
		n := copy(c.wbuf[len(c.wbuf):cap(c.wbuf)], p)
		c.wbuf = c.wbuf[:len(c.wbuf)+n]
		p = p[n:]
		if len(c.wbuf) == cap(c.wbuf) {
			c.flushLocked()
		}
	}
}

func (c *conn) flush() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.flushLocked()
}

func (c *conn) flushLocked() {
	if len(c.wbuf) <= hdrRoom {
		return
	}
	if c.muxOut {
		putHeader(c.wbuf, msgData, len(c.wbuf)-hdrRoom)
		c.emitRaw(c.wbuf)
	} else {
		c.emitRaw(c.wbuf[hdrRoom:])
	}
	c.wbuf = c.wbuf[:hdrRoom]
}

func putHeader(b []byte, tag, n int) {
	binary.LittleEndian.PutUint32(b, uint32(mplexBase+tag)<<24|uint32(n))
}

func (c *conn) emitRaw(p []byte) {
	if c.werr != nil || len(p) == 0 {
		return
	}
	n, err := c.out.Write(p)
	c.nwritten += int64(n)
	if err != nil {
		c.werr = err
	}
}

// msg sends an out-of-band message, after the data written so far.
// Protocols before 30 know only the first two text tags.
func (c *conn) msg(tag int, p []byte) {
	if c.proto < 30 {
		switch tag {
		case msgError:
			tag = msgErrorXfer
		case msgWarning:
			tag = msgInfo
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.flushLocked()
	if !c.muxOut {
		return
	}
	for {
		n := min(len(p), maxFrame)
		b := make([]byte, hdrRoom, hdrRoom+n)
		putHeader(b, tag, n)
		c.emitRaw(append(b, p[:n]...))
		if p = p[n:]; len(p) == 0 {
			return
		}
	}
}

func (c *conn) writeByte(b byte) { c.write([]byte{b}) }

func (c *conn) writeInt32(v int32) {
	c.write(binary.LittleEndian.AppendUint32(nil, uint32(v)))
}

func (c *conn) writeShort(v int) {
	c.write(binary.LittleEndian.AppendUint16(nil, uint16(v)))
}

func appendVarint(b []byte, v int32) []byte {
	var x [5]byte
	binary.LittleEndian.PutUint32(x[1:], uint32(v))
	cnt := 4
	for cnt > 1 && x[cnt] == 0 {
		cnt--
	}
	bit := byte(1) << (8 - cnt)
	switch {
	case x[cnt] >= bit:
		cnt++
		x[0] = ^(bit - 1)
	case cnt > 1:
		x[0] = x[cnt] | ^(bit*2 - 1)
	default:
		x[0] = x[cnt]
	}
	return append(b, x[:cnt]...)
}

func appendVarlong(b []byte, v int64, minBytes int) []byte {
	var x [9]byte
	binary.LittleEndian.PutUint64(x[1:], uint64(v))
	cnt := 8
	for cnt > minBytes && x[cnt] == 0 {
		cnt--
	}
	bit := byte(1) << (7 - cnt + minBytes)
	switch {
	case x[cnt] >= bit:
		cnt++
		x[0] = ^(bit - 1)
	case cnt > minBytes:
		x[0] = x[cnt] | ^(bit*2 - 1)
	default:
		x[0] = x[cnt]
	}
	return append(b, x[:cnt]...)
}

func appendLongint(b []byte, v int64) []byte {
	if v >= 0 && v <= 0x7fffffff {
		return binary.LittleEndian.AppendUint32(b, uint32(v))
	}
	b = binary.LittleEndian.AppendUint32(b, 0xffffffff)
	return binary.LittleEndian.AppendUint64(b, uint64(v))
}

func (c *conn) appendVarint30(b []byte, v int32) []byte {
	if c.proto < 30 {
		return binary.LittleEndian.AppendUint32(b, uint32(v))
	}
	return appendVarint(b, v)
}

func (c *conn) appendVarlong30(b []byte, v int64, minBytes int) []byte {
	if c.proto < 30 {
		return appendLongint(b, v)
	}
	return appendVarlong(b, v, minBytes)
}

func (c *conn) writeVarint(v int32)                  { c.write(appendVarint(nil, v)) }
func (c *conn) writeVarlong30(v int64, minBytes int) { c.write(c.appendVarlong30(nil, v, minBytes)) }

func appendVstring(b []byte, s string) []byte {
	if len(s) > 0x7f {
		b = append(b, byte(len(s)>>8)|0x80)
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// appendNdx encodes a file index (io.c write_ndx); callers hold wmu or own
// the stream.
func (c *conn) appendNdx(b []byte, ndx int32) []byte {
	if c.proto < 30 {
		return binary.LittleEndian.AppendUint32(b, uint32(ndx))
	}
	var diff int32
	if ndx >= 0 {
		diff = ndx - c.wPos
		c.wPos = ndx
	} else if ndx == ndxDone {
		return append(b, 0)
	} else {
		b = append(b, 0xff)
		ndx = -ndx
		diff = ndx - c.wNeg
		c.wNeg = ndx
	}
	switch {
	case diff > 0 && diff < 0xfe:
		return append(b, byte(diff))
	case diff < 0 || diff > 0x7fff:
		return append(b, 0xfe, byte(ndx>>24)|0x80, byte(ndx), byte(ndx>>8), byte(ndx>>16))
	}
	return append(b, 0xfe, byte(diff>>8), byte(diff))
}

func (c *conn) writeNdx(ndx int32) {
	c.wmu.Lock()
	b := c.appendNdx(nil, ndx)
	c.wmu.Unlock()
	c.write(b)
}
