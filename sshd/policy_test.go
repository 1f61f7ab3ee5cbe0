package sshd_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"silo/users"
)

// The README's three accounts: a read-only one that hands out releases, a
// drop box that may only put files into /incoming, and a mixed one that
// puts into /incoming and fetches from /outgoing.
var policyAccounts = map[string]map[string]string{
	"rel":  {"/": "read,list"},
	"drop": {"/": "none", "/incoming": "write"},
	"mix":  {"/": "none", "/incoming": "write", "/outgoing": "read,list"},
}

// startPolicyServer serves the three accounts, each with alice's key, a password (NAME-pw) and a
// home holding pub/release, incoming/earlier, outgoing/report and secret.
func startPolicyServer(t *testing.T) *testServer {
	ts := startServer(t)
	for name, perms := range policyAccounts {
		ts.addUser(name, name+"-pw", "alice")
		ts.update(func(f *users.File) { f.Users[f.Find(name)].Perms = perms })
		home := ts.home(name)
		for _, p := range []string{"pub/release", "incoming/earlier", "outgoing/report", "secret"} {
			writeFile(t, filepath.Join(home, p), []byte("content of "+p))
		}
	}
	return ts
}

// The transfer clients, each a way to put a local file at a remote path,
// to get one, and (where the client can) to list a directory.
type transferClient struct {
	name string
	put  func(ts *testServer, user, local, remote string) (string, bool)
	get  func(ts *testServer, user, remote, local string) (string, bool)
	list func(ts *testServer, user, dir string) (string, bool)
}

var alice = auth{key: "alice"}

func sftpRun(ts *testServer, user, batch string) (string, bool) {
	out, err := ts.sftpBatch(user, alice, batch)
	return out, err == nil
}

func scpRun(ts *testServer, args ...string) (string, bool) {
	out, code := ts.scpCmd(alice, args...)
	return out, code == 0
}

func rsyncRun(ts *testServer, args ...string) (string, bool) {
	out, code := ts.rsyncCmd("alice", args...)
	return out, code == 0
}

var transferClients = []transferClient{
	{name: "sftp",
		put: func(ts *testServer, user, local, remote string) (string, bool) {
			return sftpRun(ts, user, "put "+local+" "+remote+"\n")
		},
		get: func(ts *testServer, user, remote, local string) (string, bool) {
			return sftpRun(ts, user, "get "+remote+" "+local+"\n")
		},
		list: func(ts *testServer, user, dir string) (string, bool) { return sftpRun(ts, user, "ls "+dir+"\n") },
	},
	{name: "scp",
		put: func(ts *testServer, user, local, remote string) (string, bool) {
			return scpRun(ts, local, user+"@127.0.0.1:"+remote)
		},
		get: func(ts *testServer, user, remote, local string) (string, bool) {
			return scpRun(ts, user+"@127.0.0.1:"+remote, local)
		},
	},
	{name: "scp-O",
		put: func(ts *testServer, user, local, remote string) (string, bool) {
			return scpRun(ts, "-O", local, user+"@127.0.0.1:"+remote)
		},
		get: func(ts *testServer, user, remote, local string) (string, bool) {
			return scpRun(ts, "-O", user+"@127.0.0.1:"+remote, local)
		},
	},
	{name: "rsync",
		put: func(ts *testServer, user, local, remote string) (string, bool) {
			return rsyncRun(ts, local, user+"@127.0.0.1:"+remote)
		},
		get: func(ts *testServer, user, remote, local string) (string, bool) {
			return rsyncRun(ts, user+"@127.0.0.1:"+remote, local)
		},
		list: func(ts *testServer, user, dir string) (string, bool) {
			return rsyncRun(ts, user+"@127.0.0.1:"+dir+"/")
		},
	},
}

