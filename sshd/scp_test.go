package sshd_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// scpCmd runs OpenSSH's scp with the server's options; it returns the
// combined output and the exit status.
func (ts *testServer) scpCmd(a auth, args ...string) (string, int) {
	ts.t.Helper()
	needClient(ts.t, "scp")
	base, env := ts.sshArgs(a)
	cmd := exec.Command("scp", append(append(base, "-P", ts.port, "-q"), args...)...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.String() + stderr.String(), ee.ExitCode()
	} else if err != nil {
		ts.t.Fatal(err)
	}
	return stdout.String() + stderr.String(), 0
}

func TestLegacySCP(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	local := t.TempDir()
	data := randomBytes(3<<20 + 5)
	writeFile(t, filepath.Join(local, "f"), data)
	a := auth{key: "alice"}
	remote := func(p string) string { return "alice@127.0.0.1:" + p }

	if out, code := ts.scpCmd(a, "-O", filepath.Join(local, "f"), remote("up")); code != 0 {
		t.Fatalf("scp -O put: %d\n%s", code, out)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "up")); !bytes.Equal(got, data) {
		t.Fatal("scp -O put: content differs")
	}
	if out, code := ts.scpCmd(a, "-O", remote("/up"), filepath.Join(local, "down")); code != 0 {
		t.Fatalf("scp -O get: %d\n%s", code, out)
	}
	if got, _ := os.ReadFile(filepath.Join(local, "down")); !bytes.Equal(got, data) {
		t.Fatal("scp -O get: content differs")
	}

	// -r into a new name creates it; into an existing directory goes inside.
	writeFile(t, filepath.Join(local, "tree", "a"), []byte("a"))
	writeFile(t, filepath.Join(local, "tree", "sub", "b"), []byte("b"))
	os.MkdirAll(filepath.Join(local, "tree", "empty"), 0o755)
	if out, code := ts.scpCmd(a, "-O", "-r", filepath.Join(local, "tree"), remote("newtree")); code != 0 {
		t.Fatalf("scp -O -r to a new name: %d\n%s", code, out)
	}
	os.Mkdir(filepath.Join(home, "existing"), 0o755)
	if out, code := ts.scpCmd(a, "-O", "-r", filepath.Join(local, "tree"), remote("existing")); code != 0 {
		t.Fatalf("scp -O -r into a directory: %d\n%s", code, out)
	}
	for _, p := range []string{"newtree/a", "newtree/sub/b", "existing/tree/a", "existing/tree/sub/b"} {
		if _, err := os.Stat(filepath.Join(home, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(home, "newtree", "empty")); err != nil || !fi.IsDir() {
		t.Errorf("empty directory not copied: %v", err)
	}

	// -p keeps times and modes (masked to 0777) both ways.
	mt := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	os.Chmod(filepath.Join(local, "f"), 0o4750)
	os.Chtimes(filepath.Join(local, "f"), mt, mt)
	if out, code := ts.scpCmd(a, "-O", "-p", filepath.Join(local, "f"), remote("kept")); code != 0 {
		t.Fatalf("scp -O -p: %d\n%s", code, out)
	}
	fi, _ := os.Stat(filepath.Join(home, "kept"))
	if !fi.ModTime().Equal(mt) || fi.Mode() != 0o750 {
		t.Errorf("scp -O -p put: mtime %v mode %v, want %v -rwxr-x---", fi.ModTime(), fi.Mode(), mt)
	}
	if out, code := ts.scpCmd(a, "-O", "-p", "-r", remote("newtree"), filepath.Join(local, "back")); code != 0 {
		t.Fatalf("scp -O -p -r get: %d\n%s", code, out)
	}
	if got, _ := os.ReadFile(filepath.Join(local, "back", "sub", "b")); string(got) != "b" {
		t.Error("scp -O -r get: tree differs")
	}

	// Globs are expanded inside the home.
	glob := filepath.Join(local, "glob")
	os.Mkdir(glob, 0o755)
	if out, code := ts.scpCmd(a, "-O", remote("u*"), remote("k?pt"), glob); code != 0 {
		t.Fatalf("scp -O with globs: %d\n%s", code, out)
	}
	if entries, _ := os.ReadDir(glob); len(entries) != 2 {
		t.Errorf("globs fetched %v", entries)
	}

	// Errors are printed and make the exit status non-zero.
	out, code := ts.scpCmd(a, "-O", remote("/x"), local)
	if code == 0 || !strings.Contains(out, "scp: /x: No such file or directory") {
		t.Errorf("missing source: %d %q", code, out)
	}
	out, code = ts.scpCmd(a, "-O", remote("newtree"), local)
	if code == 0 || !strings.Contains(out, "scp: newtree: not a regular file") {
		t.Errorf("directory without -r: %d %q", code, out)
	}
	out, code = ts.scpCmd(a, "-O", filepath.Join(local, "f"), remote("nodir/x"))
	if code == 0 || !strings.Contains(out, "scp: nodir/x: No such file or directory") {
		t.Errorf("target in a missing directory: %d %q", code, out)
	}
}

// scpSession drives the remote end of the legacy protocol by hand.
type scpSession struct {
	t    *testing.T
	sess *ssh.Session
	w    io.WriteCloser
	r    *bufio.Reader
	errs bytes.Buffer
}

func (ts *testServer) scpRaw(user, key, command string) *scpSession {
	ts.t.Helper()
	c := ts.connect(user, key)
	sess, _ := c.NewSession()
	w, _ := sess.StdinPipe()
	r, _ := sess.StdoutPipe()
	s := &scpSession{t: ts.t, sess: sess, w: w, r: bufio.NewReader(r)}
	sess.Stderr = &s.errs
	if err := sess.Start(command); err != nil {
		ts.t.Fatal(err)
	}
	return s
}

// reply reads one reply: "" for an acknowledgement, or the message of an
// error (with its \x01 or \x02).
func (s *scpSession) reply() string {
	s.t.Helper()
	c, err := s.r.ReadByte()
	if err != nil {
		return "EOF"
	}
	if c == 0 {
		return ""
	}
	line, _ := s.r.ReadString('\n')
	return string(c) + line
}

func (s *scpSession) send(format string, a ...any) {
	fmt.Fprintf(s.w, format, a...)
}

func (s *scpSession) exitStatus() int {
	s.w.Close()
	err := s.sess.Wait()
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus()
	}
	if err != nil {
		return -1
	}
	return 0
}

