package sshd

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a
// load balancer that connects to silo from its own address opens each
// connection with a header that names the client's. silo reads one only
// from the sources it is told to trust (Config.ProxyProtocol), and from
// those it requires one: the client's address then stands for the
// connection everywhere, before the pre-auth limits count it. From any
// other source nothing is read ahead: a header such a peer sends reaches
// the SSH layer as the garbage it is there, and the connection is what its
// socket says.

// defaultProxyHeaderTimeout bounds the wait for a trusted source's header;
// a balancer sends it at once.
const defaultProxyHeaderTimeout = 5 * time.Second

// proxyReadAhead is what is read at once while looking for the header: a
// v2 header without TLVs is 28 bytes (IPv4) or 52 (IPv6), a v1 line at
// most 107.
const proxyReadAhead = 256

// proxied returns c as the SSH layer is to see it: c itself from a source
// not trusted to send a PROXY header; from a trusted one, c with the
// client address its header names, or nil if no valid header came within
// the timeout (c is then closed). It runs on the connection's goroutine,
// so a peer that is slow to send holds up nothing else, and the server's
// Close ends the wait.
func (s *Server) proxied(c net.Conn) net.Conn {
	if len(s.cfg.ProxyProtocol) == 0 {
		return c
	}
	proxy, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil || !s.trustedProxy(proxy.Addr().Unmap()) {
		return c
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.Close()
		return nil
	}
	s.heading[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.heading, c)
		s.mu.Unlock()
	}()

	br := bufio.NewReaderSize(c, proxyReadAhead)
	c.SetReadDeadline(time.Now().Add(s.proxyHeaderTimeout))
	h, err := proxyproto.Read(br)
	c.SetReadDeadline(time.Time{})
	var client net.Addr = c.RemoteAddr() // a LOCAL header: the balancer's own connection, a health check
	if err == nil && h.Command.IsProxy() {
		if src, _, ok := h.TCPAddrs(); ok {
			client = src
		} else {
			err = errors.New("the header names no TCP client address")
		}
	}
	if err != nil {
		var ne net.Error
		switch {
		case s.closed():
		case errors.Is(err, proxyproto.ErrNoProxyProtocol) && br.Buffered() == 0:
			// Connected and closed without a byte: a balancer's TCP check.
			s.log.Debug("connection from a trusted proxy closed before its PROXY header", "proxy", proxy.String())
		case errors.As(err, &ne) && ne.Timeout():
			s.log.Warn("connection from a trusted proxy refused: no PROXY header", "proxy", proxy.String(),
				"waited", s.proxyHeaderTimeout)
		case errors.Is(err, proxyproto.ErrNoProxyProtocol):
			s.log.Warn("connection from a trusted proxy refused: it does not start with a PROXY header", "proxy", proxy.String())
		default:
			s.log.Warn("connection from a trusted proxy refused: bad PROXY header", "proxy", proxy.String(), "err", err)
		}
		c.Close()
		return nil
	}
	rest, _ := br.Peek(br.Buffered())
	s.log.Debug("PROXY header", "proxy", proxy.String(), "remote", client.String())
	return &proxiedConn{Conn: c, rest: rest, remote: client}
}

func (s *Server) trustedProxy(a netip.Addr) bool {
	for _, p := range s.cfg.ProxyProtocol {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (s *Server) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// proxiedConn is a connection that came through a proxy: it reads first
// what was read past the header, and its remote address is the client's.
type proxiedConn struct {
	net.Conn
	rest   []byte
	remote net.Addr
}

func (c *proxiedConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *proxiedConn) RemoteAddr() net.Addr { return c.remote }