// TestPolicyExamples runs each example account's allowed and refused
// operations through sftp, scp in both protocols and rsync, and checks
// the outcome on disk.
func TestPolicyExamples(t *testing.T) {
	t.Parallel()
	ts := startPolicyServer(t)
	type access struct {
		user, path string
		ok         bool
	}
	puts := []access{
		{"rel", "/pub/new", false},
		{"rel", "/new", false},
		{"drop", "/incoming/new", true},
		{"drop", "/new", false},
		{"mix", "/incoming/new", true},
		{"mix", "/outgoing/new", false},
	}
	gets := []access{
		{"rel", "/pub/release", true},
		{"rel", "/secret", true},
		{"drop", "/incoming/earlier", false},
		{"drop", "/secret", false},
		{"mix", "/outgoing/report", true},
		{"mix", "/incoming/earlier", false},
		{"mix", "/secret", false},
	}
	lists := []access{
		{"rel", "/pub", true},
		{"drop", "/incoming", false},
		{"drop", "/", false},
		{"mix", "/outgoing", true},
		{"mix", "/incoming", false},
	}
	for _, c := range transferClients {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			local := t.TempDir()
			for _, a := range puts {
				// A name per client, so that each put creates its file.
				remote := a.path + "-" + c.name
				src := filepath.Join(local, "up")
				writeFile(t, src, []byte("uploaded by "+c.name))
				out, ok := c.put(ts, a.user, src, remote)
				_, err := os.Stat(filepath.Join(ts.homes, a.user, remote))
				if ok != a.ok || (err == nil) != a.ok {
					t.Errorf("%s: put %s as %s: succeeded %v, file there %v; want %v\n%s", c.name, remote, a.user, ok, err == nil, a.ok, out)
				}
			}
			for _, a := range gets {
				dst := filepath.Join(local, "got", a.user+strings.ReplaceAll(a.path, "/", "_"))
				os.MkdirAll(filepath.Dir(dst), 0o755)
				out, ok := c.get(ts, a.user, a.path, dst)
				got, err := os.ReadFile(dst)
				same := err == nil && bytes.Equal(got, []byte("content of "+strings.TrimPrefix(a.path, "/")))
				if ok != a.ok || same != a.ok {
					t.Errorf("%s: get %s as %s: succeeded %v, right content %v; want %v\n%s", c.name, a.path, a.user, ok, same, a.ok, out)
				}
			}
			if c.list == nil {
				return
			}
			for _, a := range lists {
				out, ok := c.list(ts, a.user, a.path)
				if ok != a.ok {
					t.Errorf("%s: list %s as %s: succeeded %v, want %v\n%s", c.name, a.path, a.user, ok, a.ok, out)
				}
			}
		})
	}
	t.Run("sftp-commands", func(t *testing.T) {
		t.Parallel()
		local := t.TempDir()
		writeFile(t, filepath.Join(local, "f"), []byte("x"))
		for _, tc := range []struct {
			user, batch string
			ok          bool
			gone, made  string // a file that must be gone or made afterwards, if ok
		}{
			// The drop box: put works from inside /incoming too, where
			// OpenSSH's sftp stats the directory first.
			{"drop", "cd /incoming\nput " + filepath.Join(local, "f") + " cd-put\n", true, "", "incoming/cd-put"},
			{"drop", "rm /incoming/earlier\n", false, "", ""},
			{"drop", "rename /incoming/earlier /incoming/moved\n", false, "", ""},
			{"drop", "mkdir /incoming/sub\n", true, "", "incoming/sub"},
			{"drop", "mkdir /sub\n", false, "", ""},
			{"rel", "rm /pub/release\n", false, "", ""},
			{"rel", "mkdir /d\n", false, "", ""},
			{"rel", "rename /pub/release /pub/r2\n", false, "", ""},
			{"rel", "chmod 600 /pub/release\n", false, "", ""},
			{"rel", "ln -s release /pub/link\n", false, "", ""},
			{"mix", "rename /incoming/earlier /outgoing/earlier\n", false, "", ""},
			{"mix", "rm /outgoing/report\n", false, "", ""},
		} {
			out, ok := sftpRun(ts, tc.user, tc.batch)
			if ok != tc.ok {
				t.Errorf("%s: %q: succeeded %v, want %v\n%s", tc.user, tc.batch, ok, tc.ok, out)
			}
			if tc.made != "" {
				if _, err := os.Stat(filepath.Join(ts.homes, tc.user, tc.made)); err != nil {
					t.Errorf("%s: %q: %v", tc.user, tc.batch, err)
				}
			}
		}
		for _, p := range []string{"drop/incoming/earlier", "rel/pub/release", "mix/outgoing/report", "mix/incoming/earlier"} {
			if _, err := os.Stat(filepath.Join(ts.homes, p)); err != nil {
				t.Errorf("%s after the refused commands: %v", p, err)
			}
		}
	})
	t.Run("checksum", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			user, path string
			ok         bool
		}{
			{"rel", "/pub/release", true},
			{"drop", "/incoming/earlier", false},
			{"mix", "/outgoing/report", true},
			{"mix", "/incoming/earlier", false},
		} {
			stdout, stderr, code := ts.ssh(tc.user, alice, "", "sha256sum", tc.path)
			if (code == 0) != tc.ok {
				t.Errorf("%s: sha256sum %s: exit %d\n%s%s", tc.user, tc.path, code, stdout, stderr)
			}
			if !tc.ok && stderr != "sha256sum: "+tc.path+": Permission denied\n" {
				t.Errorf("%s: sha256sum %s: stderr %q", tc.user, tc.path, stderr)
			}
		}
	})
}

