package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"silo/sshd"
)

var siloBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "silo-cmd-test-")
	if err != nil {
		panic(err)
	}
	siloBin = filepath.Join(dir, "silo")
	if out, err := exec.Command("go", "build", "-o", siloBin, ".").CombinedOutput(); err != nil {
		panic(fmt.Sprintf("go build: %v\n%s", err, out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// silo runs the binary; it returns stdout, stderr and the exit status.
func silo(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(siloBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// writeConfig writes a config.toml in a new directory and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testConfig exempts 127.0.0.1 from penalties: the tests retry logins from
// it while a user is being added.
const testConfig = `listen = "127.0.0.1:0"
homes = "homes"
host_keys = "keys"
users = "users.toml"

[penalties]
exempt = ["127.0.0.1/32"]
`

func TestConfigErrorsNameTheKey(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ body, want string }{
		"unknown key":     {"quota = 5\n" + testConfig, `unknown key "quota"`},
		"misspelt key":    {strings.Replace(testConfig, "homes", "home", 1), `unknown key "home"`},
		"wrong type":      {"listen = 2022\n", "listen"},
		"bad listen":      {"listen = \"localhost\"\n", "listen"},
		"bad port":        {"listen = \"127.0.0.1:99999\"\n", "listen"},
		"bad host":        {"listen = \"example.com:22\"\n", "listen"},
		"empty homes":     {"homes = \"\"\n", "homes"},
		"empty users":     {"users = \"\"\n", "users"},
		"syntax":          {"listen = \"127.0.0.1:0\n", "config.toml"},
		"unknown in sub":  {"[limits]\nfoo = 1\n", `unknown key "limits.foo"`},
		"bad duration":    {"[limits]\nidle_timeout = \"soon\"\n", "limits.idle_timeout"},
		"bad startups":    {"[limits]\nmax_startups = \"10:30\"\n", "limits.max_startups"},
		"zero sessions":   {"[limits]\nmax_sessions = 0\n", "limits.max_sessions"},
		"bad cidr":        {"[penalties]\nexempt = [\"10.0.0.0/33\"]\n", "penalties.exempt"},
		"bad metrics":     {"metrics_listen = \"9122\"\n", "metrics_listen"},
		"bad hook event":  {"[[hooks]]\nevents = [\"delete\"]\nurl = \"http://127.0.0.1/\"\n", `hooks[0].events: "delete"`},
		"hook in a shell": {"[[hooks]]\nevents = [\"upload\"]\ncommand = [\"sh\", \"-c\", \"x\"]\n", "hooks[0].command"},
		"unknown in hook": {"[[hooks]]\nevents = [\"upload\"]\nurl = \"http://127.0.0.1/\"\nshell = true\n", `unknown key "hooks.shell"`},
		"bad log format":  {"log_format = \"xml\"\n", "log_format"},
		"bad log level":   {"log_level = \"loud\"\n", "log_level"},
		"min over max":    {"[penalties]\nmin = \"1h\"\n", "penalties.max"},
		"bare integer":    {"[limits]\nidle_timeout = 900\n", "limits.idle_timeout"},
		"negative":        {"shutdown_grace = \"-5s\"\n", "shutdown_grace"},
		"no grace":        {"[limits]\nlogin_grace_time = \"0s\"\n", "limits.login_grace_time"},
		"bare address":    {"[penalties]\nexempt = [\"10.0.0.1\"]\n", "penalties.exempt"},
		"bad proxy cidr":  {"proxy_protocol = [\"10.0.0.1\"]\n", "proxy_protocol"},
		"proxy host bits": {"proxy_protocol = [\"10.0.0.1/8\"]\n", "proxy_protocol: 10.0.0.1/8 has bits set"},
		"proxy trusts /0": {"proxy_protocol = [\"0.0.0.0/0\"]\n", "proxy_protocol: 0.0.0.0/0 trusts every address"},
		"bad store":       {"[store]\nkind = \"pg\"\n", "store.kind"},
		"dsn for a file":  {"[store]\ndsn = \"host=db\"\n", "store.dsn"},
		"bad node time":   {"[store]\nkind = \"postgres\"\nnode_timeout = 10\n", "store.node_timeout"},
		"bad dsn":         {"[store]\nkind = \"postgres\"\ndsn = \"port=notanumber\"\n", "store dsn"},
	} {
		t.Run(name, func(t *testing.T) {
			_, stderr, code := silo(t, "", "serve", "--config", writeConfig(t, tc.body))
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 1 and a message naming %q", code, stderr, tc.want)
			}
		})
	}
	_, stderr, code := silo(t, "", "serve", "--config", "/nonexistent/config.toml")
	if code != 1 || !strings.Contains(stderr, "/nonexistent/config.toml") {
		t.Fatalf("missing config: exit %d, %q", code, stderr)
	}
}

// Durations, CIDR blocks and max_startups decode into sshd's types as
// written.
func TestConfigDecodes(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(writeConfig(t, "shutdown_grace = \"1m30s\"\n[limits]\nidle_timeout = \"0s\"\nmax_startups = \"3:50:9\"\n"+
		"[penalties]\nmin = \"2m\"\nexempt = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := sshd.DefaultLimits()
	want.IdleTimeout, want.MaxStartups = 0, sshd.Startups{Start: 3, Rate: 50, Full: 9}
	if cfg.ShutdownGrace != 90*time.Second || cfg.Limits != want || cfg.Penalties.Min != 2*time.Minute ||
		fmt.Sprint(cfg.Penalties.Exempt) != "[192.0.2.0/24 2001:db8::/32]" || cfg.Penalties.Max != sshd.DefaultPenalties().Max {
		t.Fatalf("decoded %+v", cfg)
	}
}

func TestUserCommands(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, testConfig)
	dir := filepath.Dir(cfg)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	pubLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " bob@laptop"
	keyFile := filepath.Join(dir, "bob.pub")
	os.WriteFile(keyFile, []byte(pubLine+"\n"), 0o644)

	// Flags before and after NAME; the users file is created.
	if out, stderr, code := silo(t, "alice-pw\n", "user", "add", "alice", "--config", cfg, "--password-stdin", "--quota", "100MiB", "--max-files", "1000"); code != 0 {
		t.Fatalf("user add alice: exit %d %s %s", code, out, stderr)
	}
	if _, stderr, code := silo(t, "", "user", "add", "--config", cfg, "--key", keyFile, "--key", pubLine, "bob", "--home", "/srv/bob", "--quota", "5GB"); code != 0 {
		t.Fatalf("user add bob: exit %d %s", code, stderr)
	}
	data, err := os.ReadFile(filepath.Join(dir, "users.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "alice-pw") || !strings.Contains(string(data), "$argon2id$") {
		t.Fatalf("users file holds the clear password or no argon2id hash:\n%s", data)
	}
	out, _, code := silo(t, "", "user", "list", "--config", cfg)
	for _, want := range []string{"alice", "password", "100 MiB", "1000", "bob", "2 key(s)", "4.6 GiB", "/srv/bob", filepath.Join(dir, "homes", "alice")} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("user list lacks %q:\n%s", want, out)
		}
	}
	out, _, code = silo(t, "", "user", "show", "bob", "--config", cfg)
	if code != 0 || !strings.Contains(out, ssh.FingerprintSHA256(signer.PublicKey())) || !strings.Contains(out, "bob@laptop") {
		t.Errorf("user show bob:\n%s", out)
	}

	for name, tc := range map[string]struct {
		stdin string
		args  []string
		code  int
		want  string
	}{
		"duplicate":      {"x\n", []string{"user", "add", "alice", "--password-stdin"}, 1, "already exists"},
		"bad name":       {"x\n", []string{"user", "add", "../etc", "--password-stdin"}, 1, "invalid user name"},
		"no credential":  {"", []string{"user", "add", "carol"}, 1, "--password-stdin) or --key"},
		"empty password": {"\n", []string{"user", "add", "carol", "--password-stdin"}, 1, "empty password"},
		"long password":  {strings.Repeat("x", 1025) + "\n", []string{"user", "add", "carol", "--password-stdin"}, 1, "longer than 1024"},
		"bad quota":      {"x\n", []string{"user", "add", "carol", "--password-stdin", "--quota", "lots"}, 1, "--quota"},
		"bad key":        {"", []string{"user", "add", "carol", "--key", "ssh-ed25519 AAAA garbage"}, 1, "--key"},
		"missing key":    {"", []string{"user", "add", "carol", "--key", "/nonexistent.pub"}, 1, "/nonexistent.pub"},
		"unknown flag":   {"", []string{"user", "add", "carol", "--shell", "/bin/sh"}, 2, "shell"},
		"extra arg":      {"", []string{"user", "del", "alice", "bob"}, 2, "argument"},
		"del unknown":    {"", []string{"user", "del", "nobody"}, 1, "no user nobody"},
		"passwd no tty":  {"x\n", []string{"user", "passwd", "alice"}, 2, "--password-stdin"},
		"unknown cmd":    {"", []string{"user", "frob"}, 2, "frob"},
	} {
		t.Run(name, func(t *testing.T) {
			_, stderr, code := silo(t, tc.stdin, append(tc.args, "--config", cfg)...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
	after, _ := os.ReadFile(filepath.Join(dir, "users.toml"))
	if !bytes.Equal(after, data) {
		t.Fatal("a refused command changed the users file")
	}

	// Usage, read from the home on disk.
	os.MkdirAll(filepath.Join(dir, "homes", "alice", "sub"), 0o700)
	os.WriteFile(filepath.Join(dir, "homes", "alice", "sub", "f"), make([]byte, 1536), 0o644)
	os.Symlink("sub/f", filepath.Join(dir, "homes", "alice", "l"))
	out, _, _ = silo(t, "", "user", "show", "alice", "--config", cfg)
	if !strings.Contains(out, "used:          9.5 KiB of 100 MiB") || !strings.Contains(out, "files:         3 of 1000") {
		t.Errorf("user show alice:\n%s", out)
	}
	if out, _, code := silo(t, "", "user", "rescan", "alice", "--config", cfg); code != 0 || !strings.Contains(out, "alice uses 9.5 KiB in 3 files") {
		t.Errorf("user rescan: %d %q", code, out)
	}
	if _, stderr, code := silo(t, "new-pw\n", "user", "passwd", "alice", "--password-stdin", "--config", cfg); code != 0 {
		t.Fatalf("passwd: %s", stderr)
	}
	if _, stderr, code := silo(t, "", "user", "del", "--config", cfg, "alice"); code != 0 {
		t.Fatalf("del: %s", stderr)
	}
	if out, _, _ := silo(t, "", "user", "list", "--config", cfg); strings.Contains(out, "alice") {
		t.Fatalf("alice still listed:\n%s", out)
	}
	if out, _, code := silo(t, "", "version"); code != 0 || !strings.HasPrefix(out, "silo ") ||
		!strings.Contains(out, "\ncommit ") || !strings.HasSuffix(out, "\n"+runtime.Version()+"\n") {
		t.Fatalf("version: %d %q", code, out)
	}
}

// server is a `silo serve` process.
type server struct {
	cmd    *exec.Cmd
	copied chan struct{} // closed when the log has been read to its end
	addr   string
	log    *lockedBuffer // everything from the first "listening on"
	keys   []string      // host key fingerprints it logged
	// metrics is the address of its metrics endpoint, if it logged one.
	metrics string
}

var listenRE = regexp.MustCompile(`listening on ([0-9a-fA-F.:\[\]]+)`)
var fpRE = regexp.MustCompile(`fingerprint=(SHA256:\S+)`)
var metricsRE = regexp.MustCompile(`metrics on http://(\S+)/metrics`)

func startSilo(t *testing.T, cfg string) *server {
	t.Helper()
	return startSiloCmd(t, exec.Command(siloBin, "serve", "--config", cfg))
}

// startSiloCmd starts silo with a command line of the caller's (a limit
// set first, say). The log is a pipe of its own, not exec's copy, so that a
// process silo starts in its place (an upgrade) keeps writing to it after
// silo exits: it is read to its end when every writer has ended.
func startSiloCmd(t *testing.T, cmd *exec.Cmd) *server {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	copied := make(chan struct{})
	s := &server{cmd: cmd, log: &lockedBuffer{}, copied: copied}
	sc := bufio.NewScanner(r)
	ready := make(chan error, 1)
	// The process is killed and waited for, after its log has been read to
	// the end (the log goes to the test's output too, shown on failure).
	t.Cleanup(func() {
		cmd.Process.Kill()
		s.wait()
	})
	out := t.Output()
	go func() {
		defer close(copied)
		defer r.Close()
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(out, line)
			if m := fpRE.FindStringSubmatch(line); m != nil && s.addr == "" {
				s.keys = append(s.keys, m[1])
			}
			if m := metricsRE.FindStringSubmatch(line); m != nil && s.addr == "" {
				s.metrics = m[1]
			}
			first := false
			if m := listenRE.FindStringSubmatch(line + " "); m != nil && s.addr == "" {
				s.addr, first = m[1], true
			}
			if s.addr != "" {
				s.log.Write([]byte(line + "\n"))
			}
			if first {
				ready <- nil // with the listening line in the log
			}
		}
		if s.addr == "" {
			ready <- errors.New("silo exited before listening")
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("silo did not start listening")
	}
	return s
}

// wait waits for the process to exit, once its log has been read.
func (s *server) wait() error {
	<-s.copied
	return s.cmd.Wait()
}

type lockedBuffer struct {
	mu   sync.Mutex
	cond *sync.Cond
	b    bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cond != nil {
		l.cond.Broadcast()
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count is how many times the log holds s.
func (l *lockedBuffer) count(s string) int { return strings.Count(l.String(), s) }

// waitCount waits until the log holds s n times: an event of the server
// process; the bound is for a test that would hang, not a speed limit.
func (l *lockedBuffer) waitCount(t *testing.T, s string, n int) {
	t.Helper()
	l.waitUntil(t, fmt.Sprintf("%q %d times", s, n), 2*time.Minute, func(log string) bool { return strings.Count(log, s) >= n })
}

// waitFor waits until re matches the log, and returns the match.
func (l *lockedBuffer) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var m []string
	l.waitUntil(t, re.String(), timeout, func(log string) bool { m = re.FindStringSubmatch(log); return m != nil })
	return m
}

// waitUntil waits until ok holds for the log, at most timeout.
func (l *lockedBuffer) waitUntil(t *testing.T, what string, timeout time.Duration, ok func(string) bool) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cond == nil {
		l.cond = sync.NewCond(&l.mu)
	}
	expired := false
	timer := time.AfterFunc(timeout, func() {
		l.mu.Lock()
		expired = true
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer timer.Stop()
	for !ok(l.b.String()) {
		if expired {
			t.Fatalf("the log never showed %s:\n%s", what, l.b.String())
		}
		l.cond.Wait()
	}
}

func dialSilo(addr, user string, hostKey ssh.HostKeyCallback, auth ...ssh.AuthMethod) (*ssh.Client, error) {
	return ssh.Dial("tcp", addr, &ssh.ClientConfig{User: user, Auth: auth, HostKeyCallback: hostKey, Timeout: 10 * time.Second})
}

// A running server picks up users added, changed and deleted by `silo user`,
// keeps its host keys across restarts and stops cleanly on SIGTERM.
func TestServeLifecycle(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, testConfig)
	dir := filepath.Dir(cfg)
	s := startSilo(t, cfg)
	if len(s.keys) != 3 {
		t.Fatalf("logged %d host key fingerprints, want 3", len(s.keys))
	}
	var seen ssh.PublicKey
	record := func(_ string, _ net.Addr, k ssh.PublicKey) error { seen = k; return nil }

	// A user added while running logs in.
	// Each change is seen when the server logs its reload.
	reloads := s.log.count("users reloaded")
	changed := func() {
		t.Helper()
		reloads++
		s.log.waitCount(t, "users reloaded", reloads)
	}
	silo(t, "pw-1\n", "user", "add", "dave", "--password-stdin", "--config", cfg)
	changed()
	c, err := dialSilo(s.addr, "dave", record, ssh.Password("pw-1"))
	if err != nil {
		t.Fatalf("user added while running cannot log in: %v\n%s", err, s.log)
	}
	if fp := ssh.FingerprintSHA256(seen); !strings.Contains(strings.Join(s.keys, " "), fp) {
		t.Errorf("server presented %s, logged %v", fp, s.keys)
	}
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "homes", "dave")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("home not created with mode 0700 at first login: %v %v", fi, err)
	}

	// A changed password applies to new logins; the open session stays.
	silo(t, "pw-2\n", "user", "passwd", "dave", "--password-stdin", "--config", cfg)
	changed()
	if c2, err := dialSilo(s.addr, "dave", record, ssh.Password("pw-2")); err != nil {
		t.Fatalf("new password not accepted: %v", err)
	} else {
		c2.Close()
	}
	if c2, err := dialSilo(s.addr, "dave", record, ssh.Password("pw-1")); err == nil {
		c2.Close()
		t.Fatal("old password still accepted")
	}
	if _, err := sc.Getwd(); err != nil {
		t.Fatalf("open session ended by a password change: %v", err)
	}

	// A deleted user's sessions are closed.
	silo(t, "", "user", "del", "dave", "--config", cfg)
	changed()
	ended := make(chan error, 1)
	go func() { ended <- sc.Wait() }()
	select {
	case <-ended:
	case <-time.After(2 * time.Minute):
		t.Fatal("deleted user's session still open")
	}

	// A broken users file is refused and the previous users stay.
	silo(t, "pw-3\n", "user", "add", "erin", "--password-stdin", "--config", cfg)
	changed()
	good, _ := os.ReadFile(filepath.Join(dir, "users.toml"))
	os.WriteFile(filepath.Join(dir, "users.toml"), append(good, "[[user]]\nname = \"../x\"\n"...), 0o600)
	s.log.waitCount(t, "users file not reloaded", 1)
	if c3, err := dialSilo(s.addr, "erin", record, ssh.Password("pw-3")); err != nil {
		t.Fatalf("a broken users file locked out existing users: %v", err)
	} else {
		c3.Close()
	}
	if !strings.Contains(s.log.String(), "users file not reloaded") {
		t.Errorf("no log line about the broken users file:\n%s", s.log)
	}
	os.WriteFile(filepath.Join(dir, "users.toml"), good, 0o600)

	// SIGTERM: exit 0. A restart keeps the host keys.
	s.cmd.Process.Signal(syscall.SIGTERM)
	if err := s.wait(); err != nil {
		t.Fatalf("silo after SIGTERM: %v\n%s", err, s.log)
	}
	s2 := startSilo(t, cfg)
	if strings.Join(s2.keys, " ") != strings.Join(s.keys, " ") {
		t.Fatalf("host keys changed across restart: %v then %v", s.keys, s2.keys)
	}
	strict := ssh.FixedHostKey(seen)
	if c4, err := dialSilo(s2.addr, "erin", strict, ssh.Password("pw-3")); err != nil {
		t.Fatalf("after restart: %v", err)
	} else {
		c4.Close()
	}
}

func TestServeRefusesWithoutHostKeys(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, testConfig)
	blocker := filepath.Join(filepath.Dir(cfg), "keys")
	os.WriteFile(blocker, []byte("a file where the key directory should be"), 0o600)
	_, stderr, code := silo(t, "", "serve", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, "host key") {
		t.Fatalf("exit %d, stderr %q; want 1 and a message about host keys", code, stderr)
	}
}

// log_format = "json" gives one JSON object per line; SIGHUP applies a
// changed limit to new connections and keeps the open ones.
func TestJSONLogsAndReload(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, "log_format = \"json\"\n"+testConfig)
	silo(t, "pw\n", "user", "add", "dave", "--password-stdin", "--config", cfg)
	s := startSilo(t, cfg)
	anyKey := ssh.InsecureIgnoreHostKey()
	c1, err := dialSilo(s.addr, "dave", anyKey, ssh.Password("pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := dialSilo(s.addr, "dave", anyKey, ssh.Password("pw"))
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()

	body, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, append(body, "\n[limits]\nmax_connections_per_user = 1\n"...), 0o644)
	// testConfig has a [penalties] table after which [limits] may follow.
	s.cmd.Process.Signal(syscall.SIGHUP)
	s.log.waitCount(t, "config reloaded", 1)
	if c3, err := dialSilo(s.addr, "dave", anyKey, ssh.Password("pw")); err == nil {
		c3.Close()
		t.Fatal("a second connection was accepted after max_connections_per_user became 1")
	}
	if _, _, err := c1.SendRequest("keepalive@openssh.com", true, nil); err != nil {
		t.Fatalf("the open connection was closed by the reload: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(s.log.String()), "\n")
	logins := 0
	for _, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		if rec["msg"] == "login" && rec["user"] == "dave" && rec["method"] == "password" && rec["remote"] != nil {
			logins++
		}
	}
	if logins != 2 {
		t.Errorf("%d login lines for dave, want 2:\n%s", logins, s.log)
	}
}

func TestUserAddRefusesAnotherUsersHome(t *testing.T) {
	cfg := writeConfig(t, testConfig)
	addKeyUser(t, cfg, "alice")
	_, stderr, code := silo(t, "pw\n", "user", "add", "bob", "--password-stdin", "--home", "alice/inbox", "--config", cfg)
	if code == 0 || !strings.Contains(stderr, "users alice and bob have overlapping homes") {
		t.Fatalf("user add with a home inside alice's: %d %s", code, stderr)
	}
}
