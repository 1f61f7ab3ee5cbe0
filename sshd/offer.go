package sshd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"strings"
	"time"

	gssh "github.com/gliderlabs/ssh"
)

// Cipher steering. A client takes the first cipher of its own list that the
// server offers, whatever the server's order: a default OpenSSH client
// takes chacha20-poly1305, which x/crypto computes without assembly, at
// about two fifths of the speed of AES-GCM, which it computes with AES-NI.
// So silo reads the client's KEXINIT before key exchange starts, and leaves
// out of its own offer the ciphers the client lists before AES-GCM. A client
// that does not list AES-GCM, or lists only the cipher it wants (`ssh -c
// chacha20-poly1305@openssh.com`), is offered everything as before and gets
// what it asks for.

// serverVersion is the version line silo sends (gliderlabs adds "SSH-2.0-"
// to its Version).
const serverVersion = "SSH-2.0-silo"

// peekWait bounds how long silo waits for a client's KEXINIT before it
// sends its own: a client that waits for the server's first is served
// with the full offer after that.
const peekWait = time.Second

// maxPeek bounds what is read ahead: a version line and one KEXINIT.
const maxPeek = 256 + 35000

var gcmCiphers = []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com"}

// peekedConn hands the SSH layer what was read ahead of it, then the
// connection; and since silo sent its version line itself, it drops the
// SSH layer's, which x/crypto writes first and in one call.
type peekedConn struct {
	net.Conn
	replay  []byte
	sent    []byte
	ciphers []string // the offer for this client; nil for the default
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *peekedConn) Write(p []byte) (int, error) {
	if c.sent != nil {
		if !bytes.HasPrefix(p, c.sent) {
			return 0, errors.New("sshd: unexpected first write")
		}
		n := len(c.sent)
		c.sent = nil
		k, err := c.Conn.Write(p[n:])
		return n + k, err
	}
	return c.Conn.Write(p)
}

// peek sends silo's version line, reads the client's version line and its
// KEXINIT, and returns the connection for the SSH layer with the cipher
// offer chosen for this client.
func (s *Server) peek(c net.Conn) net.Conn {
	line := []byte(serverVersion + "\r\n")
	pc := &peekedConn{Conn: c, sent: line}
	if _, err := c.Write(line); err != nil {
		pc.sent = nil
		return pc
	}
	c.SetReadDeadline(time.Now().Add(peekWait))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 4096)
	for len(buf) < maxPeek {
		if list, ok := clientCiphers(buf); ok {
			pc.ciphers = steer(algorithms().Ciphers, list)
			break
		}
		if cap(buf) == len(buf) {
			buf = slices.Grow(buf, len(buf))
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			break // the SSH layer meets the same end, or reads on
		}
	}
	pc.replay = buf
	return pc
}

// clientCiphers finds the client-to-server cipher list in a client's
// version line and KEXINIT (RFC 4253, sections 4.2 and 7.1), once b holds
// both whole.
func clientCiphers(b []byte) ([]string, bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 || !bytes.HasPrefix(b, []byte("SSH-")) {
		return nil, false
	}
	p := b[i+1:]
	if len(p) < 5 {
		return nil, false
	}
	size := binary.BigEndian.Uint32(p)
	if size > maxPeek || uint32(len(p)-4) < size {
		return nil, false
	}
	pad := uint32(p[4])
	if pad+1 > size {
		return nil, true // not a packet: leave the offer alone
	}
	payload := p[5 : 4+size-pad]
	if len(payload) < 17 || payload[0] != 20 { // SSH_MSG_KEXINIT
		return nil, true
	}
	f := &fields{b: payload[17:]}
	f.str() // kex_algorithms
	f.str() // server_host_key_algorithms
	enc := f.str()
	if f.bad {
		return nil, true
	}
	return strings.Split(enc, ","), true
}

// steer leaves out of ours the ciphers the client lists before its first
// AES-GCM cipher; without AES-GCM in its list, ours stays whole (nil).
func steer(ours, client []string) []string {
	first := slices.IndexFunc(client, func(c string) bool { return slices.Contains(gcmCiphers, c) })
	if first <= 0 {
		return nil
	}
	return slices.DeleteFunc(slices.Clone(ours), func(c string) bool { return slices.Contains(client[:first], c) })
}

// offerKey carries a connection's cipher offer from gliderlabs'
// ConnCallback to its ServerConfigCallback, the one way from one to the
// other.
type offerKey struct{}

func rememberOffer(ctx gssh.Context, c net.Conn) net.Conn {
	if pc, ok := c.(*peekedConn); ok && pc.ciphers != nil {
		ctx.SetValue(offerKey{}, pc.ciphers)
	}
	return c
}
