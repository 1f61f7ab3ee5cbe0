package sshd_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rsyncCmd runs the stock rsync client against the server, over OpenSSH's
// ssh with the test's key; it returns the combined output and the exit
// status.
func (ts *testServer) rsyncCmd(key string, args ...string) (string, int) {
	ts.t.Helper()
	cmd := ts.rsyncExec(key, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		ts.t.Fatal(err)
	}
	return out.String(), 0
}

func (ts *testServer) rsyncExec(key string, args ...string) *exec.Cmd {
	ts.t.Helper()
	needClient(ts.t, "rsync", "ssh")
	base, env := ts.sshArgs(auth{key: key})
	e := "ssh -p " + ts.port + " " + strings.Join(base, " ")
	cmd := exec.Command("rsync", append([]string{"-e", e}, args...)...)
	cmd.Env = env
	return cmd
}

// fixedTime is the mtime of the test trees' entries.
var fixedTime = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// makeTree builds the tree of the rsync tests under dir: nested and empty
// directories, an empty file, a big file, names with spaces and UTF-8,
// and symbolic links inside the tree. Everything has a fixed mtime.
func makeTree(t *testing.T, dir string, big int) {
	t.Helper()
	files := map[string][]byte{
		"empty":                  nil,
		"small.txt":              []byte("hello\n"),
		"exec.sh":                []byte("#!/bin/sh\n"),
		"a/b/c/deep.txt":         []byte(strings.Repeat("deep ", 1000)),
		"a-b/x":                  []byte("a-b"),
		"a.b/y":                  []byte("a.b"),
		"dir with space/f g":     []byte("space"),
		"ünï/ファイル":               []byte("utf-8"),
		"mid.bin":                randomBytes(300 << 10),
		"x/we$ird ;name*?[x]":    []byte("weird"),
		"private/secret.txt":     []byte("0700 dir"),
		"big.bin":                randomBytes(big),
		"a/b/other/more/e.txt":   []byte("e"),
		"emptydir/.keep-nothing": nil,
	}
	for name, data := range files {
		writeFile(t, filepath.Join(dir, name), data)
	}
	os.Remove(filepath.Join(dir, "emptydir/.keep-nothing"))
	os.Chmod(filepath.Join(dir, "exec.sh"), 0o755)
	os.Chmod(filepath.Join(dir, "private"), 0o700)
	for link, target := range map[string]string{"link-small": "small.txt", "a/b/down": "c/deep.txt", "dangling": "nowhere"} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	setTimes(t, dir)
}

// setTimes gives every entry under dir the fixed mtime, links included.
func setTimes(t *testing.T, dir string) {
	t.Helper()
	var all []string
	filepath.Walk(dir, func(p string, fi fs.FileInfo, err error) error {
		all = append(all, p)
		return nil
	})
	for i := len(all) - 1; i >= 0; i-- {
		exec.Command("touch", "-h", "-d", fixedTime.Format(time.RFC3339), all[i]).Run()
	}
}

// listing describes a tree: per entry its type, mode, mtime (unless
// withTimes is false), size and a hash of its content (or its link
// target).
func listing(t *testing.T, dir string, withTimes bool) string {
	t.Helper()
	var lines []string
	filepath.Walk(dir, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		var what string
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			what = "link " + target
		case fi.IsDir():
			what = fmt.Sprintf("dir %o", fi.Mode().Perm())
			if withTimes {
				what += " " + strconv.FormatInt(fi.ModTime().Unix(), 10)
			}
		default:
			data, _ := os.ReadFile(p)
			what = fmt.Sprintf("file %o %d %x", fi.Mode().Perm(), fi.Size(), sha256.Sum256(data))
			if withTimes {
				what += " " + strconv.FormatInt(fi.ModTime().Unix(), 10)
			}
		}
		lines = append(lines, rel+": "+what)
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// sameTree fails unless got and want hold the same entries, by diff -r
// and by the listing.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	if out, err := exec.Command("diff", "-r", "--no-dereference", want, got).CombinedOutput(); err != nil {
		t.Errorf("diff -r %s %s: %v\n%s", want, got, err, out)
	}
	if w, g := listing(t, want, true), listing(t, got, true); w != g {
		t.Errorf("listings differ:\nwant:\n%s\ngot:\n%s", w, g)
	}
}

var literalRE = regexp.MustCompile(`Literal data: ([0-9,]+) bytes`)

// literalBytes reads --stats' "Literal data" figure.
func literalBytes(t *testing.T, out string) int64 {
	t.Helper()
	m := literalRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no literal data figure in:\n%s", out)
	}
	n, _ := strconv.ParseInt(strings.ReplaceAll(m[1], ",", ""), 10, 64)
	return n
}

