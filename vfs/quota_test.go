package vfs

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func newQuotaFS(t *testing.T, l Limits) (*FS, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "home")
	f, err := Open(dir, Options{Limits: l})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, dir
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// put writes data to name as a client would: open (with flags), write in
// chunks in order, close.
func put(f *FS, name string, flag int, data []byte, off int64) error {
	file, err := f.OpenFile(name, flag)
	if err != nil {
		return err
	}
	var werr error
	for i := 0; i < len(data) && werr == nil; i += 32 << 10 {
		_, werr = file.WriteAt(data[i:min(len(data), i+32<<10)], off+int64(i))
	}
	cerr := file.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

const create = os.O_WRONLY | os.O_CREATE | os.O_TRUNC

// diskUsage counts the home at dir as the README says a quota does, by a
// walk independent of vfs: apparent sizes of files, 4 KiB a directory or
// link, every entry but the home.
func diskUsage(t *testing.T, dir string) Usage {
	t.Helper()
	var u Usage
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.Type().IsRegular():
			fi, _ := d.Info()
			u.Bytes += fi.Size()
			u.Files++
		case p != dir:
			u.Bytes += 4096
			u.Files++
		}
		return nil
	})
	return u
}

func checkUsage(t *testing.T, f *FS, dir string) {
	t.Helper()
	if got, want := f.Usage(), diskUsage(t, dir); got != want {
		t.Errorf("usage %+v, disk holds %+v", got, want)
	}
}

func TestQuotaExactLimit(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 1000})
	if err := put(f, "a", create, randBytes(1000), 0); err != nil {
		t.Fatalf("exactly the quota: %v", err)
	}
	err := put(f, "b", create, []byte{1}, 0)
	var qe *QuotaError
	if !errors.Is(err, ErrQuotaExceeded) || !errors.As(err, &qe) || qe.Left != 0 {
		t.Fatalf("one byte over: %v", err)
	}
	checkUsage(t, f, dir)
	if err := f.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if err := put(f, "b", create, randBytes(1000), 0); err != nil {
		t.Fatalf("after remove: %v", err)
	}
	checkUsage(t, f, dir)
}

func TestQuotaParallelWriters(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 3 << 20})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 4 {
		wg.Go(func() { errs[i] = put(f, fmt.Sprintf("f%d", i), create, randBytes(1<<20), 0) })
	}
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			if !errors.Is(err, ErrQuotaExceeded) {
				t.Errorf("unexpected error %v", err)
			}
		}
	}
	if failed == 0 {
		t.Fatal("4 MiB fit in a 3 MiB quota")
	}
	if u := diskUsage(t, dir); u.Bytes > 3<<20 {
		t.Fatalf("disk holds %d bytes, quota %d", u.Bytes, 3<<20)
	}
	checkUsage(t, f, dir)
}

func TestQuotaFarOffsetAndTruncate(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 1 << 20})
	put(f, "a", create, []byte("x"), 0)
	before := f.Usage()
	if err := put(f, "a", os.O_WRONLY, []byte("y"), 1<<40); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("write at 2^40: %v", err)
	}
	if err := f.Truncate("a", 1<<40); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("truncate to 2^40: %v", err)
	}
	if f.Usage() != before {
		t.Fatalf("usage changed: %+v -> %+v", before, f.Usage())
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a")); fi.Size() != 1 {
		t.Fatalf("file size %d", fi.Size())
	}
	checkUsage(t, f, dir)
}

func TestOverwriteKeepsOriginalOnFailure(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 1 << 20})
	orig := randBytes(600 << 10)
	if err := put(f, "a", create, orig, 0); err != nil {
		t.Fatal(err)
	}
	// Same size while the quota is nearly full: the old file's space is
	// the new one's to use.
	same := randBytes(600 << 10)
	if err := put(f, "a", create, same, 0); err != nil {
		t.Fatalf("overwrite with the same size: %v", err)
	}
	// Over the quota: refused, the file unchanged, no temp file left.
	if err := put(f, "a", create, randBytes(1100<<10), 0); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("overwrite over the quota: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a")); !bytes.Equal(got, same) {
		t.Fatal("failed overwrite changed the file")
	}
	// Aborted (client gone): the same.
	file, _ := f.OpenFile("a", create)
	file.WriteAt([]byte("partial"), 0)
	file.Abort()
	if err := file.Close(); err == nil {
		t.Fatal("Close of an aborted overwrite succeeded")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a")); !bytes.Equal(got, same) {
		t.Fatal("aborted overwrite changed the file")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("home holds %v", entries)
	}
	checkUsage(t, f, dir)
}

