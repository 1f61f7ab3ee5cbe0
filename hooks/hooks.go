// Package hooks tells other programs what happens on a silo server: each
// [[hooks]] table of config.toml names events (an upload completed, a
// rename, a login, a refusal for quota...) and either a URL, which gets an
// HTTP POST of the event as JSON, or a command, run with a fixed argv and
// the event as JSON on stdin and in environment variables.
//
// Delivery never slows a transfer: Observe only puts the event on the
// hook's queue, which is bounded; an event that finds it full is dropped,
// counted and logged. One goroutine per hook delivers its queue in order;
// HTTP deliveries are retried with backoff, and every failure is logged.
// Nothing a user sends chooses what runs: the argv is the configuration's,
// and the event (paths included) is only ever data, on stdin and in
// environment variables, never in argv or a shell.
//
// Lifecycle: New starts the goroutines; Close stops taking events, lets
// the queues drain until its context ends, then abandons the rest.
package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"silo/activity"
)

// The events a hook may name.
const (
	EventUpload       = "upload" // a file completed (and, for an overwrite, in place)
	EventDownload     = "download"
	EventRemove       = "remove"
	EventRename       = "rename"
	EventMkdir        = "mkdir"
	EventLogin        = "login"
	EventQuotaRefused = "quota_refused" // an operation refused by the quota or the file limit
)

var knownEvents = []string{EventUpload, EventDownload, EventRemove, EventRename, EventMkdir, EventLogin, EventQuotaRefused}

// Config is one [[hooks]] table.
type Config struct {
	Events  []string `toml:"events"`
	URL     string   `toml:"url"`
	Command []string `toml:"command"`
	// Users limits the hook to these accounts; empty means all.
	Users []string `toml:"users"`
	// Timeout bounds one delivery (an HTTP request, a run of the
	// command); 0 means DefaultTimeout.
	Timeout time.Duration `toml:"timeout"`
}

// DefaultTimeout bounds a delivery whose hook sets no timeout.
const DefaultTimeout = 30 * time.Second

// Validate checks a hook; its errors name the key.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Events) == 0 {
		errs = append(errs, errors.New("events: at least one of "+fmt.Sprint(knownEvents)+" is needed"))
	}
	for _, e := range c.Events {
		if !slices.Contains(knownEvents, e) {
			errs = append(errs, fmt.Errorf("events: %q is not one of %v", e, knownEvents))
		}
	}
	switch {
	case (c.URL == "") == (len(c.Command) == 0):
		errs = append(errs, errors.New("url, command: exactly one of the two is needed"))
	case c.URL != "":
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("url: %q is not an http:// or https:// URL", c.URL))
		}
	case !filepath.IsAbs(c.Command[0]):
		// No search of PATH, and nothing relative to wherever silo runs.
		errs = append(errs, fmt.Errorf("command: the program %q must be an absolute path", c.Command[0]))
	}
	if c.Timeout < 0 || c.Timeout > 0 && c.Timeout < time.Millisecond {
		errs = append(errs, fmt.Errorf("timeout: %v is not a duration such as \"30s\"", c.Timeout))
	}
	return errors.Join(errs...)
}

// Options tune delivery; zero values take the defaults.
type Options struct {
	Log *slog.Logger
	// Queue is how many events each hook may have waiting (1,000).
	Queue int
	// Attempts is how many times an HTTP delivery is tried (5).
	Attempts int
	// Backoff is the wait before attempt n+1 (n from 1): 1 s, 2 s,
	// 4 s... at most a minute.
	Backoff func(n int) time.Duration
	// Client sends the HTTP requests (a client of its own).
	Client *http.Client
}

// Payload is the JSON a hook receives.
type Payload struct {
	Event    string    `json:"event"`
	User     string    `json:"user"`
	Path     string    `json:"path,omitempty"`
	Target   string    `json:"target,omitempty"` // rename: the new path
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256,omitempty"`
	Time     time.Time `json:"time"`
	Remote   string    `json:"remote"`
	Protocol string    `json:"protocol,omitempty"`
	Session  string    `json:"session,omitempty"`
	Reason   string    `json:"reason,omitempty"` // quota_refused: quota or file_limit
	Error    string    `json:"error,omitempty"`  // quota_refused: the refusal's words
}

