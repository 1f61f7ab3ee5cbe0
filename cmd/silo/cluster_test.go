package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"silo/internal/pgtest"
	"silo/internal/proxytest"
	"silo/vfs"
)

// testCluster is silo nodes on 127.0.0.1:0 sharing one PostgreSQL, one
// homes directory and one host key directory.
type testCluster struct {
	pg    *pgtest.Server
	homes string
	cfg   string // a config of the cluster's, for the CLI, with the DSN
	node  string // the nodes' config, without: they take SILO_STORE_DSN
	nodes []*server
	ids   []string // each node's member id, from its log
}

var joinedRE = regexp.MustCompile(`joined the cluster.*node=([0-9a-f]+)`)

// exemptLoopback is the [penalties] of most cluster tests: they retry
// logins while a change spreads.
const exemptLoopback = `[penalties]
exempt = ["127.0.0.1/32"]`

// clusterConfig is a node's config, with the DSN if dsn is not empty.
func clusterConfig(t *testing.T, homes, keys, dsn, penalties string) string {
	return writeConfig(t, fmt.Sprintf(`listen = "127.0.0.1:0"
homes = %q
host_keys = %q
users = "users.toml"

%s

[store]
kind = "postgres"
node_timeout = "2s"
dsn = %q
`, homes, keys, penalties, dsn))
}

func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	return startClusterWith(t, n, exemptLoopback)
}

// startClusterWith starts n nodes with a [penalties] table of the caller's.
func startClusterWith(t *testing.T, n int, penalties string) *testCluster {
	t.Helper()
	pg := pgtest.Start(t)
	dir := t.TempDir()
	c := &testCluster{pg: pg, homes: filepath.Join(dir, "homes")}
	keys := filepath.Join(dir, "hostkeys")
	c.cfg = clusterConfig(t, c.homes, keys, pg.DSN(), penalties)
	c.node = clusterConfig(t, c.homes, keys, "", penalties)
	for range n {
		c.start(t)
	}
	return c
}

// start starts one more node.
func (c *testCluster) start(t *testing.T) *server {
	t.Helper()
	cmd := exec.Command(siloBin, "serve", "--config", c.node)
	cmd.Env = append(os.Environ(), "SILO_STORE_DSN="+c.pg.DSN())
	s := startSiloCmd(t, cmd)
	id := s.log.waitFor(t, joinedRE, 2*time.Minute)[1]
	s.log.waitCount(t, "listening for account changes", 1)
	c.nodes = append(c.nodes, s)
	c.ids = append(c.ids, id)
	return s
}

// addUser adds a user with a new key through the CLI, with extra flags
// (--quota), and returns the key's file.
func (c *testCluster) addUser(t *testing.T, name string, extra ...string) string {
	t.Helper()
	var keyFile string
	c.changed(t, func() { keyFile = addKeyUserWith(t, siloBin, c.cfg, name, extra...) })
	return keyFile
}

// changed runs fn, a change to the accounts, and waits until every node
// has reloaded them after it.
func (c *testCluster) changed(t *testing.T, fn func()) {
	t.Helper()
	before := make([]int, len(c.nodes))
	for i, s := range c.nodes {
		before[i] = s.log.count("users reloaded")
	}
	start := time.Now()
	fn()
	done := time.Now()
	for i, s := range c.nodes {
		s.log.waitCount(t, "users reloaded", before[i]+1)
		t.Logf("node %d: reloaded within %v of the CLI's start, %v of its exit", i,
			time.Since(start).Round(time.Millisecond), time.Since(done).Round(time.Millisecond))
	}
}

// query runs one query against the cluster's database.
func (c *testCluster) query(t *testing.T, sql string, args []any, dest ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitLedger waits until the ledger's usage of name equals a walk of its
// home and no lease is left: the state once every writer has closed and
// given back what it did not use. The bound is for a test that would hang.
func (c *testCluster) waitLedger(t *testing.T, name string) vfs.Usage {
	t.Helper()
	var got, want vfs.Usage
	var leases int
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if want, err = vfs.Scan(filepath.Join(c.homes, name)); err != nil {
			t.Fatal(err)
		}
		c.query(t, "SELECT bytes, files FROM silo_usage WHERE account = $1", []any{name}, &got.Bytes, &got.Files)
		c.query(t, "SELECT count(*) FROM silo_leases WHERE account = $1", []any{name}, &leases)
		if got == want && leases == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger of %s: %+v with %d leases, home holds %+v", name, got, leases, want)
		}
	}
}

