package sshd_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// PuTTY's psftp (the SSH core of WinSCP and FileZilla) logs in with a
// password, puts, gets and resumes both ways.
func TestPuTTYpsftp(t *testing.T) {
	t.Parallel()
	needClient(t, "psftp")
	ts := startServer(t)
	ts.addUser("alice", "alice-pw")
	home := ts.home("alice")
	local := t.TempDir()
	data := randomBytes(6<<20 + 3)
	writeFile(t, filepath.Join(local, "up"), data)
	writeFile(t, filepath.Join(home, "part"), data[:1<<20])
	writeFile(t, filepath.Join(home, "whole"), data)
	writeFile(t, filepath.Join(local, "partget"), data[:2<<20+5])

	script := filepath.Join(local, "script")
	writeFile(t, script, []byte(fmt.Sprintf(`put %[1]s/up up
get up %[1]s/down
reput %[1]s/up part
reget whole %[1]s/partget
ls
`, local)))
	args := []string{"-P", ts.port, "-pw", "alice-pw", "-batch", "-b", script}
	for _, k := range shared.hostKeys {
		args = append(args, "-hostkey", ssh.FingerprintSHA256(k.PublicKey()))
	}
	out, err := exec.Command("psftp", append(args, "alice@127.0.0.1")...).CombinedOutput()
	if err != nil {
		t.Fatalf("psftp: %v\n%s", err, out)
	}
	for name, path := range map[string]string{"put": filepath.Join(home, "up"), "get": filepath.Join(local, "down"),
		"reput": filepath.Join(home, "part"), "reget": filepath.Join(local, "partget")} {
		if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
			t.Errorf("psftp %s: result differs (%d bytes, want %d)", name, len(got), len(data))
		}
	}
	if !strings.Contains(string(out), "restarting at file position") {
		t.Errorf("psftp did not resume:\n%s", out)
	}

	out, err = exec.Command("psftp", "-P", ts.port, "-pw", "wrong", "-batch", "-b", script,
		"-hostkey", ssh.FingerprintSHA256(shared.hostKeys[0].PublicKey()), "alice@127.0.0.1").CombinedOutput()
	if err == nil {
		t.Fatalf("psftp with a wrong password succeeded:\n%s", out)
	}
}

// curl (libssh2) uploads and downloads, checking the host key against a
// known_hosts file.
func TestCurlSFTP(t *testing.T) {
	t.Parallel()
	needClient(t, "curl")
	if out, _ := exec.Command("curl", "-V").Output(); !strings.Contains(string(out), "sftp") {
		t.Skip("this curl has no sftp")
	}
	ts := startServer(t)
	ts.addUser("alice", "alice-pw")
	home := ts.home("alice")
	chome := t.TempDir()
	var kh strings.Builder
	for _, k := range shared.hostKeys {
		fmt.Fprintf(&kh, "[127.0.0.1]:%s %s", ts.port, ssh.MarshalAuthorizedKey(k.PublicKey()))
	}
	writeFile(t, filepath.Join(chome, ".ssh", "known_hosts"), []byte(kh.String()))
	data := randomBytes(3 << 20)
	writeFile(t, filepath.Join(chome, "up"), data)

	curl := func(args ...string) ([]byte, error) {
		cmd := exec.Command("curl", append([]string{"-sS", "--fail"}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+chome)
		return cmd.CombinedOutput()
	}
	url := "sftp://127.0.0.1:" + ts.port
	if out, err := curl("-u", "alice:alice-pw", "-T", filepath.Join(chome, "up"), url+"/~/up"); err != nil {
		t.Fatalf("curl upload: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(home, "up")); !bytes.Equal(got, data) {
		t.Fatal("uploaded file differs")
	}
	out, err := curl("-u", "alice:alice-pw", url+"/up")
	if err != nil || !bytes.Equal(out, data) {
		t.Fatalf("curl download: %v (%d bytes)", err, len(out))
	}
	if out, err := curl("-u", "alice:wrong", url+"/up"); err == nil {
		t.Fatalf("curl with a wrong password succeeded: %s", out)
	}
	if out, err := curl("-u", "alice:alice-pw", url+"/../../etc/passwd"); err == nil {
		t.Fatalf("curl read /../../etc/passwd: %s", out)
	}
}
