package sshd_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"silo/hostkeys"
	"silo/sshd"
	"silo/users"
)

// shared is created once per test binary: host keys (RSA generation is slow)
// and client key pairs.
var shared struct {
	dir      string
	hostKeys []ssh.Signer
	keys     map[string]clientKey // by name: "alice", "bob", "other"
}

type clientKey struct {
	signer  ssh.Signer
	file    string // OpenSSH private key, 0600
	pubLine string // authorized_keys line
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "silo-sshd-test-")
	if err != nil {
		panic(err)
	}
	shared.dir = dir
	shared.keys = map[string]clientKey{}
	for _, name := range []string{"alice", "bob", "other"} {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		block, err := ssh.MarshalPrivateKey(priv, name)
		if err != nil {
			panic(err)
		}
		file := filepath.Join(dir, "id_"+name)
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			panic(err)
		}
		s, _ := ssh.NewSignerFromKey(priv)
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " " + name + "@test"
		if err := os.WriteFile(file+".pub", []byte(line+"\n"), 0o644); err != nil {
			panic(err)
		}
		shared.keys[name] = clientKey{signer: s, file: file, pubLine: line}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needClient skips a test when an external client is missing, unless
// SILO_REQUIRE_CLIENTS is set (as CI does), where it fails instead.
func needClient(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			if os.Getenv("SILO_REQUIRE_CLIENTS") != "" {
				t.Fatalf("%s is required (SILO_REQUIRE_CLIENTS is set) but not installed", name)
			}
			t.Skipf("%s not installed", name)
		}
	}
}

// needPython skips (or, under SILO_REQUIRE_CLIENTS, fails) unless Debian's
// python3 can import the module.
func needPython(t testing.TB, module string) {
	t.Helper()
	if exec.Command("/usr/bin/python3", "-c", "import "+module).Run() != nil {
		if os.Getenv("SILO_REQUIRE_CLIENTS") != "" {
			t.Fatalf("/usr/bin/python3 with %s is required (SILO_REQUIRE_CLIENTS is set)", module)
		}
		t.Skipf("/usr/bin/python3 cannot import %s", module)
	}
}

// testServer is a real silo server on 127.0.0.1:0 with its own homes and
// users file.
type testServer struct {
	t          *testing.T
	dir        string
	homes      string
	usersFile  string
	store      *users.Store
	srv        *sshd.Server
	addr       string
	port       string
	knownHosts string
	logs       *syncBuffer
	dialer     func(ip string) (net.Conn, error) // a connection from the address ip
	limits     sshd.Limits
	penalties  sshd.Penalties
}

