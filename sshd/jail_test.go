package sshd_test

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// treeDigest describes every entry under dir: path, mode, size, mtime,
// content hash and link target.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v %d %d", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular():
			data, _ := os.ReadFile(p)
			line += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// The traversal matrix: alice tries every operation on paths that climb with
// "..", and through symbolic links planted on disk that point to /etc, to the
// home of alice2 (whose name has alice's as a prefix), to a decoy directory
// outside every home (absolute and relative), and dangling into those places.
// Every attempt fails, nothing outside alice's home changes, and no error
// message shows a host path.
func TestTraversalMatrix(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	ts.addUser("alice2", "", "bob")
	home := ts.home("alice")
	sib := ts.home("alice2")
	decoy := filepath.Join(ts.dir, "decoy")
	writeFile(t, filepath.Join(sib, "secret.txt"), []byte("alice2's secret"))
	writeFile(t, filepath.Join(sib, "sub", "deep.txt"), []byte("deep"))
	writeFile(t, filepath.Join(decoy, "outside.txt"), []byte("outside"))
	relDecoy, _ := filepath.Rel(home, decoy)
	links := map[string]string{
		"etc":         "/etc",
		"root":        "/",
		"sib":         "../alice2",
		"sibabs":      sib,
		"out":         decoy,
		"outrel":      relDecoy,
		"dangling":    "../alice2/newfile",
		"danglingabs": filepath.Join(decoy, "newfile"),
		"sibfile":     "../alice2/secret.txt",
	}
	// plant puts alice's home back as the matrix expects it before each
	// attempt, so that one attempt (say, removing a link, which is allowed)
	// does not change what the next one meets.
	plant := func() {
		entries, _ := os.ReadDir(home)
		for _, e := range entries {
			os.RemoveAll(filepath.Join(home, e.Name()))
		}
		writeFile(t, filepath.Join(home, "mine.txt"), []byte("mine"))
		for link, target := range links {
			if err := os.Symlink(target, filepath.Join(home, link)); err != nil {
				t.Fatal(err)
			}
		}
	}
	plant()
	before := map[string]string{"alice2": treeDigest(t, sib), "decoy": treeDigest(t, decoy)}

	c := ts.rawSFTP("alice", "alice")
	type op struct {
		name string
		fn   func(p string) reply
	}
	openClose := func(p string, flags uint32) reply {
		r := c.open(p, flags)
		if r.typ == fxpHandle {
			if flags&fxfWrite != 0 {
				c.write(r.str, 0, "pwned")
			}
			c.close(r.str)
		}
		return r
	}
	var (
		stat     = op{"stat", func(p string) reply { return c.call(fxpStat, str(p)) }}
		lstat    = op{"lstat", func(p string) reply { return c.call(fxpLstat, str(p)) }}
		openRead = op{"open read", func(p string) reply { return openClose(p, fxfRead) }}
		opendir  = op{"opendir", func(p string) reply {
			r := c.call(fxpOpendir, str(p))
			if r.typ == fxpHandle {
				c.close(r.str)
			}
			return r
		}}
		readlink = op{"readlink", func(p string) reply { return c.call(fxpReadlink, str(p)) }}
		create   = op{"create", func(p string) reply { return openClose(p, fxfWrite|fxfCreat) }}
		mkdirIn  = op{"mkdir below", func(p string) reply {
			return c.call(fxpMkdir, str(strings.TrimRight(p, "/")+"/silo-jail-test"), u32(0))
		}}
		writeOps = []op{
			{"open write", func(p string) reply { return openClose(p, fxfWrite) }},
			{"open trunc", func(p string) reply { return openClose(p, fxfWrite|fxfTrunc) }},
			{"setstat size", func(p string) reply { return c.call(fxpSetstat, str(p), u32(attrSize), u64(0)) }},
			{"setstat mode", func(p string) reply { return c.call(fxpSetstat, str(p), u32(attrPerm), u32(0o777)) }},
			{"setstat times", func(p string) reply { return c.call(fxpSetstat, str(p), u32(attrTimes), u32(1), u32(1)) }},
			{"symlink below", func(p string) reply {
				return c.call(fxpSymlink, str("mine.txt"), str(strings.TrimRight(p, "/")+"/newlink"))
			}},
		}
		// Operations on the directory entry itself: allowed on a bare
		// link name (a user may delete or rename a link), so tried only on
		// paths that go through a link or climb.
		entryOps = []op{
			{"remove", func(p string) reply { return c.call(fxpRemove, str(p)) }},
			{"rmdir", func(p string) reply { return c.call(fxpRmdir, str(p)) }},
			{"rename from", func(p string) reply { return c.call(fxpRename, str(p), str("/stolen")) }},
			{"rename onto", func(p string) reply { return c.call(fxpRename, str("/mine.txt"), str(p)) }},
			{"posix-rename from", func(p string) reply {
				return c.extended("posix-rename@openssh.com", str(p), str("/stolen"))
			}},
			{"posix-rename onto", func(p string) reply {
				return c.extended("posix-rename@openssh.com", str("/mine.txt"), str(p))
			}},
		}
	)
	follow := append([]op{stat, openRead, opendir, create, mkdirIn}, writeOps...)
	through := append(append([]op{lstat}, follow...), entryOps...)
	hostRO := []op{stat, lstat, openRead, opendir, create, mkdirIn} // never anything worse near the host's /etc

	cases := []struct {
		paths []string
		ops   []op
	}{
		// Climbing: each cleans to a path inside alice's home that does
		// not exist.
		{[]string{"../alice2/secret.txt", "/../alice2/secret.txt", "..//alice2/secret.txt", "../../alice2/secret.txt",
			"../alice2/sub/", "..//alice2//sub/deep.txt", "../alice2/sub/../secret.txt"}, through},
		{[]string{"/../../etc/passwd", "../../../../etc/hostname"}, hostRO},
		// Through a planted link, with and without trailing slashes.
		{[]string{"sib/secret.txt", "sib/sub/", "sib//sub//", "sib/sub/deep.txt", "sib/./sub/", "sibabs/secret.txt",
			"sibabs/sub/", "out/outside.txt", "outrel/outside.txt", "sib/newfile", "out/newfile", "sibfile/x"}, through},
		{[]string{"etc/passwd", "etc/", "etc//hostname", "root/etc/passwd", "root/"}, hostRO},
		// The link itself, where an operation would follow it. pkg/sftp
		// cleans every path, so "sib/" and "sib/." name the link too.
		{[]string{"sib", "sib/", "sib//", "sib/.", "sibabs", "out", "out/", "outrel", "outrel//", "dangling",
			"danglingabs", "sibfile", "sibfile/"}, append(follow, readlink)},
		{[]string{"etc", "root"}, append(hostRO[:1], openRead, opendir, readlink)},
	}
	var msgs []string
	for _, tc := range cases {
		for _, p := range tc.paths {
			for _, o := range tc.ops {
				plant()
				r := o.fn(p)
				if r.ok() {
					t.Errorf("%s %q succeeded (reply type %d)", o.name, p, r.typ)
					continue
				}
				msgs = append(msgs, r.msg)
			}
		}
	}

	plant()
	// A link that leads outside: permission denied, saying why.
	for _, link := range []string{"etc", "sib", "out", "dangling", "danglingabs"} {
		if r := c.call(fxpReadlink, str(link)); r.code != 3 || !strings.Contains(r.msg, "leads outside your home") {
			t.Errorf("readlink %s: code %d %q, want SSH_FX_PERMISSION_DENIED saying it leads outside", link, r.code, r.msg)
		}
	}
	// New links may not point outside either.
	for _, target := range []string{"/etc", "/", "../alice2", "../alice2/secret.txt", "..", sib, decoy, relDecoy, "a/../../x", ""} {
		if r := c.call(fxpSymlink, str(target), str("/newlink")); r.ok() {
			t.Errorf("symlink to %q was created", target)
			c.call(fxpRemove, str("/newlink"))
		} else {
			msgs = append(msgs, r.msg)
		}
	}
	c.call(fxpMkdir, str("/d"), u32(0))
	if r := c.call(fxpSymlink, str("../../alice2"), str("/d/up2")); r.ok() {
		t.Error("symlink d/up2 -> ../../alice2 was created")
	}
	// No ".." at all, even where it would stay inside (see vfs.checkTarget).
	if r := c.call(fxpSymlink, str("../mine.txt"), str("/d/no")); r.ok() {
		t.Error("symlink d/no -> ../mine.txt was created")
	}
	if r := c.call(fxpSymlink, str("d/../mine.txt"), str("/no")); r.ok() {
		t.Error("symlink no -> d/../mine.txt was created")
	}
	for _, p := range []string{"..", "../..", "/../../..", "../alice2", "sib/..", "..//alice2/"} {
		if r := c.call(fxpRealpath, str(p)); r.typ != fxpName || !strings.HasPrefix(r.str, "/") || strings.Contains(r.str, "..") {
			t.Errorf("realpath %q = %q (type %d)", p, r.str, r.typ)
		}
	}

	for name, dir := range map[string]string{"alice2": sib, "decoy": decoy} {
		if got := treeDigest(t, dir); got != before[name] {
			t.Errorf("%s changed:\nbefore:\n%s\nafter:\n%s", name, before[name], got)
		}
	}
	// Only the names this test creates: others on the machine (a package
	// install) may change /etc meanwhile.
	for _, name := range []string{"silo-jail-test", "newlink", "newfile", "stolen"} {
		if _, err := os.Lstat(filepath.Join("/etc", name)); err == nil {
			t.Errorf("/etc/%s was created", name)
		}
	}
	for _, m := range msgs {
		for _, hostPath := range []string{ts.dir, home, sib, decoy, os.TempDir() + "/"} {
			if strings.Contains(m, hostPath) {
				t.Errorf("error message shows the host path %s: %q", hostPath, m)
			}
		}
	}
	joined := strings.Join(msgs, "\n")
	for _, want := range []string{"leads outside your home", "no such file or directory: /alice2/secret.txt"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no error message says %q", want)
		}
	}
}

// OpenSSH's sftp: cd cannot climb above the home, and get through a planted
// link fails.
func TestOpenSSHCannotLeaveHome(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ts.addUser("alice", "", "alice")
	home := ts.home("alice")
	sib := ts.home("alice2")
	writeFile(t, filepath.Join(sib, "secret.txt"), []byte("secret"))
	os.Symlink("../alice2", filepath.Join(home, "sib"))
	local := t.TempDir()
	out, _ := ts.sftpBatch("alice", auth{key: "alice"}, fmt.Sprintf(`cd ..
cd ..
pwd
-cd /../alice2
-get ../alice2/secret.txt %[1]s/a
-get sib/secret.txt %[1]s/b
-cd sib
pwd
`, local))
	if strings.Count(out, "Remote working directory: /\n") != 2 {
		t.Errorf("pwd after cd .. / cd sib is not /:\n%s", out)
	}
	if entries, _ := os.ReadDir(local); len(entries) != 0 {
		t.Errorf("files were downloaded from outside the home: %v\n%s", entries, out)
	}
	if strings.Contains(out, ts.dir) {
		t.Errorf("sftp output shows a host path:\n%s", out)
	}
}
