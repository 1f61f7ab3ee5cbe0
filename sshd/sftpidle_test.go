package sshd_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"silo/activity"
	"silo/sshd"
)

// rsGoroutines counts the goroutines of pkg/sftp's RequestServers in the
// process: its workers, its ordering goroutine and its dispatcher.
func rsGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("github.com/pkg/sftp.(*RequestServer)")) ||
			bytes.Contains(g, []byte("github.com/pkg/sftp.(*packetManager)")) {
			count++
		}
	}
	return count
}

// waitNoRS waits until no RequestServer goroutine is left: a RequestServer
// whose end was reported has returned from Serve, and the two goroutines
// it does not wait for end without waiting on anything.
func waitNoRS(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for rsGoroutines() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d RequestServer goroutines left", rsGoroutines())
		}
		time.Sleep(time.Millisecond)
	}
}

// waitIdle waits for the idle check's outcome to be want, skipping others.
func waitIdle(t *testing.T, events <-chan bool, want bool) {
	t.Helper()
	for {
		select {
		case ended := <-events:
			if ended == want {
				return
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no idle check ended=%v", want)
		}
	}
}

// An idle SFTP session holds none of pkg/sftp's goroutines: its
// RequestServer ends once it has had nothing to do for a while, unless it
// has handles open, and the next request starts another, which serves it
// as if nothing had happened.
func TestIdleSFTPSessionReleasesItsRequestServer(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	ts := startServer(t)
	events := make(chan bool, 1000)
	sshd.SetSFTPIdle(ts.srv, time.Millisecond, func(ended bool) { events <- ended })
	ts.addUser("alice", "", "alice")
	writeFile(t, filepath.Join(ts.home("alice"), "f"), []byte("hello"))

	// A session's INIT and first REALPATH start none (on a server that
	// would keep one for an hour).
	long := startServer(t)
	sshd.SetSFTPIdle(long.srv, time.Hour, nil)
	long.addUser("alice", "", "alice")
	lc := long.rawSFTP("alice", "alice")
	if r := lc.call(fxpRealpath, str(".")); r.typ != fxpName || r.str != "/" {
		t.Fatalf("realpath: %+v", r)
	}
	if g := rsGoroutines(); g != 0 {
		t.Fatalf("%d RequestServer goroutines after INIT and REALPATH", g)
	}
	if r := lc.call(fxpStat, str("/")); r.typ != fxpAttrs || rsGoroutines() == 0 {
		t.Fatalf("stat %+v: no RequestServer", r)
	}
	lc.sess.Close()
	waitNoRS(t)

	const n = 3
	var cs []*rawSFTP
	for range n {
		cs = append(cs, ts.rawSFTP("alice", "alice"))
	}
	// A STAT starts one, which ends.
	for _, c := range cs {
		if r := c.call(fxpStat, str("/f")); r.typ != fxpAttrs {
			t.Fatalf("stat: %+v", r)
		}
	}
	for range n {
		waitIdle(t, events, true)
	}
	waitNoRS(t)

	// A request after the end starts another, without an INIT.
	c := cs[0]
	if r := c.call(fxpStat, str("/f")); r.typ != fxpAttrs {
		t.Fatalf("stat after the end: %+v", r)
	}

	// Handles of its own keep it, and work on.
	d := c.call(fxpOpendir, str("/"))
	f := c.open("/f", fxfRead)
	if d.typ != fxpHandle || f.typ != fxpHandle {
		t.Fatalf("opendir %+v, open %+v", d, f)
	}
	waitIdle(t, events, false)
	if r := c.call(fxpReaddir, str(d.str)); r.typ != fxpName {
		t.Fatalf("readdir on a handle kept: %+v", r)
	}
	if r := c.call(fxpRead, str(f.str), u64(0), u32(100)); r.typ != fxpData || r.str != "hello" {
		t.Fatalf("read on a handle kept: %+v", r)
	}
	if r := c.call(fxpFstat, str(f.str)); r.typ != fxpAttrs {
		t.Fatalf("fstat on a handle kept: %+v", r)
	}
	waitIdle(t, events, false)
	if r := c.close(d.str); !r.ok() {
		t.Fatalf("close dir: %+v", r)
	}
	if r := c.close(f.str); !r.ok() {
		t.Fatalf("close file: %+v", r)
	}
	waitIdle(t, events, true)
	waitNoRS(t)
	if r := c.call(fxpRead, str(f.str), u64(0), u32(100)); r.typ != fxpStatus || r.code != 4 {
		t.Fatalf("read after close: %+v", r)
	}
	if r := c.call(fxpReaddir, str(d.str)); r.typ != fxpStatus || r.code != 4 {
		t.Fatalf("readdir after close: %+v", r)
	}
	// Another session's RequestServer started as this one's ended: both
	// sessions work.
	if r := cs[1].call(fxpStat, str("/f")); r.typ != fxpAttrs {
		t.Fatalf("stat in another session: %+v", r)
	}
}

// With a RequestServer ended as soon as it is quiet, requests arrive while
// one ends and the next starts, over and over: every one is answered, in
// order, and handles still work.
func TestSFTPRequestServerChurn(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	sshd.SetSFTPIdle(ts.srv, time.Nanosecond, nil)
	ts.addUser("alice", "", "alice")
	writeFile(t, filepath.Join(ts.home("alice"), "f"), []byte("hello"))
	c := ts.rawSFTP("alice", "alice")
	for i := range 200 {
		switch i % 4 {
		case 0:
			if r := c.call(fxpStat, str("/f")); r.typ != fxpAttrs {
				t.Fatalf("%d: stat: %+v", i, r)
			}
		case 1:
			name := fmt.Sprintf("/d%d", i)
			if r := c.call(fxpMkdir, str(name), u32(0)); !r.ok() {
				t.Fatalf("%d: mkdir: %+v", i, r)
			}
			if r := c.call(fxpRmdir, str(name)); !r.ok() {
				t.Fatalf("%d: rmdir: %+v", i, r)
			}
		case 2:
			f := c.open("/f", fxfRead)
			r := c.call(fxpRead, str(f.str), u64(0), u32(100))
			if f.typ != fxpHandle || r.str != "hello" || !c.close(f.str).ok() {
				t.Fatalf("%d: open %+v, read %+v", i, f, r)
			}
		case 3:
			// Pipelined: sent before any is answered.
			for j := range 8 {
				if err := c.writePacket(fxpRealpath, u32(uint32(1000+j)), str("x")); err != nil {
					t.Fatal(err)
				}
			}
			for j := range 8 {
				typ, body := c.readPacket()
				if typ != fxpName || !strings.Contains(string(body), "/x") || body[3] != byte((1000+j)&0xff) {
					t.Fatalf("%d: reply %d: type %d %q", i, j, typ, body)
				}
			}
		}
	}
}

// A request pkg/sftp cannot parse ends the session, as it always did, with
// pkg/sftp's error in the log, and nothing else: other sessions go on.
func TestUnparsableRequestEndsTheSession(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.rawSFTP("alice", "alice")
	other := ts.rawSFTP("alice", "alice")
	// A STAT whose path is longer than the packet.
	if err := c.writePacket(fxpStat, u32(1), u32(100), []byte("short")); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c.r); err != nil || len(b) > 0 {
		t.Fatalf("got %q, %v; want the session to end without a reply", b, err)
	}
	ts.logs.waitFor(t, `err="packet too short"`)
	if r := other.call(fxpStat, str("/")); r.typ != fxpAttrs {
		t.Fatalf("stat in another session: %+v", r)
	}
}