func clusterDial(t *testing.T, s *server, user, keyFile string) (*ssh.Client, error) {
	t.Helper()
	return dialSilo(s.addr, user, ssh.InsecureIgnoreHostKey(), keyAuth(t, keyFile))
}

// clusterSFTP logs user in on s and opens SFTP, closed when the test ends;
// what names the step in a failure.
func clusterSFTP(t *testing.T, s *server, user, keyFile, what string) *sftp.Client {
	t.Helper()
	cl, err := clusterDial(t, s, user, keyFile)
	if err != nil {
		t.Fatalf("%s: login: %v", what, err)
	}
	t.Cleanup(func() { cl.Close() })
	sc, err := sftp.NewClient(cl)
	if err != nil {
		t.Fatalf("%s: sftp: %v", what, err)
	}
	return sc
}

// A user added with the CLI logs in on every node, pushed there by the
// database's notification (a PostgreSQL store is never polled); deleted,
// their sessions end on every node.
func TestClusterAccountChangesReachEveryNode(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	key := c.addUser(t, "alice")
	var clients []*ssh.Client
	for i, s := range c.nodes {
		cl, err := clusterDial(t, s, "alice", key)
		if err != nil {
			t.Fatalf("node %d: alice cannot log in after user add: %v", i, err)
		}
		defer cl.Close()
		sc, err := sftp.NewClient(cl)
		if err != nil {
			t.Fatalf("node %d: sftp: %v", i, err)
		}
		if _, err := sc.Getwd(); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		clients = append(clients, cl)
	}
	c.changed(t, func() {
		if out, err := exec.Command(siloBin, "user", "del", "alice", "--config", c.cfg).CombinedOutput(); err != nil {
			t.Fatalf("user del: %v\n%s", err, out)
		}
	})
	for i, cl := range clients {
		ended := make(chan error, 1)
		go func() { ended <- cl.Wait() }()
		select {
		case <-ended:
		case <-time.After(2 * time.Minute):
			t.Fatalf("node %d: alice's session outlived her deletion", i)
		}
		c.nodes[i].log.waitCount(t, "closing connection of removed user", 1)
		if _, err := clusterDial(t, c.nodes[i], "alice", key); err == nil {
			t.Fatalf("node %d: a deleted user logged in", i)
		}
	}
}

// Every node presents the same host keys, created once by whichever node
// started first.
func TestClusterSameHostKeys(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	key := c.addUser(t, "alice")
	var first string
	for i, s := range c.nodes {
		if strings.Join(s.keys, " ") != strings.Join(c.nodes[0].keys, " ") {
			t.Errorf("node %d logs host keys %v, node 0 %v", i, s.keys, c.nodes[0].keys)
		}
		var seen string
		cb := func(_ string, _ net.Addr, k ssh.PublicKey) error { seen = ssh.FingerprintSHA256(k); return nil }
		cl, err := dialSilo(s.addr, "alice", cb, keyAuth(t, key))
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		cl.Close()
		if i == 0 {
			first = seen
		} else if seen != first {
			t.Errorf("node %d presents %s, node 0 %s", i, seen, first)
		}
	}
}

