// Command silo is an SSH file server: SFTP, scp and checksums, each account
// jailed in its home under a quota.
//
//	silo serve [--config FILE]
//	silo check-config [--config FILE]
//	silo user add|set|key|import|passwd|del|list|show|rescan ...
//	silo status [--json | --watch]
//	silo kick USER|SESSION
//	silo version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// version and commit are set at build time (make build: -ldflags "-X
// main.version=... -X main.commit=..."); otherwise they come from the
// module's build information.
var version, commit = "", ""

const usage = `usage:
  silo serve [--config FILE]
  silo check-config [--config FILE]
  silo user add NAME [--password-stdin] [--key KEY]... [POLICY...]
  silo user set NAME POLICY...
  silo user key add|rm NAME KEY...
  silo user key list NAME
  silo user import --authorized-keys FILE NAME
  silo user import --shadow FILE [NAME...]
  silo user import --users USERS_FILE
  silo user passwd NAME [--password-stdin]
  silo user del NAME
  silo user list
  silo user show NAME
  silo user rescan NAME
  silo status [--json | --watch]
  silo kick USER|SESSION
  silo cluster
  silo version
POLICY is any of: --quota SIZE, --max-files N, --home DIR, --disable or
--enable, --expires DATE|never, --perm PATH=PERMS (PERMS a comma list of
read, write, delete, list, or all or none; repeatable), --allow-from CIDR
(repeatable), --max-connections N, --upload-rate SIZE, --download-rate SIZE.
Every command takes --config FILE (default ./config.toml). SILO_* environment
variables override config keys (SILO_LISTEN, SILO_LIMITS_MAX_SESSIONS, ...).
`

// errUsage marks a command-line mistake: exit status 2 and the usage text.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the one place that turns an error into an exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := dispatch(args, stdin, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return 0
	case errors.Is(err, errUsage):
		if msg := strings.TrimPrefix(err.Error(), errUsage.Error()); msg != "" {
			fmt.Fprintf(stderr, "silo%s\n", msg)
		}
		fmt.Fprint(stderr, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "silo: %v\n", err)
		return 1
	}
}

func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "user":
		if len(args) < 2 {
			return errUsage
		}
		return userCmd(args[1], args[2:], stdin, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "silo %s\ncommit %s\n%s\n", versionString(), commitString(), runtime.Version())
		return nil
	case "check-config":
		return checkConfig(args[1:], stdout)
	case "status":
		return statusCmd(args[1:], stdin, stdout)
	case "kick":
		return kickCmd(args[1:], stdout)
	case "cluster":
		return clusterCmd(args[1:], stdout)
	case "help", "-h", "--help":
		return flag.ErrHelp
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

func commitString() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// parseArgs parses flags wherever they appear among the positional
// arguments (flag.Parse alone stops at the first positional one), so that
// "silo user add bob --config F" works. After "--" everything is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
