package sshd_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"silo/sshd"
)

// A READ on a handle open only for writing, or a WRITE on one open only for
// reading, is refused and changes nothing: pkg/sftp alone would run the
// READ as a write of the buffer it allocated for the reply.
func TestReadWriteOnTheWrongKindOfHandle(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	orig := randomBytes(100 << 10)
	writeFile(t, filepath.Join(home, "r"), orig)
	c := ts.rawSFTP("alice", "alice")

	// Earlier packets in the session, for recycled memory to hold.
	up := c.open("/up", fxfWrite|fxfCreat|fxfTrunc)
	if r := c.writeAll(up.str, 0, randomBytes(600<<10)); !r.ok() {
		t.Fatalf("upload: %+v", r)
	}
	c.close(up.str)

	w := c.open("/w", fxfWrite|fxfCreat)
	if w.typ != fxpHandle {
		t.Fatalf("open for writing: %+v", w)
	}
	for i := range 20 {
		r := c.call(fxpRead, str(w.str), u64(uint64(i)<<16), u32(65536))
		if r.code != fxPermissionDenied || r.msg != "permission denied: /w is not open for reading" {
			t.Fatalf("READ on a write handle: %+v", r)
		}
	}
	if r := c.write(w.str, 0, "ok"); !r.ok() {
		t.Fatalf("WRITE on the write handle: %+v", r)
	}
	c.close(w.str)
	if got, _ := os.ReadFile(filepath.Join(home, "w")); string(got) != "ok" {
		t.Fatalf("write-only file holds %d bytes, want 2", len(got))
	}

	rh := c.open("/r", fxfRead)
	if r := c.write(rh.str, 0, "XXXX"); r.code != fxPermissionDenied || r.msg != "permission denied: /r is not open for writing" {
		t.Fatalf("WRITE on a read handle: %+v", r)
	}
	if r := c.call(fxpRead, str(rh.str), u64(0), u32(4)); r.typ != fxpData || r.str != string(orig[:4]) {
		t.Fatalf("READ on the read handle: %+v", r)
	}
	c.close(rh.str)
	if got, _ := os.ReadFile(filepath.Join(home, "r")); !bytes.Equal(got, orig) {
		t.Fatal("a WRITE on a read handle changed the file")
	}
}

// Packet types the protocol does not have are answered, and the session
// goes on (draft-ietf-secsh-filexfer-02, section 3).
func TestUnknownPacketTypes(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.rawSFTP("alice", "alice")
	for _, typ := range []byte{2, 21, 99, 101, 255} {
		r := c.call(typ, str("whatever"))
		if r.code != fxOpUnsupported {
			t.Fatalf("packet type %d: %+v", typ, r)
		}
	}
	if r := c.call(fxpRealpath, str(".")); r.typ != fxpName || r.str != "/" {
		t.Fatalf("after unknown packets: %+v", r)
	}
}

// SSH_FXF_APPEND writes at the end, in the order the writes are sent, as
// OpenSSH's sftp-server does, and within the quota.
func TestAppendFlag(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 1<<20, 0)
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "log"), []byte("start:"))
	c := ts.rawSFTP("alice", "alice")
	h := c.open("/log", fxfWrite|fxfAppend)
	var want bytes.Buffer
	want.WriteString("start:")
	// Pipelined, so that pkg/sftp's workers run them at once.
	const n = 64
	for i := range n {
		piece := bytes.Repeat([]byte{'a' + byte(i%26)}, 1000+i)
		want.Write(piece)
		c.id++
		c.writePacket(fxpWrite, u32(c.id), str(h.str), u64(0), str(string(piece)))
	}
	for range n {
		if typ, body := c.readPacket(); typ != fxpStatus || len(body) < 8 || body[7] != 0 {
			t.Fatalf("append: reply %d %x", typ, body)
		}
	}
	// Up to the quota, then refused, and the quota still exact.
	for {
		piece := randomBytes(200 << 10)
		r := c.write(h.str, 0, string(piece))
		if !r.ok() {
			if r.code != fxFailure || !strings.HasPrefix(r.msg, "quota exceeded") {
				t.Fatalf("append past the quota: %+v", r)
			}
			break
		}
		want.Write(piece)
	}
	if want.Len() > 1<<20 || want.Len() < 800<<10 {
		t.Fatalf("appended %d bytes under a 1 MiB quota", want.Len())
	}
	c.close(h.str)
	if got, _ := os.ReadFile(filepath.Join(home, "log")); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("appended file has %d bytes, want %d in order", len(got), want.Len())
	}
	if size, free := c.statvfs(); size-free != uint64(want.Len()) {
		t.Fatalf("usage %d, want %d", size-free, want.Len())
	}
}

