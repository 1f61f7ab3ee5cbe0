package vfs

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"": "/", ".": "/", "/": "/", "..": "/", "/../..": "/", "../a": "/a", "a/../../b": "/b",
		"//a//b/": "/a/b", "a/./b": "/a/b", "/a/b/..": "/a",
	} {
		if got := Clean(in); got != want {
			t.Errorf("Clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLinkTargets(t *testing.T) {
	f, dir := newFS(t)
	os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755)
	os.Symlink(".", filepath.Join(dir, "d"))      // d/d/d is the home itself
	os.Symlink("a/b", filepath.Join(dir, "deep")) // deep/.. is a, not the home
	for _, tc := range []struct {
		link, target string
		ok           bool
	}{
		{"/l1", "a/b", true},
		{"/a/b/l2", "../../x", true},
		{"/a/l3", "b/../..", true},
		{"/l4", "..", false},
		{"/l5", "a/../../x", false},
		{"/a/b/l6", "../../../x", false},
		{"/l7", "/etc", false},
		{"/l8", "", false},
		{"/d/d/d/l9", "../../../etc/shadow", false}, // lexically 3 deep, really in the home
		{"/l10", "d/../x", false},                   // climbs out of d, which is the home
		{"/l11", "deep/../x", false},                // ".." after a link: refused, whatever it is
		{"/l12", "d/a/b", true},
	} {
		err := f.Symlink(tc.target, tc.link)
		if (err == nil) != tc.ok {
			t.Errorf("Symlink(%q, %q) = %v, want ok=%v", tc.target, tc.link, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrEscape) {
			t.Errorf("Symlink(%q, %q) = %v, want ErrEscape", tc.target, tc.link, err)
		}
	}
}

// FuzzRel: whatever the client sends, the name handed to os.Root is the home
// or a relative path without "..", or an error.
func FuzzRel(f *testing.F) {
	for _, s := range []string{"", "/", "..", "../../etc/passwd", "a/../../b", "a\x00b", "//x//", "./.././a", "..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		r, err := rel(p)
		if err != nil {
			return
		}
		if r == "." {
			return
		}
		if path.IsAbs(r) || r != path.Clean(r) || r == ".." || strings.HasPrefix(r, "../") || strings.Contains(r, "/../") {
			t.Fatalf("rel(%q) = %q leaves the root", p, r)
		}
	})
}

func newFS(t *testing.T) (*FS, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "home")
	f, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, dir
}

func TestOpenCreatesPrivateHome(t *testing.T) {
	_, dir := newFS(t)
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("home: %v, %v", fi, err)
	}
}

func TestErrorsCarryVirtualPaths(t *testing.T) {
	f, dir := newFS(t)
	os.Symlink("/etc", filepath.Join(dir, "etc"))
	os.Symlink("../..", filepath.Join(dir, "up"))
	for _, tc := range []struct {
		name string
		err  error
		want error
		path string
	}{
		{"stat missing", second(f.Stat("/no/such")), fs.ErrNotExist, "/no/such"},
		{"stat through /etc link", second(f.Stat("etc/passwd")), ErrEscape, "/etc/passwd"},
		{"open through relative link", second(f.OpenFile("up/x", os.O_RDONLY)), ErrEscape, "/up/x"},
		{"readlink outside", second(f.Readlink("etc")), ErrEscape, "/etc"},
		{"symlink outside", f.Symlink("../x", "l"), ErrEscape, "/l"},
		{"remove home", f.Remove("/"), nil, "/"},
		{"rmdir missing", f.Rmdir("../../gone"), fs.ErrNotExist, "/gone"},
	} {
		var pe *fs.PathError
		if !errors.As(tc.err, &pe) {
			t.Errorf("%s: %v is not a *fs.PathError", tc.name, tc.err)
			continue
		}
		if pe.Path != tc.path {
			t.Errorf("%s: path %q, want %q", tc.name, pe.Path, tc.path)
		}
		if tc.want != nil && !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
		if strings.Contains(tc.err.Error(), dir) {
			t.Errorf("%s: %q shows the host path", tc.name, tc.err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestRenameAndRemove(t *testing.T) {
	f, dir := newFS(t)
	os.WriteFile(filepath.Join(dir, "a"), []byte("A"), 0o644)
	os.WriteFile(filepath.Join(dir, "b"), []byte("B"), 0o644)
	if err := f.Rename("a", "b"); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("rename onto existing: %v", err)
	}
	if err := f.PosixRename("a", "b"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "b")); string(got) != "A" {
		t.Fatalf("b = %q", got)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "x"), nil, 0o644)
	if err := f.Remove("d"); !errors.Is(err, ErrIsDir) && !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("remove of a directory: %v", err)
	}
	if err := f.Rmdir("d"); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("rmdir of a non-empty directory: %v", err)
	}
	if err := f.Rmdir("d/x"); !errors.Is(err, ErrNotDir) {
		t.Fatalf("rmdir of a file: %v", err)
	}
}

func TestHomeStaysPrivate(t *testing.T) {
	f, dir := newFS(t)
	if err := f.Chmod("/", 0o777); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod("/..", 0o777); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("home mode %v after chmod 777 /", fi.Mode().Perm())
	}
}
