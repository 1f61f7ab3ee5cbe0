package hooks_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"silo/activity"
	"silo/hooks"
	"silo/vfs"
)

func TestValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  hooks.Config
		want string
	}{
		"no events":        {hooks.Config{URL: "http://x/"}, "events"},
		"unknown event":    {hooks.Config{Events: []string{"upload", "delete"}, URL: "http://x/"}, `"delete"`},
		"neither":          {hooks.Config{Events: []string{"upload"}}, "exactly one"},
		"both":             {hooks.Config{Events: []string{"upload"}, URL: "http://x/", Command: []string{"/bin/true"}}, "exactly one"},
		"bad url":          {hooks.Config{Events: []string{"upload"}, URL: "ftp://x/"}, "url"},
		"relative program": {hooks.Config{Events: []string{"upload"}, Command: []string{"notify.sh"}}, "absolute"},
		"bare timeout":     {hooks.Config{Events: []string{"upload"}, URL: "http://x/", Timeout: 30}, "timeout"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, tc.want)
		}
	}
	ok := hooks.Config{Events: []string{"upload", "quota_refused"}, Command: []string{"/bin/true"}, Users: []string{"a"}}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid hook refused: %v", err)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func upload(path string) activity.Event {
	return activity.Event{Kind: activity.Upload, User: "alice", Path: path, Size: 3, Time: time.Now(), Remote: "192.0.2.1:5"}
}

// A hook that does not answer holds up only its own queue: events beyond
// it are dropped, counted and logged once, and Observe never blocks.
func TestQueueOverflowIsCountedAndLogged(t *testing.T) {
	arrived, release := make(chan string, 10), make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p hooks.Payload
		json.NewDecoder(r.Body).Decode(&p)
		arrived <- p.Path
		<-release
	}))
	defer hs.Close()
	var logs syncBuf
	d, err := hooks.New([]hooks.Config{{Events: []string{"upload"}, URL: hs.URL}},
		hooks.Options{Log: slog.New(slog.NewTextHandler(&logs, nil)), Queue: 2})
	if err != nil {
		t.Fatal(err)
	}
	d.Observe(upload("/1"))
	if p := <-arrived; p != "/1" {
		t.Fatalf("first delivery %s", p)
	}
	for _, p := range []string{"/2", "/3", "/4", "/5", "/6"} {
		d.Observe(upload(p)) // /2 and /3 fit in the queue
	}
	if st := d.Stats(); st.Dropped != 3 {
		t.Fatalf("dropped %d, want 3", st.Dropped)
	}
	if n := strings.Count(logs.String(), "hook queue full"); n != 1 {
		t.Fatalf("%d overflow lines, want 1:\n%s", n, logs.String())
	}
	close(release)
	for _, want := range []string{"/2", "/3"} {
		if p := <-arrived; p != want {
			t.Fatalf("delivered %s, want %s", p, want)
		}
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := d.Stats(); st.Delivered != 3 || st.Failed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A 4xx is final; a 5xx is tried again, up to Attempts, and each failure
// is logged.
func TestHTTPRetries(t *testing.T) {
	var mu sync.Mutex
	hits := map[string]int{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
		switch r.URL.Path {
		case "/gone":
			w.WriteHeader(http.StatusGone)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer hs.Close()
	var logs syncBuf
	d, err := hooks.New([]hooks.Config{{Events: []string{"upload"}, URL: hs.URL + "/gone"}, {Events: []string{"upload"}, URL: hs.URL + "/down"}},
		hooks.Options{Log: slog.New(slog.NewTextHandler(&logs, nil)), Attempts: 3, Backoff: func(int) time.Duration { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	d.Observe(upload("/f"))
	d.Close(context.Background())
	if hits["/gone"] != 1 || hits["/down"] != 3 {
		t.Fatalf("attempts %v, want /gone 1 and /down 3", hits)
	}
	if st := d.Stats(); st.Failed != 2 || st.Delivered != 0 {
		t.Fatalf("stats %+v", st)
	}
	if n := strings.Count(logs.String(), "trying again"); n != 2 {
		t.Errorf("%d retry lines, want 2:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "hook failed"); n != 2 {
		t.Errorf("%d failure lines, want 2:\n%s", n, logs.String())
	}
}

// A path a user chose reaches the program as data only: in its stdin and
// environment, never as an argument or through a shell. Events of other
// users, failures that are not quota refusals, and kinds not asked for are
// not delivered.
func TestCommandGetsEventAsData(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "hook")
	out := filepath.Join(dir, "out")
	os.WriteFile(prog, []byte("#!/bin/sh\nprintf '%s|%s|%s|%s\\n' \"$#\" \"$1\" \"$SILO_EVENT\" \"$SILO_PATH\" >>\""+out+"\"\ncat >>\""+out+".json\"\n"), 0o755)
	d, err := hooks.New([]hooks.Config{{Events: []string{"upload", "quota_refused"}, Command: []string{prog, "fixed"}, Users: []string{"alice"}}},
		hooks.Options{})
	if err != nil {
		t.Fatal(err)
	}
	evil := "/$(touch " + filepath.Join(dir, "pwned") + ");`id`"
	d.Observe(upload(evil))
	other := upload("/x")
	other.User = "bob"
	d.Observe(other)
	failed := upload("/broken")
	failed.Err = errors.New("connection lost")
	d.Observe(failed)
	d.Observe(activity.Event{Kind: activity.Remove, User: "alice", Path: "/r"})
	refused := upload("/big")
	refused.Err = &vfs.QuotaError{Left: 1, Limit: 10}
	d.Observe(refused)
	d.Close(context.Background())

	got, _ := os.ReadFile(out)
	want := "1|fixed|upload|" + evil + "\n1|fixed|quota_refused|/big\n"
	if string(got) != want {
		t.Fatalf("runs:\n%s\nwant\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Fatal("the path was run by a shell")
	}
	js, _ := os.ReadFile(out + ".json")
	var p hooks.Payload
	if err := json.NewDecoder(bytes.NewReader(js)).Decode(&p); err != nil || p.Path != evil || p.Size != 3 || p.User != "alice" {
		t.Fatalf("stdin: %v %+v", err, p)
	}
	if st := d.Stats(); st.Delivered != 2 || st.Failed != 0 {
		t.Fatalf("stats %+v", st)
	}
}