// The handles of all of an account's sessions together are bounded.
func TestOpenHandlesPerAccount(t *testing.T) {
	lim := sshd.DefaultLimits()
	lim.MaxOpenHandles = 4
	lim.MaxOpenHandlesPerUser = 6
	ts := startServerWith(t, t.TempDir(), lim, testPenalties())
	ts.addUser("alice", "", "alice")
	ts.addUser("bob", "", "bob")
	writeFile(t, filepath.Join(ts.home("alice"), "f"), []byte("x"))
	writeFile(t, filepath.Join(ts.home("bob"), "f"), []byte("x"))
	a1, a2 := ts.rawSFTP("alice", "alice"), ts.rawSFTP("alice", "alice")
	for i := range 4 {
		if r := a1.open("/f", fxfRead); r.typ != fxpHandle {
			t.Fatalf("alice handle %d: %+v", i+1, r)
		}
	}
	var last string
	for i := range 2 {
		r := a2.open("/f", fxfRead)
		if r.typ != fxpHandle {
			t.Fatalf("alice handle %d: %+v", 5+i, r)
		}
		last = r.str
	}
	if r := a2.open("/f", fxfRead); r.code != fxFailure || r.msg != "too many open handles for this account" {
		t.Fatalf("alice's 7th handle: %+v", r)
	}
	b := ts.rawSFTP("bob", "bob")
	if r := b.open("/f", fxfRead); r.typ != fxpHandle {
		t.Fatalf("bob, while alice is at her limit: %+v", r)
	}
	a2.close(last)
	if r := a2.open("/f", fxfRead); r.typ != fxpHandle {
		t.Fatalf("alice after closing one: %+v", r)
	}
}

// A request pipelined right behind the open of its handle (no honest client
// sends one, it needs the handle first) waits for the open to be answered:
// pkg/sftp registers a handle before it has finished setting it up. Under
// -race, a request that did not wait shows as a data race.
func TestRequestBehindItsOpenWaits(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.rawSFTP("alice", "alice")
	// A handle kept open keeps the session's RequestServer, which numbers
	// its handles from 1.
	if r := c.call(fxpOpendir, str("/")); r.str != "1" {
		t.Fatalf("opendir: %+v", r)
	}
	for i := range 100 {
		handle := str(strconv.Itoa(i + 2))
		c.writePacket(fxpOpen, u32(uint32(3*i+1)), str(fmt.Sprintf("/f%d", i)), u32(fxfWrite|fxfCreat), u32(0))
		c.writePacket(fxpWrite, u32(uint32(3*i+2)), handle, u64(0), str("data"))
		c.writePacket(fxpClose, u32(uint32(3*i+3)), handle)
		for k := range 3 {
			typ, body := c.readPacket()
			if k == 0 && typ != fxpHandle || k > 0 && (typ != fxpStatus || body[7] != 0) {
				t.Fatalf("round %d, reply %d: %d %x", i, k, typ, body)
			}
		}
	}
	if got, _ := os.ReadFile(filepath.Join(ts.home("alice"), "f99")); string(got) != "data" {
		t.Fatalf("f99 holds %q", got)
	}
}

