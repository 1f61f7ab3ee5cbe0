package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/BurntSushi/toml"

	"silo/hooks"
	"silo/sshd"
)

// Config is config.toml. Every key is documented in the shipped file. The
// [limits] and [penalties] tables decode straight into sshd's types, whose
// toml tags name their keys; durations are Go duration strings ("30s",
// "15m") and exempt entries CIDR blocks.
type Config struct {
	Listen        string         `toml:"listen"`
	Homes         string         `toml:"homes"`
	HostKeys      string         `toml:"host_keys"`
	Users         string         `toml:"users"`
	Fsync         bool           `toml:"fsync"`
	LogFormat     string         `toml:"log_format"`
	LogLevel      string         `toml:"log_level"`
	ShutdownGrace time.Duration  `toml:"shutdown_grace"`
	AdminSocket   string         `toml:"admin_socket"`
	MetricsListen string         `toml:"metrics_listen"`
	MetricsUsers  bool           `toml:"metrics_per_user"`
	ProxyProtocol []netip.Prefix `toml:"proxy_protocol"`
	Limits        sshd.Limits    `toml:"limits"`
	Penalties     sshd.Penalties `toml:"penalties"`
	Hooks         []hooks.Config `toml:"hooks"`
	Store         Store          `toml:"store"`
}

// Store is the [store] table: where the accounts and the usage are kept.
type Store struct {
	// Kind is "file" (the users file, one server) or "postgres" (several
	// servers share one database and one homes directory).
	Kind string `toml:"kind"`
	// DSN is a PostgreSQL connection string (a URL or key=value pairs);
	// SILO_STORE_DSN, or libpq's PG* variables, keep it out of the file.
	DSN string `toml:"dsn"`
	// NodeTimeout is how long a server may go without a heartbeat before
	// the others take back its leases and recount the homes it had open.
	NodeTimeout time.Duration `toml:"node_timeout"`
}

// postgres reports whether the accounts are in PostgreSQL.
func (s Store) postgres() bool { return s.Kind == "postgres" }

func defaultConfig() Config {
	return Config{
		Listen:        "127.0.0.1:2022",
		Homes:         "data/homes",
		HostKeys:      "data/hostkeys",
		Users:         "users.toml",
		LogFormat:     "text",
		LogLevel:      "info",
		ShutdownGrace: 30 * time.Second,
		AdminSocket:   "data/admin.sock",
		MetricsUsers:  true,
		Limits:        sshd.DefaultLimits(),
		Penalties:     sshd.DefaultPenalties(),
		Store:         Store{Kind: "file", NodeTimeout: 10 * time.Second},
	}
}

// loadConfig reads path over the defaults and the SILO_* environment over
// that, validates, and resolves relative paths against the config file's
// directory. Its error lists every problem found.
func loadConfig(path string) (Config, error) {
	c, errs := readConfig(path, os.Environ())
	return c, errors.Join(errs...)
}

// readConfig is loadConfig returning each problem as its own error: a
// syntax error stops the reading, unknown keys and bad values do not.
func readConfig(path string, environ []string) (Config, []error) {
	c := defaultConfig()
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return c, []error{fmt.Errorf("%s: %s: %s\n%s", path, pe.LastKey, pe.Message, pe.ErrorWithPosition())}
			}
			return c, []error{fmt.Errorf("%s: %s", path, pe.ErrorWithPosition())}
		}
		return c, []error{fmt.Errorf("%s: %w", path, err)}
	}
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("%s: unknown key %q", path, k.String()))
	}
	for _, err := range applyEnv(&c, environ) {
		errs = append(errs, fmt.Errorf("environment: %w", err))
	}
	if err := c.Validate(); err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("%s: %w", path, e))
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return c, append(errs, err)
	}
	dir := filepath.Dir(abs)
	for _, p := range []*string{&c.Homes, &c.HostKeys, &c.Users, &c.AdminSocket} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return c, errs
}

