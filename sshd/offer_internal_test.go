package sshd

import (
	"slices"
	"testing"
)

func TestSteer(t *testing.T) {
	ours := []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"}
	for _, tc := range []struct {
		client, want []string
	}{
		{[]string{"chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"},
			[]string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com"}},
		{[]string{"chacha20-poly1305@openssh.com"}, nil},
		{[]string{"aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"}, nil},
		{[]string{"aes256-ctr", "aes256-gcm@openssh.com"}, []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr"}},
		{nil, nil},
	} {
		if got := steer(ours, tc.client); !slices.Equal(got, tc.want) {
			t.Errorf("client %v: offer %v, want %v", tc.client, got, tc.want)
		}
	}
}

// FuzzClientCiphers: whatever a client sends before key exchange, the
// parser neither panics nor reads past it.
func FuzzClientCiphers(f *testing.F) {
	f.Add([]byte("SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x00\x2c\x04\x14aaaaaaaaaaaaaaaa\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0aaes128-ctr\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) { clientCiphers(b) })
}
