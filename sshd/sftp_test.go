package sshd_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
)

// Every operation, driven by OpenSSH's sftp, checked on disk.
func TestOpenSSHSFTPOperations(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "alice-pw", "alice")
	home := ts.home("alice")
	local := t.TempDir()
	data := randomBytes(300_000)
	writeFile(t, filepath.Join(local, "up.bin"), data)

	out, err := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf(`
pwd
mkdir d
put %[1]s/up.bin d/f
ls -l d
get d/f %[1]s/down.bin
chmod 600 d/f
ln -s f d/link
rename d/f d/g
-rmdir d
df -h
cd d
pwd
cd ..
cd ..
pwd
`, local))
	if err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	for _, want := range []string{"Remote working directory: /\n", "Remote working directory: /d\n", "Avail"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "alice    alice") {
		t.Errorf("long listing does not show the account as owner:\n%s", out)
	}
	if got, _ := os.ReadFile(filepath.Join(local, "down.bin")); !bytes.Equal(got, data) {
		t.Errorf("downloaded file differs from the uploaded one")
	}
	got, err := os.ReadFile(filepath.Join(home, "d", "g"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("renamed file on disk: %v (equal: %v)", err, bytes.Equal(got, data))
	}
	if fi, err := os.Stat(filepath.Join(home, "d", "g")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("chmod 600: got %v, %v", fi.Mode(), err)
	}
	if target, err := os.Readlink(filepath.Join(home, "d", "link")); err != nil || target != "f" {
		t.Errorf("ln -s f d/link: readlink gives %q, %v", target, err)
	}
	if _, err := os.Stat(filepath.Join(home, "d")); err != nil {
		t.Errorf("rmdir of a non-empty directory removed it: %v", err)
	}

	out, err = ts.sftpBatch("alice", auth{key: "alice"}, "rm d/g\nrm d/link\nrmdir d\nls -a\n")
	if err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(home, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rm then rmdir left d: %v", err)
	}
}

// reput and reget finish interrupted transfers byte for byte.
func TestResumeReputReget(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	local := t.TempDir()
	data := randomBytes(20 << 20)
	writeFile(t, filepath.Join(local, "big"), data)
	// An interrupted upload leaves a prefix on the server.
	writeFile(t, filepath.Join(home, "big"), data[:7<<20+12345])
	out, err := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("reput %s/big big\n", local))
	if err != nil {
		t.Fatalf("reput: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "big")); !bytes.Equal(got, data) {
		t.Fatalf("after reput the server's file differs (%d bytes, want %d)", len(got), len(data))
	}
	// An interrupted download leaves a prefix locally.
	writeFile(t, filepath.Join(local, "got"), data[:3<<20+999])
	out, err = ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("reget big %s/got\n", local))
	if err != nil {
		t.Fatalf("reget: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(local, "got")); !bytes.Equal(got, data) {
		t.Fatalf("after reget the local file differs (%d bytes, want %d)", len(got), len(data))
	}
}

