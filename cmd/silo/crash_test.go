package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// addKeyUser adds a user who logs in with a new ed25519 key, and returns
// the private key's file.
func addKeyUser(t *testing.T, cfg, name string) string {
	t.Helper()
	return addKeyUserWith(t, siloBin, cfg, name)
}

// addKeyUserWith is addKeyUser with the silo binary bin, and more flags of
// user add; the key file is in a directory of the test's own.
func addKeyUserWith(t *testing.T, bin, cfg, name string, flags ...string) string {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, name)
	keyFile := filepath.Join(t.TempDir(), "id_"+name)
	os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600)
	signer, _ := ssh.NewSignerFromKey(priv)
	cmd := exec.Command(bin, append([]string{"user", "add", name, "--key", string(ssh.MarshalAuthorizedKey(signer.PublicKey())), "--config", cfg}, flags...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("user add %s: %v\n%s", name, err, out)
	}
	return keyFile
}

// crashSetup is what both crash tests start from: a config with the user
// alice, 200 MiB of random data in a local file, and where its upload goes.
func crashSetup(t *testing.T) (cfg, keyFile string, data []byte, local, remote string) {
	t.Helper()
	if os.Getenv("SILO_CRASHTEST") == "" {
		t.Skip("slow; run with make crashtest")
	}
	if _, err := exec.LookPath("sftp"); err != nil {
		t.Fatal("needs OpenSSH's sftp")
	}
	cfg = writeConfig(t, testConfig)
	keyFile = addKeyUser(t, cfg, "alice")
	data = make([]byte, 200<<20)
	rand.Read(data)
	local = filepath.Join(t.TempDir(), "data")
	os.WriteFile(local, data, 0o644)
	return cfg, keyFile, data, local, filepath.Join(filepath.Dir(cfg), "homes", "alice", "big")
}

// TestCrashThenReput kills silo with SIGKILL in the middle of a 200 MiB
// upload with 64 requests in flight, ten times: each time the partial file
// must be a prefix of the data sent, and reput after a restart must make it
// whole. `make crashtest` runs it.
func TestCrashThenReput(t *testing.T) {
	t.Parallel()
	cfg, keyFile, data, local, remote := crashSetup(t)

	sftpCmd := func(addr, batch string) *exec.Cmd {
		port := addr[strings.LastIndexByte(addr, ':')+1:]
		cmd := exec.Command("sftp", "-F", "/dev/null", "-R", "64", "-P", port, "-i", keyFile,
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentityAgent=none",
			"-o", "LogLevel=ERROR", "-b", "-", "alice@127.0.0.1")
		cmd.Stdin = strings.NewReader(batch)
		return cmd
	}
	for round := range 10 {
		os.Remove(remote)
		s := startSilo(t, cfg)
		put := sftpCmd(s.addr, fmt.Sprintf("put %s big\n", local))
		if err := put.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill once some data is on disk, at a random point after that.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if fi, err := os.Stat(remote); err == nil && fi.Size() > 0 {
				break
			}
		}
		n, _ := rand.Int(rand.Reader, big.NewInt(150))
		time.Sleep(time.Duration(n.Int64()) * time.Millisecond)
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.wait()
		put.Wait()

		got, err := os.ReadFile(remote)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !bytes.Equal(got, data[:len(got)]) {
			t.Fatalf("round %d: the %d bytes left by the crash are not a prefix of what was sent", round, len(got))
		}
		s2 := startSilo(t, cfg)
		if out, err := sftpCmd(s2.addr, fmt.Sprintf("reput %s big\n", local)).CombinedOutput(); err != nil {
			t.Fatalf("round %d: reput: %v\n%s", round, err, out)
		}
		if got, _ := os.ReadFile(remote); !bytes.Equal(got, data) {
			t.Fatalf("round %d: after reput the file differs (%d bytes)", round, len(got))
		}
		t.Logf("round %d: killed at %d of %d bytes; reput made it whole", round, len(got), len(data))
		s2.cmd.Process.Signal(syscall.SIGTERM)
		s2.wait()
	}
}

