package checksum_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"silo/checksum"
	"silo/vfs"
)

// home opens a temp home holding files (name -> content).
func home(t *testing.T, files map[string]string) *vfs.FS {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "home")
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := vfs.Open(dir, vfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys
}

// The commands over in-memory streams on a temp home; the expected output
// is what GNU coreutils 9 prints for the same files.
func TestRun(t *testing.T) {
	fsys := home(t, map[string]string{
		"a":          "hello",
		"with space": "x y",
		"a2":         "nope",
		"sums":       "5d41402abc4b2a76b9719d911017c592  a\n5d41402abc4b2a76b9719d911017c592  a2\n",
		"sub/deep":   "hello",
	})
	for _, tc := range []struct {
		cmd, stdin, out, err string
		code                 int
	}{
		{"md5sum a with\\ space", "", "5d41402abc4b2a76b9719d911017c592  a\nc8d1ae9296335b1cfc3d0d1b47b664a7  with space\n", "", 0},
		{"sha256sum --tag a", "", "SHA256 (a) = 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n", "", 0},
		{"sha1sum", "foo", "0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33  -\n", "", 0},
		{"b2sum -l 128 a", "", "46fb7408d4f285228f4af516ea25851b  a\n", "", 0},
		{"md5sum /sub/../sub/deep", "", "5d41402abc4b2a76b9719d911017c592  /sub/../sub/deep\n", "", 0},
		{"md5sum missing", "", "", "md5sum: missing: No such file or directory\n", 1},
		{"md5sum sub", "", "", "md5sum: sub: Is a directory\n", 1},
		{"md5sum ../../../etc/passwd", "", "", "md5sum: ../../../etc/passwd: No such file or directory\n", 1},
		{"md5sum -c sums", "", "a: OK\na2: FAILED\n", "md5sum: WARNING: 1 computed checksum did NOT match\n", 1},
		{"md5sum -c", "5d41402abc4b2a76b9719d911017c592  a\n", "a: OK\n", "", 0},
		{"md5sum --frobnicate", "", "", "md5sum: unrecognized option '--frobnicate'\nTry 'md5sum --help' for more information.\n", 1},
	} {
		args := strings.Fields(strings.ReplaceAll(tc.cmd, "\\ ", "\x00"))
		for i := range args {
			args[i] = strings.ReplaceAll(args[i], "\x00", " ")
		}
		var out, errw strings.Builder
		code := checksum.Run(context.Background(), fsys, nil, args[0], args[1:], strings.NewReader(tc.stdin), &out, &errw)
		if code != tc.code || out.String() != tc.out || errw.String() != tc.err {
			t.Errorf("%s: got %d %q %q, want %d %q %q", tc.cmd, code, out.String(), errw.String(), tc.code, tc.out, tc.err)
		}
	}
}

// A hash stops, with status 1, when its context ends.
func TestRunStopsWithContext(t *testing.T) {
	fsys := home(t, nil)
	f, err := fsys.OpenFile("/big", os.O_WRONLY|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errw strings.Builder
	if code := checksum.Run(ctx, fsys, nil, "sha512sum", []string{"big", "big"}, strings.NewReader(""), &out, &errw); code != 1 {
		t.Fatalf("sha512sum with its context done: status %d, output %q %q", code, out.String(), errw.String())
	}
}
