// Package proxytest is a TCP proxy for tests that stands in for a load
// balancer sending the PROXY protocol (HAProxy's send-proxy-v2).
package proxytest

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/pires/go-proxyproto"
)

// Start listens on 127.0.0.1:0 and returns the address. For each
// connection it accepts, it connects with dial and, if client is valid,
// writes a PROXY protocol v2 header that names client as the source, then
// pipes the bytes both ways. It stops, and its connections close, when the
// test ends.
func Start(t testing.TB, dial func() (net.Conn, error), client netip.AddrPort) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			track(down)
			up, err := dial()
			if err != nil {
				down.Close()
				continue
			}
			track(up)
			if client.IsValid() {
				h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(client), up.RemoteAddr())
				if _, err := h.WriteTo(up); err != nil {
					up.Close()
					down.Close()
					continue
				}
			}
			wg.Go(func() { pipe(up, down) })
			wg.Go(func() { pipe(down, up) })
		}
	})
	return ln.Addr().String()
}

// pipe copies src to dst, then passes the end of src on to dst.
func pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	if c, ok := dst.(interface{ CloseWrite() error }); ok {
		c.CloseWrite()
	} else {
		dst.Close()
	}
}

// From returns a dial function that connects to addr from the local IP
// address from (any of 127/8 on Linux's loopback).
func From(from, addr string) func() (net.Conn, error) {
	return func() (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		return d.Dial("tcp", addr)
	}
}