// unjoin splits an errors.Join result into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Validate checks every value; its error names the key of each bad one.
func (c *Config) Validate() error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if host, port, err := net.SplitHostPort(c.Listen); err != nil {
		fail("listen: %q is not HOST:PORT: %v", c.Listen, err)
	} else {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			fail("listen: bad port %q", port)
		}
		if host != "" && net.ParseIP(host) == nil && host != "localhost" {
			fail("listen: %q is not an IP address", host)
		}
	}
	for _, kv := range [][2]string{{"homes", c.Homes}, {"host_keys", c.HostKeys}, {"users", c.Users}} {
		if kv[1] == "" {
			fail("%s: must not be empty", kv[0])
		}
	}
	if c.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(c.MetricsListen); err != nil {
			fail("metrics_listen: %q is not HOST:PORT: %v", c.MetricsListen, err)
		} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			fail("metrics_listen: bad port %q", port)
		}
	}
	for _, p := range c.ProxyProtocol {
		switch {
		case p.Bits() == 0:
			fail("proxy_protocol: %s trusts every address: any client could choose the address it is seen from; list the balancers' addresses", p)
		case p != p.Masked():
			fail("proxy_protocol: %s has bits set past its /%d: write %s, or %s for that address alone", p, p.Bits(), p.Masked(), netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
		}
	}
	for i := range c.Hooks {
		if err := c.Hooks[i].Validate(); err != nil {
			for _, e := range unjoin(err) {
				fail("hooks[%d].%v", i, e)
			}
		}
	}
	switch c.Store.Kind {
	case "file":
		if c.Store.DSN != "" {
			fail("store.dsn: set, but store.kind is \"file\"; set kind = \"postgres\" to use it")
		}
	case "postgres":
	default:
		fail("store.kind: %q is neither \"file\" nor \"postgres\"", c.Store.Kind)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		fail("log_format: %q is neither \"text\" nor \"json\"", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		fail("log_level: %v", err)
	}
	l, p := c.Limits, c.Penalties
	for _, kv := range []struct {
		key string
		ok  bool
	}{
		{"limits.per_source_max_startups", l.PerSourceMaxStartups >= 0},
		{"limits.max_auth_tries", l.MaxAuthTries >= 1},
		{"limits.max_sessions", l.MaxSessions >= 1},
		{"limits.max_connections_per_user", l.MaxConnectionsPerUser >= 0},
		{"limits.keepalive_count_max", l.KeepaliveCountMax >= 1},
		{"limits.max_open_handles", l.MaxOpenHandles >= 1},
		{"limits.max_open_handles_per_user", l.MaxOpenHandlesPerUser >= 1},
		{"penalties.max", p.Max >= p.Min},
	} {
		if !kv.ok {
			fail("%s: value out of range", kv.key)
		}
	}
	// TOML integers decode into a time.Duration as nanoseconds: a bare
	// "idle_timeout = 900" would close every connection at once.
	for _, d := range []struct {
		key      string
		v        time.Duration
		positive bool
	}{
		{"shutdown_grace", c.ShutdownGrace, false},
		{"limits.login_grace_time", l.LoginGraceTime, true},
		{"limits.idle_timeout", l.IdleTimeout, false},
		{"limits.keepalive_interval", l.KeepaliveInterval, false},
		{"penalties.authfail", p.AuthFail, false},
		{"penalties.invaliduser", p.InvalidUser, false},
		{"penalties.noauth", p.NoAuth, false},
		{"penalties.grace_exceeded", p.GraceExceeded, false},
		{"penalties.min", p.Min, false},
		{"penalties.max", p.Max, false},
		{"store.node_timeout", c.Store.NodeTimeout, true},
	} {
		if d.v < 0 || d.v > 0 && d.v < time.Millisecond || d.positive && d.v == 0 {
			fail("%s: %v is not a duration such as \"30s\" or \"15m\" (0 turns it off where allowed)", d.key, d.v)
		}
	}
	return errors.Join(errs...)
}

// parseLevel reads log_level.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}