func TestRsyncPushPull(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 20<<20)
	remote := "alice@127.0.0.1:"

	for _, proto := range []string{"", "--protocol=29", "--protocol=27"} {
		t.Run("proto"+proto, func(t *testing.T) {
			dst := "dst" + strings.TrimPrefix(proto, "--protocol=")
			args := []string{"-a", "--stats"}
			if proto != "" {
				args = append(args, proto)
			}
			out, code := ts.rsyncCmd("alice", append(args, src+"/", remote+dst+"/")...)
			if code != 0 {
				t.Fatalf("push: exit %d\n%s", code, out)
			}
			sameTree(t, src, filepath.Join(home, dst))

			back := filepath.Join(t.TempDir(), "back")
			out, code = ts.rsyncCmd("alice", append(args, remote+dst+"/", back+"/")...)
			if code != 0 {
				t.Fatalf("pull: exit %d\n%s", code, out)
			}
			sameTree(t, src, back)

			// A second run sends nothing.
			out, code = ts.rsyncCmd("alice", append(args, src+"/", remote+dst+"/")...)
			if code != 0 || literalBytes(t, out) != 0 {
				t.Fatalf("second push: exit %d, want 0 literal bytes\n%s", code, out)
			}
			out, code = ts.rsyncCmd("alice", append(args, remote+dst+"/", back+"/")...)
			if code != 0 || literalBytes(t, out) != 0 {
				t.Fatalf("second pull: exit %d, want 0 literal bytes\n%s", code, out)
			}
		})
	}
}

func TestRsyncDelta(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	src := filepath.Join(t.TempDir(), "src")
	big := randomBytes(20 << 20)
	writeFile(t, filepath.Join(src, "big"), big)
	remote := "alice@127.0.0.1:"
	for _, proto := range []string{"--protocol=31", "--protocol=29", "--protocol=27"} {
		t.Run(proto, func(t *testing.T) {
			dst := "d" + proto[len(proto)-2:]
			if out, code := ts.rsyncCmd("alice", "-a", proto, src+"/", remote+dst+"/"); code != 0 {
				t.Fatalf("push: exit %d\n%s", code, out)
			}
			// Overwrite 10 bytes, insert 9, in the middle.
			changed := append(append(append([]byte{}, big[:10<<20]...), []byte("inserted!")...), big[10<<20:]...)
			copy(changed[5<<20:], "0123456789")
			writeFile(t, filepath.Join(src, "big"), changed)
			out, code := ts.rsyncCmd("alice", "-a", "--stats", proto, src+"/", remote+dst+"/")
			if n := literalBytes(t, out); code != 0 || n >= 1<<20 {
				t.Fatalf("push of a small change: exit %d, %d literal bytes\n%s", code, n, out)
			}
			t.Logf("push: %d literal bytes", literalBytes(t, out))
			sameTree(t, src, filepath.Join(home, dst))

			back := filepath.Join(t.TempDir(), "back")
			writeFile(t, filepath.Join(back, "big"), big)
			out, code = ts.rsyncCmd("alice", "-a", "--stats", proto, remote+dst+"/", back+"/")
			if n := literalBytes(t, out); code != 0 || n >= 1<<20 {
				t.Fatalf("pull of a small change: exit %d, %d literal bytes\n%s", code, n, out)
			}
			t.Logf("pull: %d literal bytes", literalBytes(t, out))
			sameTree(t, src, back)
			writeFile(t, filepath.Join(src, "big"), big)
		})
	}
}