// statusCode returns the SFTP status code of a pkg/sftp client error.
func statusCode(err error) uint32 {
	var se *sftp.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

const (
	fxPermissionDenied = 3
	fxFailure          = 4
	fxOpUnsupported    = 8
)

// Packet-level cases, with pkg/sftp's client.
func TestSFTPPacketLevel(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	c := ts.sftpClient("alice", "alice")

	t.Run("read-write open reads back what was written", func(t *testing.T) {
		f, err := c.OpenFile("/rw", os.O_RDWR|os.O_CREATE)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("hello world"), 0); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := f.ReadAt(buf, 6); err != nil || string(buf) != "world" {
			t.Fatalf("ReadAt after WriteAt on one handle: %q, %v", buf, err)
		}
	})

	t.Run("append flag appends", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "app"), []byte("0123456789"))
		f, err := c.OpenFile("/app", os.O_WRONLY|os.O_APPEND)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("AB"), 2); err != nil {
			t.Fatalf("WriteAt on an APPEND handle: %v", err)
		}
		f.Close()
		if got, _ := os.ReadFile(filepath.Join(home, "app")); string(got) != "0123456789AB" {
			t.Fatalf("got %q, want 0123456789AB", got)
		}
	})

	t.Run("open without TRUNC resumes", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "res"), []byte("abcdefgh"))
		f, err := c.OpenFile("/res", os.O_WRONLY)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("XY"), 8)
		f.Close()
		if got, _ := os.ReadFile(filepath.Join(home, "res")); string(got) != "abcdefghXY" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("setstat size truncates and extends", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "tr"), []byte("abcdefgh"))
		if err := c.Truncate("/tr", 3); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(filepath.Join(home, "tr")); string(got) != "abc" {
			t.Fatalf("after truncate to 3: %q", got)
		}
		if err := c.Truncate("/tr", 6); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(filepath.Join(home, "tr")); string(got) != "abc\x00\x00\x00" {
			t.Fatalf("after extend to 6: %q", got)
		}
	})

	t.Run("fsetstat size on a handle", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "ftr"), []byte("abcdefgh"))
		f, err := c.OpenFile("/ftr", os.O_WRONLY)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(2); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got, _ := os.ReadFile(filepath.Join(home, "ftr")); string(got) != "ab" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("mode masked to 0777", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "m"), nil)
		if err := c.Chmod("/m", os.ModeSetuid|os.ModeSticky|0o754); err != nil {
			t.Fatal(err)
		}
		if err := c.Chmod("/m", 0o4754); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(home, "m"))
		if fi.Mode() != 0o754 {
			t.Fatalf("mode on disk %v, want -rwxr-xr-- without setuid", fi.Mode())
		}
	})

	t.Run("times set", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "tm"), nil)
		mt := time.Date(2020, 5, 17, 10, 0, 0, 0, time.UTC)
		if err := c.Chtimes("/tm", mt, mt); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(home, "tm"))
		if !fi.ModTime().Equal(mt) {
			t.Fatalf("mtime %v, want %v", fi.ModTime(), mt)
		}
	})

	t.Run("ownership refused", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "own"), nil)
		st, _ := os.Stat(filepath.Join(home, "own"))
		sys := st.Sys().(*syscall.Stat_t)
		if err := c.Chown("/own", int(sys.Uid), int(sys.Gid)); err != nil {
			t.Fatalf("chown to the current owner (a no-op) failed: %v", err)
		}
		err := c.Chown("/own", int(sys.Uid)+1, int(sys.Gid))
		if statusCode(err) != fxOpUnsupported {
			t.Fatalf("chown to another uid: got %v, want SSH_FX_OP_UNSUPPORTED", err)
		}
		if after, _ := os.Stat(filepath.Join(home, "own")); after.Sys().(*syscall.Stat_t).Uid != sys.Uid {
			t.Fatal("owner changed")
		}
	})

	t.Run("hard links refused", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "hl"), []byte("x"))
		if err := c.Link("/hl", "/hl2"); err == nil {
			t.Fatal("hardlink@openssh.com succeeded")
		}
		if _, err := os.Lstat(filepath.Join(home, "hl2")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("hard link exists on disk: %v", err)
		}
	})

	t.Run("symlink argument order", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "sub", "target"), []byte("t"))
		if err := c.Symlink("target", "/sub/lnk"); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(filepath.Join(home, "sub", "lnk")); err != nil || got != "target" {
			t.Fatalf("on disk: sub/lnk -> %q (%v), want target", got, err)
		}
		if got, err := c.ReadLink("/sub/lnk"); err != nil || got != "target" {
			t.Fatalf("readlink: %q, %v", got, err)
		}
		if fi, err := c.Stat("/sub/lnk"); err != nil || fi.Size() != 1 {
			t.Fatalf("stat through the link: %v, %v", fi, err)
		}
		if fi, err := c.Lstat("/sub/lnk"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("lstat of the link: %v, %v", fi, err)
		}
		if err := c.Symlink("../target", "/sub/up"); !errors.Is(err, os.ErrPermission) {
			t.Fatalf("a link with \"..\": %v, want permission denied", err)
		}
	})

	t.Run("rename never replaces, posix-rename does", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "a"), []byte("A"))
		writeFile(t, filepath.Join(home, "b"), []byte("B"))
		if err := c.Rename("/a", "/b"); statusCode(err) != fxFailure {
			t.Fatalf("rename onto an existing file: got %v, want SSH_FX_FAILURE", err)
		}
		if got, _ := os.ReadFile(filepath.Join(home, "b")); string(got) != "B" {
			t.Fatalf("target changed by a refused rename: %q", got)
		}
		if err := c.PosixRename("/a", "/b"); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(filepath.Join(home, "b")); string(got) != "A" {
			t.Fatalf("after posix-rename: %q", got)
		}
		if err := c.Rename("/b", "/c"); err != nil {
			t.Fatal(err)
		}
		if err := c.Rename("/nonexistent", "/d"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("rename of a missing file: %v", err)
		}
	})

	t.Run("remove and rmdir", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "full", "x"), []byte("x"))
		if err := c.RemoveDirectory("/full"); statusCode(err) != fxFailure {
			t.Fatalf("rmdir of a non-empty directory: got %v", err)
		}
		if err := c.Remove("/full"); err == nil {
			t.Fatal("remove of a directory succeeded")
		}
		if got, err := os.ReadFile(filepath.Join(home, "full", "x")); err != nil || string(got) != "x" {
			t.Fatalf("non-empty directory damaged: %q, %v", got, err)
		}
		if err := c.RemoveDirectory("/full/x"); err == nil {
			t.Fatal("rmdir of a file succeeded")
		}
		if err := c.Remove("/full/x"); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveDirectory("/full"); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveDirectory("/"); err == nil {
			t.Fatal("rmdir / succeeded")
		}
	})

	t.Run("mkdir", func(t *testing.T) {
		if err := c.Mkdir("/nd"); err != nil {
			t.Fatal(err)
		}
		if err := c.Mkdir("/nd"); statusCode(err) != fxFailure {
			t.Fatalf("mkdir of an existing directory: %v", err)
		}
		if err := c.Mkdir("/no/such/parent"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("mkdir without parent: %v", err)
		}
	})

	t.Run("stat lstat fstat", func(t *testing.T) {
		writeFile(t, filepath.Join(home, "st"), []byte("12345"))
		fi, err := c.Stat("/st")
		if err != nil || fi.Size() != 5 || fi.IsDir() {
			t.Fatalf("stat: %v %v", fi, err)
		}
		f, err := c.Open("/st")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || fi.Size() != 5 {
			t.Fatalf("fstat: %v %v", fi, err)
		}
		if fi, err := c.Stat("/"); err != nil || !fi.IsDir() {
			t.Fatalf("stat /: %v %v", fi, err)
		}
		if _, err := c.Stat("/missing"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of a missing file: %v", err)
		}
	})

	t.Run("directories and special files are not opened as files", func(t *testing.T) {
		os.MkdirAll(filepath.Join(home, "dir"), 0o755)
		if _, err := c.Open("/dir"); err == nil || !strings.Contains(err.Error(), "is a directory") {
			t.Fatalf("open of a directory: %v", err)
		}
		if err := syscall.Mkfifo(filepath.Join(home, "fifo"), 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := c.Open("/fifo"); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Fatalf("open of a FIFO: %v", err)
			}
		case <-time.After(time.Minute): // a bound for a hang, not a speed limit
			t.Fatal("open of a FIFO blocked")
		}
	})

	t.Run("statvfs", func(t *testing.T) {
		st, err := c.StatVFS("/")
		if err != nil {
			t.Fatal(err)
		}
		if st.Blocks == 0 || st.Bsize == 0 || st.Namemax == 0 {
			t.Fatalf("statvfs: %+v", st)
		}
	})

	t.Run("realpath", func(t *testing.T) {
		for in, want := range map[string]string{".": "/", "..": "/", "/../..": "/", "a/../b": "/b", "//x//y/": "/x/y"} {
			if got, err := c.RealPath(in); err != nil || got != want {
				t.Errorf("realpath %q = %q, %v; want %q", in, got, err, want)
			}
		}
	})
}

