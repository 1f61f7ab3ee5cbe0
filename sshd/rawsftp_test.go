package sshd_test

import (
	"encoding/binary"
	"io"
	"testing"

	"golang.org/x/crypto/ssh"
)

// rawSFTP speaks SFTP v3 (draft-ietf-secsh-filexfer-02) packet by packet, so
// that tests see the server's exact status codes and messages, and can send
// what no well-behaved client would.
type rawSFTP struct {
	t    testing.TB
	sess *ssh.Session
	w    io.WriteCloser
	r    io.Reader
	id   uint32
	exts map[string]string // announced in SSH_FXP_VERSION
}

// SFTP packet types.
const (
	fxpInit     = 1
	fxpVersion  = 2
	fxpOpen     = 3
	fxpClose    = 4
	fxpRead     = 5
	fxpWrite    = 6
	fxpLstat    = 7
	fxpFstat    = 8
	fxpSetstat  = 9
	fxpOpendir  = 11
	fxpReaddir  = 12
	fxpRemove   = 13
	fxpMkdir    = 14
	fxpRmdir    = 15
	fxpRealpath = 16
	fxpStat     = 17
	fxpRename   = 18
	fxpReadlink = 19
	fxpSymlink  = 20
	fxpStatus   = 101
	fxpHandle   = 102
	fxpData     = 103
	fxpName     = 104
	fxpAttrs    = 105
	fxpExtended = 200
)

// Open flags and attribute flags.
const (
	fxfRead   = 1
	fxfWrite  = 2
	fxfAppend = 4
	fxfCreat  = 8
	fxfTrunc  = 16
	fxfExcl   = 32

	attrSize  = 1
	attrPerm  = 4
	attrTimes = 8
)

func (ts *testServer) rawSFTP(user, key string) *rawSFTP {
	ts.t.Helper()
	_, s := ts.rawChannel(user, key)
	s.writePacket(fxpInit, u32(3))
	typ, body := s.readPacket()
	if typ != fxpVersion || len(body) < 4 || binary.BigEndian.Uint32(body) != 3 {
		ts.t.Fatalf("got packet %d %x, want SSH_FXP_VERSION 3", typ, body)
	}
	for b := body[4:]; len(b) > 0; {
		var name, data string
		name, b = readStr(b)
		data, b = readStr(b)
		s.exts[name] = data
	}
	return s
}

// rawChannel opens an SFTP subsystem on a new connection of user's, before
// INIT; the connection is returned so that a test can drop it.
func (ts *testServer) rawChannel(user, key string) (*ssh.Client, *rawSFTP) {
	ts.t.Helper()
	c := ts.connect(user, key)
	sess, err := c.NewSession()
	if err != nil {
		ts.t.Fatal(err)
	}
	w, _ := sess.StdinPipe()
	r, _ := sess.StdoutPipe()
	if err := sess.RequestSubsystem("sftp"); err != nil {
		ts.t.Fatal(err)
	}
	return c, &rawSFTP{t: ts.t, sess: sess, w: w, r: r, exts: map[string]string{}}
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func str(s string) []byte { return append(u32(uint32(len(s))), s...) }

func (s *rawSFTP) writePacket(typ byte, parts ...[]byte) error {
	var body []byte
	body = append(body, typ)
	for _, p := range parts {
		body = append(body, p...)
	}
	_, err := s.w.Write(append(u32(uint32(len(body))), body...))
	return err
}

func (s *rawSFTP) readPacket() (byte, []byte) {
	s.t.Helper()
	var hdr [4]byte
	if _, err := io.ReadFull(s.r, hdr[:]); err != nil {
		s.t.Fatalf("read SFTP packet: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(s.r, body); err != nil {
		s.t.Fatalf("read SFTP packet: %v", err)
	}
	return body[0], body[1:]
}

// reply is one response: its type and, for a status, code and message; for a
// handle, name or data, the first string.
type reply struct {
	typ  byte
	code uint32
	msg  string
	str  string
	body []byte // everything after the id
}

func readStr(b []byte) (string, []byte) {
	if len(b) < 4 {
		return "", nil
	}
	n := binary.BigEndian.Uint32(b)
	if uint32(len(b)-4) < n {
		return "", nil
	}
	return string(b[4 : 4+n]), b[4+n:]
}

func (r reply) ok() bool { return r.typ != fxpStatus || r.code == 0 }

// call sends a request with a fresh id and returns the answer to it.
func (s *rawSFTP) call(typ byte, parts ...[]byte) reply {
	s.t.Helper()
	s.id++
	if err := s.writePacket(typ, append([][]byte{u32(s.id)}, parts...)...); err != nil {
		s.t.Fatalf("write SFTP packet: %v", err)
	}
	rt, body := s.readPacket()
	if len(body) < 4 || binary.BigEndian.Uint32(body) != s.id {
		s.t.Fatalf("reply to request %d has another id", s.id)
	}
	body = body[4:]
	r := reply{typ: rt, body: body}
	switch rt {
	case fxpStatus:
		r.code = binary.BigEndian.Uint32(body)
		r.msg, _ = readStr(body[4:])
	case fxpHandle, fxpData:
		r.str, _ = readStr(body)
	case fxpName:
		r.str, _ = readStr(body[4:]) // first name of the count
	}
	return r
}

func (s *rawSFTP) open(path string, pflags uint32) reply {
	return s.call(fxpOpen, str(path), u32(pflags), u32(0))
}

func (s *rawSFTP) close(handle string) reply { return s.call(fxpClose, str(handle)) }

func (s *rawSFTP) write(handle string, off uint64, data string) reply {
	return s.call(fxpWrite, str(handle), u64(off), str(data))
}

// writeAll writes data at off in requests of 255 KiB, and returns the
// first failure, or the last reply.
func (s *rawSFTP) writeAll(handle string, off uint64, data []byte) reply {
	var r reply
	for i := 0; i < len(data); i += 255 << 10 {
		r = s.write(handle, off+uint64(i), string(data[i:min(len(data), i+255<<10)]))
		if !r.ok() {
			return r
		}
	}
	return r
}

// statvfs returns the size and free bytes statvfs@openssh.com reports.
func (s *rawSFTP) statvfs() (size, free uint64) {
	s.t.Helper()
	r := s.extended("statvfs@openssh.com", str("/"))
	if r.typ != 201 || len(r.body) != 88 {
		s.t.Fatalf("statvfs: type %d, %d bytes", r.typ, len(r.body))
	}
	field := func(i int) uint64 { return binary.BigEndian.Uint64(r.body[8*i:]) }
	return field(2) * field(1), field(4) * field(1) // blocks, bavail in frsize units
}

func (s *rawSFTP) extended(name string, parts ...[]byte) reply {
	return s.call(fxpExtended, append([][]byte{str(name)}, parts...)...)
}
