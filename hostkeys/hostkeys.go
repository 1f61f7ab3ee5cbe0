// Package hostkeys loads the server's SSH host keys from a directory, creating
// any that are missing: ed25519, ecdsa-p256 and rsa-3072, in OpenSSH's private
// key format (ssh-keygen reads them), mode 0600.
package hostkeys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"silo/internal/atomicfile"
)

// kinds are the host keys silo serves, in the order clients are offered them.
var kinds = []struct {
	file string
	gen  func() (crypto.Signer, error)
}{
	{"ssh_host_ed25519_key", func() (crypto.Signer, error) {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}},
	{"ssh_host_ecdsa_key", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }},
	{"ssh_host_rsa_key", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 3072) }},
}

// LoadOrCreate returns a signer for each host key in dir, generating and
// writing (atomically) those that do not exist yet. RSA keys sign with
// rsa-sha2-256/512 only, never SHA-1 ssh-rsa. It fails if a key can neither
// be read nor created.
func LoadOrCreate(dir string) ([]ssh.Signer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("host keys: %w", err)
	}
	var signers []ssh.Signer
	for _, k := range kinds {
		path := filepath.Join(dir, k.file)
		s, err := load(path)
		if errors.Is(err, os.ErrNotExist) {
			s, err = create(path, k.gen)
		}
		if err != nil {
			return nil, fmt.Errorf("host key %s: %w", path, err)
		}
		if s.PublicKey().Type() == ssh.KeyAlgoRSA {
			s, err = ssh.NewSignerWithAlgorithms(s.(ssh.AlgorithmSigner),
				[]string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256})
			if err != nil {
				return nil, err
			}
		}
		signers = append(signers, s)
	}
	return signers, nil
}

func load(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ssh.ParsePrivateKey(data)
}

func create(path string, gen func() (crypto.Signer, error)) (ssh.Signer, error) {
	key, err := gen()
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(key, "silo host key")
	if err != nil {
		return nil, err
	}
	// Servers sharing the directory may start at once: one key wins, and
	// every server serves it.
	if err := atomicfile.Create(path, pem.EncodeToMemory(block), 0o600); errors.Is(err, os.ErrExist) {
		return load(path)
	} else if err != nil {
		return nil, err
	}
	s, err := ssh.NewSignerFromSigner(key)
	if err != nil {
		return nil, err
	}
	pub := ssh.MarshalAuthorizedKey(s.PublicKey())
	if err := atomicfile.Write(path+".pub", pub, 0o644); err != nil {
		return nil, err
	}
	return s, nil
}
