package vfs

import (
	"errors"
	"io"
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
		{"/a/b/l2", "../../x", false}, // no ".." at all, even where it would stay inside
		{"/a/l3", "b/../..", false},
		{"/l4", "..", false},
		{"/l5", "a/../../x", false},
		{"/a/b/l6", "../../../x", false},
		{"/l7", "/etc", false},
		{"/l8", "", false},
		{"/d/d/d/l9", "../../../etc/shadow", false}, // lexically 3 deep, really in the home
		{"/l10", "d/../x", false},                   // climbs out of d, which is the home
		{"/l11", "deep/../x", false},                // ".." after a link: refused, whatever it is
		{"/l12", "d/a/b", true},
		{"/l13", "./a//b/", true},
		{"/l14", "..x/...", true},
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

// Links are stored cleaned; one on disk that breaks the rule is not shown.
func TestReadlink(t *testing.T) {
	f, dir := newFS(t)
	if err := f.Symlink("./a//b/", "/l"); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Readlink("/l"); err != nil || got != "a/b" {
		t.Errorf("Readlink(/l) = %q, %v, want a/b", got, err)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.Symlink("../d", filepath.Join(dir, "d", "old")) // inside, but by an older rule
	if got, err := f.Readlink("/d/old"); !errors.Is(err, ErrEscape) {
		t.Errorf("Readlink of a link with \"..\" = %q, %v, want ErrEscape", got, err)
	}
}

// The sequences that once left a link leading out of the home, whatever
// the check at creation: every step is accepted or refused, and afterwards
// no link on disk resolves, by the host's rules, outside the home.
func TestLinksStayInsideAfterChanges(t *testing.T) {
	type op struct{ name, a, b string }
	for name, ops := range map[string][]op{
		"rmdir then retarget": {{"mkdir", "d", ""}, {"symlink", "d/..", "s"}, {"rmdir", "d", ""}, {"symlink", ".", "d"}},
		"link moved shallower": {{"mkdir", "a", ""}, {"mkdir", "a/b", ""}, {"symlink", "../..", "a/b/l"},
			{"rename", "a/b/l", "l"}},
		"through a link to .": {{"mkdir", "sub", ""}, {"mkdir", "sub/deep", ""}, {"symlink", ".", "sub/b"},
			{"symlink", "sub/deep", "l"}, {"symlink", "../b/b/b/b/b/../../../../../../etc/passwd", "l/esc"}},
	} {
		t.Run(name, func(t *testing.T) {
			f, dir := newFS(t)
			for _, o := range ops {
				apply(f, o.name, o.a, o.b)
				if bad := linksOutside(t, dir); len(bad) > 0 {
					t.Fatalf("after %s %s %s: %v", o.name, o.a, o.b, bad)
				}
			}
		})
	}
}

func apply(f *FS, op, a, b string) error {
	switch op {
	case "symlink":
		return f.Symlink(a, b)
	case "mkdir":
		return f.Mkdir(a)
	case "rmdir":
		return f.Rmdir(a)
	case "rename":
		return f.PosixRename(a, b)
	case "remove":
		return f.Remove(a)
	}
	panic(op)
}

// linksOutside lists the symbolic links under home that the host,
// following links as any program does, resolves to a place outside it.
func linksOutside(t testing.TB, home string) []string {
	var out []string
	err := filepath.WalkDir(home, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		target, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil // dangling, or a loop: leads nowhere
		}
		if target != home && !strings.HasPrefix(target, home+"/") {
			out = append(out, p[len(home):]+" -> "+target)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FuzzLinks drives sequences of symlink, mkdir, rmdir, rename and remove
// through the real FS, from names and targets made of a few elements, ".."
// among them, and checks after every step that no link on disk leads out
// of the home by the host's rules.
func FuzzLinks(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 6, 1, 2, 0, 0, 0, 3, 1})
	f.Add([]byte{1, 0, 1, 1, 0, 3, 2, 2, 0, 3, 1, 4, 5, 0, 3})
	f.Add([]byte{0, 7, 4, 1, 0, 3, 3, 5, 0, 1, 2, 2})
	elems := []string{"a", "b", ".", "..", "c"}
	// name reads a path of up to three elements: a length, then indexes.
	name := func(in []byte) (string, []byte) {
		if len(in) == 0 {
			return "a", in
		}
		n := int(in[0])%3 + 1
		in = in[1:]
		var parts []string
		for ; n > 0 && len(in) > 0; n-- {
			parts = append(parts, elems[int(in[0])%len(elems)])
			in = in[1:]
		}
		return strings.Join(parts, "/"), in
	}
	ops := []string{"symlink", "mkdir", "rmdir", "rename", "remove"}
	// One home per fuzz process, emptied after each input.
	home := filepath.Join(f.TempDir(), "home")
	fsys, err := Open(home, Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer fsys.Close()
	f.Fuzz(func(t *testing.T, in []byte) {
		defer func() {
			entries, _ := os.ReadDir(home)
			for _, e := range entries {
				os.RemoveAll(filepath.Join(home, e.Name()))
			}
		}()
		for steps := 0; len(in) > 0 && steps < 64; steps++ {
			op := ops[int(in[0])%len(ops)]
			var a, b string
			a, in = name(in[1:])
			b, in = name(in)
			apply(fsys, op, a, b)
			if bad := linksOutside(t, home); len(bad) > 0 {
				t.Fatalf("after %s %q %q: %v", op, a, b, bad)
			}
		}
	})
}

// FuzzRel: whatever path the client sends, the real jail (rel, then
// os.Root, then the link rule) reaches nothing outside the home: a file
// outside is never stat'ed, opened or listed through a path, however its
// links and ".." combine, and a link it creates leads nowhere outside.
func FuzzRel(f *testing.F) {
	for _, s := range []string{"", "/", "..", "../../etc/passwd", "a/../../b", "a\x00b", "//x//", "./.././a", "...",
		"up/secret", "d/../up", "loop/loop/x", "d/dd/../../../outside/secret", "abs"} {
		f.Add(s, s)
	}
	top := f.TempDir()
	home, outside := filepath.Join(top, "home"), filepath.Join(top, "outside")
	os.MkdirAll(filepath.Join(home, "d", "dd"), 0o755)
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644)
	// Links planted on disk by someone other than silo.
	os.Symlink("../outside", filepath.Join(home, "up"))
	os.Symlink(outside, filepath.Join(home, "abs"))
	os.Symlink("loop", filepath.Join(home, "loop"))
	os.Symlink(".", filepath.Join(home, "d", "self"))
	fsys, err := Open(home, Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer fsys.Close()
	cleanHome := filepath.Join(top, "clean")
	os.MkdirAll(filepath.Join(cleanHome, "d", "dd"), 0o755)
	os.Symlink(".", filepath.Join(cleanHome, "d", "self"))
	os.Symlink("d/self/dd", filepath.Join(cleanHome, "deep"))
	clean, err := Open(cleanHome, Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer clean.Close()
	secret, _ := os.Stat(filepath.Join(outside, "secret"))
	outDir, _ := os.Stat(outside)
	isOutside := func(fi fs.FileInfo) bool { return os.SameFile(fi, secret) || os.SameFile(fi, outDir) }
	f.Fuzz(func(t *testing.T, p, target string) {
		if r, err := rel(p); err == nil && r != "." {
			if path.IsAbs(r) || r != path.Clean(r) || r == ".." || strings.HasPrefix(r, "../") {
				t.Fatalf("rel(%q) = %q leaves the root", p, r)
			}
		}
		if fi, err := fsys.Stat(p); err == nil && isOutside(fi) {
			t.Fatalf("Stat(%q) reached outside the home", p)
		}
		if file, err := fsys.OpenFile(p, os.O_RDONLY); err == nil {
			buf := make([]byte, 6)
			n, _ := file.ReadAt(buf, 0)
			file.Close()
			if string(buf[:n]) == "secret" { // nothing in the home holds that
				t.Fatalf("OpenFile(%q) opened a file outside the home", p)
			}
		}
		if d, err := fsys.ReadDir(p); err == nil {
			fis, _ := d.Next(0)
			d.Close()
			for _, fi := range fis {
				if fi.Name() == "secret" {
					t.Fatalf("ReadDir(%q) listed outside the home", p)
				}
			}
		}
		if got, err := fsys.Readlink(p); err == nil && strings.Contains(got, "..") && checkTarget(got) != nil {
			t.Fatalf("Readlink(%q) showed %q", p, got)
		}
		// Links are made in a home where every link is silo's: the planted
		// ones above lead out whatever comes after them.
		if err := clean.Symlink(target, "/d/dd/l"); err == nil {
			defer clean.Remove("/d/dd/l")
			if bad := linksOutside(t, cleanHome); len(bad) > 0 {
				t.Fatalf("Symlink(%q) made a link that leads out: %v", target, bad)
			}
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

// Listing a directory that is empty, or holds only silo's temp files, ends:
// with n <= 0 at once, with n > 0 at io.EOF.
func TestDirNextEmpty(t *testing.T) {
	f, dir := newFS(t)
	os.Mkdir(filepath.Join(dir, "empty"), 0o755)
	os.Mkdir(filepath.Join(dir, "temps"), 0o755)
	os.WriteFile(filepath.Join(dir, "temps", tempPrefix+"0123456789abcdef"), nil, 0o600)
	for _, name := range []string{"/empty", "/temps"} {
		for _, n := range []int{0, -1, 1, 10} {
			d, err := f.ReadDir(name)
			if err != nil {
				t.Fatal(err)
			}
			fis, err := d.Next(n)
			d.Close()
			want := error(nil)
			if n > 0 {
				want = io.EOF
			}
			if len(fis) != 0 || err != want {
				t.Errorf("%s: Next(%d) = %v, %v; want nothing and %v", name, n, fis, err, want)
			}
		}
	}
}