func TestResumeAndNewFileKeepWhatArrived(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 1 << 20})
	data := randBytes(1<<20 + 1000)
	// New file over the quota: the part within it stays.
	err := put(f, "new", create, data, 0)
	if !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("new file over the quota: %v", err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "new"))
	if len(got) == 0 || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("partial new file: %d bytes, not a prefix", len(got))
	}
	checkUsage(t, f, dir)
	// Raise the quota, resume from what is there: complete.
	f.SetLimits(Limits{Bytes: 2 << 20})
	if err := put(f, "new", os.O_WRONLY, data[len(got):], int64(len(got))); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "new")); !bytes.Equal(got, data) {
		t.Fatal("resumed file differs")
	}
	// A resume that passes the quota keeps what was there.
	f.SetLimits(Limits{Bytes: 1<<20 + 2000})
	err = put(f, "new", os.O_WRONLY, randBytes(5000), int64(len(data)))
	if !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("resume over the quota: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "new")); !bytes.Equal(got[:len(data)], data) {
		t.Fatal("failed resume damaged the file")
	}
	checkUsage(t, f, dir)
}

func TestFileLimit(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Files: 3})
	for _, n := range []string{"a", "b"} {
		if err := put(f, n, create, []byte(n), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Symlink("a", "l"); err != nil {
		t.Fatalf("third entry, a link: %v", err)
	}
	if err := put(f, "c", create, []byte("c"), 0); !errors.Is(err, ErrFileLimit) {
		t.Fatalf("fourth file: %v", err)
	}
	if err := f.Symlink("a", "l2"); !errors.Is(err, ErrFileLimit) {
		t.Fatalf("fourth entry, a link: %v", err)
	}
	if err := f.Mkdir("d"); !errors.Is(err, ErrFileLimit) {
		t.Fatalf("fourth entry, a directory: %v", err)
	}
	if err := put(f, "a", create, []byte("overwritten"), 0); err != nil {
		t.Fatalf("overwrite at the limit: %v", err)
	}
	if err := f.PosixRename("b", "a"); err != nil {
		t.Fatal(err)
	}
	if err := put(f, "c", create, []byte("c"), 0); err != nil {
		t.Fatalf("after a rename freed a file: %v", err)
	}
	checkUsage(t, f, dir)
}

// Writes that arrive out of order reach the disk in order: an upload cut
// off leaves a prefix of what was sent, never a hole.
func TestWritesLandInOrder(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{})
	data := randBytes(8 << 10)
	chunk := func(i int) []byte { return data[i<<10 : (i+1)<<10] }

	file, _ := f.OpenFile("a", create)
	for _, i := range []int{0, 1, 3, 5, 4} { // 2 is missing
		if _, err := file.WriteAt(chunk(i), int64(i)<<10); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a")); !bytes.Equal(got, data[:2<<10]) {
		t.Fatalf("on disk before the gap is filled: %d bytes, want the 2 KiB prefix", len(got))
	}
	file.Abort()
	file.Close()
	if got, _ := os.ReadFile(filepath.Join(dir, "a")); !bytes.Equal(got, data[:2<<10]) {
		t.Fatalf("after an abort: %d bytes, want the 2 KiB prefix", len(got))
	}
	checkUsage(t, f, dir)

	file, _ = f.OpenFile("b", create)
	for _, i := range []int{7, 6, 5, 4, 3, 2, 1, 0} {
		file.WriteAt(chunk(i), int64(i)<<10)
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "b")); !bytes.Equal(got, data) {
		t.Fatal("reversed writes did not make the file")
	}
	// A deliberate hole, closed normally, stays a hole.
	file, _ = f.OpenFile("c", create)
	file.WriteAt([]byte("end"), 100)
	file.Close()
	if got, _ := os.ReadFile(filepath.Join(dir, "c")); len(got) != 103 || string(got[100:]) != "end" {
		t.Fatalf("sparse write: %q", got)
	}
	checkUsage(t, f, dir)
}

