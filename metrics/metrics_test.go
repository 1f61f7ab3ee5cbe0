package metrics_test

import (
	"io/fs"
	"net/http/httptest"
	"testing"
	"time"

	"silo/activity"
	"silo/internal/promtest"
	"silo/metrics"
	"silo/vfs"
)

// Each kind of event lands in its counter, refusals by their reason; the
// per-user series go when PerUser is off.
func TestEventsAreCounted(t *testing.T) {
	for _, perUser := range []bool{true, false} {
		mon := activity.New(nil)
		m := metrics.New(mon, metrics.Options{PerUser: perUser, Usage: func() []metrics.Usage {
			return []metrics.Usage{{User: "alice", Bytes: 10, Files: 1, MaxBytes: 100}}
		}})
		c := mon.Connect(activity.ConnInfo{Remote: "192.0.2.1:1"})
		c.LoggedIn("alice", "s", "SSH-2.0-x", "password")
		mon.Report(activity.Event{Kind: activity.LoginFailed, Method: "password"})
		mon.Report(activity.Event{Kind: activity.Blocked})
		quota := &fs.PathError{Op: "write", Path: "/f", Err: &vfs.QuotaError{Left: 0}}
		c.Op("scp", activity.Mkdir, "/d", "", "", nil)
		c.Op("sftp", activity.Remove, "/x", "", "", &fs.PathError{Op: "remove", Path: "/x", Err: fs.ErrPermission})
		c.Refused("sftp", activity.Open, "/l", &fs.PathError{Op: "open", Path: "/l", Err: vfs.ErrEscape})
		tr := c.Start("sftp", activity.Upload, "/f", -1)
		tr.Add(5)
		tr.End(quota)
		tr = c.Start("rsync", activity.Download, "/g", 7)
		tr.Add(7)
		tr.End(activity.ErrAborted)
		c.Timed("sftp", "write", time.Now())

		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		fams, err := promtest.Parse(rec.Body)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"silo_logins_total", []string{"method", "password", "result", "ok"}, 1},
			{"silo_logins_total", []string{"method", "password", "result", "failed"}, 1},
			{"silo_penalty_blocks_total", nil, 1},
			{"silo_changes_total", []string{"protocol", "scp", "op", "mkdir", "result", "ok"}, 1},
			{"silo_changes_total", []string{"protocol", "sftp", "op", "remove", "result", "refused"}, 1},
			{"silo_transfers_total", []string{"protocol", "sftp", "direction", "upload", "result", "refused"}, 1},
			{"silo_transfers_total", []string{"protocol", "rsync", "direction", "download", "result", "aborted"}, 1},
			{"silo_quota_refusals_total", []string{"limit", "bytes"}, 1},
			{"silo_access_refusals_total", []string{"reason", "permission"}, 1},
			{"silo_access_refusals_total", []string{"reason", "jail"}, 1},
			{"silo_received_bytes_total", nil, 5},
			{"silo_sent_bytes_total", nil, 7},
			{"silo_connections_open", nil, 1},
			{"silo_sftp_operation_duration_seconds", []string{"op", "write"}, 1},
		} {
			if got := fams.Value(tc.name, tc.labels...); got != tc.want {
				t.Errorf("per_user %v: %s%v = %v, want %v", perUser, tc.name, tc.labels, got, tc.want)
			}
		}
		want := -1.0
		if perUser {
			want = 100
		}
		if got := fams.Value("silo_user_quota_bytes", "user", "alice"); got != want {
			t.Errorf("per_user %v: silo_user_quota_bytes = %v, want %v", perUser, got, want)
		}
	}
}