// SIGTERM during an upload: no new connection is accepted, the upload
// completes byte for byte, and silo exits 0.
func TestSIGTERMLetsUploadFinish(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("sftp"); err != nil {
		if os.Getenv("SILO_REQUIRE_CLIENTS") != "" {
			t.Fatal("needs OpenSSH's sftp")
		}
		t.Skip("needs OpenSSH's sftp")
	}
	if testing.Short() {
		t.Skip("slow")
	}
	// A grace no loaded machine runs out of: the upload, not the clock,
	// decides when silo exits.
	cfg := writeConfig(t, "shutdown_grace = \"10m\"\n"+testConfig)
	dir := filepath.Dir(cfg)
	keyFile := addKeyUser(t, cfg, "alice")
	data := make([]byte, 400<<20)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "data")
	os.WriteFile(local, data, 0o644)
	remote := filepath.Join(dir, "homes", "alice", "big")

	s := startSilo(t, cfg)
	port := s.addr[strings.LastIndexByte(s.addr, ':')+1:]
	// -l: about 3 s at 1 Gbit/s, so that SIGTERM lands mid-upload.
	put := exec.Command("sftp", "-F", "/dev/null", "-l", "1000000", "-R", "64", "-P", port, "-i", keyFile,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentityAgent=none",
		"-o", "LogLevel=ERROR", "-b", "-", "alice@127.0.0.1")
	put.Stdin = strings.NewReader(fmt.Sprintf("put %s big\n", local))
	var putOut bytes.Buffer
	put.Stdout, put.Stderr = &putOut, &putOut
	if err := put.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if fi, err := os.Stat(remote); err == nil && fi.Size() > 0 {
			break
		}
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	s.log.waitCount(t, "no longer accepting connections", 1)
	if c, err := net.Dial("tcp", s.addr); err == nil {
		c.Close()
		t.Error("a new connection was accepted during the shutdown grace period")
	}
	if err := put.Wait(); err != nil {
		t.Fatalf("upload during shutdown: %v\n%s", err, putOut.String())
	}
	if got, _ := os.ReadFile(remote); !bytes.Equal(got, data) {
		t.Fatalf("uploaded file differs (%d of %d bytes)", len(got), len(data))
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- s.wait() }()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("silo after SIGTERM: %v\n%s", err, s.log)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("silo still running 2 min after the upload finished")
	}
}

// countingReader closes reached once n bytes have been read.
type countingReader struct {
	r       io.Reader
	n       int64
	reached chan struct{}
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if c.n > 0 && c.n <= int64(k) {
		close(c.reached)
	}
	c.n -= int64(k)
	return k, err
}

