package sshd_test

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestLoginMethods(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "alice-pw", "alice")
	ts.addUser("bob", "bob-pw", "bob")

	for _, tc := range []struct {
		name string
		user string
		auth auth
		ok   bool
	}{
		{"password", "alice", auth{password: "alice-pw"}, true},
		{"keyboard-interactive", "alice", auth{password: "alice-pw", kbd: true}, true},
		{"public key", "alice", auth{key: "alice"}, true},
		{"wrong password", "alice", auth{password: "bob-pw"}, false},
		{"wrong keyboard-interactive", "alice", auth{password: "nope", kbd: true}, false},
		{"empty password", "alice", auth{password: ""}, false},
		{"unknown user", "carol", auth{password: "alice-pw"}, false},
		{"unauthorized key", "alice", auth{key: "other"}, false},
		{"another user's key", "alice", auth{key: "bob"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := ts.sftpBatch(tc.user, tc.auth, "pwd\n")
			if tc.ok && (err != nil || !strings.Contains(out, "Remote working directory: /")) {
				t.Fatalf("login %s with %s: got err=%v, output:\n%s", tc.user, tc.name, err, out)
			}
			if !tc.ok && (err == nil || !strings.Contains(out, "Permission denied")) {
				t.Fatalf("login %s with %s: got err=%v, want Permission denied; output:\n%s", tc.user, tc.name, err, out)
			}
		})
	}
}

// A wrong password and an unknown user get the same answer on the wire; the
// log tells them apart. (That both cost one argon2id verification is
// users' TestStoreUnknownUserCostsAHash.)
func TestUnknownUserLikeWrongPassword(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "alice-pw")
	answer := func(user string) string {
		_, err := ts.dial(user, ssh.Password("wrong-pw"))
		if err == nil {
			t.Fatalf("login %s with a wrong password succeeded", user)
		}
		return strings.ReplaceAll(err.Error(), user, "USER")
	}
	if wrong, unknown := answer("alice"), answer("nobody"); wrong != unknown {
		t.Errorf("answers differ:\n wrong password: %s\n unknown user:   %s", wrong, unknown)
	}
	if !strings.Contains(ts.logs.String(), `reason="unknown user"`) {
		t.Errorf("server log does not give the reason for the unknown user")
	}
}

func TestOverlongPasswordRefusedBeforeHashing(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", strings.Repeat("p", 1024))
	if _, err := ts.dial("alice", ssh.Password(strings.Repeat("p", 1024))); err != nil {
		t.Fatalf("1024-byte password refused: %v", err)
	}
	if _, err := ts.dial("alice", ssh.Password(strings.Repeat("p", 1025))); err == nil {
		t.Fatal("1025-byte password accepted")
	}
	if !strings.Contains(ts.logs.String(), "password longer than 1024 bytes") {
		t.Errorf("log does not say the 1025-byte password was refused for its length:\n%s", ts.logs.String())
	}
}

// The "none" method never logs anyone in, although gliderlabs enables it when
// it has no auth handlers of its own.
func TestNoneMethodRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "alice-pw", "alice")
	c, err := ts.dial("alice") // no methods: x/crypto sends only "none"
	if err == nil {
		c.Close()
		t.Fatal("login with method none succeeded")
	}
	if !strings.Contains(err.Error(), "attempted methods [none]") {
		t.Fatalf("got %v, want a refusal of method none", err)
	}
}

// A key the server approves when offered, but that the client never signs
// with, must grant nothing: the next method still has to succeed on its own.
func TestOfferedKeyNeverSignedGrantsNothing(t *testing.T) {
	t.Parallel()
	needClient(t, "ssh")
	ts := startServer(t)
	ts.addUser("alice", "alice-pw", "alice")
	// -i on a public key file alone: ssh offers it, the server accepts it
	// (PK_OK), ssh cannot load the private half and moves on to password.
	pubOnly := filepath.Join(t.TempDir(), "id_alice.pub")
	os.WriteFile(pubOnly, []byte(shared.keys["alice"].pubLine+"\n"), 0o600)
	base, env := ts.sshArgs(auth{password: "wrong-pw"})
	// The first value of an option wins, so these go before base.
	args := append([]string{"-v", "-o", "PreferredAuthentications=publickey,password", "-o", "PubkeyAuthentication=yes",
		"-o", "IdentitiesOnly=yes", "-i", pubOnly}, base...)
	args = append(args, "-p", ts.port, "alice@127.0.0.1", "true")
	cmd := exec.Command("ssh", args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if !strings.Contains(string(out), "Server accepts key") {
		t.Fatalf("the key was not offered and approved; ssh -v said:\n%s", out)
	}
	if err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("login after an unsigned key offer and a wrong password: got err=%v, want Permission denied\n%s", err, out)
	}
	if strings.Contains(ts.logs.String(), "msg=login ") {
		t.Fatalf("server logged a successful login:\n%s", ts.logs.String())
	}
}

// forgedSigner presents one key and signs with another.
type forgedSigner struct {
	pub    ssh.PublicKey
	signer ssh.Signer
}