type syncBuffer struct {
	mu   sync.Mutex
	cond *sync.Cond
	b    bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cond != nil {
		s.cond.Broadcast()
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits until the log holds want, an event the test cannot see
// otherwise; the bound is for a test that would hang, not a speed limit.
func (s *syncBuffer) waitFor(t testing.TB, want string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cond == nil {
		s.cond = sync.NewCond(&s.mu)
	}
	expired := false
	timer := time.AfterFunc(2*time.Minute, func() {
		s.mu.Lock()
		expired = true
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	for !strings.Contains(s.b.String(), want) {
		if expired {
			t.Fatalf("the log never showed %q", want)
		}
		s.cond.Wait()
	}
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	return startServerOn(t, t.TempDir())
}

// testPenalties are the defaults with 127.0.0.1 exempt: tests log in and
// fail from there all the time. Tests of penalties use other addresses.
func testPenalties() sshd.Penalties {
	p := sshd.DefaultPenalties()
	p.Exempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	return p
}

// startServerOn starts a server whose homes, users file and known_hosts are
// in dir, which may be another server's, as after a restart.
func startServerOn(t *testing.T, dir string) *testServer {
	t.Helper()
	return startServerWith(t, dir, sshd.DefaultLimits(), testPenalties())
}

// startServerWith starts a server with the given limits and penalties, and
// options that change the rest of its Config.
func startServerWith(t *testing.T, dir string, lim sshd.Limits, pen sshd.Penalties, opts ...func(*sshd.Config)) *testServer {
	t.Helper()
	ts := newTestServer(t, dir, lim, pen, opts...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	_, ts.port, _ = net.SplitHostPort(ts.addr)
	ts.dialer = func(ip string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
		return d.Dial("tcp", ts.addr)
	}
	ts.serve(ln)
	var kh strings.Builder
	for _, k := range shared.hostKeys {
		fmt.Fprintf(&kh, "[127.0.0.1]:%s %s", ts.port, ssh.MarshalAuthorizedKey(k.PublicKey()))
	}
	ts.knownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(ts.knownHosts, []byte(kh.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return ts
}

// startMemServer starts a server on in-memory connections, for a test
// inside synctest.Test: its timers run on the bubble's fake clock. Only
// x/crypto clients reach it (through dialFrom, loginFrom, dial, connect).
func startMemServer(t *testing.T, lim sshd.Limits, pen sshd.Penalties) *testServer {
	t.Helper()
	ts := newTestServer(t, t.TempDir(), lim, pen)
	ln := newMemListener()
	ts.addr = ln.Addr().String()
	ts.dialer = ln.dial
	ts.serve(ln)
	return ts
}

// loadHostKeys creates the shared host keys on first use, so that a fuzz
// worker, which starts no server, does not spend seconds on RSA.
var loadHostKeys = sync.OnceValue(func() error {
	var err error
	shared.hostKeys, err = hostkeys.LoadOrCreate(filepath.Join(shared.dir, "hostkeys"))
	return err
})

func newTestServer(t *testing.T, dir string, lim sshd.Limits, pen sshd.Penalties, opts ...func(*sshd.Config)) *testServer {
	t.Helper()
	if err := loadHostKeys(); err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, dir: dir, homes: filepath.Join(dir, "homes"), usersFile: filepath.Join(dir, "users.toml"),
		logs: &syncBuffer{}, limits: lim, penalties: pen}
	// The log goes to the test's output (shown on failure or with -v) and
	// to a buffer that tests search.
	log := slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), ts.logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	if ts.store, err = users.OpenStore(ts.usersFile, ts.homes, log); err != nil {
		t.Fatal(err)
	}
	cfg := sshd.Config{HostSigners: shared.hostKeys, Users: ts.store, Homes: ts.homes,
		Limits: ts.limits, Penalties: ts.penalties, Logger: log}
	for _, o := range opts {
		o(&cfg)
	}
	ts.srv, err = sshd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// serve runs the server on ln until the test ends, then closes it and
// waits for Serve to return.
func (ts *testServer) serve(ln net.Listener) {
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(ln) }()
	ts.t.Cleanup(func() {
		ts.srv.Close()
		if err := <-served; !errors.Is(err, sshd.ErrServerClosed) {
			ts.t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
}

// addUser adds an account with a password (if not empty) and the named
// shared client keys, and reloads the store.
func (ts *testServer) addUser(name, password string, keys ...string) {
	ts.t.Helper()
	u := users.User{Name: name}
	if password != "" {
		h, err := users.HashPassword(password)
		if err != nil {
			ts.t.Fatal(err)
		}
		u.Password = h
	}
	for _, k := range keys {
		u.Keys = append(u.Keys, shared.keys[k].pubLine)
	}
	ts.update(func(f *users.File) { f.Users = append(f.Users, u) })
}

func (ts *testServer) update(fn func(*users.File)) {
	ts.t.Helper()
	if err := users.Update(ts.usersFile, func(f *users.File) error { fn(f); return nil }); err != nil {
		ts.t.Fatal(err)
	}
	removed, err := ts.store.Reload()
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.srv.Reloaded(removed)
}

// home returns the host path of a user's default home, creating it.
func (ts *testServer) home(name string) string {
	h := filepath.Join(ts.homes, name)
	if err := os.MkdirAll(h, 0o700); err != nil {
		ts.t.Fatal(err)
	}
	return h
}

// auth says how an OpenSSH client logs in.
type auth struct {
	key      string // shared key name
	password string
	kbd      bool // keyboard-interactive instead of password
}

// sshArgs are the OpenSSH options common to ssh, sftp and scp: no user
// config, no agent, our known_hosts with strict checking, and the login
// method of a.
func (ts *testServer) sshArgs(a auth) ([]string, []string) {
	args := []string{"-F", "/dev/null",
		"-o", "UserKnownHostsFile=" + ts.knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "IdentityAgent=none",
		"-o", "ConnectTimeout=10"}
	env := os.Environ()
	switch {
	case a.key != "":
		args = append(args, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
			"-o", "PreferredAuthentications=publickey", "-i", shared.keys[a.key].file)
	default:
		method := "password"
		if a.kbd {
			method = "keyboard-interactive"
		}
		askpass := filepath.Join(ts.dir, "askpass")
		os.WriteFile(askpass, []byte("#!/bin/sh\nprintf '%s\\n' \"$SILO_TEST_PASSWORD\"\n"), 0o755)
		args = append(args, "-o", "BatchMode=no", "-o", "PreferredAuthentications="+method,
			"-o", "NumberOfPasswordPrompts=1", "-o", "PubkeyAuthentication=no")
		env = append(env, "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "SILO_TEST_PASSWORD="+a.password, "DISPLAY=")
	}
	return args, env
}

// sftpBatch runs OpenSSH's sftp with a batch of commands (-b: the first
// failing command stops the batch and makes sftp exit non-zero, unless the
// command starts with "-").
func (ts *testServer) sftpBatch(user string, a auth, batch string) (string, error) {
	ts.t.Helper()
	return ts.sftpTo(ts.port, user, a, batch)
}

// sftpTo is sftpBatch through port, which may be a proxy's, with ssh
// options added.
func (ts *testServer) sftpTo(port, user string, a auth, batch string, opts ...string) (string, error) {
	ts.t.Helper()
	needClient(ts.t, "sftp")
	args, env := ts.sshArgs(a)
	// BatchMode=no must come before -b, which adds BatchMode=yes and the
	// first value of an option wins.
	args = append(append(args, opts...), "-P", port, "-b", "-", user+"@127.0.0.1")
	cmd := exec.Command("sftp", args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(batch)
	// Separate pipes: ssh, sftp's child, makes its stderr non-blocking,
	// and sftp's own output would be lost to EAGAIN on a shared pipe.
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String() + stderr.String(), err
}

// ssh runs OpenSSH's ssh with a remote command; it returns stdout, stderr
// and the exit status.
func (ts *testServer) ssh(user string, a auth, stdin string, remote ...string) (string, string, int) {
	ts.t.Helper()
	needClient(ts.t, "ssh")
	args, env := ts.sshArgs(a)
	args = append(args, "-p", ts.port, user+"@127.0.0.1")
	args = append(args, remote...)
	cmd := exec.Command("ssh", args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		ts.t.Fatalf("ssh: %v", err)
	}
	return stdout.String(), stderr.String(), code
}

// clientConfig is an x/crypto client config that checks the host key.
func (ts *testServer) clientConfig(user string, methods ...ssh.AuthMethod) *ssh.ClientConfig {
	var pubs []ssh.PublicKey
	for _, k := range shared.hostKeys {
		pubs = append(pubs, k.PublicKey())
	}
	return &ssh.ClientConfig{
		User: user,
		Auth: methods,
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			for _, p := range pubs {
				if bytes.Equal(p.Marshal(), key.Marshal()) {
					return nil
				}
			}
			return errors.New("unknown host key")
		},
		Timeout: 10 * time.Second,
	}
}

func (ts *testServer) dial(user string, methods ...ssh.AuthMethod) (*ssh.Client, error) {
	return ts.loginFrom("127.0.0.1", user, methods...)
}

// dialFrom opens a connection to the server from a given loopback address
// (Linux routes all of 127/8 to lo).
func (ts *testServer) dialFrom(ip string) (net.Conn, error) { return ts.dialer(ip) }

// loginFrom logs in over a connection from ip.
func (ts *testServer) loginFrom(ip, user string, methods ...ssh.AuthMethod) (*ssh.Client, error) {
	c, err := ts.dialFrom(ip)
	if err != nil {
		return nil, err
	}
	cc, chans, reqs, err := ssh.NewClientConn(c, ts.addr, ts.clientConfig(user, methods...))
	if err != nil {
		c.Close()
		return nil, err
	}
	return ssh.NewClient(cc, chans, reqs), nil
}

// connect logs in with one of the shared keys; the connection closes when
// the test ends.
func (ts *testServer) connect(user, key string) *ssh.Client {
	ts.t.Helper()
	c, err := ts.dial(user, ssh.PublicKeys(shared.keys[key].signer))
	if err != nil {
		ts.t.Fatalf("login %s: %v", user, err)
	}
	ts.t.Cleanup(func() { c.Close() })
	return c
}

// sftpClient logs in with one of the shared keys and opens a pkg/sftp
// client.
func (ts *testServer) sftpClient(user, key string) *sftp.Client {
	ts.t.Helper()
	sc, err := sftp.NewClient(ts.connect(user, key))
	if err != nil {
		ts.t.Fatalf("sftp %s: %v", user, err)
	}
	ts.t.Cleanup(func() { sc.Close() })
	return sc
}

// writeFile writes a file into a home directly on disk.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
