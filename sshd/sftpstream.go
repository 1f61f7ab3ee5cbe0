package sshd

import (
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// SFTP limits, announced with limits@openssh.com and enforced by pkg/sftp,
// which ends a session on a packet over 256 KiB. Reads and writes may carry
// 255 KiB, as with OpenSSH's sftp-server; without the announcement OpenSSH's
// sftp moves 32 KiB per request.
const (
	maxSFTPPacket = 256 << 10
	maxSFTPData   = maxSFTPPacket - 1024
)

const (
	fxpVersion       = 2
	fxpOpen          = 3
	fxpOpendir       = 11
	fxpExtended      = 200
	fxpExtendedReply = 201
)

// sftpStream sits between the session channel and pkg/sftp's RequestServer,
// packet-aware, to answer the SFTP extensions pkg/sftp does not know
// (limits@openssh.com) and announce them in the VERSION reply, and to hold
// back the requests that follow an open until the open is answered:
// pkg/sftp registers a handle before it has finished setting it up, and a
// request for that handle sent right behind the open (no honest client does
// that; it needs the handle first) would race with the setup. Everything
// else passes through untouched.
type sftpStream struct {
	ch         io.ReadWriteCloser
	touch      func() // called for every request: the session is not idle
	maxHandles uint64

	// Reading: the bytes of the current incoming packet not yet handed on.
	pending []byte
	remain  uint32
	hdr     [5]byte

	// pkg/sftp answers every request once, in the order received, so the
	// open in flight is answered when the replies written reach its rank.
	omu      sync.Mutex
	ocond    *sync.Cond
	requests uint64 // handed to pkg/sftp
	replies  uint64 // written by pkg/sftp
	openRank uint64 // the rank of the open in flight, 0 for none
	closed   bool

	// Writing: pkg/sftp writes a packet in several calls; wmu is held from
	// a packet's first byte to its last, so that an injected reply never
	// lands inside one.
	wmu     sync.Mutex
	wneed   uint32 // bytes left in the packet being written
	wpart   []byte // its length, if split across writes; or the whole VERSION packet
	sentVer bool
	werr    atomic.Pointer[error] // the first write error: the stream is broken
}

func newSFTPStream(ch io.ReadWriteCloser, touch func(), maxHandles int) *sftpStream {
	s := &sftpStream{ch: ch, touch: touch, maxHandles: uint64(maxHandles)}
	s.ocond = sync.NewCond(&s.omu)
	return s
}

// waitOpen blocks until the open in flight, if any, has been answered, or
// the stream is closed.
func (s *sftpStream) waitOpen() {
	s.omu.Lock()
	defer s.omu.Unlock()
	for s.openRank > s.replies && !s.closed {
		s.ocond.Wait()
	}
}

// request counts a request handed to pkg/sftp; an open is waited for.
func (s *sftpStream) request(open bool) {
	s.omu.Lock()
	defer s.omu.Unlock()
	s.requests++
	if open {
		s.openRank = s.requests
	}
}

// replied counts a reply of pkg/sftp's going out.
func (s *sftpStream) replied() {
	s.omu.Lock()
	defer s.omu.Unlock()
	s.replies++
	s.ocond.Broadcast()
}

// shut wakes a reader waiting for a reply that will never be written.
func (s *sftpStream) shut() {
	s.omu.Lock()
	defer s.omu.Unlock()
	s.closed = true
	s.ocond.Broadcast()
}

var sftpExtensionsAdded = [][2]string{{"limits@openssh.com", "1"}}

func (s *sftpStream) Read(p []byte) (int, error) {
	for len(s.pending) == 0 && s.remain == 0 {
		s.waitOpen()
		if _, err := io.ReadFull(s.ch, s.hdr[:]); err != nil {
			if err == io.ErrUnexpectedEOF {
				return 0, errors.New("sftp: truncated packet")
			}
			return 0, err
		}
		s.touch()
		length := binary.BigEndian.Uint32(s.hdr[:4])
		if s.hdr[4] != fxpExtended || length > maxSFTPPacket || length < 1 {
			s.request(s.hdr[4] == fxpOpen || s.hdr[4] == fxpOpendir)
			// pkg/sftp refuses bad lengths itself.
			s.pending, s.remain = s.hdr[:], length-1
			if length == 0 {
				s.remain = 0
			}
			break
		}
		body := make([]byte, length-1)
		if _, err := io.ReadFull(s.ch, body); err != nil {
			return 0, err
		}
		if !s.extended(body) {
			s.request(false)
			s.pending = append(s.hdr[:], body...)
		}
	}
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	if uint32(len(p)) > s.remain {
		p = p[:s.remain]
	}
	n, err := s.ch.Read(p)
	s.remain -= uint32(n)
	return n, err
}

// extended answers an SSH_FXP_EXTENDED request (body after the type byte) if
// it is one silo handles here, and reports whether it did.
func (s *sftpStream) extended(body []byte) bool {
	if len(body) < 8 {
		return false
	}
	id := body[:4]
	n := binary.BigEndian.Uint32(body[4:8])
	if uint32(len(body)-8) < n {
		return false
	}
	switch string(body[8 : 8+n]) {
	case "limits@openssh.com":
		reply := []byte{fxpExtendedReply}
		reply = append(reply, id...)
		reply = binary.BigEndian.AppendUint64(reply, maxSFTPPacket)
		reply = binary.BigEndian.AppendUint64(reply, maxSFTPData) // read
		reply = binary.BigEndian.AppendUint64(reply, maxSFTPData) // write
		reply = binary.BigEndian.AppendUint64(reply, s.maxHandles)
		s.inject(reply)
		return true
	}
	return false
}

// inject writes a whole reply packet between pkg/sftp's packets.
func (s *sftpStream) inject(body []byte) {
	pkt := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr.Load() == nil {
		if _, err := s.ch.Write(append(pkt, body...)); err != nil {
			s.werr.Store(&err)
		}
	}
}

// Write passes pkg/sftp's packets through, each channel write holding what
// one call gave, so that a 255 KiB payload is not copied.
func (s *sftpStream) Write(p []byte) (int, error) {
	if err := s.werr.Load(); err != nil {
		s.shut()
		return 0, *err
	}
	total := len(p)
	for len(p) > 0 {
		if s.wneed == 0 {
			if len(s.wpart) == 0 {
				s.wmu.Lock() // a packet starts
			}
			k := min(4-len(s.wpart), len(p))
			s.wpart, p = append(s.wpart, p[:k]...), p[k:]
			if len(s.wpart) < 4 {
				return total, nil
			}
			s.wneed = binary.BigEndian.Uint32(s.wpart)
			s.replied()
			if s.wneed == 0 {
				if err := s.flush(s.wpart); err != nil {
					return 0, err
				}
				continue
			}
		}
		k := min(uint32(len(p)), s.wneed)
		out := p[:k]
		p = p[k:]
		s.wneed -= k
		if !s.sentVer {
			s.wpart = append(s.wpart, out...)
			if s.wneed > 0 {
				continue
			}
			s.sentVer = true
			out = extendVersion(s.wpart)
		} else if len(s.wpart) > 0 {
			out = append(s.wpart, out...) // the length and the header after it
		}
		if err := s.flush(out); err != nil {
			return 0, err
		}
	}
	return total, nil
}

// flush writes part of the current packet, and releases wmu at its end.
func (s *sftpStream) flush(b []byte) error {
	_, err := s.ch.Write(b)
	s.wpart = s.wpart[:0]
	if err != nil {
		s.werr.Store(&err)
		s.wneed = 0
		s.shut()
	}
	if s.wneed == 0 {
		s.wmu.Unlock()
	}
	return err
}

// extendVersion appends silo's extension pairs to pkg/sftp's VERSION packet
// (length, type, version, pairs).
func extendVersion(pkt []byte) []byte {
	if len(pkt) < 9 || pkt[4] != fxpVersion {
		return pkt
	}
	for _, e := range sftpExtensionsAdded {
		for _, s := range e {
			pkt = binary.BigEndian.AppendUint32(pkt, uint32(len(s)))
			pkt = append(pkt, s...)
		}
	}
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)-4))
	return pkt
}

func (s *sftpStream) Close() error {
	s.shut()
	return s.ch.Close()
}