// After a write fails (the quota), the close answers with the state of the
// file: a new file keeps what arrived, an overwrite leaves the old file.
func TestCloseAfterAFailedWrite(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 100<<10, 0)
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "old"), []byte("old content"))
	c := ts.rawSFTP("alice", "alice")

	h := c.open("/new", fxfWrite|fxfCreat)
	if r := c.write(h.str, 0, "kept"); !r.ok() {
		t.Fatal(r)
	}
	if r := c.write(h.str, 4, string(make([]byte, 200<<10))); r.code != fxFailure || !strings.HasPrefix(r.msg, "quota exceeded") {
		t.Fatalf("write past the quota: %+v", r)
	}
	if r := c.close(h.str); !r.ok() {
		t.Fatalf("close of a new file after a failed write: %+v", r)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "new")); string(got) != "kept" {
		t.Fatalf("new holds %q", got)
	}

	h = c.open("/old", fxfWrite|fxfCreat|fxfTrunc)
	if r := c.write(h.str, 0, string(make([]byte, 200<<10))); r.code != fxFailure {
		t.Fatalf("overwrite past the quota: %+v", r)
	}
	if r := c.close(h.str); r.code != fxFailure || r.msg != "upload not completed: /old is unchanged" {
		t.Fatalf("close of a failed overwrite: %+v", r)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "old")); string(got) != "old content" {
		t.Fatalf("old holds %q", got)
	}
	if !strings.Contains(ts.logs.String(), `path=/new direction=upload bytes=4`) ||
		!strings.Contains(ts.logs.String(), `result="failed: quota exceeded`) {
		t.Fatalf("transfer log:\n%s", ts.logs.String())
	}
}

// Through the SFTP edge: an upload over a symbolic link that runs into the
// quota, or is broken off, leaves the link's target byte-identical.
func TestOverwriteThroughLinkOverSFTP(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 8<<20, 0)
	home := ts.home("alice")
	orig := randomBytes(6 << 20)
	writeFile(t, filepath.Join(home, "data.bin"), orig)
	if err := os.Symlink("data.bin", filepath.Join(home, "ln")); err != nil {
		t.Fatal(err)
	}
	c := ts.rawSFTP("alice", "alice")
	h := c.open("/ln", fxfWrite|fxfCreat|fxfTrunc)
	if r := c.writeAll(h.str, 0, randomBytes(10<<20)); r.code != fxFailure || !strings.HasPrefix(r.msg, "quota exceeded") {
		t.Fatalf("overwrite through the link past the quota: %+v", r)
	}
	c.close(h.str)
	h = c.open("/ln", fxfWrite|fxfCreat|fxfTrunc)
	c.writeAll(h.str, 0, randomBytes(2<<20))
	c.sess.Close() // broken off
	c = ts.rawSFTP("alice", "alice")
	if got, _ := os.ReadFile(filepath.Join(home, "data.bin")); !bytes.Equal(got, orig) {
		t.Fatalf("data.bin has %d bytes after failed overwrites through ln", len(got))
	}
	if fi, err := os.Lstat(filepath.Join(home, "ln")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("ln is no longer a link")
	}
	if size, free := c.statvfs(); size-free != uint64(len(orig))+4096 {
		t.Fatalf("usage %d, want %d", size-free, len(orig)+4096)
	}
}

// A directory that is not empty cannot be removed or renamed over, and the
// message says so (ENOTEMPTY is also EEXIST to Go).
func TestNotEmptyDirectory(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "d", "f"), []byte("x"))
	writeFile(t, filepath.Join(home, "e", "g"), []byte("y"))
	c := ts.rawSFTP("alice", "alice")
	if r := c.call(fxpRmdir, str("/d")); r.code != fxFailure || r.msg != "directory not empty: /d" {
		t.Fatalf("rmdir of a non-empty directory: %+v", r)
	}
	if r := c.extended("posix-rename@openssh.com", str("/e"), str("/d")); r.code != fxFailure || r.msg != "directory not empty: /d" {
		t.Fatalf("posix-rename onto a non-empty directory: %+v", r)
	}
	// pkg/sftp's client: fsync of an upload.
	cl := ts.sftpClient("alice", "alice")
	f, err := cl.Create("synced")
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("durable"))
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync@openssh.com with pkg/sftp's client: %v", err)
	}
	f.Close()
}