// The same user uploads through the three nodes at once into a 50 MiB
// quota until each is refused: what is stored never passes the quota, and
// falls short of it by less than a write per node; the ledger then equals
// the files.
func TestClusterQuotaIsExact(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	const quota = 50 << 20
	const chunk = 32 << 10
	key := c.addUser(t, "alice", "--quota", "50MiB")
	var clients []*sftp.Client
	for i, s := range c.nodes {
		clients = append(clients, clusterSFTP(t, s, "alice", key, fmt.Sprintf("node %d", i)))
	}
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, sc := range clients {
		wg.Go(func() {
			f, err := sc.Create(fmt.Sprintf("part%d", i))
			if err != nil {
				errs[i] = err
				return
			}
			buf := make([]byte, chunk)
			rand.Read(buf)
			for n := 0; n <= quota; n += chunk {
				if _, err = f.Write(buf); err != nil {
					break
				}
			}
			f.Close()
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "quota exceeded") {
			t.Errorf("node %d: the upload ended with %v, want quota exceeded", i, err)
		}
	}
	var stored int64
	for i := range clients {
		fi, err := os.Stat(filepath.Join(c.homes, "alice", fmt.Sprintf("part%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("through node %d: %d bytes", i, fi.Size())
		stored += fi.Size()
	}
	if stored > quota || stored <= quota-int64(len(clients))*chunk {
		t.Fatalf("stored %d bytes against a quota of %d; want at most the quota, and less than a write per node short", stored, quota)
	}
	if u := c.waitLedger(t, "alice"); u.Bytes != stored {
		t.Fatalf("ledger holds %d bytes, the home %d", u.Bytes, stored)
	}
}

// A node killed with SIGKILL mid-upload: the others take back its leases
// and recount the home, the upload is resumed through another node with
// reput, byte for byte, and the ledger is exact after.
func TestClusterNodeKilledMidUpload(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("sftp"); err != nil {
		if os.Getenv("SILO_REQUIRE_CLIENTS") == "1" {
			t.Fatal("needs OpenSSH's sftp")
		}
		t.Skip("needs OpenSSH's sftp")
	}
	c := startCluster(t, 3)
	key := c.addUser(t, "alice", "--quota", "1GiB")
	data := make([]byte, 96<<20)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "data")
	os.WriteFile(local, data, 0o644)
	remote := filepath.Join(c.homes, "alice", "big")
	sftpCmd := func(s *server, batch string) *exec.Cmd {
		port := s.addr[strings.LastIndexByte(s.addr, ':')+1:]
		cmd := exec.Command("sftp", "-F", "/dev/null", "-R", "64", "-P", port, "-i", key,
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentityAgent=none",
			"-o", "LogLevel=ERROR", "-b", "-", "alice@127.0.0.1")
		cmd.Stdin = strings.NewReader(batch)
		return cmd
	}
	put := sftpCmd(c.nodes[0], fmt.Sprintf("put %s big\n", local))
	if err := put.Start(); err != nil {
		t.Fatal(err)
	}
	// Killed once a quarter is on disk: its lease then covers more than
	// the file holds.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Millisecond) {
		if fi, err := os.Stat(remote); err == nil && fi.Size() > int64(len(data))/4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload never got a quarter through")
		}
	}
	c.nodes[0].cmd.Process.Signal(syscall.SIGKILL)
	c.nodes[0].wait()
	put.Wait()
	var leased int64
	c.query(t, "SELECT coalesce(sum(bytes), 0) FROM silo_leases WHERE node = $1", []any{c.ids[0]}, &leased)
	t.Logf("the dead node held a lease of %d bytes", leased)

	// Reaped by a survivor, which recounts the home.
	for deadline := time.Now().Add(2 * time.Minute); c.nodes[1].log.count("usage recounted")+c.nodes[2].log.count("usage recounted") == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no survivor recounted the dead node's home")
		}
	}
	var left int
	c.query(t, "SELECT count(*) FROM silo_leases WHERE node = $1", []any{c.ids[0]}, &left)
	if left != 0 {
		t.Fatalf("%d leases of the dead node remain", left)
	}
	got, _ := os.ReadFile(remote)
	if !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("the %d bytes left by the kill are not a prefix of what was sent", len(got))
	}
	if out, err := sftpCmd(c.nodes[1], fmt.Sprintf("reput %s big\n", local)).CombinedOutput(); err != nil {
		t.Fatalf("reput through node 1: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(remote); !bytes.Equal(got, data) {
		t.Fatalf("after reput the file differs (%d bytes)", len(got))
	}
	if u := c.waitLedger(t, "alice"); u.Bytes != int64(len(data)) {
		t.Fatalf("ledger holds %d bytes, the file %d", u.Bytes, len(data))
	}
	var nodes int
	c.query(t, "SELECT count(*) FROM silo_nodes WHERE id = $1", []any{c.ids[0]}, &nodes)
	if nodes != 0 {
		t.Fatal("the dead node is still a member")
	}
}

// PostgreSQL stopped: the nodes say so, refuse logins (without penalising
// the client), keep the sessions they have; started again: logins work,
// with every account and file there.
func TestClusterDatabaseRestart(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 2)
	key := c.addUser(t, "alice")
	sc := clusterSFTP(t, c.nodes[0], "alice", key, "node 0")
	if err := writeFile(sc, "kept", []byte("before the outage")); err != nil {
		t.Fatal(err)
	}
	c.waitLedger(t, "alice")

	c.pg.Stop()
	for i, s := range c.nodes {
		s.log.waitCount(t, "account database unreachable", 1)
		if _, err := clusterDial(t, s, "alice", key); err == nil {
			t.Fatalf("node %d: a login succeeded with the database down", i)
		}
		s.log.waitCount(t, "logins are refused until it is back", 1)
	}
	// The session that was open goes on reading.
	if got, err := readFile(sc, "kept"); err != nil || string(got) != "before the outage" {
		t.Fatalf("reading in the open session during the outage: %q, %v", got, err)
	}
	// A write that needs quota it cannot record is refused.
	if err := writeFile(sc, "during", []byte("x")); err == nil {
		t.Fatal("a write was granted quota while the database was down")
	}

	c.pg.StartAgain()
	for i, s := range c.nodes {
		s.log.waitCount(t, "account database reachable again", 1)
		sc := clusterSFTP(t, s, "alice", key, fmt.Sprintf("node %d after the database came back", i))
		if got, err := readFile(sc, "kept"); err != nil || string(got) != "before the outage" {
			t.Fatalf("node %d: after the outage: %q, %v", i, got, err)
		}
	}
	if err := writeFile(sc, "after", []byte("after the outage")); err != nil {
		t.Fatalf("writing after the outage: %v", err)
	}
}