// A directory of 100,000 entries lists completely, batch by batch.
func TestLargeDirectoryListing(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("slow")
	}
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	dir := filepath.Join(ts.home("alice"), "many")
	os.Mkdir(dir, 0o755)
	const n = 100_000
	for i := range n {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%06d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	out, err := ts.sftpBatch("alice", auth{key: "alice"}, "ls -1 many\n")
	if err != nil {
		t.Fatalf("%v\n%s", err, out[:min(len(out), 2000)])
	}
	if got := strings.Count(out, "many/f"); got != n {
		t.Fatalf("listed %d entries, want %d", got, n)
	}
}

// Uploads through pkg/sftp's client, concurrent writes included, arrive
// whole.
func TestUploadDownloadPkgSFTP(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.sftpClient("alice", "alice")
	data := randomBytes(5<<20 + 17)
	f, err := c.Create("/up")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g, err := c.Open("/up")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var got bytes.Buffer
	if _, err := g.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("downloaded data differs")
	}
}

// limits@openssh.com tells clients they may move 255 KiB per request, and
// requests that large work; a packet over 256 KiB ends the session.
func TestSFTPLimits(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	c := ts.rawSFTP("alice", "alice")
	if c.exts["limits@openssh.com"] != "1" || c.exts["posix-rename@openssh.com"] != "1" || c.exts["statvfs@openssh.com"] != "2" {
		t.Fatalf("announced extensions: %v", c.exts)
	}
	if _, ok := c.exts["hardlink@openssh.com"]; ok {
		t.Error("hardlink@openssh.com announced, but hard links are refused")
	}
	r := c.extended("limits@openssh.com")
	if r.typ != 201 || len(r.body) != 32 {
		t.Fatalf("limits reply: type %d, %d bytes; want SSH_FXP_EXTENDED_REPLY with 4 uint64", r.typ, len(r.body))
	}
	var got [4]uint64
	for i := range got {
		got[i] = binary.BigEndian.Uint64(r.body[8*i:])
	}
	if got != [4]uint64{256 << 10, 255 << 10, 255 << 10, 256} {
		t.Fatalf("limits: packet/read/write/handles = %v", got)
	}

	data := randomBytes(255 << 10)
	h := c.open("/big", fxfWrite|fxfCreat|fxfRead)
	if h.typ != fxpHandle {
		t.Fatalf("open: %+v", h)
	}
	if r := c.write(h.str, 0, string(data)); !r.ok() {
		t.Fatalf("255 KiB write: %q", r.msg)
	}
	r = c.call(fxpRead, str(h.str), u64(0), u32(255<<10))
	if r.typ != fxpData || r.str != string(data) {
		t.Fatalf("255 KiB read: type %d, %d bytes", r.typ, len(r.str))
	}
	c.close(h.str)
	if got, _ := os.ReadFile(filepath.Join(home, "big")); !bytes.Equal(got, data) {
		t.Fatal("file on disk differs")
	}

	// One byte over 256 KiB: the session ends.
	c.id++
	c.writePacket(fxpWrite, u32(c.id), str(h.str), u64(0), str(string(randomBytes(256<<10))))
	done := make(chan error, 1)
	go func() { done <- c.sess.Wait() }()
	select {
	case <-done:
	case <-time.After(time.Minute): // a bound for a hang, not a speed limit
		t.Fatal("session still open after a packet over 256 KiB")
	}
}