// TestCrashOutOfOrderThenReput kills silo with SIGKILL at a random point of
// a 200 MiB upload that pkg/sftp's client writes out of order (64 writes in
// flight), while another account holds all the out-of-order data it may:
// after a restart the file is a prefix of what was sent, and reput makes
// it whole. `make crashtest` runs it.
func TestCrashOutOfOrderThenReput(t *testing.T) {
	cfg, keyFile, data, local, remote := crashSetup(t)
	hogKey := addKeyUser(t, cfg, "hog")
	for round := range 10 {
		os.Remove(remote)
		s := startSilo(t, cfg)
		// The hog: writes far ahead of a gap in three files, handles
		// open, so that its home's budget is full.
		hc, err := dialSilo(s.addr, "hog", ssh.InsecureIgnoreHostKey(), keyAuth(t, hogKey))
		if err != nil {
			t.Fatal(err)
		}
		hog, err := sftp.NewClient(hc)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			f, err := hog.Create(fmt.Sprintf("hold%d", i))
			if err != nil {
				t.Fatal(err)
			}
			for off := int64(32 << 10); off < 32<<20; off += 32 << 10 {
				f.WriteAt(data[:32<<10], off)
			}
		}

		c, err := dialSilo(s.addr, "alice", ssh.InsecureIgnoreHostKey(), keyAuth(t, keyFile))
		if err != nil {
			t.Fatal(err)
		}
		cl, err := sftp.NewClient(c, sftp.UseConcurrentWrites(true), sftp.MaxConcurrentRequestsPerFile(64))
		if err != nil {
			t.Fatal(err)
		}
		at, _ := rand.Int(rand.Reader, big.NewInt(int64(len(data))))
		src := &countingReader{r: bytes.NewReader(data), n: at.Int64() + 1, reached: make(chan struct{})}
		go func() {
			if f, err := cl.Create("big"); err == nil {
				f.ReadFrom(src)
			}
		}()
		<-src.reached
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
		c.Close()
		hc.Close()

		s2 := startSilo(t, cfg)
		got, err := os.ReadFile(remote)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !bytes.Equal(got, data[:len(got)]) {
			t.Fatalf("round %d: killed after %d bytes were sent, the %d bytes kept are not a prefix of them", round, at.Int64(), len(got))
		}
		port := s2.addr[strings.LastIndexByte(s2.addr, ':')+1:]
		reput := exec.Command("sftp", "-F", "/dev/null", "-P", port, "-i", keyFile,
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentityAgent=none",
			"-o", "LogLevel=ERROR", "-b", "-", "alice@127.0.0.1")
		reput.Stdin = strings.NewReader(fmt.Sprintf("reput %s big\n", local))
		if out, err := reput.CombinedOutput(); err != nil {
			t.Fatalf("round %d: reput: %v\n%s", round, err, out)
		}
		if got, _ := os.ReadFile(remote); !bytes.Equal(got, data) {
			t.Fatalf("round %d: after reput the file differs (%d bytes)", round, len(got))
		}
		t.Logf("round %d: killed after %d of %d bytes were sent, %d kept; reput made it whole", round, at.Int64(), len(data), len(got))
		s2.cmd.Process.Signal(syscall.SIGTERM)
		s2.cmd.Wait()
	}
}

// stallProxy forwards one connection to addr and passes at most n bytes
// of what the client sends: a transfer through it stops there, wherever
// that is, however fast the machine. It returns the port to dial.
func stallProxy(t *testing.T, addr string, n int64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		l.Close()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", addr)
		if err != nil {
			c.Close()
			return
		}
		go io.CopyN(s, c, n)
		// Until silo goes.
		io.Copy(c, s)
		c.Close()
		s.Close()
	}()
	a := l.Addr().String()
	return a[strings.LastIndexByte(a, ':')+1:]
}

