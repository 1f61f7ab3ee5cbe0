package sshd_test

import (
	"bytes"
	"crypto/md5"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"silo/users"
)

func (ts *testServer) addQuotaUser(name, key string, quota users.Size, files int64) {
	ts.t.Helper()
	ts.update(func(f *users.File) {
		f.Users = append(f.Users, users.User{Name: name, Keys: []string{shared.keys[key].pubLine}, Quota: quota, MaxFiles: files})
	})
}

// duFiles is `du --apparent-size` of a flat home, less the directory's own
// size: the bytes of its files.
func duFiles(t *testing.T, home string) int64 {
	t.Helper()
	out, err := exec.Command("du", "--apparent-size", "-s", "-b", home).Output()
	if err != nil {
		t.Fatal(err)
	}
	total, _ := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	fi, _ := os.Stat(home)
	entries, _ := os.ReadDir(home)
	for _, e := range entries {
		if e.IsDir() {
			t.Fatalf("duFiles wants a flat home, found directory %s", e.Name())
		}
	}
	return total - fi.Size()
}

func md5File(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", md5.Sum(data))
}

func TestQuotaLimitOpenSSH(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 1<<20, 0)
	home := ts.home("alice")
	local := t.TempDir()
	writeFile(t, filepath.Join(local, "exact"), randomBytes(1<<20))
	writeFile(t, filepath.Join(local, "one"), []byte{1})

	if out, err := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("put %s/exact exact\n", local)); err != nil {
		t.Fatalf("upload of exactly the quota: %v\n%s", err, out)
	}
	out, err := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("put %s/one one\n", local))
	if err == nil || !strings.Contains(out, "Failure") {
		t.Fatalf("one byte over the quota: err=%v\n%s", err, out)
	}
	if got := duFiles(t, home); got != 1<<20 {
		t.Fatalf("du: %d bytes, want %d", got, 1<<20)
	}
	// The message, for clients that show it.
	c := ts.rawSFTP("alice", "alice")
	h := c.open("/one", fxfWrite|fxfCreat)
	if r := c.write(h.str, 0, "x"); r.code != fxFailure || r.msg != "quota exceeded: 0 B left" {
		t.Fatalf("write over quota: code %d %q", r.code, r.msg)
	}
	c.close(h.str)

	// df shows the quota: 1024 1K-blocks, all used.
	out, err = ts.sftpBatch("alice", auth{key: "alice"}, "df\n")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[2]); f[0] != "1024" || f[1] != "1024" || f[2] != "0" {
		t.Fatalf("df with a full 1 MiB quota:\n%s", out)
	}
}

// Two and four parallel uploads that together pass the quota: what is
// stored stays within it, each failed upload is reported to its client, and
// each one reported as done is whole.
func TestQuotaParallelUploads(t *testing.T) {
	t.Parallel()
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("%d uploads", n), func(t *testing.T) {
			ts := startServer(t)
			const quota = 8 << 20
			ts.addQuotaUser("alice", "alice", quota, 0)
			home := ts.home("alice")
			local := t.TempDir()
			size := quota/n + quota/(2*n) // 1.5 times the fair share each
			for i := range n {
				writeFile(t, filepath.Join(local, fmt.Sprint(i)), randomBytes(size))
			}
			errs := make([]error, n)
			outs := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					outs[i], errs[i] = ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("put %s/%d f%d\n", local, i, i))
				})
			}
			wg.Wait()
			failed := 0
			for i := range n {
				if errs[i] != nil {
					failed++
					if !strings.Contains(outs[i], "Failure") {
						t.Errorf("upload %d failed without saying why:\n%s", i, outs[i])
					}
					continue
				}
				if md5File(t, filepath.Join(home, fmt.Sprint("f", i))) != md5File(t, filepath.Join(local, fmt.Sprint(i))) {
					t.Errorf("upload %d reported done but the file differs", i)
				}
			}
			if failed == 0 {
				t.Fatalf("%d uploads of %d bytes all fit a %d-byte quota", n, size, quota)
			}
			if got := duFiles(t, home); got > quota {
				t.Fatalf("du: %d bytes stored, quota %d", got, quota)
			}
		})
	}
}

