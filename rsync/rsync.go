// Package rsync is an rsync server (what `rsync --server` is on a host
// with rsync installed) that reads and writes only through a home's
// vfs.FS: the same jail and exact quota as SFTP, with no process started.
//
// It speaks protocols 27 to 31 (31 announced), as described in silo's
// notes on the rsync wire protocol, which cite rsync's own sources
// (main.c, io.c, flist.c, generator.c, sender.c, receiver.c, token.c) for
// each rule. silo never grants incremental recursion: the client builds
// and sends the whole file list first, which it copes with.
//
// Roles: with --sender (a pull) the server is the sender; otherwise (a
// push) it is the generator and the receiver, run as two goroutines so
// that requests can go out while file data comes in.
package rsync

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"silo/activity"
	"silo/internal/strerror"
	"silo/vfs"
)

const protocolVersion = 31

// Compat flags (compat.c CF_*).
const (
	cfSafeFlist      = 1 << 3
	cfAvoidXattr     = 1 << 4
	cfChksumSeedFix  = 1 << 5
	cfInplacePartial = 1 << 6
	cfVarintFlags    = 1 << 7
	cfID0Names       = 1 << 8
)

// Compression in use.
const (
	compressNone = iota
	compressZlib
	compressZlibx
)

// Config is what the server knows of the account.
type Config struct {
	// User is the account name, reported as the owner and group of every
	// file.
	User string
	// Log receives the session's diagnostics.
	Log *slog.Logger
	// Activity receives each file sent or received, and each change
	// (mkdir, symlink, remove) and refusal; nil reports nothing.
	Activity *activity.Conn
}

// report reports an operation on the virtual path vp to cfg.Activity.
func (s *session) report(kind activity.Kind, vp, target string, err error) {
	s.cfg.Activity.Op("rsync", kind, vfs.Clean(vp), target, "", err)
}

// IsServer reports whether args (a command line split into words) are an
// rsync client's server command: "rsync --server ...". Any path to a
// program named rsync is accepted, as --rsync-path may give one.
func IsServer(args []string) bool {
	return len(args) >= 2 && path.Base(args[0]) == "rsync" && args[1] == "--server"
}

// session is one run of the server.
type session struct {
	ctx  context.Context
	fs   *vfs.FS
	cfg  Config
	o    options
	c    *conn
	errw io.Writer

	proto       int
	varintFlags bool
	safeFlist   bool
	id0Names    bool
	sums        sums
	compress    int

	mu          sync.Mutex
	exitCode    int   // the worst per-file outcome so far: 0, 23 or 24
	clientIOErr int32 // I/O-error bits the client reported
	ioError     int32 // I/O-error bits of this side's list

	// readerDone is closed when a push's receiver goroutine, the reader
	// of the stream, has ended.
	readerDone chan struct{}
	// onIndex receives MSG_NO_SEND and MSG_SUCCESS indexes.
	onIndex func(tag byte, ndx int32)
	filters []rule
}

// Run serves one `rsync --server` command: args are the words after
// "rsync" (starting with "--server"); in and out are the SSH channel, errw
// its stderr, which the client prints. It returns the exit status.
func Run(ctx context.Context, fsys *vfs.FS, cfg Config, args []string, in io.Reader, out, errw io.Writer) (code int) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &session{ctx: ctx, fs: fsys, cfg: cfg, errw: errw, c: newConn(in, out)}
	s.o.maxDelete, s.o.maxSize, s.o.compressLevel = -1, -1, -1
	if len(args) > 0 && args[0] == "--server" {
		args = args[1:]
	}
	parseArgs(&s.o, args)
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		switch e := p.(type) {
		case abort:
			code = s.fail(e)
		case error:
			if e != errClientExit {
				panic(p)
			}
			code = s.exitOr(12)
		default:
			panic(p)
		}
	}()
	// A session that ends (the channel closed) must not leave a read
	// blocked forever; closing the input is left to the caller, so only
	// the context is watched by the roles between files.
	if s.o.secluded {
		s.readSecluded()
	}
	if err := s.handshake(); err != nil {
		fmt.Fprintf(errw, "rsync: [silo] %v\n", err)
		return 2
	}
	if s.o.refused != "" {
		return s.fail(abort{code: s.o.code, msg: "rsync: [silo] " + s.o.refused})
	}
	if s.o.sender {
		s.sender()
	} else {
		s.receiver()
	}
	s.c.flush()
	return s.exitOr(0)
}