func (f forgedSigner) PublicKey() ssh.PublicKey { return f.pub }
func (f forgedSigner) Sign(r io.Reader, data []byte) (*ssh.Signature, error) {
	return f.signer.Sign(r, data)
}

func TestForgedSignatureRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	forged := forgedSigner{pub: shared.keys["alice"].signer.PublicKey(), signer: shared.keys["other"].signer}
	c, err := ts.dial("alice", ssh.PublicKeys(forged))
	if err == nil {
		c.Close()
		t.Fatal("login with alice's public key and another key's signature succeeded")
	}
	if c, err := ts.dial("alice", ssh.PublicKeys(shared.keys["alice"].signer)); err != nil {
		t.Fatalf("real key refused: %v", err)
	} else {
		c.Close()
	}
}

// One connection, one account: switching user names between attempts ends
// the connection, even when the second attempt has the right password.
func TestUserNameChangeEndsConnection(t *testing.T) {
	t.Parallel()
	needPython(t, "paramiko")
	ts := startServer(t)
	ts.addUser("alice", "alice-pw")
	ts.addUser("bob", "bob-pw")
	// paramiko sends a new service request before every auth call, which
	// x/crypto refuses, so the second attempt is sent as a raw
	// SSH_MSG_USERAUTH_REQUEST (RFC 4252 section 8) on the same transport.
	script := `
import socket, sys, time, paramiko
from paramiko.message import Message
from paramiko.common import cMSG_USERAUTH_REQUEST
t = paramiko.Transport(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
t.start_client(timeout=10)
try:
    t.auth_password("alice", "wrong-pw")
except paramiko.AuthenticationException:
    pass
m = Message()
m.add_byte(cMSG_USERAUTH_REQUEST)
m.add_string(sys.argv[2])
m.add_string("ssh-connection")
m.add_string("password")
m.add_boolean(False)
m.add_string(sys.argv[3])
t._send_message(m)
for _ in range(50):
    if t.is_authenticated() or not t.is_active():
        break
    time.sleep(0.1)
print("authenticated", t.is_authenticated(), "active", t.is_active())
`
	run := func(user, pw string) string {
		out, err := exec.Command("/usr/bin/python3", "-c", script, ts.port, user, pw).CombinedOutput()
		if err != nil {
			t.Fatalf("paramiko: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run("alice", "alice-pw"); got != "authenticated True active True" {
		t.Fatalf("same name, right password on the second attempt: got %q", got)
	}
	if got := run("bob", "bob-pw"); got != "authenticated False active False" {
		t.Fatalf("second attempt as bob after alice: got %q, want the connection closed unauthenticated", got)
	}
	if !strings.Contains(ts.logs.String(), "user name changed between attempts") {
		t.Errorf("server log does not name the reason:\n%s", ts.logs.String())
	}
}

// Only x/crypto's secure algorithms without SHA-1 are offered; OpenSSH's ssh
// forcing a weak one cannot connect.
func TestWeakAlgorithmsRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	for _, tc := range []struct{ name, opt string }{
		{"dh-group14-sha1", "KexAlgorithms=diffie-hellman-group14-sha1"},
		{"dh-group1-sha1", "KexAlgorithms=diffie-hellman-group1-sha1"},
		{"hmac-sha1", "MACs=hmac-sha1"},
		{"ssh-rsa host key", "HostKeyAlgorithms=ssh-rsa"},
		{"aes128-cbc", "Ciphers=aes128-cbc"},
		{"3des-cbc", "Ciphers=3des-cbc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := []string{"-o", tc.opt}
			if strings.HasPrefix(tc.opt, "MACs") {
				extra = append(extra, "-o", "Ciphers=aes128-ctr") // AEAD ciphers ignore the MAC
			}
			_, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", append(extra, "true")...)
			if code != 255 || !strings.Contains(stderr, "no matching") {
				t.Fatalf("ssh -o %s: exit %d, stderr %q; want a failed negotiation", tc.opt, code, stderr)
			}
		})
	}
	// The defaults, and each cipher benchmarks use, do connect.
	for _, c := range []string{"aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes256-ctr"} {
		if _, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", "-c", c, "-v", "nothing"); code != 127 || !strings.Contains(stderr, "kex: server->client cipher: "+c) {
			t.Errorf("ssh -c %s: exit %d (want 127 from the unknown command), stderr:\n%s", c, code, stderr)
		}
	}
}

// A wrong password is one "login failed" line, also when the client then
// gives up at a keyboard-interactive prompt (fail2ban counts the lines).
func TestFailedLoginLoggedOnce(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "alice-pw")
	giveUp := ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) {
		return nil, errors.New("no answer")
	})
	if c, err := ts.dial("alice", ssh.Password("wrong"), giveUp); err == nil {
		c.Close()
		t.Fatal("a wrong password logged in")
	}
	ts.logs.waitFor(t, "connection ended before login")
	if n := strings.Count(ts.logs.String(), `msg="login failed"`); n != 1 {
		t.Errorf("%d \"login failed\" lines:\n%s", n, ts.logs.String())
	}
}
