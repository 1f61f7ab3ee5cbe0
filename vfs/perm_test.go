package vfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestParsePerm(t *testing.T) {
	for in, want := range map[string]string{
		"read,list": "read,list", "list, read": "read,list", "all": "all", "none": "none",
		"read,write,delete,list": "all", "write": "write", "none,write": "write",
	} {
		p, err := ParsePerm(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePerm(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, bad := range []string{"", "exec", "read,,list", "READ"} {
		if _, err := ParsePerm(bad); err == nil {
			t.Errorf("ParsePerm(%q): no error", bad)
		}
	}
}

func TestRulesAt(t *testing.T) {
	r := Rules{"/": PermNone, "/incoming": PermWrite, "/incoming/checked": PermRead | PermList}
	for p, want := range map[string]string{
		"/": "none /", "/x": "none /", "/incoming": "write /incoming", "/incoming/a/b": "write /incoming",
		"/incomingx": "none /", "/incoming/checked/f": "read,list /incoming/checked",
	} {
		perm, rule := r.At(p)
		if got := perm.String() + " " + rule; got != want {
			t.Errorf("At(%s) = %s, want %s", p, got, want)
		}
	}
	if perm, rule := (Rules(nil)).At("/a"); perm != PermAll || rule != "" {
		t.Errorf("no rules: %v %q", perm, rule)
	}
}

// Each operation against the rules, by plain calls: what it needs, on the
// path it names, with links followed as the operation follows them.
func TestRulesEnforced(t *testing.T) {
	f, dir := newFS(t)
	for _, p := range []string{"incoming/earlier", "outgoing/report", "secret", "a/b/kept"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), []byte(p), 0o644)
	}
	os.MkdirAll(filepath.Join(dir, "open"), 0o755)
	// A link from a place that allows everything into one that allows
	// nothing, as an older version or the host could have made.
	os.Symlink("../secret", filepath.Join(dir, "open", "tosecret"))
	f.SetRules(Rules{"/": PermNone, "/incoming": PermWrite, "/outgoing": PermRead | PermList,
		"/open": PermAll, "/a": PermAll, "/a/b": PermRead, "/a/z/inner": PermRead})
	open := func(name string, flag int) func() error { return func() error { return tryOpen(f, name, flag) } }
	stat := func(name string) func() error { return func() error { _, err := f.Stat(name); return err } }
	lstat := func(name string) func() error { return func() error { _, err := f.Lstat(name); return err } }
	list := func(name string) func() error { return func() error { return tryList(f, name) } }
	for _, tc := range []struct {
		name string
		op   func() error
		ok   bool
	}{
		{"put into /incoming", open("/incoming/new", os.O_WRONLY|os.O_CREATE|os.O_TRUNC), true},
		{"overwrite in /incoming", open("/incoming/earlier", os.O_WRONLY|os.O_TRUNC), true},
		{"get from /incoming", open("/incoming/earlier", os.O_RDONLY), false},
		{"read-write in /incoming", open("/incoming/earlier", os.O_RDWR), false},
		{"list /incoming", list("/incoming"), false},
		{"stat /incoming", stat("/incoming"), true},
		{"stat / (rules below it give something)", stat("/"), true},
		{"stat /secret", stat("/secret"), false},
		{"mkdir in /incoming", func() error { return f.Mkdir("/incoming/d") }, true},
		{"mkdir at /", func() error { return f.Mkdir("/d") }, false},
		{"chmod in /incoming", func() error { return f.Chmod("/incoming/earlier", 0o600) }, true},
		{"chmod in /outgoing", func() error { return f.Chmod("/outgoing/report", 0o600) }, false},
		{"times in /outgoing", func() error { return f.Chtimes("/outgoing/report", time.Now(), time.Now()) }, false},
		{"truncate in /outgoing", func() error { return f.Truncate("/outgoing/report", 0) }, false},
		{"remove in /incoming", func() error { return f.Remove("/incoming/earlier") }, false},
		{"rmdir in /incoming", func() error { return f.Rmdir("/incoming/d") }, false},
		{"get from /outgoing", open("/outgoing/report", os.O_RDONLY), true},
		{"list /outgoing", list("/outgoing"), true},
		{"put into /outgoing", open("/outgoing/x", os.O_WRONLY|os.O_CREATE), false},
		{"symlink in /outgoing", func() error { return f.Symlink("report", "/outgoing/l") }, false},
		{"rename /incoming to /outgoing", func() error { return f.Rename("/incoming/earlier", "/outgoing/e") }, false},
		// Links are followed before the check: a link in /open leads to
		// /secret, which allows nothing.
		{"get through a link", open("/open/tosecret", os.O_RDONLY), false},
		{"stat through a link", stat("/open/tosecret"), false},
		{"lstat of the link itself", lstat("/open/tosecret"), true},
		// Moving /a moves /a/b, which may not be deleted; moving something
		// onto /a would put it under /a/b's rule without write there.
		{"rename a directory over a rule", func() error { return f.Rename("/a", "/open/a") }, false},
		{"mkdir in /a", func() error { return f.Mkdir("/a/c") }, true},
		{"rename a directory into a rule", func() error { return f.Rename("/a/c", "/a/z") }, false},
		{"rename beside a rule", func() error { return f.Rename("/a/c", "/a/d") }, true},
	} {
		err := tc.op()
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok {
			var pe *PermissionError
			if !errors.Is(err, fs.ErrPermission) || !errors.As(err, &pe) {
				t.Errorf("%s: got %v, want a PermissionError", tc.name, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "incoming", "earlier")); err != nil {
		t.Errorf("a refused remove removed: %v", err)
	}
	// No rules: everything again, at once.
	f.SetRules(nil)
	if err := f.Remove("/incoming/earlier"); err != nil {
		t.Errorf("without rules: %v", err)
	}
}

// Another session of the account racing a check: whatever it changes
// between the check and the operation, the operation acts on what was
// checked or fails with "try again", never on what a new link leads to.
func TestRulesLinkSwapRace(t *testing.T) {
	f, dir := newFS(t)
	at := func(p string) string { return filepath.Join(dir, p) }
	f.SetRules(Rules{"/secret": PermNone})
	ops := []struct {
		name string
		op   func() error
	}{
		{"read", func() error { return tryOpen(f, "/l/f", os.O_RDONLY) }},
		{"overwrite", func() error { return tryOpen(f, "/l/f", os.O_WRONLY|os.O_TRUNC) }},
		{"remove", func() error { return f.Remove("/l/f") }},
		{"list", func() error { return tryList(f, "/l") }},
		{"mkdir", func() error { return f.Mkdir("/l/d") }},
		{"chmod", func() error { return f.Chmod("/l/f", 0o600) }},
		{"times", func() error { return f.Chtimes("/l/f", time.Unix(0, 0), time.Unix(0, 0)) }},
		{"symlink", func() error { return f.Symlink("f", "/l/s") }},
	}
	for _, race := range []struct {
		name  string
		swap  func()
		again bool // the operation must fail with EAGAIN
	}{
		// The link checked is replaced: the operation was given the path
		// the old link led to, and acts there.
		{"link replaced", func() { os.Remove(at("l")); os.Symlink("secret", at("l")) }, false},
		// The directory the old link led to is replaced by a link into
		// /secret: the path checked now holds a link, not followed.
		{"directory replaced by a link", func() { os.Rename(at("pub"), at("pub.old")); os.Symlink("secret", at("pub")) }, true},
	} {
		for _, tc := range ops {
			os.RemoveAll(at("pub"))
			os.RemoveAll(at("pub.old"))
			os.Remove(at("l"))
			for _, p := range []string{"pub/f", "secret/f"} {
				os.MkdirAll(filepath.Dir(at(p)), 0o755)
				os.WriteFile(at(p), []byte(p), 0o644)
			}
			os.Symlink("pub", at("l"))
			f.checked = race.swap
			err := tc.op()
			f.checked = nil
			if race.again && !errors.Is(err, syscall.EAGAIN) || !race.again && err != nil {
				t.Errorf("%s, %s: got %v, want EAGAIN %v", race.name, tc.name, err, race.again)
			}
			if got, _ := os.ReadFile(at("secret/f")); string(got) != "secret/f" {
				t.Errorf("%s, %s: the protected file became %q", race.name, tc.name, got)
			}
			if fi, err := os.Stat(at("secret/f")); err == nil && fi.Mode().Perm() != 0o644 || err == nil && fi.ModTime().Unix() == 0 {
				t.Errorf("%s, %s: the protected file's mode or time changed: %v %v", race.name, tc.name, fi.Mode(), fi.ModTime())
			}
			if ents, _ := os.ReadDir(at("secret")); len(ents) != 1 {
				t.Errorf("%s, %s: /secret holds %d entries, want its one file", race.name, tc.name, len(ents))
			}
		}
	}
}

// tryOpen and tryList open and close again, for tests of whether they may.
func tryOpen(f *FS, name string, flag int) error {
	file, err := f.OpenFile(name, flag)
	if err == nil {
		file.Close()
	}
	return err
}

func tryList(f *FS, name string) error {
	d, err := f.ReadDir(name)
	if err == nil {
		d.Close()
	}
	return err
}
