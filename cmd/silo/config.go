package main

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	"github.com/BurntSushi/toml"
)

// Config is config.toml. Every key is documented in the shipped file.
type Config struct {
	Listen   string `toml:"listen"`
	Homes    string `toml:"homes"`
	HostKeys string `toml:"host_keys"`
	Users    string `toml:"users"`
	Fsync    bool   `toml:"fsync"`
}

func defaultConfig() Config {
	return Config{
		Listen:   "127.0.0.1:2022",
		Homes:    "data/homes",
		HostKeys: "data/hostkeys",
		Users:    "users.toml",
	}
}

// loadConfig reads path over the defaults, refuses unknown keys, validates
// and resolves relative paths against the config file's directory.
func loadConfig(path string) (Config, error) {
	c := defaultConfig()
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
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
	return nil
}
