package scp_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"silo/scp"
	"silo/vfs"
)

func home(t *testing.T, lim vfs.Limits) (*vfs.FS, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "home")
	fsys, err := vfs.Open(dir, vfs.Options{Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys, dir
}

// run serves one scp command with the client's side of the protocol given
// whole: the sink reads records, the source reads acknowledgements.
func run(fsys *vfs.FS, args, in string) (int, string) {
	var out bytes.Buffer
	code := scp.Run(context.Background(), fsys, nil, strings.Fields(args), strings.NewReader(in), &out)
	return code, out.String()
}

// scp -t: files and, with -r, directories arrive with their modes and,
// with -p, times; each step is acknowledged.
func TestSink(t *testing.T) {
	fsys, dir := home(t, vfs.Limits{})
	in := "C0640 5 f\nhello\x00" +
		"T1000000000 0 1000000000 0\nD0750 0 d\nC0600 3 g\nabc\x00E\n"
	code, out := run(fsys, "-r -p -t /", in)
	if code != 0 || out != strings.Repeat("\x00", 8) {
		t.Fatalf("scp -t: %d %q, want 0 and 8 acknowledgements", code, out)
	}
	for name, want := range map[string]string{"f": "hello", "d/g": "abc"} {
		if data, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(data) != want {
			t.Errorf("%s: %q %v, want %q", name, data, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "f")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("f: mode %v, want 0640", fi.Mode())
	}
	if fi, err := os.Stat(filepath.Join(dir, "d")); err != nil || !fi.ModTime().Equal(time.Unix(1000000000, 0)) {
		t.Errorf("d: mtime %v, want the T record's", fi.ModTime())
	}
}

// Names that are not one path element, and a file over the quota, are
// refused with a message the client prints; nothing leaves the home and
// the quota holds.
func TestSinkRefusals(t *testing.T) {
	fsys, dir := home(t, vfs.Limits{Bytes: 10})
	for _, tc := range []struct{ in, want string }{
		{"C0644 1 ../x\nx\x00", "\x02scp: error: unexpected filename: ../x\n"},
		{"C0644 1 a/b\nx\x00", "\x02scp: error: unexpected filename: a/b\n"},
		{"C0644 11 big\n01234567890\x00", "\x01scp: /big: quota exceeded: 10 B left\n"},
		{"X garbage\n", "\x02scp: protocol error"},
	} {
		code, out := run(fsys, "-t /", tc.in)
		if code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("scp -t / with %q: %d %q, want 1 and %q", tc.in, code, out, tc.want)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		t.Errorf("entries beside the home: %v", entries)
	}
	if u := fsys.Usage(); u.Bytes > 10 {
		t.Errorf("usage %d bytes over a quota of 10", u.Bytes)
	}
}

// scp -f sends each file as a C record, its data and a zero byte, each step
// waiting for the client's acknowledgement; a missing file is reported and
// the rest still sent.
func TestSource(t *testing.T) {
	fsys, dir := home(t, vfs.Limits{})
	os.WriteFile(filepath.Join(dir, "f"), []byte("hello"), 0o640)
	os.MkdirAll(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "g"), []byte("abc"), 0o600)
	acks := strings.Repeat("\x00", 32)
	code, out := run(fsys, "-f f missing", acks)
	if want := "C0640 5 f\nhello\x00\x01scp: missing: No such file or directory\n"; code != 1 || out != want {
		t.Errorf("scp -f f missing: %d %q, want 1 and %q", code, out, want)
	}
	code, out = run(fsys, "-r -f /d", acks)
	if want := "D0755 0 d\nC0600 3 g\nabc\x00E\n"; code != 0 || out != want {
		t.Errorf("scp -r -f /d: %d %q, want 0 and %q", code, out, want)
	}
	// A client that reports an error for the file (disk full on its side)
	// makes the command fail; one that stops ends it.
	code, out = run(fsys, "-f f", "\x00\x00\x01scp: no space\n")
	if code != 1 || out != "C0640 5 f\nhello\x00" {
		t.Errorf("scp -f f, the client failing: %d %q", code, out)
	}
	if code, _ = run(fsys, "-f f", ""); code != 1 {
		t.Errorf("scp -f f, the client gone: status %d, want 1", code)
	}
}
