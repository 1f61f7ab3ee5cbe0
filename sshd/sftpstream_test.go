package sshd_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// READs and WRITEs, served by the stream, and the requests pkg/sftp serves
// between them, sent without waiting: every reply comes in the order of
// the requests, and each request sees what the ones before it did.
func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	big := randomBytes(600 << 10)
	writeFile(t, filepath.Join(home, "big"), big)
	c := ts.rawSFTP("alice", "alice")
	h := c.open("/f", fxfRead|fxfWrite|fxfCreat|fxfTrunc)
	if h.typ != fxpHandle {
		t.Fatalf("open: %+v", h)
	}
	hb := c.open("/big", fxfRead)
	if hb.typ != fxpHandle {
		t.Fatalf("open big: %+v", hb)
	}

	type want struct {
		name string
		typ  byte
		code uint32 // of a status
		data []byte // of a DATA reply
		size uint64 // of an ATTRS reply
	}
	var wants []want
	send := func(w want, typ byte, parts ...[]byte) {
		c.id++
		if err := c.writePacket(typ, append([][]byte{u32(c.id)}, parts...)...); err != nil {
			t.Fatal(err)
		}
		wants = append(wants, w)
	}
	send(want{name: "write", typ: fxpStatus}, fxpWrite, str(h.str), u64(0), str("hello"))
	send(want{name: "fstat after the write", typ: fxpAttrs, size: 5}, fxpFstat, str(h.str))
	// The data length says 2: the 3 bytes after the data are not data.
	send(want{name: "write with bytes after its data", typ: fxpStatus}, fxpWrite, str(h.str), u64(5), str("XY"), []byte("zzz"))
	send(want{name: "read back", typ: fxpData, data: []byte("helloXY")}, fxpRead, str(h.str), u64(0), u32(1<<20))
	send(want{name: "fsetstat size 3", typ: fxpStatus}, 10, str(h.str), u32(attrSize), u64(3)) // FSETSTAT
	send(want{name: "read after the truncation", typ: fxpData, data: []byte("hel")}, fxpRead, str(h.str), u64(0), u32(100))
	send(want{name: "read at the end", typ: fxpStatus, code: 1}, fxpRead, str(h.str), u64(3), u32(100))
	send(want{name: "read at a negative offset", typ: fxpStatus, code: 5}, fxpRead, str(h.str), u64(1<<63), u32(100))
	send(want{name: "read of 1 MiB gets 255 KiB", typ: fxpData, data: big[100 : 100+255<<10]}, fxpRead, str(hb.str), u64(100), u32(1<<20))
	send(want{name: "short read at the end", typ: fxpData, data: big[len(big)-10:]}, fxpRead, str(hb.str), u64(uint64(len(big)-10)), u32(100))
	send(want{name: "write on a read-only handle", typ: fxpStatus, code: 3}, fxpWrite, str(hb.str), u64(0), str("no"))
	send(want{name: "write at a negative offset", typ: fxpStatus, code: 5}, fxpWrite, str(h.str), u64(1<<63), str("no"))
	send(want{name: "close", typ: fxpStatus}, fxpClose, str(h.str))
	send(want{name: "read after close", typ: fxpStatus, code: 4}, fxpRead, str(h.str), u64(0), u32(100))

	for i, w := range wants {
		typ, body := c.readPacket()
		if id := binary.BigEndian.Uint32(body); id != uint32(i+3) {
			t.Fatalf("%s: reply to request %d, want %d (in order)", w.name, id, i+3)
		}
		body = body[4:]
		if typ != w.typ {
			t.Fatalf("%s: reply type %d, want %d (%q)", w.name, typ, w.typ, body)
		}
		switch typ {
		case fxpStatus:
			if code := binary.BigEndian.Uint32(body); code != w.code {
				t.Errorf("%s: status %d, want %d", w.name, code, w.code)
			}
		case fxpData:
			if got, _ := readStr(body); !bytes.Equal([]byte(got), w.data) {
				t.Errorf("%s: %d bytes, want %d", w.name, len(got), len(w.data))
			}
		case fxpAttrs:
			if size := binary.BigEndian.Uint64(body[4:]); size != w.size {
				t.Errorf("%s: size %d, want %d", w.name, size, w.size)
			}
		}
	}
	if got, _ := os.ReadFile(filepath.Join(home, "f")); string(got) != "hel" {
		t.Fatalf("on disk %q, want hel", got)
	}
}