func writeFile(sc *sftp.Client, name string, data []byte) error {
	f, err := sc.Create(name)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}

func readFile(sc *sftp.Client, name string) ([]byte, error) {
	f, err := sc.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(f)
	return b.Bytes(), err
}

// `silo user import --users` moves a users file's accounts into PostgreSQL, all or
// none; `silo cluster` lists the nodes that are up.
func TestClusterImportAndList(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 2)
	single := writeConfig(t, testConfig)
	addKeyUser(t, single, "bob")
	if _, stderr, code := silo(t, "pw\n", "user", "add", "carol", "--password-stdin", "--quota", "1GiB", "--config", single); code != 0 {
		t.Fatalf("user add carol: %s", stderr)
	}
	usersFile := filepath.Join(filepath.Dir(single), "users.toml")
	c.changed(t, func() {
		if out, stderr, code := silo(t, "", "user", "import", "--users", usersFile, "--config", c.cfg); code != 0 ||
			!strings.Contains(out, "imported 2 users") {
			t.Fatalf("user import: %d %q %q", code, out, stderr)
		}
	})
	out, _, _ := silo(t, "", "user", "list", "--config", c.cfg)
	if !regexp.MustCompile(`(?m)^bob\s+1 key\(s\)`).MatchString(out) || !regexp.MustCompile(`(?m)^carol\s+password\s+0 B\s+1 GiB`).MatchString(out) {
		t.Fatalf("user list after import:\n%s", out)
	}
	// Again: both exist, nothing changes.
	if _, stderr, code := silo(t, "", "user", "import", "--users", usersFile, "--config", c.cfg); code != 1 ||
		!strings.Contains(stderr, "nothing imported") || !strings.Contains(stderr, "user bob exists already") {
		t.Fatalf("second import: %d %q", code, stderr)
	}
	// The imported password works on a node.
	cl, err := dialSilo(c.nodes[1].addr, "carol", ssh.InsecureIgnoreHostKey(), ssh.Password("pw"))
	if err != nil {
		t.Fatalf("carol after import: %v", err)
	}
	cl.Close()

	out, stderr, code := silo(t, "", "cluster", "--config", c.cfg)
	if code != 0 {
		t.Fatalf("silo cluster: %s", stderr)
	}
	for i, s := range c.nodes {
		if !regexp.MustCompile(`(?m)^` + c.ids[i] + `\s+` + regexp.QuoteMeta(s.addr) + `\s`).MatchString(out) {
			t.Errorf("silo cluster does not list node %d (%s at %s):\n%s", i, c.ids[i], s.addr, out)
		}
	}
	// A node stopped cleanly leaves the list at once.
	c.nodes[0].cmd.Process.Signal(syscall.SIGTERM)
	if err := c.nodes[0].wait(); err != nil {
		t.Fatalf("node 0 after SIGTERM: %v", err)
	}
	out, _, _ = silo(t, "", "cluster", "--config", c.cfg)
	if strings.Contains(out, c.ids[0]) || !strings.Contains(out, c.ids[1]) {
		t.Fatalf("after node 0 stopped, silo cluster lists:\n%s", out)
	}
}

