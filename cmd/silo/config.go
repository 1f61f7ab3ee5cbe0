package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/BurntSushi/toml"

	"silo/sshd"
)

// Config is config.toml. Every key is documented in the shipped file.
type Config struct {
	Listen        string    `toml:"listen"`
	Homes         string    `toml:"homes"`
	HostKeys      string    `toml:"host_keys"`
	Users         string    `toml:"users"`
	Fsync         bool      `toml:"fsync"`
	LogFormat     string    `toml:"log_format"`
	LogLevel      string    `toml:"log_level"`
	ShutdownGrace duration  `toml:"shutdown_grace"`
	Limits        limits    `toml:"limits"`
	Penalties     penalties `toml:"penalties"`
}

type limits struct {
	LoginGraceTime        duration `toml:"login_grace_time"`
	MaxStartups           startups `toml:"max_startups"`
	PerSourceMaxStartups  int      `toml:"per_source_max_startups"`
	MaxAuthTries          int      `toml:"max_auth_tries"`
	MaxSessions           int      `toml:"max_sessions"`
	MaxConnectionsPerUser int      `toml:"max_connections_per_user"`
	IdleTimeout           duration `toml:"idle_timeout"`
	KeepaliveInterval     duration `toml:"keepalive_interval"`
	KeepaliveCountMax     int      `toml:"keepalive_count_max"`
	MaxOpenHandles        int      `toml:"max_open_handles"`
	MaxOpenHandlesPerUser int      `toml:"max_open_handles_per_user"`
}

type penalties struct {
	AuthFail      duration `toml:"authfail"`
	InvalidUser   duration `toml:"invaliduser"`
	NoAuth        duration `toml:"noauth"`
	GraceExceeded duration `toml:"grace_exceeded"`
	Min           duration `toml:"min"`
	Max           duration `toml:"max"`
	Exempt        []prefix `toml:"exempt"`
}

// duration is a Go duration string in the config: "30s", "15m".
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration such as \"30s\" or \"15m\"", b)
	}
	*d = duration(v)
	return nil
}

// startups is "start:rate:full".
type startups sshd.Startups

func (s *startups) UnmarshalText(b []byte) error {
	var v sshd.Startups
	if n, err := fmt.Sscanf(string(b), "%d:%d:%d", &v.Start, &v.Rate, &v.Full); n != 3 || err != nil ||
		v.Start < 1 || v.Rate < 0 || v.Rate > 100 || v.Full < v.Start {
		return fmt.Errorf("%q is not start:rate:full with 1 <= start <= full and rate a percentage", b)
	}
	*s = startups(v)
	return nil
}

// prefix is a CIDR block, or one address.
type prefix netip.Prefix

func (p *prefix) UnmarshalText(b []byte) error {
	v, err := netip.ParsePrefix(string(b))
	if err != nil {
		a, aerr := netip.ParseAddr(string(b))
		if aerr != nil {
			return fmt.Errorf("%q is not a CIDR block such as 192.0.2.0/24", b)
		}
		v = netip.PrefixFrom(a, a.BitLen())
	}
	*p = prefix(v.Masked())
	return nil
}

func defaultConfig() Config {
	l, p := sshd.DefaultLimits(), sshd.DefaultPenalties()
	return Config{
		Listen:        "127.0.0.1:2022",
		Homes:         "data/homes",
		HostKeys:      "data/hostkeys",
		Users:         "users.toml",
		LogFormat:     "text",
		LogLevel:      "info",
		ShutdownGrace: duration(30 * time.Second),
		Limits: limits{
			LoginGraceTime:        duration(l.LoginGraceTime),
			MaxStartups:           startups(l.MaxStartups),
			PerSourceMaxStartups:  l.PerSourceMaxStartups,
			MaxAuthTries:          l.MaxAuthTries,
			MaxSessions:           l.MaxSessions,
			MaxConnectionsPerUser: l.MaxConnectionsPerUser,
			IdleTimeout:           duration(l.IdleTimeout),
			KeepaliveInterval:     duration(l.KeepaliveInterval),
			KeepaliveCountMax:     l.KeepaliveCountMax,
			MaxOpenHandles:        l.MaxOpenHandles,
			MaxOpenHandlesPerUser: l.MaxOpenHandlesPerUser,
		},
		Penalties: penalties{
			AuthFail:      duration(p.AuthFail),
			InvalidUser:   duration(p.InvalidUser),
			NoAuth:        duration(p.NoAuth),
			GraceExceeded: duration(p.GraceExceeded),
			Min:           duration(p.Min),
			Max:           duration(p.Max),
		},
	}
}