// TestRsyncChecksums runs the delta transfer with each checksum the
// server offers: the one a current client negotiates, and each named with
// --checksum-choice (one name for both uses, or the transfer's and -c's).
// A block checksum computed differently from the client's would match no
// block, and the small change would cost the whole file.
func TestRsyncChecksums(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	big := randomBytes(8 << 20)
	changed := append(append(append([]byte{}, big[:4<<20]...), []byte("inserted!")...), big[4<<20:]...)
	copy(changed[1<<20:], "0123456789")
	remote := "alice@127.0.0.1:"
	for _, c := range []struct {
		choice, proto, said string
	}{
		{"", "", "Client negotiated checksum: xxh128"},
		{"md5", "", "Client checksum: md5"},
		{"xxh128", "", "Client checksum: xxh128"},
		{"xxh3", "", "Client checksum: xxh3"},
		{"xxh64", "", "Client checksum: xxh64"},
		{"xxh3,md5", "", "Client checksum: xxh3"},
		// Before 30 nothing is negotiated, but a choice still holds.
		{"", "29", "Client checksum: md4"},
		{"xxh128", "29", "Client checksum: xxh128"},
		{"md5", "29", "Client checksum: md5"},
	} {
		t.Run("choice="+c.choice+"/"+c.proto, func(t *testing.T) {
			args := []string{"-a", "--stats", "--debug=nstr"}
			if c.choice != "" {
				args = append(args, "--checksum-choice="+c.choice)
			}
			if c.proto != "" {
				args = append(args, "--protocol="+c.proto)
			}
			run := func(what string, extra ...string) int64 {
				t.Helper()
				out, code := ts.rsyncCmd("alice", append(append([]string{}, args...), extra...)...)
				if code != 0 || !strings.Contains(out, c.said) {
					t.Fatalf("%s: exit %d, want 0 and %q\n%s", what, code, c.said, out)
				}
				return literalBytes(t, out)
			}
			src := filepath.Join(t.TempDir(), "src")
			dst := "d" + strings.ReplaceAll(c.choice, ",", "-") + c.proto
			writeFile(t, filepath.Join(src, "big"), big)
			run("first push", src+"/", remote+dst+"/")
			writeFile(t, filepath.Join(src, "big"), changed)
			if n := run("push of a small change", src+"/", remote+dst+"/"); n >= 64<<10 {
				t.Errorf("push of a small change: %d literal bytes, want under 64 KiB", n)
			}
			sameTree(t, src, filepath.Join(home, dst))
			// -c compares the list checksums: nothing to send.
			if n := run("push -c", "-c", src+"/", remote+dst+"/"); n != 0 {
				t.Errorf("push -c of an unchanged tree: %d literal bytes, want 0", n)
			}

			back := filepath.Join(t.TempDir(), "back")
			writeFile(t, filepath.Join(back, "big"), big)
			if n := run("pull of a small change", remote+dst+"/", back+"/"); n >= 64<<10 {
				t.Errorf("pull of a small change: %d literal bytes, want under 64 KiB", n)
			}
			sameTree(t, src, back)
			if n := run("pull -c", "-c", remote+dst+"/", back+"/"); n != 0 {
				t.Errorf("pull -c of an unchanged tree: %d literal bytes, want 0", n)
			}
		})
	}
}

func TestRsyncRefused(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "f"), []byte("f"))
	remote := "alice@127.0.0.1:"
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-aH"}, 4, "does not support --hard-links (-H)"},
		{[]string{"-aA"}, 4, "does not support --acls (-A)"},
		{[]string{"-aX"}, 4, "does not support --xattrs (-X)"},
		{[]string{"-a", "-M--fake-super"}, 4, "does not support --fake-super"},
		{[]string{"-a", "-M--frobnicate"}, 1, "--frobnicate: unknown option"},
		{[]string{"-a", "-M--daemon"}, 4, "does not support --daemon"},
		{[]string{"-a", "-M--config=/etc/rsyncd.conf"}, 4, "does not support --config"},
		{[]string{"-a", "--protocol=26"}, 12, "protocol version 26 is too old"},
	} {
		for _, dir := range []string{"push", "pull"} {
			args := append(append([]string{}, c.args...), src+"/", remote+"dst/")
			if dir == "pull" {
				args = append(append([]string{}, c.args...), remote+"dst/", t.TempDir()+"/")
			}
			out, code := ts.rsyncCmd("alice", args...)
			if code != c.code || !strings.Contains(out, c.msg) {
				t.Errorf("%s %v: exit %d, want %d and %q\n%s", dir, c.args, code, c.code, c.msg, out)
			}
		}
	}
}