// Every name in the stream is one path element: anything else ends the
// transfer, and nothing is written outside the target.
func TestLegacySCPNamesChecked(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	sib := ts.home("alice2")
	for _, rec := range []string{"C0644 5 ../x\n", "C0644 5 a/b\n", "C0644 5 /etc/x\n", "C0644 5 ..\n", "C0644 5 \n", "D0755 0 ..\n", "D0755 0 ../alice2\n", "C0644 5 .\n"} {
		s := ts.scpRaw("alice", "alice", "scp -r -t /")
		if r := s.reply(); r != "" {
			t.Fatalf("start: %q", r)
		}
		s.send("%s", rec)
		r := s.reply()
		if !strings.HasPrefix(r, "\x02scp: error: unexpected filename") {
			t.Errorf("record %q: reply %q, want a fatal unexpected filename", rec, r)
		}
		if code := s.exitStatus(); code == 0 {
			t.Errorf("record %q: exit status 0", rec)
		}
	}
	for _, dir := range []string{home, sib, filepath.Dir(home)} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "alice" && e.Name() != "alice2" {
				t.Errorf("%s holds %s", dir, e.Name())
			}
		}
	}
	// Targets and sources are virtual paths: ../../alice2/x is alice's
	// own /alice2/x, and alice has no directory alice2.
	s := ts.scpRaw("alice", "alice", "scp -t ../../alice2/x")
	s.reply()
	s.send("C0644 5 x\n")
	if r := s.reply(); r != "\x01scp: ../../alice2/x: No such file or directory\n" {
		t.Errorf("target climbing out: %q", r)
	}
	s.exitStatus()
	if _, err := os.Stat(filepath.Join(sib, "x")); err == nil {
		t.Error("a file reached the sibling's home")
	}
	s = ts.scpRaw("alice", "alice", "scp -f ../../../etc/passwd")
	s.send("\x00")
	if r := s.reply(); r != "\x01scp: ../../../etc/passwd: No such file or directory\n" {
		t.Errorf("source outside the home: %q", r)
	}
	if code := s.exitStatus(); code != 1 {
		t.Errorf("exit status %d", code)
	}
}

func TestLegacySCPQuota(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addQuotaUser("alice", "alice", 1<<20, 0)
	home := ts.home("alice")
	local := t.TempDir()
	orig := randomBytes(600 << 10)
	writeFile(t, filepath.Join(home, "keep"), orig)
	writeFile(t, filepath.Join(local, "big"), randomBytes(2<<20))
	writeFile(t, filepath.Join(local, "small"), randomBytes(100<<10))
	a := auth{key: "alice"}

	out, code := ts.scpCmd(a, "-O", filepath.Join(local, "big"), "alice@127.0.0.1:keep")
	if code == 0 || !strings.Contains(out, "scp: keep: quota exceeded") {
		t.Fatalf("over-quota overwrite: %d %q", code, out)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "keep")); !bytes.Equal(got, orig) {
		t.Fatal("failed overwrite changed the original")
	}
	// Several files: the one that fits arrives, the other is reported.
	out, code = ts.scpCmd(a, "-O", filepath.Join(local, "big"), filepath.Join(local, "small"), "alice@127.0.0.1:/")
	if code == 0 || !strings.Contains(out, "scp: /big: quota exceeded") {
		t.Fatalf("two files over the quota: %d %q", code, out)
	}
	if fi, err := os.Stat(filepath.Join(home, "small")); err != nil || fi.Size() != 100<<10 {
		t.Fatalf("the file that fits did not arrive: %v", err)
	}
	if du := duFiles(t, home); du > 1<<20 {
		t.Fatalf("du %d over the quota", du)
	}
}