// Failed logins on one node block the source on the others too.
func TestClusterPenaltiesShared(t *testing.T) {
	t.Parallel()
	c := startClusterWith(t, 2, `[penalties]
authfail = "10s"
min = "15s"
max = "10m"`)
	key := c.addUser(t, "alice")
	_, wrong, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(wrong)
	for i := range 2 {
		if cl, err := dialSilo(c.nodes[0].addr, "alice", ssh.InsecureIgnoreHostKey(), ssh.PublicKeys(signer)); err == nil {
			cl.Close()
			t.Fatalf("attempt %d: a wrong key logged in", i)
		}
		c.nodes[0].log.waitCount(t, "login failed", i+1)
	}
	c.nodes[0].log.waitCount(t, "source blocked", 1)
	c.nodes[1].log.waitCount(t, "source blocked", 1)
	if cl, err := clusterDial(t, c.nodes[1], "alice", key); err == nil {
		cl.Close()
		t.Fatal("node 1 let a source blocked on node 0 log in")
	}
}

// A file being written through one node cannot be written, removed or
// renamed through another until its writer closes.
func TestClusterOneWriterPerFile(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 2)
	key := c.addUser(t, "alice")
	var sc [2]*sftp.Client
	for i := range sc {
		sc[i] = clusterSFTP(t, c.nodes[i], "alice", key, fmt.Sprintf("node %d", i))
	}
	if err := writeFile(sc[0], "old", []byte("old content")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		open func() (*sftp.File, error)
	}{
		{"in place", func() (*sftp.File, error) { return sc[0].OpenFile("new", os.O_WRONLY|os.O_CREATE) }},
		{"overwrite", func() (*sftp.File, error) { return sc[0].OpenFile("old", os.O_WRONLY|os.O_TRUNC) }},
	} {
		w, err := tc.open()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if _, err := w.Write([]byte("being written")); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		target := "new"
		if tc.name == "overwrite" {
			target = "old"
		}
		if f, err := sc[1].OpenFile(target, os.O_WRONLY); err == nil {
			f.Close()
			t.Errorf("%s: a second writer opened %s through node 1", tc.name, target)
		}
		if err := sc[1].Remove(target); err == nil {
			t.Errorf("%s: node 1 removed %s while node 0 wrote it", tc.name, target)
		}
		if err := sc[1].PosixRename(target, "moved"); err == nil {
			t.Errorf("%s: node 1 renamed %s while node 0 wrote it", tc.name, target)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("%s: close: %v", tc.name, err)
		}
		if got, err := readFile(sc[1], target); err != nil || string(got) != "being written" {
			t.Fatalf("%s: through node 1 after close: %q, %v", tc.name, got, err)
		}
		if err := sc[1].PosixRename(target, "moved"); err != nil {
			t.Fatalf("%s: rename once closed: %v", tc.name, err)
		}
	}
}