func TestOneWriterPerFile(t *testing.T) {
	f, _ := newQuotaFS(t, Limits{})
	put(f, "a", create, []byte("a"), 0)
	w, err := f.OpenFile("a", os.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"second writer":     second(f.OpenFile("a", os.O_WRONLY)),
		"overwrite":         second(f.OpenFile("a", create)),
		"remove":            f.Remove("a"),
		"rename from":       f.Rename("a", "b"),
		"posix-rename to":   func() error { put(f, "c", create, nil, 0); return f.PosixRename("c", "a") }(),
		"second via a link": func() error { f.Symlink("a", "l"); return second(f.OpenFile("l", os.O_WRONLY)) }(),
	} {
		if !errors.Is(err, ErrBusy) {
			t.Errorf("%s: %v, want ErrBusy", name, err)
		}
	}
	if r, err := f.OpenFile("a", os.O_RDONLY); err != nil {
		t.Errorf("reader while writing: %v", err)
	} else {
		r.Close()
	}
	w.Close()
	if err := f.Remove("a"); err != nil {
		t.Fatalf("remove after close: %v", err)
	}
}

// Setstat of a file being overwritten acts on the new content, so that
// fsetstat before close (sftp put -p, scp) is not lost.
func TestSetstatDuringOverwrite(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 1 << 20})
	put(f, "a", create, randBytes(5000), 0)
	file, _ := f.OpenFile("a", create)
	file.WriteAt([]byte("0123456789"), 0)
	if err := f.Truncate("a", 4); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod("a", 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a")); fi.Size() != 5000 {
		t.Fatal("setstat reached the old file")
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "a"))
	fi, _ := os.Stat(filepath.Join(dir, "a"))
	if string(got) != "0123" || fi.Mode().Perm() != 0o640 {
		t.Fatalf("after close: %q %v", got, fi.Mode())
	}
	checkUsage(t, f, dir)
}

func TestUsageSurvivesReopenAndRescan(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home")
	f, err := Open(dir, Options{Limits: Limits{Bytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	put(f, "a", create, randBytes(1000), 0)
	f.Mkdir("d")
	put(f, "d/b", create, randBytes(2000), 0)
	f.Symlink("a", "l")
	// A crash in the middle of an overwrite leaves a temp file.
	file, _ := f.OpenFile("a", create)
	file.WriteAt(randBytes(500), 0)
	f.Close()

	g, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := g.Usage(); got != (Usage{Bytes: 3000 + 2*EntryBytes, Files: 4}) {
		t.Fatalf("usage after reopen %+v", got)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if reservedRE.MatchString(e.Name()) {
			t.Fatalf("stale temp file %s kept", e.Name())
		}
	}
	os.WriteFile(filepath.Join(dir, "outside"), randBytes(4000), 0o644)
	if err := g.Rescan(); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, g, dir)
}

func TestReservedNames(t *testing.T) {
	f, _ := newQuotaFS(t, Limits{})
	for _, name := range []string{".silo-tmp.0123456789abcdef", "d/.silo-tmp.x", ".silo-tmp.a/b"} {
		if err := put(f, name, create, []byte("x"), 0); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("create %s: %v", name, err)
		}
	}
}

// OpenSSH's sftp asks to cut a failed resume back to what it sent in that
// session (to 0, for reput): what was there before stays.
func TestTruncateAfterFailedWriteKeepsPrefix(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 1000})
	prefix := randBytes(600)
	put(f, "a", create, prefix, 0)
	file, _ := f.OpenFile("a", os.O_WRONLY)
	file.WriteAt(randBytes(100), 600)
	if _, err := file.WriteAt(randBytes(500), 700); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("write past the quota: %v", err)
	}
	if err := f.Truncate("a", 0); err != nil {
		t.Fatal(err)
	}
	file.Close()
	got, _ := os.ReadFile(filepath.Join(dir, "a"))
	if len(got) != 700 || !bytes.Equal(got[:600], prefix) {
		t.Fatalf("after truncate to 0 following a failed write: %d bytes", len(got))
	}
	// Without a failure, truncation does what it is told.
	if err := f.Truncate("a", 10); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a")); fi.Size() != 10 {
		t.Fatalf("size %d", fi.Size())
	}
	checkUsage(t, f, dir)
}

