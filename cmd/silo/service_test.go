package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// needClient finds a client program, or skips (fails in CI).
func needClient(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("SILO_REQUIRE_CLIENTS") != "" {
			t.Fatalf("%s not installed", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// keyLogin logs in with key and asks for the working
// directory over SFTP: a login that reached a served session.
func keyLogin(addr, user string, key ssh.AuthMethod) error {
	c, err := dialSilo(addr, user, ssh.InsecureIgnoreHostKey(), key)
	if err != nil {
		return err
	}
	defer c.Close()
	sc, err := sftp.NewClient(c)
	if err != nil {
		return err
	}
	defer sc.Close()
	_, err = sc.Getwd()
	return err
}

// systemd-socket-activate passes a listening socket to silo serve, which
// serves it instead of `listen`; the first client's connection, made
// before silo runs, is the one that starts it.
func TestSocketActivation(t *testing.T) {
	cfg := writeConfig(t, strings.Replace(testConfig, "127.0.0.1:0", "127.0.0.1:1", 1))
	keyFile := addKeyUser(t, cfg, "alice")
	s := serveActivated(t, nil, []string{siloBin, "serve", "--config", cfg}, keyFile, "put "+cfg+" c\n")
	if got, err := os.ReadFile(filepath.Join(filepath.Dir(cfg), "homes", "alice", "c")); err != nil || !strings.Contains(string(got), "127.0.0.1:1") {
		t.Errorf("uploaded file: %v %q", err, got)
	}
	if strings.HasSuffix(s.addr, ":1") || !strings.Contains(s.log.String(), "socket=passed") {
		t.Fatalf("silo listens on %s, not on the passed socket:\n%s", s.addr, s.log)
	}
}

// serveActivated starts silo (the command line siloCmd, after the command
// prefix wrap) under systemd-socket-activate on a new socket, as a socket
// unit would, and runs an sftp batch through it: its connection is the one
// that starts silo.
func serveActivated(t *testing.T, wrap, siloCmd []string, keyFile, batch string) *server {
	t.Helper()
	activate := needClient(t, "systemd-socket-activate")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	// The socket is systemd-socket-activate's own fd 3 (LISTEN_PID names
	// it, hence the exec).
	args := append(append(wrap, "/bin/sh", "-c", `LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" "$@"`, activate), siloCmd...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Dir = "/"
	port := strings.TrimPrefix(ln.Addr().String(), "127.0.0.1:")
	done := make(chan error, 1)
	var out []byte
	go func() {
		var err error
		out, err = sftpBatch(t, port, keyFile, "alice", batch)
		done <- err
	}()
	s := startSiloCmd(t, cmd)
	f.Close()
	if err := <-done; err != nil {
		t.Fatalf("sftp through the passed socket: %v\n%s\nlog:\n%s", err, out, s.log)
	}
	if s.addr != ln.Addr().String() {
		t.Fatalf("silo listens on %s, want the passed %s", s.addr, ln.Addr())
	}
	return s
}

// sftpBatch runs OpenSSH's sftp with a batch on 127.0.0.1:port.
func sftpBatch(t *testing.T, port, keyFile, user, batch string, extra ...string) ([]byte, error) {
	needClient(t, "sftp")
	args := append([]string{"-F", "/dev/null", "-P", port, "-i", keyFile,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentityAgent=none",
		"-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30", "-b", "-"}, extra...)
	cmd := exec.Command("sftp", append(args, user+"@127.0.0.1")...)
	cmd.Stdin = strings.NewReader(batch)
	return cmd.CombinedOutput()
}

// On SIGUSR2 silo starts the binary at its path again, which may have been
// replaced, and hands it the listening socket: a 400 MiB upload running
// through it arrives whole in the old process, and a login every 100 ms
// never fails, before, during and after.
func TestUpgradeKeepsTransfersAndLogins(t *testing.T) {
	needClient(t, "sftp")
	bin := filepath.Join(t.TempDir(), "silo")
	copyFile(t, siloBin, bin)
	newBin := bin + ".new"
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=9.9.9-upgraded", "-o", newBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := writeConfig(t, "shutdown_grace = \"10m\"\n"+testConfig)
	dir := filepath.Dir(cfg)
	keyFile := addKeyUser(t, cfg, "alice")
	key := keyAuth(t, keyFile)

	data := make([]byte, 400<<20)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	data = nil

	old := startSiloCmd(t, exec.Command(bin, "serve", "--config", cfg))
	port := old.addr[strings.LastIndexByte(old.addr, ':')+1:]
	oldPid := old.cmd.Process.Pid

	// A login every 100 ms, from now until the old process has gone.
	stop := make(chan struct{})
	var logins, failed atomic.Int64
	var failures []string
	var mu sync.Mutex
	loginDone := make(chan struct{}, 3000)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for range 3000 { // at most five minutes
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if err := keyLogin(old.addr, "alice", key); err != nil {
				failed.Add(1)
				mu.Lock()
				failures = append(failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
				mu.Unlock()
			}
			logins.Add(1)
			loginDone <- struct{}{}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// The upload is held to 400 Mbit/s so that it spans the handover;
	// the test checks that it did rather than assume it.
	up := make(chan error, 1)
	var upOut []byte
	go func() {
		var err error
		upOut, err = sftpBatch(t, port, keyFile, "alice", "put "+local+" big\n", "-l", "400000")
		up <- err
	}()
	remote := filepath.Join(dir, "homes", "alice", "big")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if fi, err := os.Stat(remote); err == nil && fi.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload did not start:\n%s", old.log)
		}
	}

	// Replace the binary as dpkg does (rename over it), then upgrade.
	if err := os.Rename(newBin, bin); err != nil {
		t.Fatal(err)
	}
	before := logins.Load()
	old.cmd.Process.Signal(syscall.SIGUSR2)
	m := old.log.waitFor(t, regexp.MustCompile(`upgrade: handed over.* new_pid=(\d+)`), time.Minute)
	newPid, _ := strconv.Atoi(m[1])
	t.Cleanup(func() {
		syscall.Kill(newPid, syscall.SIGKILL)
		<-old.copied
	})
	old.log.waitFor(t, regexp.MustCompile(fmt.Sprintf(`listening on \S+ addr=\S+ socket=passed version=9\.9\.9-upgraded pid=%d`, newPid)), time.Second)
	select {
	case err := <-up:
		t.Fatalf("the upload ended (%v) before the handover; it proves nothing", err)
	default:
	}

	// New logins reach the new process while the old one still serves the
	// upload.
	for len(loginDone) > 0 {
		<-loginDone
	}
	for range 10 {
		<-loginDone
	}
	if err := <-up; err != nil {
		t.Fatalf("upload across the upgrade: %v\n%s\nlog:\n%s", err, upOut, old.log)
	}
	if err := old.cmd.Wait(); err != nil {
		t.Fatalf("old process: %v\n%s", err, old.log)
	}
	old.log.waitFor(t, regexp.MustCompile(fmt.Sprintf(`msg=stopped pid=%d`, oldPid)), time.Second)
	after := logins.Load()
	if err := keyLogin(old.addr, "alice", key); err != nil {
		t.Fatalf("login after the old process exited: %v", err)
	}
	close(stop)
	wg.Wait()
	stop = make(chan struct{})

	got := sha256File(t, remote)
	if got != want {
		t.Fatalf("uploaded file differs from the source")
	}
	mu.Lock()
	defer mu.Unlock()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d logins failed:\n%s\nlog:\n%s", failed.Load(), logins.Load(), strings.Join(failures, "\n"), old.log)
	}
	t.Logf("%d logins, %d before SIGUSR2, %d before the old process exited; none failed", logins.Load(), before, after)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func sha256File(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// An upgrade to a binary that cannot start leaves the old process serving.
func TestUpgradeToBrokenBinaryKeepsServing(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "silo")
	copyFile(t, siloBin, bin)
	cfg := writeConfig(t, testConfig)
	keyFile := addKeyUser(t, cfg, "alice")
	s := startSiloCmd(t, exec.Command(bin, "serve", "--config", cfg))
	if err := os.WriteFile(bin+".new", []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Rename(bin+".new", bin)
	s.cmd.Process.Signal(syscall.SIGUSR2)
	s.log.waitFor(t, regexp.MustCompile(`upgrade failed; this process goes on serving.*exit status 3`), time.Minute)
	if err := keyLogin(s.addr, "alice", keyAuth(t, keyFile)); err != nil {
		t.Fatalf("login after a failed upgrade: %v", err)
	}
}

// check-config prints every problem of the config, the environment and the
// users file, and exits 1; a good configuration exits 0.
func TestCheckConfig(t *testing.T) {
	cfg := writeConfig(t, "listen = \"nowhere\"\nfoo = 1\nlog_level = \"loud\"\n[limits]\nmax_sessions = 0\nbar = 2\n")
	os.WriteFile(filepath.Join(filepath.Dir(cfg), "users.toml"),
		[]byte("[[user]]\nname = \"../x\"\n[[user]]\nname = \"bob\"\npassword = \"plain\"\nshell = \"/bin/sh\"\n"), 0o600)
	cmd := exec.Command(siloBin, "check-config", "--config", cfg)
	cmd.Env = append(os.Environ(), "SILO_LIMITS_MAX_AUTH_TRIES=many", "SILO_FSYNC=yes please")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("check-config of a bad config: %v, want exit 1", err)
	}
	for _, want := range []string{`unknown key "foo"`, `unknown key "limits.bar"`, "listen:", "log_level:", "limits.max_sessions:",
		`SILO_LIMITS_MAX_AUTH_TRIES (limits.max_auth_tries): "many" is not an integer`, `SILO_FSYNC (fsync)`,
		`users.toml: unknown key "user.shell"`, `invalid user name "../x"`, "user bob: password:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out.String())
		}
	}
	if n := strings.Count(out.String(), "\n"); n < 10 {
		t.Errorf("%d lines, want one per problem (10):\n%s", n, out.String())
	}
	if !strings.Contains(errb.String(), "10 problem(s)") {
		t.Errorf("stderr: %q", errb.String())
	}

	// The shipped config.toml, which make run uses, is valid and exempts
	// loopback from penalties (the packaged one does not: TestDebPackage).
	shipped, err := os.ReadFile("../../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^exempt = \["127\.0\.0\.1/32", "::1/128"\]$`).Match(shipped) {
		t.Error("config.toml does not exempt loopback")
	}
	if out, stderr, code := silo(t, "", "check-config", "--config", "../../config.toml"); code != 0 {
		t.Errorf("check-config of config.toml: exit %d %q %q", code, out, stderr)
	}

	good := writeConfig(t, testConfig)
	if out, stderr, code := silo(t, "", "check-config", "--config", good); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("check-config of a good config: exit %d %q %q", code, out, stderr)
	}
}

// Every key can be set from the environment over the file: serve listens
// where SILO_LISTEN says, and SILO_PENALTIES_EXEMPT takes a list.
func TestEnvironmentOverridesConfig(t *testing.T) {
	cfg := writeConfig(t, strings.Replace(testConfig, "127.0.0.1:0", "127.0.0.1:1", 1))
	keyFile := addKeyUser(t, cfg, "alice")
	cmd := exec.Command(siloBin, "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), "SILO_LISTEN=127.0.0.1:0", "SILO_LOG_FORMAT=json",
		"SILO_PENALTIES_EXEMPT=127.0.0.0/8, ::1/128", "SILO_LIMITS_MAX_CONNECTIONS_PER_USER=1",
		"SILO_SHUTDOWN_GRACE=1m", "SILO_LIMITS_MAX_STARTUPS=20:30:100")
	s := startSiloCmd(t, cmd)
	if strings.HasSuffix(s.addr, ":1") || !strings.Contains(s.log.String(), `"msg":"listening on `) {
		t.Fatalf("SILO_LISTEN or SILO_LOG_FORMAT not applied: %s\n%s", s.addr, s.log)
	}
	key := keyAuth(t, keyFile)
	c, err := dialSilo(s.addr, "alice", ssh.InsecureIgnoreHostKey(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := keyLogin(s.addr, "alice", key); err == nil {
		t.Fatal("a second connection was accepted with SILO_LIMITS_MAX_CONNECTIONS_PER_USER=1")
	}

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range configKeys() {
		if !strings.Contains(string(readme), "`"+k.env()+"`") {
			t.Errorf("README does not list %s", k.env())
		}
		if !regexp.MustCompile(`^SILO_[A-Z_]+$`).MatchString(k.env()) {
			t.Errorf("key %s has variable %q", k.path(), k.env())
		}
		if _, err := envValue(k.typ, ""); err != nil && strings.Contains(err.Error(), "cannot be set") {
			t.Errorf("key %s cannot be set from the environment: %v", k.path(), err)
		}
	}
	if len(configKeys()) < 20 {
		t.Errorf("only %d keys found", len(configKeys()))
	}
}

// Without --password-stdin, user passwd asks twice on the terminal without
// echo; a mismatch changes nothing.
func TestPasswdPromptsOnTerminal(t *testing.T) {
	cfg := writeConfig(t, testConfig)
	silo(t, "old-pw\n", "user", "add", "bob", "--password-stdin", "--config", cfg)
	users := filepath.Join(filepath.Dir(cfg), "users.toml")
	before, _ := os.ReadFile(users)

	type step struct{ prompt, answer string }
	runPty := func(steps []step) (string, error) {
		cmd := exec.Command(siloBin, "user", "passwd", "bob", "--config", cfg)
		ptmx, err := pty.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		var screen bytes.Buffer
		r := bufio.NewReader(ptmx)
		for _, st := range steps {
			for !strings.HasSuffix(screen.String(), st.prompt) {
				b, err := r.ReadByte()
				if err != nil {
					t.Fatalf("waiting for %q: %v; screen %q", st.prompt, err, screen.String())
				}
				screen.WriteByte(b)
			}
			// The prompt comes just before echo is turned off: type once
			// it is, as a person would.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
				tio, err := unix.IoctlGetTermios(int(ptmx.Fd()), unix.TCGETS)
				if err != nil {
					t.Fatal(err)
				}
				if tio.Lflag&unix.ECHO == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("echo still on after %q", st.prompt)
				}
			}
			io.WriteString(ptmx, st.answer+"\r")
		}
		io.Copy(&screen, r) // until the pty closes (EIO)
		return screen.String(), cmd.Wait()
	}

	screen, err := runPty([]step{{"New password: ", "first"}, {"Retype new password: ", "second"}})
	if err == nil || !strings.Contains(screen, "passwords do not match") {
		t.Fatalf("mismatch: %v, screen %q", err, screen)
	}
	if after, _ := os.ReadFile(users); !bytes.Equal(after, before) {
		t.Fatal("a mismatched password changed the users file")
	}
	screen, err = runPty([]step{{"New password: ", "s3cret-pw"}, {"Retype new password: ", "s3cret-pw"}})
	if err != nil || !strings.Contains(screen, "password of bob changed") {
		t.Fatalf("passwd: %v, screen %q", err, screen)
	}
	if strings.Contains(screen, "s3cret-pw") {
		t.Fatalf("the password was echoed: %q", screen)
	}
	s := startSilo(t, cfg)
	c, err := dialSilo(s.addr, "bob", ssh.InsecureIgnoreHostKey(), ssh.Password("s3cret-pw"))
	if err != nil {
		t.Fatalf("login with the typed password: %v", err)
	}
	c.Close()
}

// On a terminal, serve prints the sftp command for the address it really
// listens on (make run's hint); in a log it does not.
func TestServePrintsLoginHintOnTerminal(t *testing.T) {
	cfg := writeConfig(t, testConfig)
	cmd := exec.Command(siloBin, "serve", "--config", cfg)
	ptmx, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(ptmx)
	var addr string
	for sc.Scan() {
		line := sc.Text()
		if m := listenRE.FindStringSubmatch(line + " "); m != nil {
			addr = m[1]
		}
		if strings.HasPrefix(line, "log in with: ") {
			port := addr[strings.LastIndexByte(addr, ':')+1:]
			if want := "log in with: sftp -P " + port + " USER@127.0.0.1"; strings.TrimSpace(line) != want {
				t.Fatalf("hint %q, want %q", line, want)
			}
			break
		}
	}
	if addr == "" {
		t.Fatal("no listening line")
	}
	if s := startSilo(t, cfg); strings.Contains(s.log.String(), "log in with") {
		t.Fatal("hint printed into a log")
	}

	for in, want := range map[string]string{
		"0.0.0.0:22":      "sftp -P 22 USER@127.0.0.1",
		"[::]:2022":       "sftp -P 2022 USER@127.0.0.1",
		"[::1]:2022":      "sftp -P 2022 USER@[::1]",
		"192.0.2.7:22022": "sftp -P 22022 USER@192.0.2.7",
	} {
		a, _ := net.ResolveTCPAddr("tcp", in)
		if got := sftpCommand(a); got != want {
			t.Errorf("sftpCommand(%s) = %q, want %q", in, got, want)
		}
	}
}

// notifySocket is the receiving end of sd_notify, as systemd holds it.
type notifySocket struct {
	conn *net.UnixConn
	path string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &notifySocket{c, path}
}

// next returns the next message that contains want.
func (n *notifySocket) next(t *testing.T, want string) string {
	t.Helper()
	msg, _ := n.until(t, want)
	return msg
}

// until is next, also returning the messages before it.
func (n *notifySocket) until(t *testing.T, want string) (string, []string) {
	t.Helper()
	n.conn.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 4096)
	var before []string
	for {
		k, err := n.conn.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %q from sd_notify: %v", want, err)
		}
		msg := string(buf[:k])
		if strings.Contains(msg, want) {
			return msg, before
		}
		before = append(before, msg)
	}
}

