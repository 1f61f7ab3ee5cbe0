package rsync

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"io"
)

// tokenWriter sends one file's delta: literal data and basis blocks
// (token.c). data is the block's content, which classic zlib also feeds
// into its history.
type tokenWriter interface {
	literal(p []byte)
	block(i int32, data []byte)
	end()
}

// tokenReader reads one file's delta: literal data (a piece of at most
// chunkSize), a block index, or the end.
type tokenReader interface {
	next() (lit []byte, blk int32, done bool)
	// blockData tells a classic-zlib reader the content of the block it
	// just returned.
	blockData(p []byte)
}

func (s *session) newTokenWriter() tokenWriter {
	if s.compress != compressNone {
		return s.newDeflateWriter()
	}
	return &plainWriter{c: s.c}
}

func (s *session) newTokenReader() tokenReader {
	if s.compress != compressNone {
		return s.newInflateReader()
	}
	return &plainReader{c: s.c, buf: make([]byte, chunkSize)}
}

// plainWriter: int32 n > 0 and n bytes of data; int32 -(i+1) for block i;
// int32 0 at the end.
type plainWriter struct{ c *conn }

func (w *plainWriter) literal(p []byte) {
	for len(p) > 0 {
		n := min(len(p), chunkSize)
		w.c.write(binary.LittleEndian.AppendUint32(nil, uint32(n)))
		w.c.write(p[:n])
		p = p[n:]
	}
}

func (w *plainWriter) block(i int32, _ []byte) {
	w.c.writeInt32(-(i + 1))
}

func (w *plainWriter) end() { w.c.writeInt32(0) }

type plainReader struct {
	c    *conn
	left int
	buf  []byte
}

func (r *plainReader) next() ([]byte, int32, bool) {
	if r.left == 0 {
		n := r.c.int32()
		switch {
		case n == 0:
			return nil, 0, true
		case n < 0:
			return nil, -(n + 1), false
		}
		r.left = int(n)
	}
	n := min(r.left, len(r.buf))
	r.c.read(r.buf[:n])
	r.left -= n
	return r.buf[:n], -1, false
}

func (r *plainReader) blockData([]byte) {}

// Compressed tokens (token.c send_deflated_token, recv_deflated_token):
// the literal data of a file is one raw deflate stream, sync-flushed
// before each block token and at the end, with the flush's 00 00 ff ff
// tail dropped; the receiver puts it back. Classic zlib also feeds each
// matched block into both sides' history; zlibx does not.
const (
	tokenLong     = 0x20
	tokenRunLong  = 0x21
	deflatedData  = 0x40
	tokenRel      = 0x80
	tokenRunRel   = 0xc0
	maxDataCount  = 16383
	historyWindow = 32 << 10
)

var syncTail = []byte{0, 0, 0xff, 0xff}

// switchWriter lets the compressor's output go to the stream or, while a
// matched block enters its history, nowhere.
type switchWriter struct{ w io.Writer }