func TestQuotaFarWrites(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 1<<20, 0)
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "f"), []byte("data"))
	c := ts.rawSFTP("alice", "alice")
	h := c.open("/f", fxfWrite)
	if r := c.write(h.str, 1<<40, "x"); r.code != fxFailure || !strings.HasPrefix(r.msg, "quota exceeded") {
		t.Errorf("write at 2^40: code %d %q", r.code, r.msg)
	}
	c.close(h.str)
	if r := c.call(fxpSetstat, str("/f"), u32(attrSize), u64(1<<40)); r.code != fxFailure || !strings.HasPrefix(r.msg, "quota exceeded") {
		t.Errorf("setstat size 2^40: code %d %q", r.code, r.msg)
	}
	if fi, _ := os.Stat(filepath.Join(home, "f")); fi.Size() != 4 {
		t.Fatalf("size now %d", fi.Size())
	}
	if got := duFiles(t, home); got != 4 {
		t.Fatalf("du %d", got)
	}
	// The usage did not move: the whole quota less 4 bytes is still free.
	h = c.open("/g", fxfWrite|fxfCreat)
	if r := c.writeAll(h.str, 0, randomBytes(1<<20-4)); !r.ok() {
		t.Fatalf("filling the rest: %q", r.msg)
	}
	c.close(h.str)
}

func TestQuotaKeepsDataOnFailure(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 4<<20, 0)
	home := ts.home("alice")
	local := t.TempDir()
	writeFile(t, filepath.Join(home, "keep"), randomBytes(2<<20))
	big := randomBytes(3 << 20)
	writeFile(t, filepath.Join(local, "big"), big)
	writeFile(t, filepath.Join(local, "huge"), randomBytes(7<<20))
	run := func(batch string) (string, error) {
		return ts.sftpBatch("alice", auth{key: "alice"}, batch)
	}

	// Overwrite past the quota (7 MiB for a 2 MiB file, 2 MiB free): the
	// original is byte-identical and no temp file is left.
	sum := md5File(t, filepath.Join(home, "keep"))
	if out, err := run(fmt.Sprintf("put %s/huge keep\n", local)); err == nil {
		t.Fatalf("overwrite needing 7 MiB in a 4 MiB quota succeeded:\n%s", out)
	}
	if md5File(t, filepath.Join(home, "keep")) != sum {
		t.Fatal("failed overwrite changed the original")
	}
	if entries, _ := os.ReadDir(home); len(entries) != 1 {
		t.Fatalf("home after a failed overwrite: %v", entries)
	}
	// Overwrite with 3 MiB fits: the old file's 2 MiB are the new one's.
	if out, err := run(fmt.Sprintf("put %s/big keep\n", local)); err != nil {
		t.Fatalf("overwrite of 2 MiB with 3 MiB, 2 MiB free: %v\n%s", err, out)
	}
	writeFile(t, filepath.Join(home, "keep"), randomBytes(2<<20))
	ts.update(func(f *users.File) { f.Users[0].Rescan++ })

	// New file past the quota: the part that fits stays, and reput
	// finishes it once space is freed.
	out, err := run(fmt.Sprintf("put %s/big new\n", local))
	if err == nil {
		t.Fatalf("3 MiB new file with 2 MiB free succeeded:\n%s", out)
	}
	part, _ := os.ReadFile(filepath.Join(home, "new"))
	if len(part) == 0 || len(part) > 2<<20 || !bytes.Equal(part, big[:len(part)]) {
		t.Fatalf("partial new file: %d bytes, prefix=%v", len(part), bytes.Equal(part, big[:len(part)]))
	}
	if out, err := run(fmt.Sprintf("rm keep\nreput %s/big new\n", local)); err != nil {
		t.Fatalf("reput after freeing space: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "new")); !bytes.Equal(got, big) {
		t.Fatal("reput did not complete the file")
	}

	// Resume past the quota: what was there stays.
	writeFile(t, filepath.Join(local, "bigger"), append(append([]byte{}, big...), randomBytes(2<<20)...))
	out, err = run(fmt.Sprintf("reput %s/bigger new\n", local))
	if err == nil {
		t.Fatalf("resume to 5 MiB in a 4 MiB quota succeeded:\n%s", out)
	}
	got, _ := os.ReadFile(filepath.Join(home, "new"))
	if len(got) < len(big) || !bytes.Equal(got[:len(big)], big) {
		t.Fatalf("failed resume damaged what was there: %d bytes, want at least %d\n%s", len(got), len(big), out)
	}
	if du := duFiles(t, home); du > 4<<20 {
		t.Fatalf("du %d over the quota", du)
	}
}