// silo speaks systemd's notify protocol: READY=1 once it serves, WATCHDOG=1
// when a watchdog is set, MAINPID= of the new process after an upgrade (from
// the old one, still the main process), and STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	n := newNotifySocket(t)
	bin := filepath.Join(t.TempDir(), "silo")
	copyFile(t, siloBin, bin)
	cfg := writeConfig(t, testConfig)
	cmd := exec.Command(bin, "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.path, "WATCHDOG_USEC=200000")
	s := startSiloCmd(t, cmd)
	n.next(t, "READY=1")
	n.next(t, "WATCHDOG=1")

	s.cmd.Process.Signal(syscall.SIGUSR2)
	m := s.log.waitFor(t, regexp.MustCompile(`upgrade: handed over.* new_pid=(\d+)`), time.Minute)
	msg, during := n.until(t, "MAINPID=")
	if msg != "MAINPID="+m[1] {
		t.Fatalf("after the upgrade sd_notify got %q, want MAINPID=%s", msg, m[1])
	}
	newPid, _ := strconv.Atoi(m[1])
	t.Cleanup(func() { syscall.Kill(newPid, syscall.SIGKILL) })
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("old process: %v", err)
	}
	// The watchdog goes on from the new process, which never says READY
	// again: the service was ready all along.
	_, early := n.until(t, "WATCHDOG=1")
	syscall.Kill(newPid, syscall.SIGTERM)
	_, late := n.until(t, "STOPPING=1")
	for _, msg := range append(append(during, early...), late...) {
		if msg != "WATCHDOG=1" {
			t.Errorf("after the upgrade sd_notify got %q", msg)
		}
	}
	<-s.copied
	if strings.Count(s.log.String(), "msg=stopped") != 2 {
		t.Errorf("want two stopped lines:\n%s", s.log)
	}
}