// OpenSSH 9's scp speaks SFTP by default; overwriting a bigger file with a
// smaller one relies on setstat size.
func TestSCPSFTPMode(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	local := t.TempDir()
	big, small := randomBytes(1<<20), randomBytes(1000)
	writeFile(t, filepath.Join(local, "big"), big)
	writeFile(t, filepath.Join(local, "small"), small)
	a := auth{key: "alice"}
	for _, f := range []string{"big", "small"} {
		if out, code := ts.scpCmd(a, filepath.Join(local, f), "alice@127.0.0.1:f"); code != 0 {
			t.Fatalf("scp %s: %d\n%s", f, code, out)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(home, "f")); !bytes.Equal(got, small) {
		t.Fatalf("after overwriting 1 MiB with 1000 bytes: %d bytes", len(got))
	}
	if out, code := ts.scpCmd(a, "alice@127.0.0.1:f", filepath.Join(local, "back")); code != 0 {
		t.Fatalf("scp get: %d\n%s", code, out)
	}
	if got, _ := os.ReadFile(filepath.Join(local, "back")); !bytes.Equal(got, small) {
		t.Fatal("scp get: content differs")
	}
}

// PuTTY's pscp, in both protocols.
func TestPuTTYpscp(t *testing.T) {
	t.Parallel()
	needClient(t, "pscp")
	ts := startServer(t)
	ts.addUser("alice", "alice-pw")
	home := ts.home("alice")
	local := t.TempDir()
	data := randomBytes(2<<20 + 1)
	writeFile(t, filepath.Join(local, "f"), data)
	pscp := func(args ...string) (string, error) {
		base := []string{"-P", ts.port, "-pw", "alice-pw", "-batch", "-q"}
		for _, k := range shared.hostKeys {
			base = append(base, "-hostkey", ssh.FingerprintSHA256(k.PublicKey()))
		}
		out, err := exec.Command("pscp", append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	for _, mode := range []string{"-scp", "-sftp"} {
		name := "f" + mode
		if out, err := pscp(mode, filepath.Join(local, "f"), "alice@127.0.0.1:"+name); err != nil {
			t.Fatalf("pscp %s put: %v\n%s", mode, err, out)
		}
		if got, _ := os.ReadFile(filepath.Join(home, name)); !bytes.Equal(got, data) {
			t.Fatalf("pscp %s put: content differs", mode)
		}
		back := filepath.Join(local, "back"+mode)
		if out, err := pscp(mode, "alice@127.0.0.1:"+name, back); err != nil {
			t.Fatalf("pscp %s get: %v\n%s", mode, err, out)
		}
		if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
			t.Fatalf("pscp %s get: content differs", mode)
		}
	}
	out, err := pscp("-scp", "alice@127.0.0.1:/missing", local)
	if err == nil || !strings.Contains(out, "No such file or directory") {
		t.Errorf("pscp -scp of a missing file: %v %q", err, out)
	}
}

// A source that reports a read error after its data still gets a reply, and
// an overwrite it was making leaves the old file.
func TestLegacySCPSourceErrorAfterData(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "f"), []byte("old content"))
	s := ts.scpRaw("alice", "alice", "scp -t /")
	if r := s.reply(); r != "" {
		t.Fatalf("start: %q", r)
	}
	s.send("C0644 5 f\n")
	if r := s.reply(); r != "" {
		t.Fatalf("C: %q", r)
	}
	s.send("hello")
	s.send("\x01scp: f: read error\n")
	done := make(chan string, 1)
	go func() { done <- s.reply() }()
	select {
	case r := <-done:
		if r != "\x01scp: /f: incomplete\n" {
			t.Fatalf("reply after the source's error: %q", r)
		}
	case <-time.After(time.Minute): // a bound for a hang, not a speed limit
		t.Fatal("no reply after the source's error: both sides wait")
	}
	if code := s.exitStatus(); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "f")); string(got) != "old content" {
		t.Fatalf("file now %q", got)
	}
}