func TestFileLimitOpenSSH(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 0, 2)
	home := ts.home("alice")
	local := t.TempDir()
	writeFile(t, filepath.Join(local, "x"), []byte("x"))
	if out, err := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("put %[1]s/x a\nput %[1]s/x b\n", local)); err != nil {
		t.Fatalf("two files: %v\n%s", err, out)
	}
	if out, err := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("put %s/x c\n", local)); err == nil {
		t.Fatalf("third file accepted with max_files 2:\n%s", out)
	}
	writeFile(t, filepath.Join(local, "y"), []byte("yy"))
	if out, err := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf("put %s/y a\n", local)); err != nil {
		t.Fatalf("overwrite at the file limit: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "a")); string(got) != "yy" {
		t.Fatalf("a = %q", got)
	}
	c := ts.rawSFTP("alice", "alice")
	if r := c.open("/c", fxfWrite|fxfCreat); r.code != fxFailure || r.msg != "file limit reached: 2 files" {
		t.Fatalf("open of a third file: code %d %q", r.code, r.msg)
	}
	out, _ := ts.sftpBatch("alice", auth{key: "alice"}, "df -i\n")
	if f := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[2]); f[0] != "2" || f[1] != "2" || f[2] != "0" {
		t.Fatalf("df -i with 2 of 2 files:\n%s", out)
	}
}

// The usage is computed from disk when a home is first opened, so it is
// right after a restart; rescan picks up changes made outside silo.
func TestQuotaAfterRestartAndRescan(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 1<<20, 0)
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "old"), randomBytes(700<<10))
	c := ts.rawSFTP("alice", "alice")
	h := c.open("/more", fxfWrite|fxfCreat)
	if r := c.writeAll(h.str, 0, randomBytes(400<<10)); r.code != fxFailure {
		t.Fatalf("700 KiB on disk + 400 KiB in a 1 MiB quota: %+v", r)
	}
	c.close(h.str)

	// Outside silo, a file goes away; after a rescan the space is free.
	os.Remove(filepath.Join(home, "old"))
	ts.update(func(f *users.File) { f.Users[0].Rescan++ })
	h = c.open("/more", fxfWrite|fxfCreat)
	if r := c.writeAll(h.str, 0, randomBytes(900<<10)); !r.ok() {
		t.Fatalf("after rescan: %q", r.msg)
	}
	c.close(h.str)

	// A restarted server (a new one on the same homes) counts the same.
	ts2 := startServerOn(t, ts.dir)
	size, free := ts2.rawSFTP("alice", "alice").statvfs()
	if used, du := int64(size-free), duFiles(t, home); used != du {
		t.Fatalf("after restart statvfs says %d bytes used, du %d", used, du)
	}
}

// Two sessions writing one file: the second open fails and says why.
func TestOneWriterAcrossSessions(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 0, 0)
	ts.home("alice")
	a := ts.rawSFTP("alice", "alice")
	b := ts.rawSFTP("alice", "alice")
	h := a.open("/f", fxfWrite|fxfCreat)
	if h.typ != fxpHandle {
		t.Fatal(h.msg)
	}
	for _, flags := range []uint32{fxfWrite, fxfWrite | fxfTrunc | fxfCreat} {
		if r := b.open("/f", flags); r.code != fxFailure || r.msg != "file is being written by another session: /f" {
			t.Errorf("second writer (flags %d): code %d %q", flags, r.code, r.msg)
		}
	}
	if r := b.call(fxpRemove, str("/f")); r.code != fxFailure {
		t.Errorf("remove of a file being written: %+v", r)
	}
	a.close(h.str)
	if r := b.open("/f", fxfWrite); r.typ != fxpHandle {
		t.Fatalf("after the first closed: %q", r.msg)
	}
}
