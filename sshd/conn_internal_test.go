package sshd

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// tcpPair returns both ends of a loopback TCP connection: the server's
// wrapped as x/crypto sees it, and the client's.
func tcpPair(t *testing.T) (*sockConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f := newSockConn(server, server.RemoteAddr())
	t.Cleanup(func() { f.Close() })
	if f.fd == nil {
		t.Fatal("a TCP connection is read without read-ahead")
	}
	return f, client
}

// Read in the pieces x/crypto asks for (a 4 KiB buffer of its own, then
// packets of any length) gives back the stream as sent, in writes of any
// length.
func TestReadAheadKeepsTheStream(t *testing.T) {
	f, client := tcpPair(t)
	rng := rand.New(rand.NewPCG(1, 2))
	sent := make([]byte, 3<<20)
	for i := range sent {
		sent[i] = byte(rng.Uint32())
	}
	go func() {
		for rest := sent; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(100<<10))
			if _, err := client.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
	}()
	r := bufio.NewReader(f)
	got := make([]byte, 0, len(sent))
	for len(got) < len(sent) {
		p := make([]byte, min(len(sent)-len(got), 1+rand.IntN(40<<10)))
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatal(err)
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, sent) {
		t.Fatal("the stream read differs from the stream sent")
	}
}

// A connection holds a read-ahead buffer only while it has bytes in it
// that were not taken: once everything that arrived has been read, or a
// read asks for more than arrived, it holds none while it waits for more.
func TestReadAheadHeldOnlyWithBytesInIt(t *testing.T) {
	f, client := tcpPair(t)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	got := 0
	for got < len(msg) {
		n, err := f.Read(p[:min(len(p), len(msg)-got)])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p[:n], msg[got:got+n]) {
			t.Fatalf("bytes %d-%d differ", got, got+n)
		}
		got += n
	}
	if f.ahead != nil {
		t.Fatal("a buffer is held after every byte that arrived was read")
	}

	if _, err := client.Write(msg[:100]); err != nil {
		t.Fatal(err)
	}
	n, err := io.ReadAtLeast(f, p, 100)
	if err != nil || n != 100 {
		t.Fatalf("read %d bytes, %v; want the 100 sent", n, err)
	}
	if f.ahead != nil {
		t.Fatal("a buffer is held after a read that asked for more than arrived")
	}
}
