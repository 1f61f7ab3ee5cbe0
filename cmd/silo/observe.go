package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"silo/activity"
	"silo/admin"
	"silo/hooks"
	"silo/metrics"
	"silo/sshd"
)

// observers are the parts that read the activity monitor: the admin
// socket, the metrics endpoint and the hooks. The audit log is sshd's
// (sshd.Config.Monitor).
type observers struct {
	mon   *activity.Monitor
	log   *slog.Logger
	srv   *sshd.Server // set once built; read by the per-user metrics at scrape
	hooks *hooks.Dispatcher
	met   *metrics.Metrics

	wg      sync.WaitGroup
	stop    chan struct{} // closed by stopServing
	mu      sync.Mutex
	closers []func(context.Context) error
}

// hooksDrain bounds how long events still queued for hooks are delivered
// after the server has stopped.
const hooksDrain = 10 * time.Second

// metricsRetry is how often a process started by an upgrade tries to bind
// metrics_listen, which the previous process holds until it drains.
const metricsRetry = 500 * time.Millisecond

func newObservers(cfg Config, log *slog.Logger) (*observers, error) {
	o := &observers{mon: activity.New(nil), log: log, stop: make(chan struct{})}
	if len(cfg.Hooks) > 0 {
		d, err := hooks.New(cfg.Hooks, hooks.Options{Log: log})
		if err != nil {
			return nil, err
		}
		o.hooks = d
		o.mon.Subscribe(d)
	}
	if cfg.MetricsListen != "" {
		o.met = metrics.New(o.mon, metrics.Options{PerUser: cfg.MetricsUsers, Usage: o.usage})
		if o.hooks != nil {
			stat := func(f func(hooks.Stats) int64) func() float64 {
				return func() float64 { return float64(f(o.hooks.Stats())) }
			}
			for _, c := range []struct {
				name, help string
				f          func(hooks.Stats) int64
			}{
				{"silo_hook_deliveries_total", "Hook events delivered.", func(s hooks.Stats) int64 { return s.Delivered }},
				{"silo_hook_failures_total", "Hook events whose delivery failed (after its retries).", func(s hooks.Stats) int64 { return s.Failed }},
				{"silo_hook_dropped_total", "Hook events dropped because the hook's queue was full.", func(s hooks.Stats) int64 { return s.Dropped }},
			} {
				o.met.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help}, stat(c.f)))
			}
		}
	}
	return o, nil
}

// usage is the per-user metrics' source: the open homes.
func (o *observers) usage() []metrics.Usage {
	o.mu.Lock()
	srv := o.srv
	o.mu.Unlock()
	if srv == nil {
		return nil
	}
	var out []metrics.Usage
	for _, h := range srv.Usage() {
		out = append(out, metrics.Usage{User: h.User, Bytes: h.Usage.Bytes, Files: h.Usage.Files,
			MaxBytes: h.Limits.Bytes, MaxFiles: h.Limits.Files})
	}
	return out
}

// start serves the admin socket and the metrics, for srv.
func (o *observers) start(cfg Config, srv *sshd.Server) error {
	o.mu.Lock()
	o.srv = srv
	o.mu.Unlock()
	o.startAdmin(cfg.AdminSocket)
	return o.startMetrics(cfg.MetricsListen)
}

// startAdmin serves the admin socket at path, if any. A socket that cannot
// be made is logged, not fatal: serving files matters more than the status
// view, and a config kept from before the key existed names a default that
// may be read-only (/etc/silo/data under systemd).
func (o *observers) startAdmin(path string) {
	if path == "" {
		return
	}
	l, err := admin.Listen(path)
	if err != nil {
		o.log.Error("admin socket unavailable; silo status and kick will not work (set admin_socket)", "err", err)
		return
	}
	a := admin.New(o.mon, o.log)
	o.wg.Go(func() {
		if err := a.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("admin socket", "err", err)
		}
	})
	o.onClose(a.Shutdown)
	o.log.Info("admin socket", "path", path)
}

// startMetrics serves the metrics on addr, if they are on.
func (o *observers) startMetrics(addr string) error {
	if o.met != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", o.met.Handler())
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		ln, err := net.Listen("tcp", addr)
		switch {
		case err == nil:
			o.serveMetrics(hs, ln)
		case errors.Is(err, syscall.EADDRINUSE) && os.Getenv(readyFDEnv) != "":
			// Upgraded: the previous process lets go of the port when it
			// starts draining.
			o.wg.Go(func() {
				for errors.Is(err, syscall.EADDRINUSE) {
					select {
					case <-o.stop:
						return
					case <-time.After(metricsRetry):
					}
					ln, err = net.Listen("tcp", addr)
				}
				if err != nil {
					o.log.Error("metrics_listen", "err", err)
					return
				}
				o.serveMetrics(hs, ln)
			})
		default:
			return fmt.Errorf("metrics_listen: %w", err)
		}
		o.onClose(hs.Shutdown)
	}
	return nil
}

func (o *observers) serveMetrics(hs *http.Server, ln net.Listener) {
	o.log.Info("metrics on http://"+ln.Addr().String()+"/metrics", "addr", ln.Addr().String())
	o.wg.Go(func() {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("metrics", "err", err)
		}
	})
}

func (o *observers) onClose(f func(context.Context) error) {
	o.mu.Lock()
	o.closers = append(o.closers, f)
	o.mu.Unlock()
}

// stopServing closes the admin socket and the metrics endpoint: at a
// handover, so that the new process takes them over, and at the end.
func (o *observers) stopServing() {
	o.mu.Lock()
	closers := o.closers
	o.closers = nil
	select {
	case <-o.stop:
	default:
		close(o.stop)
	}
	o.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, f := range closers {
		f(ctx)
	}
}

// close stops everything, after the server: the hooks deliver what is
// queued, for up to hooksDrain.
func (o *observers) close() {
	o.stopServing()
	if o.hooks != nil {
		ctx, cancel := context.WithTimeout(context.Background(), hooksDrain)
		defer cancel()
		if err := o.hooks.Close(ctx); err != nil {
			o.log.Warn("hooks: events still queued were abandoned", "err", err)
		}
	}
	o.wg.Wait()
}
