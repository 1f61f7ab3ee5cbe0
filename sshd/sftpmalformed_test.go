package sshd_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Malformed input ends only the session that sent it, and ends it: a
// packet cut short by the end of the channel, a length out of range, a
// head alone. The session's channel closes (no reply is left hanging), and
// another session of the same account is served.
func TestMalformedInputEndsOnlyItsSession(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	head := func(length uint32, typ byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, length), typ)
	}
	cases := []struct {
		name string
		send []byte
	}{
		{"body cut short", append(head(100, fxpStat), u32(1)...)},
		{"handed-on body cut short", append(head(100, fxpMkdir), u32(1)...)},
		{"write cut short", append(append(head(1000, fxpWrite), u32(2)...), str("1")...)},
		{"head cut short", head(100, fxpStat)[:3]},
		{"empty packet", head(0, 0)},
		{"packet too long", head(1<<20, fxpWrite)},
		{"unknown type, no id", head(1, 99)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ts.rawSFTP("alice", "alice")
			if _, err := c.w.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			endsWithoutReply(t, c, fmt.Sprintf("%q", tc.send))
		})
	}
	t.Run("write to an open file cut short", func(t *testing.T) {
		c := ts.rawSFTP("alice", "alice")
		r := c.open("/w", fxfWrite|fxfCreat)
		if r.typ != fxpHandle {
			t.Fatalf("open: %+v", r)
		}
		cut := append(append(append(head(1000, fxpWrite), u32(7)...), str(r.str)...), u64(0)...)
		cut = append(append(cut, u32(900)...), strings.Repeat("x", 100)...)
		if _, err := c.w.Write(cut); err != nil {
			t.Fatal(err)
		}
		endsWithoutReply(t, c, "a WRITE cut short")
		if st, err := os.Stat(filepath.Join(ts.home("alice"), "w")); err == nil && st.Size() != 0 {
			t.Fatalf("the WRITE cut short left %d bytes in /w", st.Size())
		}
	})
	other := ts.rawSFTP("alice", "alice")
	if r := other.call(fxpStat, str("/")); r.typ != fxpAttrs {
		t.Fatalf("stat in another session: %+v", r)
	}
}

// A second INIT is answered as the first was, and the session goes on.
func TestInitAgain(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	c := ts.rawSFTP("alice", "alice")
	if err := c.writePacket(fxpInit, u32(3)); err != nil {
		t.Fatal(err)
	}
	if typ, body := c.readPacket(); typ != fxpVersion || !strings.Contains(string(body), "limits@openssh.com") {
		t.Fatalf("second INIT: type %d %q", typ, body)
	}
	if r := c.call(fxpStat, str("/")); r.typ != fxpAttrs {
		t.Fatalf("stat after a second INIT: %+v", r)
	}
}

// endsWithoutReply ends c's input and checks that the server then ends the
// session without a reply to what c sent (named by what).
func endsWithoutReply(t *testing.T, c *rawSFTP, what string) {
	t.Helper()
	c.w.Close()
	ended := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c.r)
		ended <- b
	}()
	select { // a bound for a test that would hang, not a speed floor
	case b := <-ended:
		if len(b) > 0 {
			t.Fatalf("got %q after %s; want the session to end without a reply", b, what)
		}
	case <-time.After(time.Minute):
		t.Fatalf("the session did not end after %s", what)
	}
}
