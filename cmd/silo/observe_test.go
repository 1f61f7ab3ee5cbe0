package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/crypto/ssh"

	"silo/activity"
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
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	return fams
}

// metricValue is the value of the series of name whose labels include
// labels (name=value pairs); -1 if there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
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
	var line map[string]any
	for _, l := range strings.Split(s.log.String(), "\n") {
		if strings.Contains(l, `"msg":"transfer"`) && strings.Contains(l, `"/held"`) {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("transfer line is not JSON: %v: %s", err, l)
			}
		}
	}
	if line["user"] != "alice" || line["direction"] != "upload" || line["bytes"] != float64(2*len(half)) ||
		line["result"] != "ok" || line["protocol"] != "sftp" || line["session"] != tr.Session {
		t.Fatalf("transfer line: %v\n%s", line, s.log)
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
		{"silo_user_used_bytes", []string{"user", "alice"}, float64(2 * len(half))},
		{"silo_user_used_files", []string{"user", "alice"}, 1},
		{"silo_user_quota_bytes", []string{"user", "alice"}, 0},
	} {
		if got := metricValue(fams, m.name, m.labels...); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	// pkg/sftp writes in 32 KiB requests.
	if got := metricValue(fams, "silo_sftp_operation_duration_seconds", "op", "write"); got < float64(2*len(half)/(32<<10)) {
		t.Errorf("sftp write operations: %v", got)
	}
	if metricValue(fams, "go_goroutines") <= 0 {
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

var _ = fmt.Sprintf