// sshdLimits converts the [limits] and [penalties] tables.
func (c *Config) sshdLimits() (sshd.Limits, sshd.Penalties) {
	l := c.Limits
	p := c.Penalties
	pen := sshd.Penalties{
		AuthFail: time.Duration(p.AuthFail), InvalidUser: time.Duration(p.InvalidUser),
		NoAuth: time.Duration(p.NoAuth), GraceExceeded: time.Duration(p.GraceExceeded),
		Min: time.Duration(p.Min), Max: time.Duration(p.Max),
	}
	for _, e := range p.Exempt {
		pen.Exempt = append(pen.Exempt, netip.Prefix(e))
	}
	return sshd.Limits{
		LoginGraceTime:        time.Duration(l.LoginGraceTime),
		MaxStartups:           sshd.Startups(l.MaxStartups),
		PerSourceMaxStartups:  l.PerSourceMaxStartups,
		MaxAuthTries:          l.MaxAuthTries,
		MaxSessions:           l.MaxSessions,
		MaxConnectionsPerUser: l.MaxConnectionsPerUser,
		IdleTimeout:           time.Duration(l.IdleTimeout),
		KeepaliveInterval:     time.Duration(l.KeepaliveInterval),
		KeepaliveCountMax:     l.KeepaliveCountMax,
		MaxOpenHandles:        l.MaxOpenHandles,
		MaxOpenHandlesPerUser: l.MaxOpenHandlesPerUser,
	}, pen
}

// loadConfig reads path over the defaults, refuses unknown keys, validates
// and resolves relative paths against the config file's directory.
func loadConfig(path string) (Config, error) {
	c := defaultConfig()
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return c, fmt.Errorf("%s: %s: %s\n%s", path, pe.LastKey, pe.Message, pe.ErrorWithPosition())
			}
			return c, fmt.Errorf("%s: %s", path, pe.ErrorWithPosition())
		}
		return c, fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return c, fmt.Errorf("%s: unknown key %q", path, und[0].String())
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return c, err
	}
	dir := filepath.Dir(abs)
	for _, p := range []*string{&c.Homes, &c.HostKeys, &c.Users} {
		if !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return c, nil
}

// Validate checks every value and names the key of the first bad one.
func (c *Config) Validate() error {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("listen: %q is not HOST:PORT: %v", c.Listen, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("listen: bad port %q", port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("listen: %q is not an IP address", host)
	}
	for _, kv := range [][2]string{{"homes", c.Homes}, {"host_keys", c.HostKeys}, {"users", c.Users}} {
		if kv[1] == "" {
			return fmt.Errorf("%s: must not be empty", kv[0])
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("log_format: %q is neither \"text\" nor \"json\"", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log_level: %v", err)
	}
	l := c.Limits
	for _, kv := range []struct {
		key string
		ok  bool
	}{
		{"limits.login_grace_time", l.LoginGraceTime > 0},
		{"limits.per_source_max_startups", l.PerSourceMaxStartups >= 0},
		{"limits.max_auth_tries", l.MaxAuthTries >= 1},
		{"limits.max_sessions", l.MaxSessions >= 1},
		{"limits.max_connections_per_user", l.MaxConnectionsPerUser >= 0},
		{"limits.keepalive_count_max", l.KeepaliveCountMax >= 1},
		{"limits.max_open_handles", l.MaxOpenHandles >= 1},
		{"limits.max_open_handles_per_user", l.MaxOpenHandlesPerUser >= 1},
		{"penalties.max", c.Penalties.Max >= c.Penalties.Min},
	} {
		if !kv.ok {
			return fmt.Errorf("%s: value out of range", kv.key)
		}
	}
	return nil
}

// parseLevel reads log_level.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}
