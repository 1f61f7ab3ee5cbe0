package metrics_test

import (
	"io/fs"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"silo/activity"
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
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(rec.Body)
		if err != nil {
			t.Fatal(err)
		}
		value := func(name string, labels map[string]string) float64 {
			f := fams[name]
			if f == nil {
				return -1
			}
		next:
			for _, mt := range f.Metric {
				for _, l := range mt.Label {
					if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
						continue next
					}
				}
				switch {
				case mt.Counter != nil:
					return mt.Counter.GetValue()
				case mt.Gauge != nil:
					return mt.Gauge.GetValue()
				case mt.Histogram != nil:
					return float64(mt.Histogram.GetSampleCount())
				}
			}
			return -1
		}
		for _, tc := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{"silo_logins_total", map[string]string{"method": "password", "result": "ok"}, 1},
			{"silo_logins_total", map[string]string{"method": "password", "result": "failed"}, 1},
			{"silo_penalty_blocks_total", nil, 1},
			{"silo_changes_total", map[string]string{"protocol": "scp", "op": "mkdir", "result": "ok"}, 1},
			{"silo_changes_total", map[string]string{"protocol": "sftp", "op": "remove", "result": "refused"}, 1},
			{"silo_transfers_total", map[string]string{"protocol": "sftp", "direction": "upload", "result": "refused"}, 1},
			{"silo_transfers_total", map[string]string{"protocol": "rsync", "direction": "download", "result": "aborted"}, 1},
			{"silo_quota_refusals_total", map[string]string{"limit": "bytes"}, 1},
			{"silo_access_refusals_total", map[string]string{"reason": "permission"}, 1},
			{"silo_access_refusals_total", map[string]string{"reason": "jail"}, 1},
			{"silo_received_bytes_total", nil, 5},
			{"silo_sent_bytes_total", nil, 7},
			{"silo_connections_open", nil, 1},
			{"silo_sftp_operation_duration_seconds", map[string]string{"op": "write"}, 1},
		} {
			if got := value(tc.name, tc.labels); got != tc.want {
				t.Errorf("per_user %v: %s%v = %v, want %v", perUser, tc.name, tc.labels, got, tc.want)
			}
		}
		want := -1.0
		if perUser {
			want = 100
		}
		if got := value("silo_user_quota_bytes", map[string]string{"user": "alice"}); got != want {
			t.Errorf("per_user %v: silo_user_quota_bytes = %v, want %v", perUser, got, want)
		}
	}
}