// sftpBatch runs OpenSSH's sftp against node s as user, with the key in
// keyFile.
func (c *testCluster) sftpBatch(s *server, user, keyFile, batch string) (string, error) {
	port := s.addr[strings.LastIndexByte(s.addr, ':')+1:]
	cmd := exec.Command("sftp", "-F", "/dev/null", "-P", port, "-i", keyFile,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentityAgent=none",
		"-o", "LogLevel=ERROR", "-b", "-", user+"@127.0.0.1")
	cmd.Stdin = strings.NewReader(batch)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// SIGTERM on one node of three: the upload running through it goes on to
// the end while the node takes no new connection, the two others serve
// new logins and transfers meanwhile, and the drained node gives its
// leases back and leaves: the ledger is exact after.
func TestClusterSIGTERMDrainsOneNode(t *testing.T) {
	t.Parallel()
	needSFTP(t)
	// A grace no loaded machine runs out of: the upload, not the clock,
	// decides when the node exits.
	c := startClusterWith(t, 3, "shutdown_grace = \"10m\"\n"+exemptLoopback)
	key := c.addUser(t, "alice", "--quota", "1GiB")
	sc := clusterSFTP(t, c.nodes[0], "alice", key, "node 0")
	data := make([]byte, 8<<20)
	rand.Read(data)
	f, err := sc.Create("draining")
	if err != nil {
		t.Fatal(err)
	}
	half := len(data) / 2
	if _, err := f.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	var leased int64
	c.query(t, "SELECT coalesce(sum(bytes), 0) FROM silo_leases WHERE node = $1", []any{c.ids[0]}, &leased)
	if leased < int64(half) {
		t.Fatalf("node 0 leases %d bytes for an upload %d bytes in", leased, half)
	}

	c.nodes[0].cmd.Process.Signal(syscall.SIGTERM)
	c.nodes[0].log.waitCount(t, "waiting for transfers to finish\" transfers=1", 1)
	if conn, err := net.Dial("tcp", c.nodes[0].addr); err == nil {
		conn.Close()
		t.Error("the draining node accepted a new connection")
	}
	local := filepath.Join(t.TempDir(), "small")
	os.WriteFile(local, []byte("through another node"), 0o644)
	bob := c.addUser(t, "bob")
	for i, s := range c.nodes[1:] {
		for _, u := range []struct{ name, key string }{{"alice", key}, {"bob", bob}} {
			name := fmt.Sprintf("from-node%d", i+1)
			if out, err := c.sftpBatch(s, u.name, u.key, fmt.Sprintf("put %s %s\nls -l %s\n", local, name, name)); err != nil {
				t.Fatalf("%s through node %d while node 0 drains: %v\n%s", u.name, i+1, err, out)
			}
		}
	}

	if _, err := f.Write(data[half:]); err != nil {
		t.Fatalf("the upload on the draining node: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("closing the upload on the draining node: %v", err)
	}
	if err := c.nodes[0].wait(); err != nil {
		t.Fatalf("node 0 after SIGTERM: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(c.homes, "alice", "draining")); !bytes.Equal(got, data) {
		t.Fatalf("the upload through the drained node differs (%d of %d bytes)", len(got), len(data))
	}
	var leases, member int
	c.query(t, "SELECT count(*) FROM silo_leases WHERE node = $1", []any{c.ids[0]}, &leases)
	c.query(t, "SELECT count(*) FROM silo_nodes WHERE id = $1", []any{c.ids[0]}, &member)
	if leases != 0 || member != 0 {
		t.Fatalf("after node 0 stopped: %d leases of it, member %d; want none", leases, member)
	}
	want := int64(len(data)) + 2*int64(len("through another node"))
	if u := c.waitLedger(t, "alice"); u.Bytes != want || u.Files != 3 {
		t.Fatalf("ledger of alice: %+v, want %d bytes in 3 files", u, want)
	}
}

func needSFTP(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("sftp"); err != nil {
		if os.Getenv("SILO_REQUIRE_CLIENTS") != "" {
			t.Fatal("needs OpenSSH's sftp")
		}
		t.Skip("needs OpenSSH's sftp")
	}
}

// Two nodes behind a balancer that sends the PROXY protocol: each logs
// the client's address, and a client blocked for failed logins on one node
// is blocked on the other, while the balancer's other clients go on; a
// connection from the balancer's address without a header is refused.
func TestClusterBehindBalancer(t *testing.T) {
	t.Parallel()
	needSFTP(t)
	c := startClusterWith(t, 2, `proxy_protocol = ["127.0.0.1/32"]

[penalties]
authfail = "1m"
min = "15s"
max = "10m"`)
	key := c.addUser(t, "alice")
	through := func(s *server, client string) *server {
		return &server{addr: proxytest.Start(t, proxytest.From("127.0.0.1", s.addr), netip.MustParseAddrPort(client))}
	}
	for i, s := range c.nodes {
		if out, err := c.sftpBatch(through(s, "203.0.113.7:40001"), "alice", key, "ls\n"); err != nil {
			t.Fatalf("node %d through the balancer: %v\n%s", i, err, out)
		}
		s.log.waitCount(t, "msg=login remote=203.0.113.7:40001 user=alice", 1)
	}

	_, wrong, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(wrong)
	if cl, err := dialSilo(through(c.nodes[0], "198.51.100.20:40002").addr, "alice", ssh.InsecureIgnoreHostKey(), ssh.PublicKeys(signer)); err == nil {
		cl.Close()
		t.Fatal("a wrong key logged in")
	}
	for _, s := range c.nodes {
		s.log.waitCount(t, "source blocked\" source=198.51.100.20/32", 1)
	}
	if out, err := c.sftpBatch(through(c.nodes[1], "198.51.100.20:40003"), "alice", key, "ls\n"); err == nil {
		t.Errorf("node 1 let in a client blocked on node 0:\n%s", out)
	}
	if out, err := c.sftpBatch(through(c.nodes[1], "203.0.113.7:40004"), "alice", key, "ls\n"); err != nil {
		t.Errorf("another client of the balancer, after the block: %v\n%s", err, out)
	}

	if _, err := dialSilo(c.nodes[1].addr, "alice", ssh.InsecureIgnoreHostKey(), keyAuth(t, key)); err == nil {
		t.Error("a connection from the balancer's address without a PROXY header logged in")
	}
	c.nodes[1].log.waitCount(t, "connection from a trusted proxy refused", 1)
	for _, s := range c.nodes {
		if strings.Contains(s.log.String(), "source=127.0.0.1") {
			t.Error("the balancer's own address was penalised")
		}
	}
}
