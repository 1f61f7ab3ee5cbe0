package sshd_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// needNode skips (or, under SILO_REQUIRE_CLIENTS, fails) unless node can
// load the module, from NODE_PATH (.ci/run installs ssh2 there).
func needNode(t testing.TB, module string) {
	t.Helper()
	if exec.Command("node", "-e", "require('"+module+"')").Run() != nil {
		if os.Getenv("SILO_REQUIRE_CLIENTS") != "" {
			t.Fatalf("node with %s is required (SILO_REQUIRE_CLIENTS is set)", module)
		}
		t.Skipf("node cannot load %s", module)
	}
}

// Every client creates the link it asked for: lk pointing at f7, whichever
// order its SSH_FXP_SYMLINK puts them in.
func TestSymlinkDirectionEveryClient(t *testing.T) {
	ts := startServer(t)
	ts.addUser("alice", "alice-pw", "alice")
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "f7"), []byte("seven"))
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, link string) (string, error)
	}{
		{"OpenSSH sftp", func(t *testing.T, link string) (string, error) {
			return ts.sftpBatch("alice", auth{key: "alice"}, "ln -s f7 "+link+"\n")
		}},
		{"pkg/sftp", func(t *testing.T, link string) (string, error) {
			return "", ts.sftpClient("alice", "alice").Symlink("f7", link)
		}},
		{"paramiko", func(t *testing.T, link string) (string, error) {
			needPython(t, "paramiko")
			return python(ts, `import paramiko
t = paramiko.Transport(("127.0.0.1", PORT)); t.connect(username="alice", password="alice-pw")
paramiko.SFTPClient.from_transport(t).symlink("f7", LINK)`, link)
		}},
		{"asyncssh", func(t *testing.T, link string) (string, error) {
			needPython(t, "asyncssh")
			return python(ts, `import asyncio, asyncssh
async def main():
    async with asyncssh.connect("127.0.0.1", port=PORT, username="alice", password="alice-pw", known_hosts=None) as c:
        async with c.start_sftp_client() as s:
            await s.symlink("f7", LINK)
asyncio.run(main())`, link)
		}},
		{"node ssh2", func(t *testing.T, link string) (string, error) {
			needNode(t, "ssh2")
			script := strings.NewReplacer("PORT", ts.port, "LINK", `"`+link+`"`).Replace(`const { Client } = require("ssh2");
const c = new Client();
c.on("ready", () => c.sftp((err, s) => {
  if (err) { console.error(err.message); process.exit(1); }
  s.symlink("f7", LINK, (err) => { if (err) { console.error(err.message); process.exit(1); } c.end(); });
})).on("error", (e) => { console.error(e.message); process.exit(1); })
  .connect({ host: "127.0.0.1", port: PORT, username: "alice", password: "alice-pw" });`)
			out, err := exec.Command("node", "-e", script).CombinedOutput()
			return string(out), err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			link := "lk-" + strings.NewReplacer(" ", "-", "/", "-").Replace(tc.name)
			if out, err := tc.run(t, link); err != nil {
				t.Fatalf("symlink: %v\n%s", err, out)
			}
			if got, err := os.Readlink(filepath.Join(home, link)); err != nil || got != "f7" {
				t.Fatalf("%s -> %q (%v), want f7", link, got, err)
			}
		})
	}
}

// python runs a script with Debian's python3, PORT and LINK filled in.
func python(ts *testServer, script, link string) (string, error) {
	script = strings.NewReplacer("PORT", ts.port, "LINK", `"`+link+`"`).Replace(script)
	out, err := exec.Command("/usr/bin/python3", "-W", "ignore", "-c", script).CombinedOutput()
	return string(out), err
}

// A shell (or a subsystem other than sftp) is refused at once with a
// message and a non-zero status, and the channel closed, so that no client
// waits for the idle timeout.
func TestShellRefusedAtOnce(t *testing.T) {
	needClient(t, "ssh", "dbclient")
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	args, env := ts.sshArgs(auth{key: "alice"})
	// A client left waiting is cut off, and fails the test, long before
	// the idle timeout would end it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := dropbearKey(t, "alice")
	for name, cmd := range map[string]*exec.Cmd{
		"ssh -T":      exec.CommandContext(ctx, "ssh", append(args, "-T", "-p", ts.port, "alice@127.0.0.1")...),
		"ssh -s":      exec.CommandContext(ctx, "ssh", append(args, "-s", "-p", ts.port, "alice@127.0.0.1", "netconf")...),
		"dbclient -T": exec.CommandContext(ctx, "dbclient", "-T", "-y", "-y", "-i", db, "-p", ts.port, "alice@127.0.0.1"),
	} {
		t.Run(name, func(t *testing.T) {
			cmd.Env = env
			cmd.Stdin = strings.NewReader("")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("exit: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "This service allows sftp, scp, rsync and checksum commands only.") {
				t.Fatalf("no message:\n%s", out)
			}
		})
	}
}

// dropbearKey converts a shared client key to Dropbear's format.
func dropbearKey(t *testing.T, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "id_"+name+".dropbear")
	if b, err := exec.Command("dropbearconvert", "openssh", "dropbear", shared.keys[name].file, out).CombinedOutput(); err != nil {
		t.Fatalf("dropbearconvert: %v\n%s", err, b)
	}
	return out
}

// A default OpenSSH client is steered to AES-GCM; one that asks for a
// cipher silo supports gets it.
func TestCipherOffer(t *testing.T) {
	needClient(t, "ssh")
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	args, env := ts.sshArgs(auth{key: "alice"})
	for _, tc := range []struct{ flags, want string }{
		{"", "aes128-gcm@openssh.com"},
		{"-c chacha20-poly1305@openssh.com", "chacha20-poly1305@openssh.com"},
		{"-c aes256-ctr", "aes256-ctr"},
		{"-c chacha20-poly1305@openssh.com,aes256-gcm@openssh.com", "aes256-gcm@openssh.com"},
	} {
		a := append(slices.Clone(args), "-v", "-p", ts.port)
		if tc.flags != "" {
			a = append(a, strings.Fields(tc.flags)...)
		}
		cmd := exec.Command("ssh", append(a, "alice@127.0.0.1", "md5sum", "/dev/null/x")...)
		cmd.Env = env
		out, _ := cmd.CombinedOutput()
		got := ""
		for _, line := range strings.Split(string(out), "\n") {
			if _, c, ok := strings.Cut(line, "kex: client->server cipher: "); ok {
				got = strings.Fields(c)[0]
			}
		}
		if got != tc.want {
			t.Errorf("ssh %s: cipher %q, want %q", tc.flags, got, tc.want)
		}
	}
}
