package sshd_test

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// What VERSION announces: pkg/sftp's own and silo's, and no hard links.
func TestAnnouncedExtensions(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.rawSFTP("alice", "alice")
	var got []string
	for name := range c.exts {
		got = append(got, name)
	}
	slices.Sort(got)
	want := []string{"check-file", "check-file-handle", "check-file-name", "copy-data", "expand-path@openssh.com",
		"fstatvfs@openssh.com", "fsync@openssh.com", "home-directory", "limits@openssh.com", "lsetstat@openssh.com",
		"posix-rename@openssh.com", "space-available", "statvfs@openssh.com", "users-groups-by-id@openssh.com"}
	if !slices.Equal(got, want) {
		t.Fatalf("announced %v\nwant %v", got, want)
	}
}

// OpenSSH's sftp commands that need the extensions (cp, put -f, chmod -h),
// cp past the quota refused with the usage unchanged, and scp's ~user
// paths, which it resolves with expand-path@openssh.com. (OpenSSH 9.2's
// sftp does not expand "~" itself, with OpenSSH's server either.)
func TestOpenSSHExtensionCommands(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 3<<20+512<<10, 0)
	home := ts.home("alice")
	data := randomBytes(1 << 20)
	local := filepath.Join(t.TempDir(), "data")
	writeFile(t, local, data)
	out, err := ts.sftpBatch("alice", auth{key: "alice"}, strings.Join([]string{
		"mkdir d", "cd d", "put " + local + " a", "cp a b", "cd /",
		"put -f " + local + " c", "ln -s c lnk", "chmod -h 600 lnk", ""}, "\n"))
	if err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	for _, p := range []string{"d/a", "d/b", "c"} {
		if got, _ := os.ReadFile(filepath.Join(home, p)); !bytes.Equal(got, data) {
			t.Fatalf("%s differs (%d bytes)", p, len(got))
		}
	}
	if fi, err := os.Lstat(filepath.Join(home, "lnk")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("lnk: %v %v", fi, err)
	}
	c := ts.rawSFTP("alice", "alice")
	size, free := c.statvfs()
	out, err = ts.sftpBatch("alice", auth{key: "alice"}, "cp c e\n")
	if err == nil || !strings.Contains(out, "Failure") {
		t.Fatalf("cp past the quota: %v\n%s", err, out)
	}
	if s2, f2 := c.statvfs(); s2-f2 != size-free {
		t.Fatalf("usage %d after a refused cp, %d before", s2-f2, size-free)
	}
	if fi, err := os.Stat(filepath.Join(home, "e")); err == nil && fi.Size() != 0 {
		t.Fatalf("a refused cp wrote %d bytes", fi.Size())
	}

	back := filepath.Join(t.TempDir(), "back")
	if out, code := ts.scpCmd(auth{key: "alice"}, "alice@127.0.0.1:~alice/d/b", back); code != 0 {
		t.Fatalf("scp ~alice/d/b: %d\n%s", code, out)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Fatal("scp ~alice/d/b differs")
	}
	if out, code := ts.scpCmd(auth{key: "alice"}, "alice@127.0.0.1:~bob/x", back); code == 0 {
		t.Fatalf("scp ~bob/x succeeded: %s", out)
	}
}

