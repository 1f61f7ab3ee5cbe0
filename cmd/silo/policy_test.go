package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"silo/users"
)

// `user add` and `user set` take the policy flags, `user show` prints all
// of it, and the users file holds only the fields that are not zero.
func TestUserPolicyCommands(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, testConfig)
	dir := filepath.Dir(cfg)
	usersFile := filepath.Join(dir, "users.toml")
	run := func(stdin string, args ...string) string {
		t.Helper()
		out, stderr, code := silo(t, stdin, append(args, "--config", cfg)...)
		if code != 0 {
			t.Fatalf("silo %s: exit %d\n%s%s", strings.Join(args, " "), code, out, stderr)
		}
		return out
	}
	run("pw\n", "user", "add", "plain", "--password-stdin")
	run("pw\n", "user", "add", "drop", "--password-stdin", "--perm", "/=none", "--perm", "/incoming/=write",
		"--allow-from", "192.0.2.0/24", "--upload-rate", "1MiB")
	data, _ := os.ReadFile(usersFile)
	for _, absent := range []string{"quota", "max_files", "rescan", "max_connections", "download_rate", "disabled", "expires"} {
		if strings.Contains(string(data), absent) {
			t.Errorf("users file holds %s, which no account sets:\n%s", absent, data)
		}
	}
	for _, want := range []string{`"/" = "none"`, `"/incoming" = "write"`, `allow_from = ["192.0.2.0/24"]`, "upload_rate = 1048576"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("users file lacks %s:\n%s", want, data)
		}
	}

	run("", "user", "set", "drop", "--disable", "--expires", "2031-12-31", "--max-connections", "3",
		"--download-rate", "500KiB", "--perm", "/outgoing=list,read", "--quota", "1GiB", "--max-files", "10")
	out := run("", "user", "show", "drop")
	for _, want := range []string{"state:         disabled", "expires:       2031-12-31", "allow from:    192.0.2.0/24",
		"connections:   3", "upload rate:   1 MiB/s", "download rate: 500 KiB/s", "permissions:   / none",
		"/incoming write", "/outgoing read,list", "used:          0 B of 1 GiB", "files:         0 of 10"} {
		if !strings.Contains(out, want) {
			t.Errorf("user show lacks %q:\n%s", want, out)
		}
	}
	// Flags not given are left alone; PATH= drops a rule; an empty
	// --allow-from clears the list; never clears the expiry.
	run("", "user", "set", "drop", "--enable", "--perm", "/outgoing=", "--allow-from=", "--expires", "never")
	f, err := users.Load(usersFile)
	if err != nil {
		t.Fatal(err)
	}
	u := f.Users[f.Find("drop")]
	if u.Disabled || u.Expires != "" || u.AllowFrom != nil || len(u.Perms) != 2 || u.MaxConnections != 3 || u.Quota != 1<<30 {
		t.Errorf("after the second set: %+v", u)
	}

	// Keys: add (twice is once), list, remove by line or by fingerprint.
	keyFile := filepath.Join(dir, "k.pub")
	var lines []string
	var fps []string
	for _, c := range []string{"one@x", "two@x"} {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		s, _ := ssh.NewSignerFromKey(priv)
		lines = append(lines, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))+" "+c)
		fps = append(fps, ssh.FingerprintSHA256(s.PublicKey()))
	}
	os.WriteFile(keyFile, []byte(lines[0]+"\n"), 0o644)
	run("", "user", "key", "add", "plain", keyFile, lines[1])
	if out := run("", "user", "key", "add", "plain", lines[0]); !strings.Contains(out, "added 0 key(s) to plain (1 already there)") {
		t.Errorf("adding a key twice: %q", out)
	}
	out = run("", "user", "key", "list", "plain")
	if out != "ssh-ed25519 "+fps[0]+" one@x\nssh-ed25519 "+fps[1]+" two@x\n" {
		t.Errorf("key list:\n%s", out)
	}
	run("", "user", "key", "rm", "plain", fps[0])
	run("", "user", "key", "rm", "plain", lines[1])
	if out := run("", "user", "key", "list", "plain"); out != "" {
		t.Errorf("key list after removing both:\n%s", out)
	}

	// Import: authorized_keys for one account (created if new), harmless
	// options dropped; a shadow file's accounts with the hashes silo
	// verifies, locked ones disabled, the expiry day kept.
	ak := filepath.Join(dir, "authorized_keys")
	os.WriteFile(ak, []byte("# laptop\nrestrict,no-pty "+lines[0]+"\n\n"+lines[1]+"\n"), 0o644)
	if out := run("", "user", "import", "--authorized-keys", ak, "eve"); !strings.Contains(out, "imported 2 key(s) to the new user eve") {
		t.Errorf("import keys: %q", out)
	}
	shadow := filepath.Join(dir, "shadow")
	bob, _ := users.HashPassword("bob-pw")
	os.WriteFile(shadow, []byte("root:*:19000:0:99999:7:::\nbob:"+bob+":19000:0:99999:7::20000:\ncarl:!"+bob+":1::::::\n"), 0o600)
	out = run("", "user", "import", "--shadow", shadow)
	for _, want := range []string{"imported bob\n", "imported carl (disabled: its password was locked)", "skipped 1 account(s) without a password: root"} {
		if !strings.Contains(out, want) {
			t.Errorf("import shadow lacks %q:\n%s", want, out)
		}
	}
	f, _ = users.Load(usersFile)
	if b := f.Users[f.Find("bob")]; b.Password != bob || b.Expires != "2024-10-04" || b.Disabled {
		t.Errorf("bob imported as %+v", b)
	}
	if c := f.Users[f.Find("carl")]; c.Password != bob || !c.Disabled {
		t.Errorf("carl imported as %+v", c)
	}
	if e := f.Users[f.Find("eve")]; len(e.Keys) != 2 || e.Keys[0] != lines[0] {
		t.Errorf("eve imported as %+v", e)
	}

	before, _ := os.ReadFile(usersFile)
	yescrypt := filepath.Join(dir, "yescrypt")
	os.WriteFile(yescrypt, []byte("dan:$y$j9T$salt$hash:19000::::::\n"), 0o600)
	from := filepath.Join(dir, "from")
	os.WriteFile(from, []byte(`from="10.0.0.0/8" `+lines[0]+"\n"), 0o600)
	for name, tc := range map[string]struct {
		args []string
		code int
		want string
	}{
		"set nothing":         {[]string{"user", "set", "drop"}, 2, "at least one flag"},
		"set unknown user":    {[]string{"user", "set", "nobody", "--disable"}, 1, "no user nobody"},
		"bad perm":            {[]string{"user", "set", "drop", "--perm", "/x=frob"}, 1, `unknown permission "frob"`},
		"relative perm":       {[]string{"user", "set", "drop", "--perm", "x=read"}, 1, "want /PATH=PERMS"},
		"bad cidr":            {[]string{"user", "set", "drop", "--allow-from", "10.0.0.1"}, 1, "is not a CIDR block"},
		"bad date":            {[]string{"user", "set", "drop", "--expires", "tomorrow"}, 1, "neither a date"},
		"enable and":          {[]string{"user", "set", "drop", "--enable", "--disable"}, 2, "--disable and --enable together"},
		"negative conns":      {[]string{"user", "set", "drop", "--max-connections", "-1"}, 1, "must not be negative"},
		"bad rate":            {[]string{"user", "set", "drop", "--upload-rate", "fast"}, 1, "--upload-rate"},
		"rm absent key":       {[]string{"user", "key", "rm", "drop", lines[0]}, 1, "drop has no key"},
		"rm last way in":      {[]string{"user", "key", "rm", "eve", lines[0], lines[1]}, 1, "no way to log in"},
		"key no args":         {[]string{"user", "key", "add", "drop"}, 2, "at least 2"},
		"import both":         {[]string{"user", "import", "--shadow", shadow, "--authorized-keys", ak, "x"}, 2, "not both"},
		"import existing":     {[]string{"user", "import", "--shadow", shadow, "bob"}, 1, "user bob already exists"},
		"import absent":       {[]string{"user", "import", "--shadow", shadow, "zed"}, 1, "not in the file: zed"},
		"import no hash":      {[]string{"user", "import", "--shadow", shadow, "root"}, 1, "root has no password hash"},
		"import yescrypt":     {[]string{"user", "import", "--shadow", yescrypt}, 1, "line 1 (dan): unsupported hash format"},
		"import from=":        {[]string{"user", "import", "--authorized-keys", from, "fred"}, 1, `line 1: key option "from=\"10.0.0.0/8\"" is not supported`},
		"import keys no name": {[]string{"user", "import", "--authorized-keys", ak}, 2, "one account"},
	} {
		t.Run(name, func(t *testing.T) {
			_, stderr, code := silo(t, "", append(tc.args, "--config", cfg)...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
	if after, _ := os.ReadFile(usersFile); string(after) != string(before) {
		t.Fatal("a refused command changed the users file")
	}
}

// `silo user set --disable` on a running server refuses new logins and
// closes the account's open session; --enable lets it in again.
func TestDisableClosesSessions(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, testConfig)
	s := startSilo(t, cfg)
	reloads := s.log.count("users reloaded")
	changed := func() {
		t.Helper()
		reloads++
		s.log.waitCount(t, "users reloaded", reloads)
	}
	keyFile := addKeyUser(t, cfg, "alice")
	changed()
	login := func() (*ssh.Client, error) {
		return dialSilo(s.addr, "alice", ssh.InsecureIgnoreHostKey(), keyAuth(t, keyFile))
	}
	c, err := login()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Getwd(); err != nil {
		t.Fatal(err)
	}
	silo(t, "", "user", "set", "alice", "--disable", "--config", cfg)
	changed()
	s.log.waitCount(t, "closing connection of user no longer allowed", 1)
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the open connection of a disabled account stayed open")
	}
	if c2, err := login(); err == nil {
		c2.Close()
		t.Fatal("a disabled account logged in")
	}
	s.log.waitCount(t, `reason="account disabled"`, 1)
	silo(t, "", "user", "set", "alice", "--enable", "--config", cfg)
	changed()
	c2, err := login()
	if err != nil {
		t.Fatalf("enabled again, still refused: %v", err)
	}
	c2.Close()
}