// exitOr is the exit status: the worst per-file outcome, or code.
func (s *session) exitOr(code int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(code, s.exitCode)
}

// fail reports a fatal error in-band and ends the session the way rsync's
// client expects (section 7.5 of the notes): the message, then at 31 the
// exit code, then wait for the client to acknowledge or go.
func (s *session) fail(e abort) int {
	c := s.c
	if e.msg != "" {
		if c.muxOut {
			c.msg(msgError, []byte(e.msg+"\n"))
		} else {
			fmt.Fprintln(s.errw, e.msg)
		}
	}
	if c.muxOut && s.proto >= 31 && c.werr == nil {
		c.msg(msgErrorExit, binary.LittleEndian.AppendUint32(nil, uint32(e.code)))
		c.flush()
		s.drain()
	}
	c.flush()
	return e.code
}

// drain reads what the client still sends until it closes or
// acknowledges the error exit with an empty MSG_ERROR_EXIT, for a bounded
// time: closing first would make its last writes fail noisily.
func (s *session) drain() {
	done := s.readerDone
	if done != nil {
		// The receiver goroutine still reads (the generator failed): it
		// ends when the client acknowledges or goes.
		select {
		case <-done:
		case <-s.ctx.Done():
		case <-time.After(10 * time.Second):
		}
		return
	}
	done = make(chan struct{})
	go func() {
		defer close(done)
		c := s.c
		c.beforeBlock = nil
		for s.drainOne() {
		}
	}()
	select {
	case <-done:
	case <-s.ctx.Done():
	case <-time.After(10 * time.Second):
	}
}

// drainOne reads some input; it reports whether to go on.
func (s *session) drainOne() (more bool) {
	c := s.c
	defer func() {
		if p := recover(); p != nil {
			more = p == errClientExit && c.exitLen == 4
		}
	}()
	var buf [4096]byte
	if !c.muxIn {
		_, err := c.in.Read(buf[:])
		return err == nil
	}
	c.read(buf[:1])
	return true
}

// readSecluded reads the arguments that -s sends on stdin (rsync.c
// send_protected_args): NUL-terminated words, then an empty one.
func (s *session) readSecluded() {
	var words []string
	total := 0
	for {
		w, err := s.c.in.ReadString(0)
		if err != nil {
			fatalf(12, "")
		}
		total += len(w)
		if total > 1<<20 || len(words) > 10000 {
			fatalf(1, "rsync: [silo] too many arguments")
		}
		w = w[:len(w)-1]
		if w == "" {
			break
		}
		words = append(words, w)
	}
	if len(words) > 0 {
		words = words[1:] // a new argv[0]
	}
	parseArgs(&s.o, words)
}

