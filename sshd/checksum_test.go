package sshd_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// shellQuote joins words into one command line that a POSIX shell (and
// silo) splits back into exactly those words.
func shellQuote(words ...string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// gnu runs a coreutils command locally in dir; it returns stdout, stderr and
// the exit status.
func gnu(t *testing.T, dir, stdin string, name string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

var sumCommands = []string{"md5sum", "sha1sum", "sha224sum", "sha256sum", "sha384sum", "sha512sum", "b2sum"}

// Each checksum command, run by ssh inside silo, prints what GNU coreutils
// prints on the same files, byte for byte, and exits the same.
func TestChecksumsMatchCoreutils(t *testing.T) {
	t.Parallel()
	for _, c := range sumCommands {
		needClient(t, c)
	}
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	names := []string{"plain", "with space", `it's "quoted"`, "new\nline", `back\slash`, "cr\rreturn", "a;id", "$(id)", "`id`", "-dash"}
	for i, n := range names {
		writeFile(t, filepath.Join(home, n), randomBytes(1000*i+7))
	}
	os.Mkdir(filepath.Join(home, "dir"), 0o755)
	writeFile(t, filepath.Join(home, "dir", "inner"), []byte("inner\n"))
	stdin100k := string(randomBytes(100_000))

	cases := []struct {
		name  string
		args  []string
		stdin string
	}{
		{"one file", []string{"plain"}, ""},
		{"several files", append([]string{"--"}, names...), ""},
		{"missing and directory among files", []string{"plain", "missing", "dir", "dir/inner"}, ""},
		{"stdin 100 kB", nil, stdin100k},
		{"stdin as -", []string{"-"}, stdin100k},
		{"empty stdin", nil, ""},
		{"tag", []string{"--tag", "plain", "new\nline"}, ""},
		{"binary", []string{"-b", "plain", "with space"}, ""},
		{"zero", []string{"-z", "plain", "new\nline"}, ""},
		{"options after operands", []string{"plain", "--tag"}, ""},
		{"shell syntax is literal", []string{"a;id", "$(id)", "`id`", "plain|wc", "plain&&id", ">out"}, ""},
		{"bad option", []string{"-q", "plain"}, ""},
		{"tag with text", []string{"--tag", "-t", "plain"}, ""},
		{"quiet without check", []string{"--quiet", "plain"}, ""},
	}
	for _, cmd := range sumCommands {
		for _, tc := range cases {
			t.Run(cmd+"/"+tc.name, func(t *testing.T) {
				wantOut, wantErr, wantCode := gnu(t, home, tc.stdin, cmd, tc.args...)
				gotOut, gotErr, gotCode := ts.ssh("alice", auth{key: "alice"}, tc.stdin, cmd+" "+shellQuote(tc.args...))
				if gotOut != wantOut || gotErr != wantErr || gotCode != wantCode {
					t.Errorf("%s %q:\n got  %d %q %q\n want %d %q %q", cmd, tc.args, gotCode, gotOut, gotErr, wantCode, wantOut, wantErr)
				}
			})
		}
	}
}

func TestChecksumCheckMode(t *testing.T) {
	t.Parallel()
	for _, c := range sumCommands {
		needClient(t, c)
	}
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	for _, n := range []string{"good", "changed", "new\nline", "with space"} {
		writeFile(t, filepath.Join(home, n), randomBytes(5000))
	}
	for _, cmd := range sumCommands {
		t.Run(cmd, func(t *testing.T) {
			// "gone" is listed, then removed; "changed" changes after
			// listing; one line is not a checksum line.
			os.WriteFile(filepath.Join(home, "gone"), nil, 0o644)
			sums, _, _ := gnu(t, home, "", cmd, "good", "changed", "new\nline", "with space", "gone")
			writeFile(t, filepath.Join(home, cmd+".sums"), []byte(sums+"not a checksum line\n# a comment\n"))
			os.Remove(filepath.Join(home, "gone"))
			tagged, _, _ := gnu(t, home, "", cmd, "--tag", "good", "new\nline")
			writeFile(t, filepath.Join(home, cmd+".tagged"), []byte(tagged))
			defer writeFile(t, filepath.Join(home, "changed"), randomBytes(5000))
			writeFile(t, filepath.Join(home, "changed"), []byte("different"))
			for _, args := range [][]string{
				{"-c", cmd + ".sums"},
				{"--check", cmd + ".tagged"},
				{"-c", "--quiet", cmd + ".sums"},
				{"-c", "--status", cmd + ".sums"},
				{"-c", "--strict", cmd + ".tagged"},
				{"-c", "-w", cmd + ".sums"},
				{"-c", "--ignore-missing", cmd + ".sums"},
				{"-c", "missing.sums"},
				{"-c", "-b", cmd + ".sums"},
				{"-c", "--tag", cmd + ".sums"},
				{"-c", "good"},
			} {
				wantOut, wantErr, wantCode := gnu(t, home, "", cmd, args...)
				gotOut, gotErr, gotCode := ts.ssh("alice", auth{key: "alice"}, "", cmd+" "+shellQuote(args...))
				if gotOut != wantOut || gotErr != wantErr || gotCode != wantCode {
					t.Errorf("%s %q:\n got  %d %q %q\n want %d %q %q", cmd, args, gotCode, gotOut, gotErr, wantCode, wantOut, wantErr)
				}
			}
			// -c - reads the list from stdin.
			list, _, _ := gnu(t, home, "", cmd, "good")
			wantOut, wantErr, wantCode := gnu(t, home, list, cmd, "-c", "-")
			gotOut, gotErr, gotCode := ts.ssh("alice", auth{key: "alice"}, list, cmd+" -c -")
			if gotOut != wantOut || gotErr != wantErr || gotCode != wantCode {
				t.Errorf("%s -c -: got %d %q %q, want %d %q %q", cmd, gotCode, gotOut, gotErr, wantCode, wantOut, wantErr)
			}
		})
	}
}

// Paths are virtual: absolute ones start at the home, ".." stops there, and
// nothing outside is read or shown.
func TestChecksumJail(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	writeFile(t, filepath.Join(home, "a", "b"), []byte("hello\n"))
	os.Symlink("/etc/passwd", filepath.Join(home, "passwd"))
	if err := syscall.Mkfifo(filepath.Join(home, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	const helloMD5 = "b1946ac92492d2347c6235b4d2611184"
	for _, tc := range []struct {
		args     string
		out, err string
		code     int
	}{
		{"/a/b", helloMD5 + "  /a/b\n", "", 0},
		{"a/b", helloMD5 + "  a/b\n", "", 0},
		{"../../a/b", helloMD5 + "  ../../a/b\n", "", 0},
		{"/etc/passwd", "", "md5sum: /etc/passwd: No such file or directory\n", 1},
		{"../../../../etc/passwd", "", "md5sum: ../../../../etc/passwd: No such file or directory\n", 1},
		{"passwd", "", "md5sum: passwd: Permission denied\n", 1},
		{"fifo", "", "md5sum: fifo: Not a regular file\n", 1},
		{"-c /etc/passwd", "", "md5sum: /etc/passwd: No such file or directory\n", 1},
	} {
		out, stderr, code := ts.ssh("alice", auth{key: "alice"}, "", "md5sum "+tc.args)
		if out != tc.out || stderr != tc.err || code != tc.code {
			t.Errorf("md5sum %s: got %d %q %q, want %d %q %q", tc.args, code, out, stderr, tc.code, tc.out, tc.err)
		}
		if strings.Contains(out+stderr, ts.dir) {
			t.Errorf("md5sum %s shows a host path", tc.args)
		}
	}
}

// Closing the channel stops a hash that is still running.
func TestChecksumStopsWhenChannelCloses(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	f, _ := os.Create(filepath.Join(home, "huge"))
	f.Truncate(64 << 30) // sparse: minutes of hashing
	f.Close()
	c := ts.connect("alice", "alice")
	sess, _ := c.NewSession()
	if err := sess.Start("sha512sum huge"); err != nil {
		t.Fatal(err)
	}
	ts.logs.waitFor(t, `msg="command started" session=`)
	sess.Close()
	ts.logs.waitFor(t, "command=sha512sum")
}

// rclone's sftp backend finds md5sum and sha1sum, and its hashes match.
func TestRcloneHashes(t *testing.T) {
	t.Parallel()
	needClient(t, "rclone")
	ts := startServer(t)
	ts.addUser("alice", "alice-pw")
	home := ts.home("alice")
	local := t.TempDir()
	for _, n := range []string{"a", "with space", "sub/deep"} {
		data := randomBytes(3000)
		writeFile(t, filepath.Join(home, n), data)
		writeFile(t, filepath.Join(local, n), data)
	}
	obscured, err := exec.Command("rclone", "obscure", "alice-pw").Output()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "rclone.conf")
	writeFile(t, conf, []byte(fmt.Sprintf("[s]\ntype = sftp\nhost = 127.0.0.1\nport = %s\nuser = alice\npass = %s\nknown_hosts_file = %s\n",
		ts.port, strings.TrimSpace(string(obscured)), ts.knownHosts)))
	rclone := func(args ...string) (string, error) {
		out, err := exec.Command("rclone", append([]string{"--config", conf}, args...)...).CombinedOutput()
		return string(out), err
	}
	// rclone detects the hash commands once and saves them in its config;
	// its 1.60 answers "hash unsupported" for files hashed during that first
	// detection, so let it detect on one file.
	if out, err := rclone("md5sum", "s:a"); err != nil {
		t.Fatalf("rclone md5sum s:a: %v\n%s", err, out)
	}
	if data, _ := os.ReadFile(conf); !strings.Contains(string(data), "md5sum_command = md5sum") || !strings.Contains(string(data), "sha1sum_command = sha1sum") {
		t.Fatalf("rclone did not detect md5sum and sha1sum:\n%s", data)
	}
	for _, c := range []string{"md5sum", "sha1sum"} {
		got, err := rclone(c, "s:")
		if err != nil {
			t.Fatalf("rclone %s: %v\n%s", c, err, got)
		}
		want, _, _ := gnu(t, home, "", c, "a", "sub/deep", "with space")
		if sortLines(got) != sortLines(want) {
			t.Errorf("rclone %s s: gave\n%s\nlocal %s gives\n%s", c, got, c, want)
		}
	}
	if out, err := rclone("check", local, "s:"); err != nil || !strings.Contains(out, "0 differences found") {
		t.Fatalf("rclone check: %v\n%s", err, out)
	}
	writeFile(t, filepath.Join(local, "a"), randomBytes(3000)) // same size, other content
	if out, err := rclone("check", local, "s:"); err == nil || !strings.Contains(out, "1 differences found") {
		t.Fatalf("rclone check after a change: %v\n%s", err, out)
	}
}

func sortLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		for j := i + 1; j < len(lines); j++ {
			if lines[j] < lines[i] {
				lines[i], lines[j] = lines[j], lines[i]
			}
		}
	}
	return strings.Join(lines, "\n")
}