// TestPolicyMessages checks the words an SFTP client gets with a refusal:
// the status is permission denied, and the message says what is not
// allowed and which rule says so. PuTTY's psftp is refused too.
func TestPolicyMessages(t *testing.T) {
	t.Parallel()
	ts := startPolicyServer(t)
	raw := ts.rawSFTP("mix", "alice")
	const denied = 3 // SSH_FX_PERMISSION_DENIED
	for _, tc := range []struct {
		name string
		r    reply
		want string
	}{
		{"create in /outgoing", raw.open("/outgoing/x", fxfWrite|fxfCreat),
			"permission denied: /outgoing/x: writing is not allowed here (/outgoing: read,list)"},
		{"read in /incoming", raw.open("/incoming/earlier", fxfRead),
			"permission denied: /incoming/earlier: reading is not allowed here (/incoming: write)"},
		{"list /incoming", raw.call(fxpOpendir, str("/incoming")),
			"permission denied: /incoming: listing is not allowed here (/incoming: write)"},
		{"stat outside the rules", raw.call(fxpStat, str("/secret")),
			"permission denied: /secret: access is not allowed here (/: none)"},
		{"remove in /outgoing", raw.call(fxpRemove, str("/outgoing/report")),
			"permission denied: /outgoing/report: deleting is not allowed here (/outgoing: read,list)"},
	} {
		if tc.r.typ != fxpStatus || tc.r.code != denied || tc.r.msg != tc.want {
			t.Errorf("%s: got type %d code %d %q, want permission denied %q", tc.name, tc.r.typ, tc.r.code, tc.r.msg, tc.want)
		}
	}
	// What the rules allow: stat of /incoming (write) and of / (a rule
	// below it gives something), so that clients can walk there.
	for _, p := range []string{"/", "/incoming", "/incoming/earlier", "/outgoing/report"} {
		if r := raw.call(fxpStat, str(p)); !r.ok() {
			t.Errorf("stat %s: %d %q", p, r.code, r.msg)
		}
	}

	needClient(t, "psftp")
	local := t.TempDir()
	writeFile(t, filepath.Join(local, "f"), []byte("x"))
	script := filepath.Join(local, "script")
	// The batch stops at the first command that fails.
	writeFile(t, script, []byte("put "+filepath.Join(local, "f")+" /incoming/psftp\nput "+filepath.Join(local, "f")+" /outgoing/f\n"))
	args := []string{"-P", ts.port, "-pw", "mix-pw", "-batch", "-b", script}
	for _, k := range shared.hostKeys {
		args = append(args, "-hostkey", ssh.FingerprintSHA256(k.PublicKey()))
	}
	out, err := exec.Command("psftp", append(args, "mix@127.0.0.1")...).CombinedOutput()
	// psftp words a status by its code, not with the server's message.
	if err == nil || !strings.Contains(string(out), "/outgoing/f: open for write: permission denied") {
		t.Errorf("psftp put into /outgoing: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(ts.homes, "mix", "incoming", "psftp")); err != nil {
		t.Errorf("psftp put into /incoming: %v\n%s", err, out)
	}
}
