package rsync

import (
	"encoding/binary"
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

// Compression: stubs until the deflate token format is in.
func (s *session) newDeflateWriter() tokenWriter { return &plainWriter{c: s.c} }
func (s *session) newInflateReader() tokenReader {
	return &plainReader{c: s.c, buf: make([]byte, chunkSize)}
}
