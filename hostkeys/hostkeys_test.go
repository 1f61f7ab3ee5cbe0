package hostkeys

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestCreateThenReuse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	first, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantTypes := []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoRSA}
	if len(first) != len(wantTypes) {
		t.Fatalf("got %d keys, want %d", len(first), len(wantTypes))
	}
	for i, s := range first {
		if s.PublicKey().Type() != wantTypes[i] {
			t.Errorf("key %d is %s, want %s", i, s.PublicKey().Type(), wantTypes[i])
		}
	}
	algs := first[2].(ssh.MultiAlgorithmSigner).Algorithms()
	for _, a := range algs {
		if a == ssh.KeyAlgoRSA {
			t.Errorf("RSA host key signs with SHA-1 ssh-rsa: %v", algs)
		}
	}
	second, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range first {
		if a, b := ssh.FingerprintSHA256(first[i].PublicKey()), ssh.FingerprintSHA256(second[i].PublicKey()); a != b {
			t.Errorf("key %d changed across loads: %s then %s", i, a, b)
		}
	}
	for _, name := range []string{"ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key"} {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", name, fi.Mode(), err)
		}
		if _, err := exec.LookPath("ssh-keygen"); err == nil {
			out, err := exec.Command("ssh-keygen", "-l", "-f", p).CombinedOutput()
			if err != nil {
				t.Errorf("ssh-keygen cannot read %s: %v %s", name, err, out)
			}
			if name == "ssh_host_rsa_key" && !strings.HasPrefix(string(out), "3072 ") {
				t.Errorf("RSA key is not 3072 bits: %s", out)
			}
		}
	}
}

func TestUnusableDirectoryFails(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := LoadOrCreate(filepath.Join(file, "keys")); err == nil {
		t.Fatal("LoadOrCreate under a regular file succeeded")
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ssh_host_ed25519_key"), []byte("garbage"), 0o600)
	if _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "ssh_host_ed25519_key") {
		t.Fatalf("a corrupt key file: %v, want an error naming it", err)
	}
}

// Servers that share a host key directory and start at once all serve the
// same keys: one creation wins, the others load it.
func TestConcurrentCreateAgrees(t *testing.T) {
	dir := t.TempDir()
	const n = 4
	got := make([][]ssh.Signer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { got[i], errs[i] = LoadOrCreate(dir) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("server %d: %v", i, errs[i])
		}
		for k := range got[i] {
			if a, b := ssh.FingerprintSHA256(got[i][k].PublicKey()), ssh.FingerprintSHA256(got[0][k].PublicKey()); a != b {
				t.Errorf("server %d key %d: %s, server 0: %s", i, k, a, b)
			}
		}
	}
}