// treeBytes is the size of the regular files under dir, hidden ones (temp
// files, a partial directory) included.
func treeBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// TestCrashRsyncPartialThenRerun kills silo with SIGKILL in the middle of
// an rsync push with --partial, of a new file, of a file that replaces an
// older one, and with --partial-dir: what the kill left must be the old
// file intact or a prefix of the new one, and the same command run again
// after a restart must finish with a byte-exact tree and nothing of silo's
// or rsync's left over, resuming from the partial file where one was kept.
// The push goes through a proxy that passes a random number of bytes and
// then holds the rest, and silo is killed once half of them are on disk:
// the kill always falls inside the file, with no clock involved, so the
// test is quick and runs in make test.
func TestCrashRsyncPartialThenRerun(t *testing.T) {
	t.Parallel()
	needClient(t, "rsync")
	needClient(t, "ssh")
	cfg := writeConfig(t, testConfig)
	keyFile := addKeyUser(t, cfg, "alice")
	home := filepath.Join(filepath.Dir(cfg), "homes", "alice")
	src := filepath.Join(t.TempDir(), "src")
	data := make([]byte, 32<<20)
	rand.Read(data)
	for name, b := range map[string][]byte{"a.txt": []byte("a\n"), "big": data, "sub/b.txt": []byte("b\n")} {
		os.MkdirAll(filepath.Dir(filepath.Join(src, name)), 0o755)
		if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rsync := func(port, dst string, opts ...string) *exec.Cmd {
		e := "ssh -F /dev/null -p " + port + " -i " + keyFile + " -o BatchMode=yes -o StrictHostKeyChecking=no" +
			" -o UserKnownHostsFile=/dev/null -o IdentityAgent=none -o LogLevel=ERROR"
		args := append([]string{"-a", "--stats", "-e", e}, opts...)
		return exec.Command("rsync", append(args, src+"/", "alice@127.0.0.1:"+dst+"/")...)
	}
	for round, v := range []struct {
		name      string
		opts      []string
		old       bool   // the destination holds an older big
		partial   string // where the kill leaves the partial file
		resumable bool
	}{
		{"new file", []string{"--partial"}, false, "big", true},
		{"replacing a file", []string{"--partial"}, true, "", false},
		{"partial-dir", []string{"--partial-dir=.rsync-partial"}, false, ".rsync-partial/big", true},
	} {
		dst := fmt.Sprintf("r%d", round)
		old := make([]byte, 1<<20)
		rand.Read(old)
		if v.old {
			os.MkdirAll(filepath.Join(home, dst), 0o755)
			if err := os.WriteFile(filepath.Join(home, dst, "big"), old, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		base := treeBytes(filepath.Join(home, dst))
		s := startSilo(t, cfg)
		pass, _ := rand.Int(rand.Reader, big.NewInt(24<<20))
		n := 4<<20 + pass.Int64()
		push := rsync(stallProxy(t, s.addr, n), dst, v.opts...)
		var pushOut bytes.Buffer
		push.Stdout, push.Stderr = &pushOut, &pushOut
		if err := push.Start(); err != nil {
			t.Fatal(err)
		}
		pushed := make(chan error, 1)
		go func() { pushed <- push.Wait() }()
		for deadline := time.Now().Add(2 * time.Minute); treeBytes(filepath.Join(home, dst)) < base+n/2; {
			select {
			case err := <-pushed:
				t.Fatalf("%s: the push ended (%v) before the kill:\n%s", v.name, err, pushOut.String())
			case <-time.After(time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of the %d bytes let through are not on disk after 2 minutes", v.name, treeBytes(filepath.Join(home, dst))-base, n)
			}
		}
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.wait()
		<-pushed

		var kept int
		if v.old {
			if got, _ := os.ReadFile(filepath.Join(home, dst, "big")); !bytes.Equal(got, old) {
				t.Fatalf("%s: the file being replaced changed (%d bytes)", v.name, len(got))
			}
		} else {
			got, err := os.ReadFile(filepath.Join(home, dst, v.partial))
			if err != nil || !bytes.Equal(got, data[:len(got)]) {
				t.Fatalf("%s: the partial file is not a prefix of the data (%d bytes, %v)", v.name, len(got), err)
			}
			kept = len(got)
		}

		s2 := startSilo(t, cfg)
		again := rsync(s2.addr[strings.LastIndexByte(s2.addr, ':')+1:], dst, v.opts...)
		out, err := again.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: the push run again: %v\n%s", v.name, err, out)
		}
		if d, err := exec.Command("diff", "-r", src, filepath.Join(home, dst)).CombinedOutput(); err != nil {
			t.Fatalf("%s: after the second push the trees differ: %v\n%s", v.name, err, d)
		}
		sfi, _ := os.Stat(filepath.Join(src, "big"))
		dfi, _ := os.Stat(filepath.Join(home, dst, "big"))
		if !sfi.ModTime().Equal(dfi.ModTime()) {
			t.Errorf("%s: big's mtime %v, want %v", v.name, dfi.ModTime(), sfi.ModTime())
		}
		m := regexp.MustCompile(`Literal data: ([0-9,]+) bytes`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("%s: no literal data figure in:\n%s", v.name, out)
		}
		literal, _ := strconv.ParseInt(strings.ReplaceAll(string(m[1]), ",", ""), 10, 64)
		if v.resumable && literal > int64(len(data)-kept/2) {
			t.Errorf("%s: the second push sent %d literal bytes with %d kept, want it to resume", v.name, literal, kept)
		}
		t.Logf("%s: killed with %d bytes let through, %d of the new file kept; the second push sent %d literal bytes",
			v.name, n, kept, literal)
		s2.cmd.Process.Signal(syscall.SIGTERM)
		s2.wait()
	}
}
