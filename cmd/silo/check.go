package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"silo/users"
)

// errInvalid is check-config's verdict once every problem has been printed.
var errInvalid = errors.New("configuration invalid")

// checkConfig reads the configuration as serve would (file and environment)
// and the users file it names, prints every problem, one per line, and
// fails if there was any: `sshd -t` for silo.
func checkConfig(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	configPath := fs.String("config", "config.toml", "configuration file")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: check-config takes no arguments", errUsage)
	}
	cfg, errs := readConfig(*configPath, os.Environ())
	// A config that could not be read leaves users relative and unresolved:
	// there is no telling which file it would name.
	if filepath.IsAbs(cfg.Users) && !cfg.Store.postgres() {
		errs = append(errs, checkUsers(cfg.Users)...)
	}
	for _, err := range errs {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stdout, line)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %d problem(s)", errInvalid, len(errs))
	}
	if cfg.Store.postgres() {
		// Checking the database would need it up: serve and silo cluster do.
		fmt.Fprintf(stdout, "%s: ok (accounts in PostgreSQL, not contacted)\n", *configPath)
		return nil
	}
	fmt.Fprintf(stdout, "%s: ok (users file %s)\n", *configPath, cfg.Users)
	return nil
}

// checkUsers returns every problem of the users file; a missing file is an
// empty one, as for serve.
func checkUsers(path string) []error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []error{err}
	}
	_, err = users.Parse(data)
	if err == nil {
		return nil
	}
	var errs []error
	for _, e := range unjoin(err) {
		for _, e := range unjoin(e) {
			errs = append(errs, fmt.Errorf("%s: %w", path, e))
		}
	}
	return errs
}