// Stats are a dispatcher's counters since it started.
type Stats struct {
	Delivered, Failed, Dropped int64
}

// Dispatcher delivers events to the configured hooks.
type Dispatcher struct {
	hooks []*hook
	log   *slog.Logger
	opt   Options

	ctx    context.Context // ends when Close gives up on the queues
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.RWMutex // guards closed against sends on closed queues
	closed bool

	delivered, failed, dropped atomic.Int64
}

type hook struct {
	n      int // its position in config.toml, from 1, for the log
	cfg    Config
	events map[string]bool
	users  map[string]bool
	queue  chan Payload
	full   atomic.Bool  // the last event offered was dropped
	lost   atomic.Int64 // dropped since the queue was last full
}

// New validates cfgs and starts a goroutine per hook.
func New(cfgs []Config, opt Options) (*Dispatcher, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Queue <= 0 {
		opt.Queue = 1000
	}
	if opt.Attempts <= 0 {
		opt.Attempts = 5
	}
	if opt.Backoff == nil {
		opt.Backoff = func(n int) time.Duration { return min(time.Minute, time.Second<<min(n-1, 6)) }
	}
	if opt.Client == nil {
		opt.Client = &http.Client{}
	}
	d := &Dispatcher{log: opt.Log, opt: opt}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	var errs []error
	for i, c := range cfgs {
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("hooks[%d]: %w", i, err))
			continue
		}
		h := &hook{n: i + 1, cfg: c, events: map[string]bool{}, queue: make(chan Payload, opt.Queue)}
		if h.cfg.Timeout == 0 {
			h.cfg.Timeout = DefaultTimeout
		}
		for _, e := range c.Events {
			h.events[e] = true
		}
		if len(c.Users) > 0 {
			h.users = map[string]bool{}
			for _, u := range c.Users {
				h.users[u] = true
			}
		}
		d.hooks = append(d.hooks, h)
	}
	if err := errors.Join(errs...); err != nil {
		d.cancel()
		return nil, err
	}
	for _, h := range d.hooks {
		d.wg.Go(func() { d.run(h) })
	}
	return d, nil
}

// Stats returns the counters.
func (d *Dispatcher) Stats() Stats {
	return Stats{Delivered: d.delivered.Load(), Failed: d.failed.Load(), Dropped: d.dropped.Load()}
}

// eventOf names an activity event for hooks, or "" if no hook can want it.
func eventOf(e activity.Event) string {
	switch r := e.Reason(); {
	case r == "quota" || r == "file_limit":
		return EventQuotaRefused
	case e.Err != nil:
		return ""
	}
	switch e.Kind {
	case activity.Upload:
		return EventUpload
	case activity.Download:
		return EventDownload
	case activity.Remove:
		return EventRemove
	case activity.Rename:
		return EventRename
	case activity.Mkdir:
		return EventMkdir
	case activity.Login:
		return EventLogin
	}
	return ""
}

// Observe queues e for the hooks that want it. It never blocks.
func (d *Dispatcher) Observe(e activity.Event) {
	name := eventOf(e)
	if name == "" {
		return
	}
	var p *Payload
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return
	}
	for _, h := range d.hooks {
		if !h.events[name] || h.users != nil && !h.users[e.User] {
			continue
		}
		if p == nil {
			p = &Payload{Event: name, User: e.User, Path: e.Path, Size: e.Size, SHA256: e.SHA256,
				Time: e.Time.UTC(), Remote: e.Remote, Protocol: e.Protocol, Session: e.Session}
			if e.Kind == activity.Rename {
				p.Target = e.Target
			}
			if name == EventQuotaRefused {
				p.Reason, p.Error = e.Reason(), e.Err.Error()
			}
		}
		select {
		case h.queue <- *p:
			if h.full.Swap(false) {
				d.log.Warn("hook queue has room again", "hook", h.n, "dropped", h.lost.Swap(0))
			}
		default:
			d.dropped.Add(1)
			h.lost.Add(1)
			if !h.full.Swap(true) {
				d.log.Warn("hook queue full; dropping events until it has room", "hook", h.n, "queue", cap(h.queue),
					"event", name, "user", e.User)
			}
		}
	}
}

