// Package pgtest starts a throw-away PostgreSQL cluster for a test: initdb
// into a fresh directory, a server listening only on a Unix socket there,
// trust authentication, all removed when the test ends. The binaries come
// from Debian's postgresql package (/usr/lib/postgresql/*/bin) or PATH.
// PostgreSQL refuses to run as root, so as root the cluster belongs to
// nobody and is run through runuser.
package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Server is one running test cluster.
type Server struct {
	t    testing.TB
	bin  string // directory of initdb and pg_ctl
	dir  string // holds data/ and the socket
	uid  int    // -1: run as this process's user
	gid  int
	name string // the user to run as through runuser, when root
}

// required reports whether a test that cannot start PostgreSQL must fail
// rather than skip: in CI, or wherever the clients are required.
func required() bool {
	return os.Getenv("SILO_REQUIRE_CLIENTS") == "1" || os.Getenv("CI") != ""
}

// binDir finds the directory holding initdb and pg_ctl.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// The newest major version first: "9" < "15" only as numbers.
	slices.SortFunc(dirs, func(a, b string) int {
		na, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		nb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return nb - na
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("PostgreSQL not found (no /usr/lib/postgresql/*/bin/pg_ctl, no pg_ctl in PATH): apt-get install postgresql")
}

// Start initialises and starts a cluster that is stopped and removed when
// the test ends. Without PostgreSQL the test is skipped, or fails in CI.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := binDir()
	if err != nil {
		if required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	// Not t.TempDir: its parents are 0700, which nobody cannot cross. A
	// short path, too: a Unix socket's path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "silo-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, bin: bin, dir: dir, uid: -1, gid: -1}
	t.Cleanup(func() {
		s.run("pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "stop")
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		nobody, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("running as root, and no user nobody to run PostgreSQL as: %v", err)
		}
		s.name = nobody.Username
		s.uid, _ = strconv.Atoi(nobody.Uid)
		s.gid, _ = strconv.Atoi(nobody.Gid)
		if err := os.Chown(dir, s.uid, s.gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := s.run("initdb", "-D", s.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	s.StartAgain()
	return s
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// run runs one of the PostgreSQL binaries, as nobody when this is root.
func (s *Server) run(prog string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, prog)
	var cmd *exec.Cmd
	if s.name != "" {
		cmd = exec.Command("runuser", append([]string{"-u", s.name, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// DSN is the connection string of the cluster's postgres database.
func (s *Server) DSN() string {
	return fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable", s.dir)
}

// Stop stops the server at once, as a crash would; StartAgain brings it back
// with its data.
func (s *Server) Stop() {
	s.t.Helper()
	if out, err := s.run("pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "stop"); err != nil {
		s.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// StartAgain starts the server on its existing data, and returns once it
// accepts connections.
func (s *Server) StartAgain() {
	s.t.Helper()
	opts := strings.Join([]string{
		"-c listen_addresses=''",
		"-c unix_socket_directories=" + s.dir,
		"-c fsync=off",
		"-c max_connections=200",
	}, " ")
	if out, err := s.run("pg_ctl", "-D", s.data(), "-l", filepath.Join(s.dir, "log"), "-o", opts, "-w", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		s.t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
}