// The extensions at packet level: fsync, fstatvfs, users-groups-by-id,
// check-file, space-available, expand-path, home-directory, copy-data
// past the quota, and hard links refused with a message.
func TestExtensionsPacketLevel(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 1<<20, 0)
	home := ts.home("alice")
	data := randomBytes(600 << 10)
	writeFile(t, filepath.Join(home, "f"), data)
	c := ts.rawSFTP("alice", "alice")

	h := c.open("/f", fxfRead)
	w := c.open("/g", fxfWrite|fxfCreat|fxfTrunc)
	if r := c.write(w.str, 0, "hello"); !r.ok() {
		t.Fatal(r)
	}
	if r := c.extended("fsync@openssh.com", str(w.str)); r.typ != fxpStatus || r.code != 0 {
		t.Fatalf("fsync: %+v", r)
	}
	r := c.extended("fstatvfs@openssh.com", str(h.str))
	if r.typ != 201 || len(r.body) != 88 {
		t.Fatalf("fstatvfs: %+v", r)
	}
	// Nothing of the host's: no filesystem id or mount flags, and the
	// account's entries (no file limit) as the file counts.
	field := func(i int) uint64 { return binary.BigEndian.Uint64(r.body[8*i:]) }
	if fsid, flag, files, ffree := field(8), field(9), field(5), field(6); fsid != 0 || flag != 0 || files-ffree != 2 {
		t.Fatalf("fstatvfs: fsid %x, flag %x, files %d, free %d", fsid, flag, files, ffree)
	}
	ids := append(u32(1000), u32(0)...)
	r = c.extended("users-groups-by-id@openssh.com", str(string(ids)), str(string(u32(1000))))
	if r.typ != 201 {
		t.Fatalf("users-groups-by-id: %+v", r)
	}
	users, rest := readStr(r.body)
	groups, _ := readStr(rest)
	if users != string(str("alice"))+string(str("alice")) || groups != string(str("alice")) {
		t.Fatalf("users-groups-by-id: %q %q", users, groups)
	}

	sum := md5.Sum(data[100 : 100+200<<10])
	r = c.extended("check-file-name", str("/f"), str("sha9,md5"), u64(100), u64(200<<10), u32(0))
	if alg, rest := readStrAfter(r.body, 1); r.typ != 201 || alg != "md5" || !bytes.Equal(rest, sum[:]) {
		t.Fatalf("check-file-name md5: %+v", r)
	}
	var blocks []byte
	for off := 0; off < len(data); off += 256 << 10 {
		s := sha256.Sum256(data[off:min(len(data), off+256<<10)])
		blocks = append(blocks, s[:]...)
	}
	r = c.extended("check-file-handle", str(h.str), str("sha256"), u64(0), u64(0), u32(256<<10))
	if alg, rest := readStrAfter(r.body, 1); r.typ != 201 || alg != "sha256" || !bytes.Equal(rest, blocks) {
		t.Fatalf("check-file-handle sha256 blocks: %d bytes of hash, want %d", len(r.body), len(blocks))
	}
	if r := c.extended("check-file-handle", str(w.str), str("md5"), u64(0), u64(0), u32(0)); r.code != fxPermissionDenied {
		t.Fatalf("check-file of a write handle: %+v", r)
	}
	r = c.extended("space-available", str("/"))
	if r.typ != 201 || len(r.body) != 36 || binary.BigEndian.Uint64(r.body) != 1<<20 {
		t.Fatalf("space-available: %+v", r)
	}
	for path, want := range map[string]string{"~": "/", "~/x/../y": "/y", "a/b": "/a/b"} {
		if r := c.extended("expand-path@openssh.com", str(path)); r.typ != fxpName || r.str != want {
			t.Fatalf("expand-path %s: %+v", path, r)
		}
	}
	if r := c.extended("expand-path@openssh.com", str("~bob/x")); r.code != fxPermissionDenied {
		t.Fatalf("expand-path ~bob: %+v", r)
	}
	if r := c.extended("home-directory", str("alice")); r.typ != fxpName || r.str != "/" {
		t.Fatalf("home-directory: %+v", r)
	}
	if r := c.extended("home-directory", str("bob")); r.code != fxPermissionDenied {
		t.Fatalf("home-directory bob: %+v", r)
	}

	// copy-data: within the quota, then past it (refused, nothing written).
	if r := c.extended("copy-data", str(h.str), u64(0), u64(100<<10), str(w.str), u64(5)); !r.ok() {
		t.Fatalf("copy-data: %+v", r)
	}
	size, free := c.statvfs()
	w2 := c.open("/h", fxfWrite|fxfCreat|fxfTrunc)
	if r := c.extended("copy-data", str(h.str), u64(0), u64(0), str(w2.str), u64(0)); r.code != fxFailure || !strings.HasPrefix(r.msg, "quota exceeded") {
		t.Fatalf("copy-data past the quota: %+v", r)
	}
	if s2, f2 := c.statvfs(); s2-f2 != size-free {
		t.Fatalf("usage %d after a refused copy, %d before", s2-f2, size-free)
	}
	if r := c.extended("copy-data", str(h.str), u64(0), u64(0), str(h.str), u64(0)); r.code != fxPermissionDenied {
		t.Fatalf("copy-data to a read handle: %+v", r)
	}
	c.close(w.str)
	if got, _ := os.ReadFile(filepath.Join(home, "g")); string(got) != "hello"+string(data[:100<<10]) {
		t.Fatalf("g holds %d bytes", len(got))
	}
	if r := c.extended("hardlink@openssh.com", str("/f"), str("/hl")); r.code != fxOpUnsupported || r.msg != "hard links are not supported: /hl" {
		t.Fatalf("hardlink: %+v", r)
	}
}

// readStrAfter skips n strings of b and returns the next, and what follows.
func readStrAfter(b []byte, n int) (string, []byte) {
	for range n {
		_, b = readStr(b)
	}
	return readStr(b)
}

// WinSCP's resumable upload: NAME.filepart written, broken off, resumed
// with appends, and renamed over NAME with posix-rename: NAME whole, the
// quota exact.
func TestWinSCPFilepartResume(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 4<<20, 0)
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "report.pdf"), []byte("old version"))
	data := randomBytes(1<<20 + 12345)

	c := ts.rawSFTP("alice", "alice")
	h := c.open("/report.pdf.filepart", fxfWrite|fxfCreat|fxfTrunc)
	if r := c.writeAll(h.str, 0, data[:300<<10]); !r.ok() {
		t.Fatal(r)
	}
	c.sess.Close() // the connection drops

	c = ts.rawSFTP("alice", "alice")
	r := c.call(fxpStat, str("/report.pdf.filepart"))
	if r.typ != fxpAttrs {
		t.Fatalf("stat of the .filepart: %+v", r)
	}
	have := binary.BigEndian.Uint64(r.body[4:])
	if have == 0 || have > 300<<10 {
		t.Fatalf(".filepart holds %d bytes", have)
	}
	h = c.open("/report.pdf.filepart", fxfWrite|fxfAppend)
	for off := int(have); off < len(data); off += 32 << 10 {
		if r := c.write(h.str, 0, string(data[off:min(len(data), off+32<<10)])); !r.ok() {
			t.Fatal(r)
		}
	}
	if r := c.close(h.str); !r.ok() {
		t.Fatal(r)
	}
	if r := c.extended("posix-rename@openssh.com", str("/report.pdf.filepart"), str("/report.pdf")); !r.ok() {
		t.Fatalf("posix-rename over the old file: %+v", r)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "report.pdf")); !bytes.Equal(got, data) {
		t.Fatalf("report.pdf has %d bytes, want %d", len(got), len(data))
	}
	if _, err := os.Stat(filepath.Join(home, "report.pdf.filepart")); !os.IsNotExist(err) {
		t.Fatalf(".filepart left: %v", err)
	}
	if size, free := c.statvfs(); size-free != uint64(len(data)) {
		t.Fatalf("usage %d, want %d", size-free, len(data))
	}
}
