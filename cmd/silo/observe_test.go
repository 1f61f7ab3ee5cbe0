package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"silo/activity"
	"silo/hooks"
	"silo/internal/promtest"
)

// statusOf runs `silo status --json`.
func statusOf(t *testing.T, cfg string) activity.Status {
	t.Helper()
	out, stderr, code := silo(t, "", "status", "--json", "--config", cfg)
	if code != 0 {
		t.Fatalf("status --json: exit %d: %s", code, stderr)
	}
	var st activity.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// scrape reads the metrics with the Prometheus library's own parser.
func scrape(t *testing.T, addr string) promtest.Families {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	fams, err := promtest.Parse(resp.Body)
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	return fams
}

// An upload held open half-way (the client has written half and waits) is
// in `silo status --json`, in `silo status` and in `silo status --watch`
// in a terminal; once it is finished the metrics count it; `silo kick`
// closes a session by its id and a user's connections by name.
func TestStatusMetricsAndKick(t *testing.T) {
	cfg := writeConfig(t, "log_format = \"json\"\nmetrics_listen = \"127.0.0.1:0\"\n"+testConfig)
	keyFile := addKeyUser(t, cfg, "alice")
	s := startSilo(t, cfg)
	if s.metrics == "" {
		t.Fatal("no metrics address in the log")
	}
	c, err := dialSilo(s.addr, "alice", ssh.InsecureIgnoreHostKey(), keyAuth(t, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	f, err := sc.Create("/held")
	if err != nil {
		t.Fatal(err)
	}
	half := bytes.Repeat([]byte("x"), 300<<10)
	// Write returns once the server has acknowledged every byte.
	if _, err := f.Write(half); err != nil {
		t.Fatal(err)
	}

	st := statusOf(t, cfg)
	if len(st.Connections) != 1 || st.Connections[0].User != "alice" || !strings.Contains(st.Connections[0].Client, "Go") ||
		st.Connections[0].Session == "" || st.Connections[0].Remote == "" {
		t.Fatalf("connections: %+v", st.Connections)
	}
	if len(st.Transfers) != 1 {
		t.Fatalf("transfers: %+v", st.Transfers)
	}
	tr := st.Transfers[0]
	if tr.User != "alice" || tr.Path != "/held" || tr.Direction != activity.Upload || tr.Protocol != "sftp" ||
		tr.Bytes != int64(len(half)) || tr.Size != -1 || tr.Session != st.Connections[0].Session {
		t.Fatalf("transfer: %+v", tr)
	}

	out, stderr, code := silo(t, "", "status", "--config", cfg)
	if code != 0 || !strings.Contains(out, "Connections: 1") || !strings.Contains(out, "Transfers: 1") ||
		!strings.Contains(out, "/held") || !strings.Contains(out, "300 KiB") || !strings.Contains(out, st.Connections[0].Session) {
		t.Fatalf("status: exit %d %s\n%s", code, stderr, out)
	}

	// The live view, in a terminal.
	watch := exec.Command(siloBin, "status", "--watch", "--config", cfg)
	ptmx, err := pty.StartWithSize(watch, &pty.Winsize{Rows: 40, Cols: 160})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	screen := &lockedBuffer{}
	go io.Copy(screen, ptmx)
	screen.waitUntil(t, "the live view to show the upload", 2*time.Minute, func(s string) bool {
		return strings.Contains(s, "/held") && strings.Contains(s, "300 KiB") && strings.Contains(s, "alice")
	})
	ptmx.Write([]byte("q"))
	if err := watch.Wait(); err != nil {
		t.Fatalf("status --watch after q: %v\n%s", err, screen)
	}

	if _, err := f.Write(half); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, cfg); len(st.Transfers) != 0 {
		t.Fatalf("a closed upload is still shown: %+v", st.Transfers)
	}
	if err := sc.Mkdir("/dir"); err != nil {
		t.Fatal(err)
	}
	// The audit lines, in JSON.
	lineOf := func(msg, path string) map[string]any {
		t.Helper()
		// The log reaches the test through a pipe, after the reply.
		m := s.log.waitFor(t, regexp.MustCompile(`(?m)^.*"msg":"`+msg+`".*"path":"`+path+`".*$`), time.Minute)
		var line map[string]any
		if err := json.Unmarshal([]byte(m[0]), &line); err != nil {
			t.Fatalf("%s line is not JSON: %v: %s", msg, err, m[0])
		}
		return line
	}
	if line := lineOf("transfer", "/held"); line["user"] != "alice" || line["direction"] != "upload" || line["bytes"] != float64(2*len(half)) ||
		line["result"] != "ok" || line["protocol"] != "sftp" || line["session"] != tr.Session {
		t.Fatalf("transfer line: %v", line)
	}
	if line := lineOf("change", "/dir"); line["user"] != "alice" || line["op"] != "mkdir" || line["result"] != "ok" ||
		line["protocol"] != "sftp" || line["session"] != tr.Session || line["remote"] == "" {
		t.Fatalf("change line: %v", line)
	}

	fams := scrape(t, s.metrics)
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"silo_transfers_total", []string{"protocol", "sftp", "direction", "upload", "result", "ok"}, 1},
		{"silo_received_bytes_total", nil, float64(2 * len(half))},
		{"silo_logins_total", []string{"method", "publickey", "result", "ok"}, 1},
		{"silo_connections_open", nil, 1},
		{"silo_sessions_open", nil, 1},
		{"silo_user_used_bytes", []string{"user", "alice"}, float64(2*len(half) + 4096)},
		{"silo_user_used_files", []string{"user", "alice"}, 2},
		{"silo_changes_total", []string{"protocol", "sftp", "op", "mkdir", "result", "ok"}, 1},
		{"silo_user_quota_bytes", []string{"user", "alice"}, 0},
	} {
		if got := fams.Value(m.name, m.labels...); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	// pkg/sftp writes in 32 KiB requests.
	if got := fams.Value("silo_sftp_operation_duration_seconds", "op", "write"); got < float64(2*len(half)/(32<<10)) {
		t.Errorf("sftp write operations: %v", got)
	}
	if fams.Value("go_goroutines") <= 0 {
		t.Error("no Go runtime metrics")
	}

	// Kick by session id, then by user.
	out, stderr, code = silo(t, "", "kick", tr.Session, "--config", cfg)
	if code != 0 || out != "closed 1 connection(s)\n" {
		t.Fatalf("kick %s: exit %d %q %s", tr.Session, code, out, stderr)
	}
	if err := c.Wait(); err == nil {
		t.Fatal("the kicked connection ended without an error")
	}
	c2, err := dialSilo(s.addr, "alice", ssh.InsecureIgnoreHostKey(), keyAuth(t, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if out, _, code := silo(t, "", "kick", "alice", "--config", cfg); code != 0 || out != "closed 1 connection(s)\n" {
		t.Fatalf("kick alice: exit %d %q", code, out)
	}
	c2.Wait()
	if _, stderr, code := silo(t, "", "kick", "nobody", "--config", cfg); code != 1 || !strings.Contains(stderr, "no connection") {
		t.Fatalf("kick nobody: exit %d %s", code, stderr)
	}

	// The socket is the server's user's only.
	fi, err := os.Stat(s.dataPath(cfg, "admin.sock"))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("admin socket: %v %v", fi, err)
	}
	s.cmd.Process.Signal(os.Interrupt)
	if err := s.wait(); err != nil {
		t.Fatalf("silo: %v", err)
	}
	if _, err := os.Lstat(s.dataPath(cfg, "admin.sock")); !os.IsNotExist(err) {
		t.Errorf("the admin socket outlived the server: %v", err)
	}
	if _, stderr, code := silo(t, "", "status", "--config", cfg); code != 1 || !strings.Contains(stderr, "no silo server answers") {
		t.Errorf("status without a server: exit %d %s", code, stderr)
	}
}

// dataPath is a file of the default data directory beside cfg.
func (s *server) dataPath(cfg, name string) string {
	return strings.TrimSuffix(cfg, "config.toml") + "data/" + name
}

// Every change a user makes, over OpenSSH's sftp and scp, PuTTY's psftp,
// rsync and the checksum commands, is one audit line with user, session,
// virtual paths and result; every refusal one line with its reason. The
// hooks get the events: an HTTP hook that fails once with a 500 gets the
// event again, and a program gets them on stdin and in its environment.
func TestAuditAndHooks(t *testing.T) {
	for _, c := range []string{"sftp", "scp", "ssh", "rsync", "psftp"} {
		needClient(t, c)
	}
	dir := t.TempDir()
	posts := make(chan hooks.Payload, 100)
	var calls atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, "not now", http.StatusInternalServerError)
			return
		}
		var p hooks.Payload
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
		posts <- p
	}))
	defer hs.Close()
	script := filepath.Join(dir, "hook")
	runs := filepath.Join(dir, "runs")
	os.WriteFile(script, []byte("#!/bin/sh\n{ cat; echo; } >>\"$1\"\nprintf '%s %s %s\\n' \"$SILO_EVENT\" \"$SILO_USER\" \"$SILO_PATH\" >>\"$1.env\"\n"), 0o755)
	cfg := writeConfig(t, testConfig+fmt.Sprintf(`
[[hooks]]
events = ["upload", "rename", "remove", "quota_refused"]
url = "%s/hook"

[[hooks]]
events = ["upload", "rename", "remove", "mkdir"]
command = ["%s", "%s"]
users = ["alice"]
`, hs.URL, script, runs))
	keyFile := addKeyUserWith(t, siloBin, cfg, "alice", "--quota", "1MiB")
	if _, stderr, code := silo(t, "alice-pw\n", "user", "passwd", "alice", "--password-stdin", "--config", cfg); code != 0 {
		t.Fatal(stderr)
	}
	s := startSilo(t, cfg)
	port := s.addr[strings.LastIndexByte(s.addr, ':')+1:]
	home := filepath.Join(filepath.Dir(cfg), "homes", "alice")

	local := t.TempDir()
	os.WriteFile(filepath.Join(local, "a"), []byte("hello\n"), 0o644)
	os.WriteFile(filepath.Join(local, "big"), make([]byte, 2<<20), 0o644)
	out, err := sftpBatch(t, port, keyFile, "alice", fmt.Sprintf(`put %[1]s/a /a
rename /a /b
mkdir /d
chmod 600 /b
ln -s b /l
rm /l
-put %[1]s/big /big
rm /b
rmdir /d
put %[1]s/a /a
-put %[1]s/a /.silo-tmp.x
`, local))
	if err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	sshOpts := []string{"-F", "/dev/null", "-i", keyFile, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "IdentityAgent=none", "-o", "LogLevel=ERROR"}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("scp", append(sshOpts, "-O", "-P", port, filepath.Join(local, "a"), "alice@127.0.0.1:/c")...)
	run("scp", append(sshOpts, "-O", "-P", port, "alice@127.0.0.1:/c", filepath.Join(local, "c"))...)
	// A link on disk that leads out of the home: the checksum is refused.
	os.Symlink("/etc/passwd", filepath.Join(home, "out"))
	if out, err := exec.Command("ssh", append(sshOpts, "-p", port, "alice@127.0.0.1", "sha256sum", "out")...).CombinedOutput(); err == nil {
		t.Fatalf("sha256sum of a link out of the home: %s", out)
	}
	os.MkdirAll(filepath.Join(local, "tree", "sub"), 0o755)
	os.WriteFile(filepath.Join(local, "tree", "sub", "f"), []byte("rsync\n"), 0o644)
	run("rsync", "-r", "-e", "ssh "+strings.Join(sshOpts, " ")+" -p "+port, filepath.Join(local, "tree")+"/", "alice@127.0.0.1:/r/")
	psftpScript := filepath.Join(local, "psftp")
	os.WriteFile(psftpScript, []byte("mkdir /p\nrmdir /p\n"), 0o644)
	psftpArgs := []string{"-P", port, "-pw", "alice-pw", "-batch", "-b", psftpScript}
	for _, k := range s.keys {
		psftpArgs = append(psftpArgs, "-hostkey", k)
	}
	run("psftp", append(psftpArgs, "alice@127.0.0.1")...)

	const who = `session=[0-9a-f]{12} user=alice remote=127\.0\.0\.1:\d+ `
	for _, want := range []string{
		`level=INFO msg=transfer ` + who + `path=/a direction=upload bytes=6 duration=\S+ protocol=sftp result=ok`,
		`level=INFO msg=change ` + who + `op=rename protocol=sftp path=/a target=/b detail=replace result=ok`,
		`level=INFO msg=change ` + who + `op=mkdir protocol=sftp path=/d result=ok`,
		`level=INFO msg=change ` + who + `op=setstat protocol=sftp path=/b detail="chmod 0600" result=ok`,
		`level=INFO msg=change ` + who + `op=symlink protocol=sftp path=/l target=b result=ok`,
		`level=INFO msg=change ` + who + `op=remove protocol=sftp path=/l result=ok`,
		`level=WARN msg=transfer ` + who + `path=/big direction=upload bytes=\d+ duration=\S+ protocol=sftp result="failed: quota exceeded[^"]*" reason=quota`,
		`level=INFO msg=change ` + who + `op=remove protocol=sftp path=/b result=ok`,
		`level=INFO msg=change ` + who + `op=rmdir protocol=sftp path=/d result=ok`,
		`level=WARN msg=refused ` + who + `op=open protocol=sftp path=/.silo-tmp.x result="failed: permission denied" reason=permission`,
		`level=INFO msg=transfer ` + who + `path=/c direction=upload bytes=6 duration=\S+ protocol=scp result=ok`,
		`level=INFO msg=change ` + who + `op=setstat protocol=scp path=/c detail="chmod 0644" result=ok`,
		`level=INFO msg=transfer ` + who + `path=/c direction=download bytes=6 duration=\S+ protocol=scp result=ok`,
		`level=WARN msg=refused ` + who + `op=open protocol=checksum path=/out result="failed: [^"]+" reason=jail`,
		`level=INFO msg=change ` + who + `op=mkdir protocol=rsync path=/r/sub result=ok`,
		`level=INFO msg=transfer ` + who + `path=/r/sub/f direction=upload bytes=6 duration=\S+ protocol=rsync result=ok`,
		`level=INFO msg=change ` + who + `op=mkdir protocol=sftp path=/p result=ok`,
		`level=INFO msg=change ` + who + `op=rmdir protocol=sftp path=/p result=ok`,
	} {
		// The log reaches the test through a pipe, after the replies.
		s.log.waitFor(t, regexp.MustCompile(want), time.Minute)
	}

	// The HTTP hook: the first event again after the 500, then the rest in
	// order.
	type ev struct{ event, path, target string }
	var got []ev
	want := []ev{{"upload", "/a", ""}, {"rename", "/a", "/b"}, {"remove", "/l", ""}, {"quota_refused", "/big", ""},
		{"remove", "/b", ""}, {"upload", "/a", ""}, {"upload", "/c", ""}, {"upload", "/r/sub/f", ""}}
	timeout := time.After(2 * time.Minute)
	for len(got) < len(want) {
		select {
		case p := <-posts:
			if p.User != "alice" || p.Time.IsZero() || !strings.HasPrefix(p.Remote, "127.0.0.1:") {
				t.Errorf("event %+v", p)
			}
			if p.Event == "quota_refused" && p.Reason != "quota" {
				t.Errorf("quota_refused without its reason: %+v", p)
			}
			got = append(got, ev{p.Event, p.Path, p.Target})
		case <-timeout:
			t.Fatalf("hook events: got %v, want %v", got, want)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("hook events: got %v, want %v", got, want)
	}
	if !strings.Contains(s.log.String(), "hook delivery failed; trying again") {
		t.Error("the failed delivery was not logged")
	}

	// The program's events are all delivered when the server has stopped.
	s.cmd.Process.Signal(os.Interrupt)
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	env, _ := os.ReadFile(runs + ".env")
	wantEnv := "upload alice /a\nrename alice /a\nmkdir alice /d\nremove alice /l\nremove alice /b\nupload alice /a\n" +
		"upload alice /c\nmkdir alice /r\nmkdir alice /r/sub\nupload alice /r/sub/f\nmkdir alice /p\n"
	if string(env) != wantEnv {
		t.Errorf("the program's environments:\n%s\nwant\n%s", env, wantEnv)
	}
	stdin, _ := os.ReadFile(runs)
	var first hooks.Payload
	if err := json.Unmarshal(bytes.SplitN(stdin, []byte("\n"), 2)[0], &first); err != nil || first.Event != "upload" ||
		first.Path != "/a" || first.Size != 6 || first.Protocol != "sftp" {
		t.Errorf("the program's first stdin: %v %+v\n%s", err, first, stdin)
	}
}

