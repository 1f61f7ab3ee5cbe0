package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDebPackage installs the package named by SILO_DEB (make deb; .ci/run
// sets it) on this machine, which has no running systemd: the maintainer
// scripts must cope. It then runs the installed silo as the unit would (as
// user silo, on a socket passed by systemd-socket-activate, with the
// packaged config), logs in with sftp, removes the package and checks that
// the data stayed. It needs root, and refuses to touch a machine where silo
// is installed already.
func TestDebPackage(t *testing.T) {
	deb := os.Getenv("SILO_DEB")
	if deb == "" {
		t.Skip("SILO_DEB names no package; make deb builds one")
	}
	if os.Geteuid() != 0 {
		t.Fatal("installing a package needs root")
	}
	needClient(t, "systemd-socket-activate")
	if exec.Command("dpkg", "-s", "silo").Run() == nil {
		t.Fatal("silo is installed on this machine already; not touching it")
	}
	_, userExisted := user.Lookup("silo")
	_, stateExisted := os.Stat("/var/lib/silo")
	t.Cleanup(func() {
		exec.Command("dpkg", "--purge", "silo").Run()
		if stateExisted != nil {
			os.RemoveAll("/var/lib/silo")
		}
		if userExisted != nil {
			exec.Command("userdel", "silo").Run()
		}
	})
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// Installing twice: the second run is an upgrade of the same version,
	// and the scripts are idempotent.
	run("dpkg", "-i", deb)
	run("dpkg", "-i", deb)
	// make build stamps the version and commit from git.
	if out := run("/usr/bin/silo", "version"); !regexp.MustCompile(`^silo \d+\.\d+\.\d+\S*\ncommit [0-9a-f]{40}\ngo1\.\d+`).MatchString(out) {
		t.Errorf("silo version: %q", out)
	}
	assertStatic(t, "/usr/bin/silo")
	u, err := user.Lookup("silo")
	if err != nil {
		t.Fatalf("no silo user: %v", err)
	}
	if out := run("getent", "passwd", "silo"); !strings.HasSuffix(strings.TrimSpace(out), ":/var/lib/silo:/usr/sbin/nologin") {
		t.Errorf("silo user: %q", out)
	}
	uid, _ := strconv.Atoi(u.Uid)
	checkOwner := func(path string, wantUID int, wantMode os.FileMode) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != wantUID || fi.Mode().Perm() != wantMode {
			t.Errorf("%s: uid %d mode %v, want uid %d mode %v", path, st.Uid, fi.Mode().Perm(), wantUID, wantMode)
		}
	}
	checkOwner("/var/lib/silo", uid, 0o750)
	checkOwner("/etc/silo/config.toml", 0, 0o640)
	for _, f := range []string{"/lib/systemd/system/silo.service", "/lib/systemd/system/silo.socket"} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
	conf := run("cat", "/etc/silo/config.toml")
	for _, want := range []string{`listen = "0.0.0.0:22"`, `homes = "/var/lib/silo/homes"`, `users = "/var/lib/silo/users.toml"`, "\nexempt = []\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("packaged config lacks %q", want)
		}
	}
	run("systemd-analyze", "verify", "/lib/systemd/system/silo.socket", "/lib/systemd/system/silo.service")
	sec := run("systemd-analyze", "security", "--offline=true", "/lib/systemd/system/silo.service")
	m := regexp.MustCompile(`Overall exposure level for silo.service: ([0-9.]+)`).FindStringSubmatch(sec)
	if m == nil {
		t.Fatalf("systemd-analyze security:\n%s", sec)
	}
	if score, _ := strconv.ParseFloat(m[1], 64); score > 2 {
		t.Errorf("exposure %s, want at most 2:\n%s", m[1], sec)
	}
	t.Logf("systemd-analyze security: exposure %s", m[1])

	// The unit's ExecStartPre, then an account added by root the usual way.
	run("/usr/bin/silo", "check-config", "--config", "/etc/silo/config.toml")
	keyFile := addKeyUserWith(t, "/usr/bin/silo", "/etc/silo/config.toml", "alice")
	checkOwner("/var/lib/silo/users.toml", uid, 0o600)

	// As the unit runs it: user silo, socket passed in.
	local := filepath.Join(t.TempDir(), "hello.txt")
	os.WriteFile(local, []byte("hello from the package test\n"), 0o644)
	s := serveActivated(t, []string{"runuser", "-u", "silo", "--"},
		[]string{"/usr/bin/silo", "serve", "--config", "/etc/silo/config.toml"}, keyFile, "put "+local+" hello.txt\n")
	stored := "/var/lib/silo/homes/alice/hello.txt"
	checkOwner(stored, uid, 0o644)
	checkOwner("/var/lib/silo/hostkeys", uid, 0o700)
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.copied:
	case <-time.After(time.Minute):
		t.Fatal("installed silo did not stop on SIGTERM")
	}

	// Removing keeps the data and the config; purging keeps the data.
	run("dpkg", "-r", "silo")
	if _, err := os.Stat("/usr/bin/silo"); err == nil {
		t.Error("/usr/bin/silo still there after dpkg -r")
	}
	for _, p := range []string{stored, "/var/lib/silo/users.toml", "/var/lib/silo/hostkeys/ssh_host_ed25519_key", "/etc/silo/config.toml"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after dpkg -r: %v", err)
		}
	}
	run("dpkg", "--purge", "silo")
	if _, err := os.Stat(stored); err != nil {
		t.Errorf("after dpkg --purge: %v", err)
	}
}

// assertStatic fails unless the ELF file at path asks for no dynamic loader.
func assertStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("%s is dynamically linked", path)
		}
	}
}
