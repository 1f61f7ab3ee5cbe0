package activity_test

import (
	"io/fs"
	"sync"
	"testing"
	"time"

	"silo/activity"
	"silo/vfs"
)

type recorder struct {
	mu     sync.Mutex
	events []activity.Event
}

func (r *recorder) Observe(e activity.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// The status view's rate and ETA follow the monitor's clock: the average
// until a full sample, then the last second's.
func TestTransferRateAndETA(t *testing.T) {
	now := time.Unix(1000, 0)
	m := activity.New(func() time.Time { return now })
	var rec recorder
	m.Subscribe(&rec)
	c := m.Connect(activity.ConnInfo{Remote: "192.0.2.1:22"})
	c.LoggedIn("alice", "abc", "SSH-2.0-test", "password")
	tr := c.Start("sftp", activity.Download, "/f", 1000)
	now = now.Add(500 * time.Millisecond)
	tr.Add(100)
	st := m.Status()
	if len(st.Transfers) != 1 {
		t.Fatalf("transfers %+v", st.Transfers)
	}
	if got := st.Transfers[0]; got.Rate != 200 || got.ETA != 4.5 || got.Bytes != 100 || got.User != "alice" {
		t.Fatalf("after 0.5 s: %+v", got)
	}
	now = now.Add(500 * time.Millisecond) // a full second: a sample
	tr.Add(300)
	if got := m.Status().Transfers[0]; got.Rate != 400 || got.ETA != 1.5 {
		t.Fatalf("after 1 s: %+v", got)
	}
	now = now.Add(2 * time.Second) // stalled
	if got := m.Status().Transfers[0]; got.Rate != 0 || got.ETA != -1 {
		t.Fatalf("stalled: %+v", got)
	}
	tr.End(nil)
	if st := m.Status(); len(st.Transfers) != 0 || len(st.Connections) != 1 || st.Connections[0].Idle != 3 {
		t.Fatalf("after the end: %+v", st)
	}
	if n := len(rec.events); n != 2 || rec.events[1].Kind != activity.Download || rec.events[1].Size != 400 ||
		rec.events[1].Duration != 3*time.Second || rec.events[1].Session != "abc" {
		t.Fatalf("events %+v", rec.events)
	}
	if c := m.Counts(); c.BytesOut != 400 || c.Connections != 1 {
		t.Fatalf("counts %+v", c)
	}
}

// Kick closes the connections of a user or a session, no others.
func TestKick(t *testing.T) {
	m := activity.New(nil)
	closed := map[string]int{}
	conn := func(user, session string) {
		c := m.Connect(activity.ConnInfo{Remote: session, Close: func() { closed[session]++ }})
		c.LoggedIn(user, session, "", "publickey")
	}
	conn("alice", "s1")
	conn("alice", "s2")
	conn("bob", "s3")
	m.Connect(activity.ConnInfo{Remote: "anon", Close: func() { closed["anon"]++ }}) // not logged in
	if n := m.Kick("s3"); n != 1 || closed["s3"] != 1 {
		t.Fatalf("kick s3: %d %v", n, closed)
	}
	if n := m.Kick("alice"); n != 2 || closed["s1"] != 1 || closed["s2"] != 1 {
		t.Fatalf("kick alice: %d %v", n, closed)
	}
	if n := m.Kick(""); n != 0 || closed["anon"] != 0 {
		t.Fatalf("kick of nothing closed %d: %v", n, closed)
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&fs.PathError{Op: "write", Path: "/f", Err: &vfs.QuotaError{Left: 1}}, "quota"},
		{&fs.PathError{Op: "open", Path: "/f", Err: &vfs.QuotaError{Files: true}}, "file_limit"},
		{&fs.PathError{Op: "open", Path: "/l", Err: vfs.ErrEscape}, "jail"},
		{&fs.PathError{Op: "open", Path: "/in", Err: fs.ErrPermission}, "permission"},
		{&fs.PathError{Op: "open", Path: "/f", Err: fs.ErrNotExist}, ""},
	} {
		if got := activity.Reason(tc.err); got != tc.want {
			t.Errorf("Reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// Engines run without a monitor: every method of a nil *Conn and
// *Transfer reports nothing.
func TestNilReportsNothing(t *testing.T) {
	var c *activity.Conn
	c.LoggedIn("a", "b", "c", "d")
	c.Op("scp", activity.Mkdir, "/d", "", "", nil)
	c.Refused("scp", activity.Open, "/f", fs.ErrPermission)
	tr := c.Start("scp", activity.Upload, "/f", 1)
	tr.Add(1)
	tr.End(nil)
	c.Close()
}