// An scp upload (OpenSSH's ssh running the server's scp -t, fed by the
// test) announces its size: held at a quarter, the status shows 25% and
// the bar.
func TestStatusShowsScpProgress(t *testing.T) {
	needClient(t, "ssh")
	cfg := writeConfig(t, testConfig)
	keyFile := addKeyUser(t, cfg, "alice")
	s := startSilo(t, cfg)
	port := s.addr[strings.LastIndexByte(s.addr, ':')+1:]
	cmd := exec.Command("ssh", "-F", "/dev/null", "-i", keyFile, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "IdentityAgent=none", "-o", "LogLevel=ERROR", "-p", port, "alice@127.0.0.1", "scp", "-t", "/sized")
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ack := func() {
		t.Helper()
		b := make([]byte, 1)
		if _, err := io.ReadFull(outp, b); err != nil || b[0] != 0 {
			t.Fatalf("scp answered %q, %v", b, err)
		}
	}
	ack()
	const size = 1 << 20
	fmt.Fprintf(in, "C0644 %d sized\n", size)
	ack()
	in.Write(make([]byte, size/4))
	// The server takes the quarter in one read; wait until it has.
	var tr activity.TransferStatus
	deadline := time.Now().Add(2 * time.Minute)
	for tr.Bytes != size/4 {
		if time.Now().After(deadline) {
			t.Fatalf("the quarter never arrived: %+v", tr)
		}
		if st := statusOf(t, cfg); len(st.Transfers) == 1 {
			tr = st.Transfers[0]
		}
	}
	if tr.Size != size || tr.Protocol != "scp" || tr.Direction != activity.Upload || tr.Path != "/sized" {
		t.Fatalf("transfer %+v", tr)
	}
	if out, _, _ := silo(t, "", "status", "--config", cfg); !strings.Contains(out, "25%") || !strings.Contains(out, "256 KiB / 1 MiB") ||
		!strings.Contains(out, "######...") {
		t.Fatalf("status:\n%s", out)
	}
	in.Write(make([]byte, size-size/4))
	in.Write([]byte{0})
	ack()
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ssh scp -t: %v", err)
	}
	s.log.waitUntil(t, "the transfer line", time.Minute, func(l string) bool {
		return strings.Contains(l, "path=/sized direction=upload bytes=1048576") && strings.Contains(l, "protocol=scp result=ok")
	})
}