func TestRsyncJail(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	ts.addUser("bob", "", "bob")
	home, bobHome := ts.home("alice"), ts.home("bob")
	writeFile(t, filepath.Join(bobHome, "mine"), []byte("bob's"))
	outside := filepath.Join(ts.dir, "outside")
	writeFile(t, filepath.Join(outside, "secret"), []byte("secret"))
	os.Symlink(outside, filepath.Join(home, "out"))
	os.Symlink("/etc", filepath.Join(home, "etc-link"))
	writeFile(t, filepath.Join(home, "ok"), []byte("ok"))
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "x"), []byte("x"))
	before := listing(t, ts.dir, false)
	remote := "alice@127.0.0.1:"
	local := t.TempDir()

	// Links that could lead out are refused as SFTP refuses them; the
	// rest of the push is done.
	links := filepath.Join(t.TempDir(), "links")
	writeFile(t, filepath.Join(links, "sub", "f"), []byte("f"))
	os.Symlink("../sub/f", filepath.Join(links, "sub", "up"))
	os.Symlink("/etc/passwd", filepath.Join(links, "abs"))
	out, code := ts.rsyncCmd("alice", "-a", links+"/", remote+"links/")
	if code != 23 || !strings.Contains(out, `symlink "sub/up" -> "../sub/f" failed: Permission denied`) ||
		!strings.Contains(out, `symlink "abs" -> "/etc/passwd" failed: Permission denied`) ||
		string(mustRead(filepath.Join(home, "links", "sub", "f"))) != "f" {
		t.Errorf("push of links leading up or out: exit %d\n%s", code, out)
	}
	os.RemoveAll(filepath.Join(home, "links"))

	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-a", src + "/x", remote + "../y"}, 3, `change_dir "../y" failed: Permission denied`},
		{[]string{"-a", src + "/", remote + "../bob/"}, 3, `change_dir "../bob/" failed: Permission denied`},
		{[]string{"-a", src + "/", remote + "out/"}, 3, "Permission denied"},
		{[]string{"-a", remote + "/etc/passwd", local}, 23, `link_stat "/etc/passwd" failed: No such file or directory`},
		{[]string{"-a", remote + "../bob/mine", local}, 23, `link_stat "../bob/mine" failed: Permission denied`},
		{[]string{"-a", remote + "etc-link/passwd", local}, 23, `link_stat "etc-link/passwd" failed: Permission denied`},
		{[]string{"-a", remote + "out/secret", local}, 23, `failed: Permission denied`},
		{[]string{"-a", remote + "etc-link/", local}, 23, `failed: Permission denied`},
		// The home itself: the links leading out are not sent.
		{[]string{"-a", remote, local + "/home/"}, 23, `readlink_stat "etc-link" failed: Permission denied`},
	} {
		out, code := ts.rsyncCmd("alice", c.args...)
		if code != c.code || !strings.Contains(out, c.msg) {
			t.Errorf("rsync %v: exit %d, want %d and %q\n%s", c.args, code, c.code, c.msg, out)
		}
		if strings.Contains(out, ts.dir) {
			t.Errorf("rsync %v: a host path in the output:\n%s", c.args, out)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(local, "home", "ok")); string(got) != "ok" {
		t.Errorf("pull of the home: ok = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(local, "home", "out")); err == nil {
		t.Error("a link leading out of the home was sent")
	}
	if after := listing(t, ts.dir, false); after != before {
		t.Errorf("the server's tree changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestRsyncQuota(t *testing.T) {
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 20<<20, 0)
	home := ts.home("alice")
	src := filepath.Join(t.TempDir(), "src")
	// 30 MiB: a and b fit (with what the entries count), c does not.
	for n, size := range map[string]int{"a": 9 << 20, "b": 9 << 20, "c": 12 << 20} {
		writeFile(t, filepath.Join(src, n), randomBytes(size))
	}
	out, code := ts.rsyncCmd("alice", "-a", src+"/", "alice@127.0.0.1:dst/")
	if code != 23 || !strings.Contains(out, `write failed on "c": quota exceeded`) {
		t.Fatalf("push past the quota: exit %d, want 23 and the quota message\n%s", code, out)
	}
	for _, n := range []string{"a", "b"} {
		if md5File(t, filepath.Join(home, "dst", n)) != md5File(t, filepath.Join(src, n)) {
			t.Errorf("%s differs", n)
		}
	}
	if _, err := os.Stat(filepath.Join(home, "dst", "c")); err == nil {
		t.Error("the file past the quota was kept")
	}
	if u := duFiles(t, filepath.Join(home, "dst")); u > 20<<20 {
		t.Errorf("usage %d is past the quota", u)
	}
	// An overwrite that does not fit keeps the old file.
	writeFile(t, filepath.Join(src, "a"), randomBytes(11<<20))
	writeFile(t, filepath.Join(home, "dst", "small"), []byte("small"))
	os.Remove(filepath.Join(src, "b"))
	os.Remove(filepath.Join(src, "c"))
	old := md5File(t, filepath.Join(home, "dst", "a"))
	for _, mode := range []string{"-W", "--no-W", "--inplace"} {
		out, code = ts.rsyncCmd("alice", "-a", mode, src+"/a", "alice@127.0.0.1:dst/a")
		if code != 23 || !strings.Contains(out, "quota exceeded") || md5File(t, filepath.Join(home, "dst", "a")) != old {
			t.Fatalf("overwrite past the quota with %s: exit %d, want 23 and the old file kept\n%s", mode, code, out)
		}
	}
	// --delete frees space.
	out, code = ts.rsyncCmd("alice", "-a", "--delete", src+"/", "alice@127.0.0.1:dst/")
	if code != 0 {
		t.Fatalf("push with --delete: exit %d\n%s", code, out)
	}
	if md5File(t, filepath.Join(home, "dst", "a")) != md5File(t, filepath.Join(src, "a")) {
		t.Error("a differs after --delete made room")
	}
}

func TestRsyncSpecials(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "f"), []byte("f"))
	if err := exec.Command("mkfifo", filepath.Join(src, "fifo")).Run(); err != nil {
		t.Fatal(err)
	}
	out, code := ts.rsyncCmd("alice", "-a", src+"/", "alice@127.0.0.1:dst/")
	if code != 0 || !strings.Contains(out, `skipping non-regular file "fifo"`) {
		t.Fatalf("push of a FIFO: exit %d, want 0 and a warning\n%s", code, out)
	}
	if _, err := os.Lstat(filepath.Join(home, "dst", "fifo")); err == nil {
		t.Error("the FIFO was made")
	}
	if got, _ := os.ReadFile(filepath.Join(home, "dst", "f")); string(got) != "f" {
		t.Errorf("f = %q", got)
	}
	// A FIFO planted in the home is not sent.
	exec.Command("mkfifo", filepath.Join(home, "dst", "fifo2")).Run()
	back := t.TempDir()
	out, code = ts.rsyncCmd("alice", "-a", "alice@127.0.0.1:dst/", back+"/")
	if code != 0 {
		t.Fatalf("pull: exit %d\n%s", code, out)
	}
	if _, err := os.Lstat(filepath.Join(back, "fifo2")); err == nil {
		t.Error("the FIFO was sent")
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	os.RemoveAll(to)
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
}

// destState prepares a destination as a test case of the option matrix
// starts from: absent, a copy of the source with changes, with stale
// entries, or with big files cut short.
func destState(t *testing.T, src, dst, state string) {
	t.Helper()
	os.RemoveAll(dst)
	if state == "fresh" {
		return
	}
	copyTree(t, src, dst)
	switch state {
	case "modified":
		data, _ := os.ReadFile(filepath.Join(src, "mid.bin"))
		data = append(append(append([]byte{}, data[:1000]...), []byte("123456789")...), data[1000:]...)
		copy(data[200<<10:], "0123456789")
		writeFile(t, filepath.Join(dst, "mid.bin"), data)
		writeFile(t, filepath.Join(dst, "small.txt"), []byte("HELLO\n"))
		os.Chmod(filepath.Join(dst, "exec.sh"), 0o600)
		newer := fixedTime.Add(time.Hour)
		os.Chtimes(filepath.Join(dst, "a/b/c/deep.txt"), newer, newer)
		writeFile(t, filepath.Join(dst, "a/b/c/deep.txt"), []byte("newer on the receiver"))
		os.Chtimes(filepath.Join(dst, "a/b/c/deep.txt"), newer, newer)
		older := fixedTime.Add(-time.Hour)
		for _, n := range []string{"mid.bin", "small.txt"} {
			os.Chtimes(filepath.Join(dst, n), older, older)
		}
		os.Chtimes(filepath.Join(dst, "a/b/c"), fixedTime, fixedTime)
	case "extra":
		writeFile(t, filepath.Join(dst, "stale.txt"), []byte("stale"))
		writeFile(t, filepath.Join(dst, "stale.bin"), []byte("stale bin"))
		writeFile(t, filepath.Join(dst, "a/stale/tree/x"), []byte("x"))
		os.Symlink("small.txt", filepath.Join(dst, "stale-link"))
		setTimes(t, dst)
	case "truncated":
		for _, n := range []string{"mid.bin", "big.bin"} {
			os.Truncate(filepath.Join(dst, n), 1000)
		}
	}
}

// TestRsyncOptions runs the client with each set of options against silo
// and, for reference, locally, in both directions, and wants the same
// exit status and the same tree.
func TestRsyncOptions(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	work := t.TempDir()
	src := filepath.Join(work, "src")
	makeTree(t, src, 1<<20)
	for _, c := range []struct {
		state string
		args  []string
	}{
		{"fresh", []string{"-av"}},
		{"modified", []string{"-av"}},
		{"modified", []string{"-avc"}},
		{"modified", []string{"-avn"}},
		{"modified", []string{"-avu"}},
		{"modified", []string{"-a", "--size-only"}},
		{"modified", []string{"-a", "--ignore-existing"}},
		{"modified", []string{"-a", "-I"}},
		{"modified", []string{"-a", "--inplace"}},
		{"modified", []string{"-aW"}},
		{"modified", []string{"-a", "-B", "1024"}},
		{"modified", []string{"-a", "--stats", "--progress"}},
		{"modified", []string{"-a", "--info=progress2"}},
		{"extra", []string{"-a", "--delete"}},
		{"extra", []string{"-a", "--delete-before"}},
		{"extra", []string{"-a", "--delete-during"}},
		{"extra", []string{"-a", "--delete-after"}},
		{"extra", []string{"-a", "--delete-delay"}},
		{"extra", []string{"-a", "--delete", "--exclude=*.bin"}},
		{"extra", []string{"-a", "--delete-excluded", "--exclude=*.bin"}},
		{"extra", []string{"-a", "--delete", "-n"}},
		{"fresh", []string{"-a", "--exclude=*.bin", "--exclude=a/b/", "--include=*.txt"}},
		{"fresh", []string{"-a", "--include=*/", "--include=*.txt", "--exclude=*"}},
		{"fresh", []string{"-a", "--filter=- /mid.bin", "--filter=- dir with space/"}},
		{"fresh", []string{"-a", "--exclude=a/**/e.txt", "--exclude=x/***"}},
		{"truncated", []string{"-a", "--append-verify"}},
		{"truncated", []string{"-a", "--append"}},
		{"fresh", []string{"-avz"}},
		{"modified", []string{"-avz"}},
		{"modified", []string{"-a", "--old-compress"}},
		{"modified", []string{"-a", "--new-compress"}},
		{"modified", []string{"-azc"}},
		{"truncated", []string{"-az", "--append"}},
		{"modified", []string{"-az", "--protocol=30"}},
		{"modified", []string{"-az", "--protocol=29"}},
		{"modified", []string{"-az", "--protocol=27", "-B", "100000"}},
		{"extra", []string{"-a", "--delete", "--protocol=28"}},
		{"modified", []string{"-a", "--inplace", "--protocol=29"}},
		{"truncated", []string{"-a", "--append", "--protocol=29"}},
		{"fresh", []string{"-r"}},
		{"fresh", []string{"-rlt"}},
		{"modified", []string{"-rlt"}},
	} {
		name := c.state + " " + strings.Join(c.args, " ")
		withTimes := strings.Contains(strings.Join(c.args, " "), "-a") || strings.Contains(c.args[0], "t")
		ref := filepath.Join(work, "ref")
		destState(t, src, ref, c.state)
		refOut, refCode := runLocal(t, append(append([]string{}, c.args...), src+"/", ref+"/")...)
		want := listing(t, ref, withTimes)

		// Push into the home.
		dst := filepath.Join(home, "push")
		destState(t, src, dst, c.state)
		out, code := ts.rsyncCmd("alice", append(append([]string{}, c.args...), src+"/", "alice@127.0.0.1:push/")...)
		if code != refCode {
			t.Errorf("push %s: exit %d, locally %d\n%s\nlocally:\n%s", name, code, refCode, out, refOut)
		} else if got := listing(t, dst, withTimes); got != want {
			t.Errorf("push %s: trees differ:\n%s\n%s", name, lineDiff(want, got), out)
		}

		// Pull from a copy of the source in the home.
		copyTree(t, src, filepath.Join(home, "src"))
		dst = filepath.Join(work, "pull")
		destState(t, src, dst, c.state)
		out, code = ts.rsyncCmd("alice", append(append([]string{}, c.args...), "alice@127.0.0.1:src/", dst+"/")...)
		if code != refCode {
			t.Errorf("pull %s: exit %d, locally %d\n%s\nlocally:\n%s", name, code, refCode, out, refOut)
		} else if got := listing(t, dst, withTimes); got != want {
			t.Errorf("pull %s: trees differ:\n%s\n%s", name, lineDiff(want, got), out)
		}
	}
}

func runLocal(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command("rsync", args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// lineDiff shows the lines only one of two listings has.
func lineDiff(want, got string) string {
	w, g := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(want, "\n") {
		w[l] = true
	}
	for _, l := range strings.Split(got, "\n") {
		g[l] = true
	}
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if !w[l] {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

// TestRsyncPartial kills the client in the middle of a file: with
// --partial what arrived stays (mtime 0) and the next run builds on it;
// with --partial-dir it stays in that directory and the old file is
// intact; without either, the old file stays and no temp file is left.
func TestRsyncPartial(t *testing.T) {
	for _, mode := range []string{"--partial", "--partial-dir=.part", "--no-partial"} {
		t.Run(mode, func(t *testing.T) {
			ts := startServer(t)
			ts.addUser("alice", "", "alice")
			home := ts.home("alice")
			src := filepath.Join(t.TempDir(), "src")
			data := randomBytes(3 << 20)
			writeFile(t, filepath.Join(src, "big"), data)
			old := []byte("the old content")
			dst := filepath.Join(home, "dst")
			if mode != "--partial" {
				writeFile(t, filepath.Join(dst, "big"), old)
			}
			cmd := ts.rsyncExec("alice", "-a", mode, "--bwlimit=300", src+"/", "alice@127.0.0.1:dst/")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Kill the client (and its ssh) once data has arrived.
			waitFor(t, "data to arrive", func() bool {
				found := false
				filepath.Walk(dst, func(p string, fi fs.FileInfo, err error) error {
					if err == nil && fi.Mode().IsRegular() && fi.Size() > 0 && !bytes.Equal(old, mustRead(p)) {
						found = true
					}
					return nil
				})
				return found
			})
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
			waitFor(t, "the server to end the transfer", func() bool { return strings.Contains(ts.logs.String(), "result=aborted") })
			got := mustRead(filepath.Join(dst, "big"))
			fi, _ := os.Stat(filepath.Join(dst, "big"))
			prefix := func(p []byte) bool { return len(p) > 0 && len(p) < len(data) && bytes.Equal(p, data[:len(p)]) }
			var want []string
			switch mode {
			case "--partial":
				if !prefix(got) || fi.ModTime().Unix() != 0 {
					t.Fatalf("partial file: %d bytes, mtime %v", len(got), fi.ModTime())
				}
				want = []string{"big"}
			case "--partial-dir=.part":
				if p := mustRead(filepath.Join(dst, ".part", "big")); !prefix(p) || !bytes.Equal(got, old) {
					t.Fatalf("partial dir: %d bytes kept, old file %q", len(p), got)
				}
				want = []string{".part", "big"}
			default:
				if !bytes.Equal(got, old) {
					t.Fatalf("the old file changed: %q", got[:min(len(got), 40)])
				}
				want = []string{"big"}
			}
			var names []string
			entries, _ := os.ReadDir(dst)
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if strings.Join(names, " ") != strings.Join(want, " ") {
				t.Fatalf("after the kill the destination holds %v, want %v", names, want)
			}
			out, code := ts.rsyncCmd("alice", "-a", "--stats", mode, src+"/", "alice@127.0.0.1:dst/")
			if code != 0 {
				t.Fatalf("rerun: exit %d\n%s", code, out)
			}
			if !bytes.Equal(mustRead(filepath.Join(dst, "big")), data) {
				t.Fatal("rerun: content differs")
			}
			if mode != "--no-partial" && strings.Contains(out, "Matched data: 0 bytes") {
				t.Errorf("rerun did not use the partial file:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(dst, ".part")); err == nil {
				t.Error("the partial directory is left")
			}
		})
	}
}

func mustRead(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

// waitFor polls cond until it holds, failing after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRsyncMisc(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "a b", "c;d$e"), []byte("secluded"))
	writeFile(t, filepath.Join(src, "g1.txt"), []byte("1"))
	writeFile(t, filepath.Join(src, "g2.txt"), []byte("2"))
	remote := "alice@127.0.0.1:"

	// -s: the arguments travel in the protocol, not on the command line.
	if out, code := ts.rsyncCmd("alice", "-as", src+"/", remote+"sec dir/"); code != 0 {
		t.Fatalf("push -s: exit %d\n%s", code, out)
	}
	if got := mustRead(filepath.Join(home, "sec dir", "a b", "c;d$e")); string(got) != "secluded" {
		t.Fatalf("push -s: got %q", got)
	}
	back := t.TempDir()
	if out, code := ts.rsyncCmd("alice", "-as", remote+"sec dir/a b/c;d$e", back+"/"); code != 0 || string(mustRead(filepath.Join(back, "c;d$e"))) != "secluded" {
		t.Fatalf("pull -s: exit %d\n%s", code, out)
	}

	// Wildcards in a pulled path are expanded in the home; ~ is the home.
	if out, code := ts.rsyncCmd("alice", "-a", remote+"~/sec dir/g*.txt", back+"/"); code != 0 ||
		string(mustRead(filepath.Join(back, "g1.txt"))) != "1" || string(mustRead(filepath.Join(back, "g2.txt"))) != "2" {
		t.Fatalf("pull of a glob: exit %d\n%s", code, out)
	}

	// Listing.
	out, code := ts.rsyncCmd("alice", remote+"sec dir/")
	if code != 0 || !strings.Contains(out, "a b") || !strings.Contains(out, "g1.txt") {
		t.Fatalf("listing: exit %d\n%s", code, out)
	}

	// --remove-source-files on a pull removes what was received.
	if out, code := ts.rsyncCmd("alice", "-a", "--remove-source-files", remote+"sec dir/", filepath.Join(back, "moved")+"/"); code != 0 {
		t.Fatalf("pull --remove-source-files: exit %d\n%s", code, out)
	}
	if string(mustRead(filepath.Join(back, "moved", "a b", "c;d$e"))) != "secluded" {
		t.Fatal("pull --remove-source-files: file not received")
	}
	if _, err := os.Stat(filepath.Join(home, "sec dir", "a b", "c;d$e")); err == nil {
		t.Fatal("pull --remove-source-files: source not removed")
	}
	// ... and on a push removes the client's copies.
	moved := filepath.Join(t.TempDir(), "moved")
	copyTree(t, filepath.Join(back, "moved"), moved)
	if out, code := ts.rsyncCmd("alice", "-a", "--remove-source-files", moved+"/", remote+"pushed/"); code != 0 {
		t.Fatalf("push --remove-source-files: exit %d\n%s", code, out)
	}
	if string(mustRead(filepath.Join(home, "pushed", "a b", "c;d$e"))) != "secluded" {
		t.Fatal("push --remove-source-files: file not received")
	}
	if _, err := os.Stat(filepath.Join(moved, "a b", "c;d$e")); err == nil {
		t.Fatal("push --remove-source-files: source not removed")
	}
	if out, code := ts.rsyncCmd("alice", "-a", "-x", src+"/", remote+"x/"); code != 0 {
		t.Fatalf("push -x: exit %d\n%s", code, out)
	}
	if out, code := ts.rsyncCmd("alice", "-a", "-x", remote+"x/", filepath.Join(back, "x")+"/"); code != 0 {
		t.Fatalf("pull -x: exit %d\n%s", code, out)
	}
	// A missing source among others: exit 23, the others copied.
	out, code = ts.rsyncCmd("alice", "-a", remote+"x/g1.txt", remote+"nonexistent", filepath.Join(back, "some")+"/")
	if code != 23 || !strings.Contains(out, `link_stat "nonexistent" failed: No such file or directory (2)`) || string(mustRead(filepath.Join(back, "some", "g1.txt"))) != "1" {
		t.Fatalf("pull with a missing source: exit %d\n%s", code, out)
	}
	// A push below a missing directory.
	out, code = ts.rsyncCmd("alice", "-a", src+"/g1.txt", remote+"nonexist/deeper/x")
	if code != 3 || !strings.Contains(out, `"nonexist/deeper"`) || strings.Contains(out, home) {
		t.Fatalf("push below a missing directory: exit %d\n%s", code, out)
	}
}

// TestRsyncManyFiles sends a list of many files both ways: 10,000 by
// default, SILO_RSYNC_MANY_FILES (a multiple of 1,000) if set; 100,000
// work, but creating them takes most of a minute on a slow disk. The runs
// are dry: what a list costs the server is the same.
func TestRsyncManyFiles(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	src := filepath.Join(home, "many")
	dirs, per := 10, 1000
	if n, err := strconv.Atoi(os.Getenv("SILO_RSYNC_MANY_FILES")); err == nil && n >= 1000 {
		dirs = n / per
	}
	for d := range dirs {
		dir := filepath.Join(src, fmt.Sprintf("d%03d", d))
		os.MkdirAll(dir, 0o755)
		cmd := exec.Command("sh", "-c", fmt.Sprintf("seq 1 %d | xargs touch", per))
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("touch: %v\n%s", err, out)
		}
	}
	// The home's copy is also the client's source for the push.
	for _, args := range [][]string{
		{"-an", "--stats", "alice@127.0.0.1:many/", t.TempDir() + "/"},
		{"-an", "--stats", src + "/", "alice@127.0.0.1:other/"},
	} {
		out, code := ts.rsyncCmd("alice", args...)
		want := fmt.Sprintf("(reg: %s, dir: %d)", thousands(dirs*per), dirs+1)
		if code != 0 || !strings.Contains(out, "Number of files: "+thousands(dirs*per+dirs+1)+" "+want) ||
			!strings.Contains(out, "Number of regular files transferred: "+thousands(dirs*per)+"\n") {
			t.Fatalf("rsync %v: exit %d\n%s", args, code, out)
		}
	}
}

// thousands formats n as rsync's --stats does: 100,000.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
