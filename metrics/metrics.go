// Package metrics serves silo's Prometheus metrics. It reads the activity
// monitor: counters follow its events, gauges its running totals at each
// scrape, and the per-account usage comes from a function the server
// provides. Names start with silo_ and follow Prometheus' conventions
// (base units, _total for counters).
package metrics

import (
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"silo/activity"
)

// Usage is one account's usage and limits (0: unlimited).
type Usage struct {
	User               string
	Bytes, Files       int64
	MaxBytes, MaxFiles int64
}

// Options are what Metrics reads besides the monitor.
type Options struct {
	// Usage lists the accounts to report usage for; nil, or PerUser
	// false, reports none.
	Usage   func() []Usage
	PerUser bool
}

// Metrics is the registry of silo's metrics, fed by a monitor.
type Metrics struct {
	reg *prometheus.Registry

	logins     *prometheus.CounterVec
	transfers  *prometheus.CounterVec
	changes    *prometheus.CounterVec
	quota      *prometheus.CounterVec
	access     *prometheus.CounterVec
	blocks     prometheus.Counter
	operations *prometheus.HistogramVec
}

// New builds the metrics of mon and subscribes them to it; call it before
// the server starts.
func New(mon *activity.Monitor, opt Options) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	counts := func(f func(activity.Counts) float64) func() float64 {
		return func() float64 { return f(mon.Counts()) }
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "silo_connections_open",
			Help: "SSH connections open, logged in or not."}, counts(func(c activity.Counts) float64 { return float64(c.Connections) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "silo_sessions_open",
			Help: "SSH session channels open (SFTP sessions and commands)."}, counts(func(c activity.Counts) float64 { return float64(c.Sessions) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "silo_received_bytes_total",
			Help: "File data received from clients, running transfers included."}, counts(func(c activity.Counts) float64 { return float64(c.BytesIn) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "silo_sent_bytes_total",
			Help: "File data sent to clients, running transfers included."}, counts(func(c activity.Counts) float64 { return float64(c.BytesOut) })),
	)
	m.logins = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "silo_logins_total",
		Help: "Login attempts by method and result (ok, failed)."}, []string{"method", "result"})
	m.transfers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "silo_transfers_total",
		Help: "Finished file transfers by protocol, direction and result (ok, failed, aborted, refused)."},
		[]string{"protocol", "direction", "result"})
	m.changes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "silo_changes_total",
		Help: "Changes to the tree (remove, rename, mkdir, rmdir, symlink, setstat) by protocol, operation and result."},
		[]string{"protocol", "op", "result"})
	m.quota = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "silo_quota_refusals_total",
		Help: "Operations refused by a quota, by limit (bytes, files)."}, []string{"limit"})
	m.access = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "silo_access_refusals_total",
		Help: "Operations refused for permission or for leading outside the home (jail)."}, []string{"reason"})
	m.blocks = prometheus.NewCounter(prometheus.CounterOpts{Name: "silo_penalty_blocks_total",
		Help: "Source addresses blocked for their penalties."})
	m.operations = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "silo_sftp_operation_duration_seconds",
		Help:    "SFTP requests by type, and how long silo took to serve them.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"op"})
	m.reg.MustRegister(m.logins, m.transfers, m.changes, m.quota, m.access, m.blocks, m.operations)
	if opt.PerUser && opt.Usage != nil {
		m.reg.MustRegister(&usageCollector{usage: opt.Usage})
	}
	mon.Subscribe(m)
	return m
}

// Register adds a collector of another part (the hooks' counters).
func (m *Metrics) Register(c prometheus.Collector) error { return m.reg.Register(c) }

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Observe counts an event.
func (m *Metrics) Observe(e activity.Event) {
	result := "ok"
	reason := e.Reason()
	switch {
	case errors.Is(e.Err, activity.ErrAborted):
		result = "aborted"
	case reason != "":
		result = "refused"
	case e.Err != nil:
		result = "failed"
	}
	switch reason {
	case "quota":
		m.quota.WithLabelValues("bytes").Inc()
	case "file_limit":
		m.quota.WithLabelValues("files").Inc()
	case "permission", "jail":
		m.access.WithLabelValues(reason).Inc()
	}
	switch e.Kind {
	case activity.Login:
		m.logins.WithLabelValues(e.Method, "ok").Inc()
	case activity.LoginFailed:
		m.logins.WithLabelValues(e.Method, "failed").Inc()
	case activity.Blocked:
		m.blocks.Inc()
	case activity.Upload, activity.Download:
		m.transfers.WithLabelValues(e.Protocol, string(e.Kind), result).Inc()
	case activity.Remove, activity.Rename, activity.Mkdir, activity.Rmdir, activity.Symlink, activity.Setstat:
		m.changes.WithLabelValues(e.Protocol, string(e.Kind), result).Inc()
	}
}

// Operation records an SFTP request's latency.
func (m *Metrics) Operation(protocol, op string, d time.Duration) {
	if protocol == "sftp" {
		m.operations.WithLabelValues(op).Observe(d.Seconds())
	}
}

// usageCollector reports per-account usage at each scrape.
type usageCollector struct{ usage func() []Usage }

var (
	usedBytes = prometheus.NewDesc("silo_user_used_bytes", "Bytes an account's home holds, as its quota counts them.", []string{"user"}, nil)
	usedFiles = prometheus.NewDesc("silo_user_used_files", "Entries (files, directories, links) an account's home holds.", []string{"user"}, nil)
	maxBytes  = prometheus.NewDesc("silo_user_quota_bytes", "An account's quota in bytes; 0 is unlimited.", []string{"user"}, nil)
	maxFiles  = prometheus.NewDesc("silo_user_quota_files", "An account's limit of entries; 0 is unlimited.", []string{"user"}, nil)
)

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- usedBytes
	ch <- usedFiles
	ch <- maxBytes
	ch <- maxFiles
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.usage() {
		ch <- prometheus.MustNewConstMetric(usedBytes, prometheus.GaugeValue, float64(u.Bytes), u.User)
		ch <- prometheus.MustNewConstMetric(usedFiles, prometheus.GaugeValue, float64(u.Files), u.User)
		ch <- prometheus.MustNewConstMetric(maxBytes, prometheus.GaugeValue, float64(u.MaxBytes), u.User)
		ch <- prometheus.MustNewConstMetric(maxFiles, prometheus.GaugeValue, float64(u.MaxFiles), u.User)
	}
}