// handshake exchanges versions, compat flags, algorithm names and the
// checksum seed (compat.c setup_protocol), then starts multiplexing.
func (s *session) handshake() error {
	c := s.c
	c.write(binary.LittleEndian.AppendUint32(nil, protocolVersion))
	c.flush()
	var b [4]byte
	c.raw(b[:])
	client := int(int32(binary.LittleEndian.Uint32(b[:])))
	if client < 27 {
		return fmt.Errorf("protocol version %d is too old: the server speaks protocols 27 to %d", client, protocolVersion)
	}
	s.proto = min(client, protocolVersion)
	c.proto = s.proto
	caps := ""
	if i := strings.IndexByte(s.o.caps, '.'); i >= 0 {
		caps = s.o.caps[i+1:]
	}
	if s.proto >= 30 {
		var cf int32
		for _, l := range []struct {
			c    byte
			flag int32
		}{{'f', cfSafeFlist}, {'x', cfAvoidXattr}, {'C', cfChksumSeedFix}, {'I', cfInplacePartial}, {'v', cfVarintFlags}, {'u', cfID0Names}} {
			if strings.IndexByte(caps, l.c) >= 0 {
				cf |= l.flag
			}
		}
		c.write(appendVarint(nil, cf))
		s.varintFlags = cf&cfVarintFlags != 0
		s.safeFlist = cf&cfSafeFlist != 0 || s.proto >= 31
		s.id0Names = cf&cfID0Names != 0
		s.sums.seedFirst = cf&cfChksumSeedFix != 0
	}
	implied := csumMD5
	if s.proto < 30 {
		implied = csumMD4
	}
	s.sums.xfer, s.sums.flist = implied, implied
	if s.o.checksumName != "" {
		pick := func(n string) csum {
			if n == "auto" {
				return implied
			}
			return csumNames[n]
		}
		s.sums.xfer, s.sums.flist = pick(s.o.xferSum), pick(s.o.listSum)
		s.sums.namedMD5 = s.o.xferSum == "md5"
	}
	if s.o.compress {
		s.compress = compressZlib
	}
	if s.varintFlags {
		if s.o.checksumName == "" {
			c.write(appendVstring(nil, offeredList()))
		}
		negotiateZ := s.o.compress && s.o.compressName == ""
		if negotiateZ {
			c.write(appendVstring(nil, "zlibx zlib"))
		}
		c.flush()
		if s.o.checksumName == "" {
			list := s.rawVstring()
			k, ok := negotiate(list)
			if !ok {
				return fmt.Errorf("failed to negotiate a checksum choice: the client offers %q, the server %q", list, offeredList())
			}
			s.sums.xfer, s.sums.flist = k, k
			s.sums.namedMD5 = k == csumMD5
		}
		if negotiateZ {
			list := s.rawVstring()
			switch {
			case hasWord(list, "zlibx"):
				s.compress = compressZlibx
			case hasWord(list, "zlib"):
				s.compress = compressZlib
			default:
				return fmt.Errorf("failed to negotiate a compress choice: the client offers %q, the server zlibx zlib", list)
			}
		}
	}
	switch s.o.compressName {
	case "zlibx":
		s.compress = compressZlibx
	case "none":
		s.compress = compressNone
	}
	if s.o.compressLevel == 0 {
		s.compress = compressNone
	}
	seed := s.o.seed
	if !s.o.seedSet {
		for seed == 0 {
			var r [4]byte
			rand.Read(r[:])
			seed = int32(binary.LittleEndian.Uint32(r[:]) & 0x7fffffff)
		}
	}
	s.sums.seed = seed
	c.write(binary.LittleEndian.AppendUint32(nil, uint32(seed)))
	c.flush()
	c.muxOut = true
	c.muxIn = s.proto >= 30
	c.onMsg = s.onMsg
	c.ackExit = s.o.sender
	return nil
}

// rawVstring reads a vstring during the handshake, before multiplexing.
func (s *session) rawVstring() string {
	var b [1]byte
	s.c.raw(b[:])
	n := int(b[0])
	if n&0x80 != 0 {
		s.c.raw(b[:])
		n = (n&0x7f)<<8 | int(b[0])
	}
	p := make([]byte, n)
	s.c.raw(p)
	return string(p)
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if f == w {
			return true
		}
	}
	return false
}

// onMsg handles the messages a client may send besides data.
func (s *session) onMsg(tag byte, p []byte) {
	switch tag {
	case msgIOError:
		if len(p) == 4 {
			s.mu.Lock()
			s.clientIOErr |= int32(binary.LittleEndian.Uint32(p))
			s.mu.Unlock()
		}
	case msgNoSend, msgSuccess:
		if len(p) == 4 && s.onIndex != nil {
			s.onIndex(tag, int32(binary.LittleEndian.Uint32(p)))
		}
	case msgInfo, msgError, msgErrorXfer, msgWarning:
		// The client prints its own messages; one that reaches the
		// server has nothing to ask of it.
	default:
		fatalf(12, "rsync: [silo] unexpected message tag %d from the client", tag)
	}
}

// Messages to the client.

func (s *session) info(format string, a ...any) {
	s.c.msg(msgInfo, []byte(fmt.Sprintf(format, a...)+"\n"))
}

func (s *session) warn(format string, a ...any) {
	s.c.msg(msgWarning, []byte(fmt.Sprintf(format, a...)+"\n"))
}

// fileError reports a failure that ends one file, not the run: the client
// prints it and exits 23 at the end.
func (s *session) fileError(format string, a ...any) {
	s.c.msg(msgErrorXfer, []byte(fmt.Sprintf(format, a...)+"\n"))
	s.setExit(23)
}

func (s *session) setExit(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if code > s.exitCode {
		s.exitCode = code
	}
}

// errText describes a vfs error as rsync prints errno: text and number.
func errText(err error) string {
	text := strerror.Of(err)
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
	case errors.Is(err, vfs.ErrEscape):
		errno = syscall.EACCES
	default:
		return text
	}
	return fmt.Sprintf("%s (%d)", text, int(errno))
}