// A CLOSE read just as the idle timer fires: the RequestServer still holds
// the handle, so it is kept, and it is the one that closes the file. Were
// it ended there, the CLOSE would reach a new RequestServer that never
// had the handle, and the old one would abort the upload as it ended.
func TestCloseRacingTheIdleCheck(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	events := make(chan bool, 100)
	sshd.SetSFTPIdle(ts.srv, time.Nanosecond, func(ended bool) { events <- ended })
	sshd.SetSFTPHandOnHook(ts.srv, func(typ byte, idleCheck func()) {
		if typ == fxpClose {
			idleCheck() // the timer fires now
		}
	})
	ts.addUser("alice", "", "alice")
	c := ts.rawSFTP("alice", "alice")
	f := c.open("/up", fxfWrite|fxfCreat|fxfTrunc)
	if f.typ != fxpHandle {
		t.Fatalf("open: %+v", f)
	}
	waitIdle(t, events, false) // kept for the handle
	if r := c.write(f.str, 0, "hello"); !r.ok() {
		t.Fatalf("write: %+v", r)
	}
	if r := c.close(f.str); !r.ok() {
		t.Fatalf("close as the idle check runs: %+v", r)
	}
	if got, err := os.ReadFile(filepath.Join(ts.home("alice"), "up")); string(got) != "hello" {
		t.Fatalf("uploaded file: %q, %v; want hello", got, err)
	}
}