func TestFsyncOption(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home")
	f, err := Open(dir, Options{Fsync: true, Limits: Limits{Bytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, data := range [][]byte{randBytes(1000), randBytes(3000)} { // new, then overwrite
		if err := put(f, "a", create, data, 0); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(filepath.Join(dir, "a")); !bytes.Equal(got, data) {
			t.Fatal("content differs")
		}
	}
	checkUsage(t, f, dir)
}

// An overwrite through a symbolic link replaces the link's target the way a
// direct overwrite replaces the file: only when the upload completes.
func TestOverwriteThroughLinkKeepsTargetOnFailure(t *testing.T) {
	f, dir := newQuotaFS(t, Limits{Bytes: 8 << 20})
	if err := f.Mkdir("d"); err != nil {
		t.Fatal(err)
	}
	orig := randBytes(6 << 20)
	if err := put(f, "d/data.bin", create, orig, 0); err != nil {
		t.Fatal(err)
	}
	// A link to the file, a link to that link, and the file through a
	// link to its directory.
	for _, l := range [][2]string{{"d/data.bin", "ln"}, {"ln", "ln2"}, {"d", "dl"}} {
		if err := f.Symlink(l[0], l[1]); err != nil {
			t.Fatal(err)
		}
	}
	unchanged := func(what string) {
		t.Helper()
		if got, _ := os.ReadFile(filepath.Join(dir, "d/data.bin")); !bytes.Equal(got, orig) {
			t.Fatalf("%s: data.bin changed (%d bytes)", what, len(got))
		}
		for _, l := range []string{"ln", "ln2", "dl"} {
			if fi, err := os.Lstat(filepath.Join(dir, l)); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				t.Fatalf("%s: %s is no longer a link", what, l)
			}
		}
		checkUsage(t, f, dir)
	}
	for _, l := range []string{"ln", "ln2", "dl/data.bin"} {
		if err := put(f, l, create, randBytes(10<<20), 0); !errors.Is(err, ErrQuotaExceeded) {
			t.Fatalf("overwrite of %s over the quota: %v", l, err)
		}
		unchanged("over the quota through " + l)
		file, err := f.OpenFile(l, create)
		if err != nil {
			t.Fatal(err)
		}
		file.WriteAt(randBytes(2<<20), 0)
		file.Abort()
		file.Close()
		unchanged("aborted through " + l)
	}
	orig = randBytes(1 << 20)
	if err := put(f, "ln2", create, orig, 0); err != nil {
		t.Fatal(err)
	}
	unchanged("completed through ln2")
}

// Directories and links take disk as files do, and count as entries of 4
// KiB: a home full of either stays within its quota on disk.
func TestDirectoriesAndLinksCount(t *testing.T) {
	const quota = 1 << 20
	f, dir := newQuotaFS(t, Limits{Bytes: quota})
	n := 0
	for ; ; n++ {
		err := f.Mkdir(fmt.Sprintf("d%d", n))
		if errors.Is(err, ErrQuotaExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if n != quota/EntryBytes {
		t.Fatalf("%d directories in a %d-byte quota", n, quota)
	}
	if err := f.Rmdir("d0"); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 3991)
	if err := f.Symlink(long, "l"); err != nil {
		t.Fatalf("a link in the space a directory left: %v", err)
	}
	if err := f.Symlink(long, "l2"); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("a link past the quota: %v", err)
	}
	checkUsage(t, f, dir)
	if du := duBytes(t, dir); du > quota+64<<10 {
		t.Fatalf("du: %d bytes on disk for a %d-byte quota", du, quota)
	}
}

// duBytes is what du -s -B1 reports: the blocks the tree takes on disk.
func duBytes(t *testing.T, dir string) int64 {
	t.Helper()
	out, err := exec.Command("du", "-s", "-B1", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