// Close stops taking events and waits for the queues to drain, or for ctx
// to end, when what is left is abandoned (and logged).
func (d *Dispatcher) Close(ctx context.Context) error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		for _, h := range d.hooks {
			close(h.queue)
		}
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		d.cancel()
		return nil
	case <-ctx.Done():
		d.cancel()
		<-done
		return ctx.Err()
	}
}

func (d *Dispatcher) run(h *hook) {
	abandoned := 0
	defer func() {
		if abandoned > 0 {
			d.log.Warn("hook events abandoned at shutdown", "hook", h.n, "events", abandoned)
		}
	}()
	for p := range h.queue {
		if d.ctx.Err() != nil {
			d.failed.Add(1)
			abandoned++
			continue
		}
		body, err := json.Marshal(p)
		if err == nil {
			if h.cfg.URL != "" {
				err = d.post(h, p, body)
			} else {
				err = d.command(h, p, body)
			}
		}
		if err != nil {
			d.failed.Add(1)
			d.log.Error("hook failed", "hook", h.n, "event", p.Event, "user", p.User, "path", p.Path, "err", err)
			continue
		}
		d.delivered.Add(1)
	}
}

// post delivers to a URL: a 2xx answer is success; a network error, a 5xx
// or a 429 is tried again after the backoff; any other answer is final.
func (d *Dispatcher) post(h *hook, p Payload, body []byte) error {
	var err error
	for n := 1; ; n++ {
		var retry bool
		retry, err = d.postOnce(h, body)
		if err == nil || !retry || n >= d.opt.Attempts {
			break
		}
		wait := d.opt.Backoff(n)
		d.log.Warn("hook delivery failed; trying again", "hook", h.n, "event", p.Event, "attempt", n, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-d.ctx.Done():
			t.Stop()
			return fmt.Errorf("abandoned at shutdown after %d attempts: %w", n, err)
		}
	}
	return err
}

func (d *Dispatcher) postOnce(h *hook, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(d.ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "silo-hooks")
	resp, err := d.opt.Client.Do(req)
	if err != nil {
		return true, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return true, fmt.Errorf("%s answered %s", h.cfg.URL, resp.Status)
	}
	return false, fmt.Errorf("%s answered %s", h.cfg.URL, resp.Status)
}

// command runs the hook's program with its configured argv, the event as
// JSON on stdin and as SILO_* variables, and PATH as silo's. A run that
// exits non-zero fails, with the start of what it printed.
func (d *Dispatcher) command(h *hook, p Payload, body []byte) error {
	ctx, cancel := context.WithTimeout(d.ctx, h.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.cfg.Command[0], h.cfg.Command[1:]...)
	cmd.Stdin = bytes.NewReader(body)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"SILO_EVENT=" + p.Event,
		"SILO_USER=" + p.User,
		"SILO_PATH=" + p.Path,
		"SILO_TARGET=" + p.Target,
		"SILO_SIZE=" + strconv.FormatInt(p.Size, 10),
		"SILO_SHA256=" + p.SHA256,
		"SILO_TIME=" + p.Time.Format(time.RFC3339Nano),
		"SILO_REMOTE=" + p.Remote,
		"SILO_PROTOCOL=" + p.Protocol,
		"SILO_SESSION=" + p.Session,
		"SILO_REASON=" + p.Reason,
	}
	cmd.Dir = "/"
	out := &limitedBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		if out.Len() > 0 {
			return fmt.Errorf("%s: %w: %s", h.cfg.Command[0], err, bytes.TrimSpace(out.Bytes()))
		}
		return fmt.Errorf("%s: %w", h.cfg.Command[0], err)
	}
	return nil
}

// limitedBuffer keeps the first max bytes written to it and discards the
// rest, so a chatty hook costs no memory.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