func (s *switchWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

type deflateWriter struct {
	s     *session
	zw    *flate.Writer
	sw    switchWriter
	out   bytes.Buffer
	dirty bool // literal data written since the last flush

	have                  bool // a run of blocks is pending
	runStart, last, ended int32
}

func (s *session) newDeflateWriter() tokenWriter {
	w := &deflateWriter{s: s}
	w.sw.w = &w.out
	level := s.o.compressLevel
	if level < 0 || level > 9 {
		level = 6
	}
	w.zw, _ = flate.NewWriter(&w.sw, level)
	return w
}

func (w *deflateWriter) literal(p []byte) {
	if w.have {
		w.emitRun()
	}
	w.zw.Write(p)
	w.dirty = true
	w.emitData(false)
}

// emitData sends the compressed bytes in records; with flushed, all but
// the sync flush's tail.
func (w *deflateWriter) emitData(flushed bool) {
	b := w.out.Bytes()
	if flushed {
		b = b[:len(b)-len(syncTail)]
	}
	c := w.s.c
	for len(b) > 0 && (flushed || len(b) >= maxDataCount) {
		n := min(len(b), maxDataCount)
		c.write([]byte{deflatedData | byte(n>>8), byte(n)})
		c.write(b[:n])
		b = b[n:]
	}
	if flushed {
		w.out.Reset()
		return
	}
	rest := append([]byte(nil), b...)
	w.out.Reset()
	w.out.Write(rest)
}

func (w *deflateWriter) flush() {
	if w.dirty {
		w.zw.Flush()
		w.emitData(true)
		w.dirty = false
	}
}

func (w *deflateWriter) emitRun() {
	c := w.s.c
	r, n := w.runStart-w.ended, w.last-w.runStart
	if r >= 0 && r <= 63 {
		if n == 0 {
			c.writeByte(tokenRel | byte(r))
		} else {
			c.writeByte(tokenRunRel | byte(r))
		}
	} else {
		if n == 0 {
			c.writeByte(tokenLong)
		} else {
			c.writeByte(tokenRunLong)
		}
		c.writeInt32(w.runStart)
	}
	if n != 0 {
		c.write([]byte{byte(n), byte(n >> 8)})
	}
	w.ended = w.last
	w.have = false
}

func (w *deflateWriter) block(i int32, data []byte) {
	w.flush()
	switch {
	case w.have && i == w.last+1 && i < w.runStart+65536:
		w.last = i
	default:
		if w.have {
			w.emitRun()
		}
		w.runStart, w.last, w.have = i, i, true
	}
	if w.s.compress == compressZlib {
		w.sw.w = io.Discard
		for _, p := range insertPieces(data, w.s.proto) {
			w.zw.Write(p)
		}
		w.zw.Flush()
		w.sw.w = &w.out
	}
}

// insertPieces is how classic zlib feeds a block into the history: in
// pieces of at most 64 KiB, where before protocol 31 every piece repeats
// the block's start (a bug both sides must share).
func insertPieces(data []byte, proto int) [][]byte {
	var ps [][]byte
	for off, left := 0, len(data); left > 0; {
		n := min(left, 0xffff)
		ps = append(ps, data[off:off+n])
		left -= n
		if proto >= 31 {
			off += n
		}
	}
	return ps
}

func (w *deflateWriter) end() {
	w.flush()
	if w.have {
		w.emitRun()
	}
	w.s.c.writeByte(0)
}

type inflateReader struct {
	s       *session
	zr      io.ReadCloser
	inRun   bool
	run     runReader
	saved   int // flag read past a run of data, or -1
	token   int32
	left    int // blocks still to come in a run
	history []byte
	buf     []byte
}

func (s *session) newInflateReader() tokenReader {
	return &inflateReader{s: s, saved: -1, run: runReader{c: s.c}, buf: make([]byte, chunkSize)}
}

// runReader reads one run of deflated records, then the sync tail the
// sender dropped, then EOF; the flag that ended the run is kept.
type runReader struct {
	c    *conn
	left int
	tail int // bytes of syncTail given
	done bool
	flag int
}

func (r *runReader) Read(p []byte) (int, error) {
	for r.left == 0 && !r.done {
		f := int(r.c.byte())
		if f&0xc0 == deflatedData {
			r.left = (f&0x3f)<<8 | int(r.c.byte())
			continue
		}
		r.done, r.flag = true, f
	}
	if r.left > 0 {
		n := min(len(p), r.left)
		r.c.read(p[:n])
		r.left -= n
		return n, nil
	}
	if r.tail < len(syncTail) {
		n := copy(p, syncTail[r.tail:])
		r.tail += n
		return n, nil
	}
	return 0, io.EOF
}

func (r *inflateReader) remember(p []byte) {
	r.history = append(r.history, p...)
	if len(r.history) > 2*historyWindow {
		r.history = append(r.history[:0], r.history[len(r.history)-historyWindow:]...)
	}
}

func (r *inflateReader) dict() []byte {
	return r.history[max(0, len(r.history)-historyWindow):]
}

func (r *inflateReader) next() ([]byte, int32, bool) {
	for {
		if r.left > 0 {
			r.left--
			r.token++
			return nil, r.token, false
		}
		if r.inRun {
			n, err := r.zr.Read(r.buf)
			if n > 0 {
				r.remember(r.buf[:n])
				return r.buf[:n], -1, false
			}
			if err == nil {
				continue
			}
			if (err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF)) || !r.run.done || r.run.tail < len(syncTail) {
				fatalf(12, "rsync: [silo] the compressed data of a file is corrupt: %v", err)
			}
			r.inRun = false
			r.saved = r.run.flag
			continue
		}
		flag := r.saved
		r.saved = -1
		if flag < 0 {
			flag = int(r.s.c.byte())
		}
		switch {
		case flag&0xc0 == deflatedData:
			r.run = runReader{c: r.s.c, left: (flag&0x3f)<<8 | int(r.s.c.byte())}
			if r.zr == nil {
				r.zr = flate.NewReaderDict(&r.run, r.dict())
			} else {
				r.zr.(flate.Resetter).Reset(&r.run, r.dict())
			}
			r.inRun = true
			continue
		case flag == 0:
			return nil, 0, true
		case flag&tokenRel != 0:
			r.token += int32(flag & 0x3f)
			if flag&0x40 != 0 {
				r.left = int(r.s.c.byte()) | int(r.s.c.byte())<<8
			}
		case flag == tokenLong || flag == tokenRunLong:
			r.token = r.s.c.int32()
			if flag == tokenRunLong {
				r.left = int(r.s.c.byte()) | int(r.s.c.byte())<<8
			}
		default:
			fatalf(12, "rsync: [silo] invalid compressed token flag %#x", flag)
		}
		return nil, r.token, false
	}
}

func (r *inflateReader) blockData(p []byte) {
	if r.s.compress == compressZlib {
		for _, piece := range insertPieces(p, r.s.proto) {
			r.remember(piece)
		}
	}
}
