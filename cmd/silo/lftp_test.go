package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// lftp's sftp:// runs OpenSSH's ssh as its transport: upload, listing and
// download through it.
func TestLftp(t *testing.T) {
	lftp := needClient(t, "lftp")
	needClient(t, "ssh")
	cfg := writeConfig(t, testConfig)
	keyFile := addKeyUser(t, cfg, "alice")
	s := startSilo(t, cfg)
	port := s.addr[strings.LastIndexByte(s.addr, ':')+1:]
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "up.txt"), []byte("through lftp\n"), 0o644)
	script := strings.Join([]string{
		"set sftp:connect-program 'ssh -a -x -F /dev/null -i " + keyFile +
			" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentityAgent=none -o LogLevel=ERROR'",
		"set net:max-retries 1",
		"open -u alice, -p " + port + " sftp://127.0.0.1",
		"mkdir docs",
		"put up.txt -o docs/up.txt",
		"cls -l docs",
		"get docs/up.txt -o down.txt",
		"bye",
	}, "\n")
	cmd := exec.Command(lftp, "-f", "/dev/stdin")
	cmd.Stdin = strings.NewReader(script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "HOME="+work)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("lftp: %v\n%s\nlog:\n%s", err, out, s.log)
	}
	if !strings.Contains(string(out), "up.txt") {
		t.Errorf("listing lacks up.txt:\n%s", out)
	}
	stored, _ := os.ReadFile(filepath.Join(filepath.Dir(cfg), "homes", "alice", "docs", "up.txt"))
	down, _ := os.ReadFile(filepath.Join(work, "down.txt"))
	if string(stored) != "through lftp\n" || string(down) != "through lftp\n" {
		t.Fatalf("stored %q, downloaded %q", stored, down)
	}
}