// blockMkdir holds the handler of a MKDIR of path until release is closed.
type blockMkdir struct {
	path    string
	entered chan struct{}
	release chan struct{}
}

func (b *blockMkdir) Observe(e activity.Event) {
	if e.Kind == activity.Mkdir && e.Path == b.path {
		close(b.entered)
		<-b.release
	}
}

// stackHas reports whether some goroutine is in fn.
func stackHas(fn string) bool {
	buf := make([]byte, 1<<20)
	for n := runtime.Stack(buf, true); n == len(buf); n = runtime.Stack(buf, true) {
		buf = make([]byte, 2*len(buf))
	}
	return bytes.Contains(buf, []byte(fn))
}

// Requests the stream answers itself (limits@openssh.com, a packet type
// it does not know) behind one handed to pkg/sftp and still running are
// answered after it: replies leave in the order of the requests.
func TestRepliesServedHereWaitForEarlierOnes(t *testing.T) {
	// Not parallel: it looks at every goroutine's stack.
	block := &blockMkdir{path: "/slow", entered: make(chan struct{}), release: make(chan struct{})}
	mon := activity.New(nil)
	mon.Subscribe(block)
	ts := startServerWith(t, t.TempDir(), sshd.DefaultLimits(), testPenalties(), func(c *sshd.Config) { c.Monitor = mon })
	ts.addUser("alice", "", "alice")
	c := ts.rawSFTP("alice", "alice")
	ids := make(chan uint32, 3)
	go func() {
		defer close(ids)
		for {
			var hdr [9]byte
			if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
				return
			}
			if _, err := io.CopyN(io.Discard, c.r, int64(binary.BigEndian.Uint32(hdr[:]))-5); err != nil {
				return
			}
			ids <- binary.BigEndian.Uint32(hdr[5:])
		}
	}()
	if err := c.writePacket(fxpMkdir, u32(1), str("/slow"), u32(0)); err != nil {
		t.Fatal(err)
	}
	<-block.entered
	if err := c.writePacket(fxpExtended, u32(2), str("limits@openssh.com")); err != nil {
		t.Fatal(err)
	}
	if err := c.writePacket(99, u32(3)); err != nil {
		t.Fatal(err)
	}
	// Until the stream waits for the MKDIR, or has answered without.
	var got []uint32
	for len(got) == 0 && !stackHas("(*sftpStream).waitAnswered") {
		select {
		case id := <-ids:
			got = append(got, id)
		case <-time.After(time.Millisecond):
		}
	}
	close(block.release)
	for len(got) < 3 {
		id, ok := <-ids
		if !ok {
			t.Fatalf("session ended after replies %v", got)
		}
		got = append(got, id)
	}
	if fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("replies to %v, want [1 2 3]", got)
	}
}

// Sessions that end in every state of their RequestServer (starting,
// serving, ending, ended; with a handle open, with requests unanswered)
// leave nothing behind: no RequestServer goroutine, no session goroutine.
func TestSessionsEndingAroundTheRequestServerLeaveNothing(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	ts := startServer(t)
	sshd.SetSFTPIdle(ts.srv, time.Nanosecond, nil)
	ts.addUser("alice", "", "alice")
	writeFile(t, filepath.Join(ts.home("alice"), "f"), []byte("hello"))
	warm := ts.rawSFTP("alice", "alice")
	warm.sess.Close()
	waitNoRS(t)
	before := runtime.NumGoroutine()
	for i := range 60 {
		conn, c := ts.rawChannel("alice", "alice")
		if i%3 != 0 {
			c.writePacket(fxpInit, u32(3))
			c.readPacket()
		}
		if i%3 == 1 {
			c.open("/f", fxfRead)
		}
		for j := range i % 5 {
			c.writePacket(fxpStat, u32(uint32(100+j)), str("/f"))
		}
		if i%2 == 0 {
			c.writePacket(fxpOpen, u32(99), str("/up"), u32(fxfWrite|fxfCreat), u32(0))
			c.writePacket(fxpWrite, u32(98), str("1"), u64(0), str("data"))
		}
		if i%4 == 3 {
			c.sess.Close() // the channel first, then the connection
		}
		conn.Close()
	}
	waitNoRS(t)
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before the sessions", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}
