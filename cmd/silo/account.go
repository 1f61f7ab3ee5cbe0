package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"silo/users"
	"silo/vfs"
)

// accountFlags set an account's limits and policy, on `user add` and
// `user set`. A flag not given leaves its field as it is.
type accountFlags struct {
	fs                                     *flag.FlagSet
	quota, home, expires, upload, download string
	maxFiles                               int64
	maxConns                               int
	disable, enable                        bool
	perms, allowFrom                       stringList
}

func addAccountFlags(fs *flag.FlagSet) *accountFlags {
	a := &accountFlags{fs: fs}
	fs.StringVar(&a.quota, "quota", "", "disk quota, e.g. 100MiB, 5GB (0: unlimited)")
	fs.Int64Var(&a.maxFiles, "max-files", 0, "most files the user may have (0: unlimited)")
	fs.StringVar(&a.home, "home", "", "home directory (default: homes/NAME)")
	fs.BoolVar(&a.disable, "disable", false, "refuse logins and close the account's connections")
	fs.BoolVar(&a.enable, "enable", false, "allow logins again")
	fs.StringVar(&a.expires, "expires", "", "when the account stops working: YYYY-MM-DD (UTC), an RFC 3339 time, or never")
	fs.Var(&a.perms, "perm", "PATH=PERMS: read, write, delete, list, all or none for PATH and below (repeatable; PATH= removes the rule)")
	fs.Var(&a.allowFrom, "allow-from", "CIDR block logins may come from (repeatable; replaces the list; empty clears it)")
	fs.IntVar(&a.maxConns, "max-connections", 0, "connections at once (0: the server's max_connections_per_user)")
	fs.StringVar(&a.upload, "upload-rate", "", "bytes per second written, all sessions together, e.g. 10MiB (0: unlimited)")
	fs.StringVar(&a.download, "download-rate", "", "bytes per second read, all sessions together (0: unlimited)")
	return a
}

// given returns the names of the account flags on the command line.
func (a *accountFlags) given() map[string]bool {
	set := map[string]bool{}
	a.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	delete(set, "config")
	return set
}

func (a *accountFlags) any() bool { return len(a.given()) > 0 }

// apply changes u as the flags given say. The users file's validation
// (users.Update) checks the result as a whole.
func (a *accountFlags) apply(u *users.User) error {
	set := a.given()
	if set["disable"] && set["enable"] {
		return fmt.Errorf("%w: --disable and --enable together", errUsage)
	}
	size := func(flagName, v string) (users.Size, error) {
		z, err := users.ParseSize(v)
		if err != nil {
			return 0, fmt.Errorf("--%s: %w", flagName, err)
		}
		return z, nil
	}
	var err error
	if set["quota"] {
		if u.Quota, err = size("quota", a.quota); err != nil {
			return err
		}
	}
	if set["upload-rate"] {
		if u.UploadRate, err = size("upload-rate", a.upload); err != nil {
			return err
		}
	}
	if set["download-rate"] {
		if u.DownloadRate, err = size("download-rate", a.download); err != nil {
			return err
		}
	}
	if set["max-files"] {
		u.MaxFiles = a.maxFiles
	}
	if set["max-connections"] {
		u.MaxConnections = a.maxConns
	}
	if set["home"] {
		u.Home = a.home
	}
	if set["disable"] {
		u.Disabled = true
	}
	if set["enable"] {
		u.Disabled = false
	}
	if set["expires"] {
		u.Expires = a.expires
		if a.expires == "never" {
			u.Expires = ""
		}
		if _, err := users.ParseExpiry(u.Expires); err != nil {
			return fmt.Errorf("--expires: %w", err)
		}
	}
	if set["allow-from"] {
		u.AllowFrom = nil
		for _, c := range a.allowFrom {
			if c != "" {
				u.AllowFrom = append(u.AllowFrom, c)
			}
		}
	}
	for _, rule := range a.perms {
		p, perms, ok := strings.Cut(rule, "=")
		if !ok || !strings.HasPrefix(p, "/") {
			return fmt.Errorf("--perm %q: want /PATH=PERMS, e.g. /=read,list or /incoming=write", rule)
		}
		p = vfs.Clean(p)
		if perms == "" {
			delete(u.Perms, p)
			continue
		}
		perm, err := vfs.ParsePerm(perms)
		if err != nil {
			return fmt.Errorf("--perm %q: %w", rule, err)
		}
		if u.Perms == nil {
			u.Perms = map[string]string{}
		}
		u.Perms[p] = perm.String()
	}
	if len(u.Perms) == 0 {
		u.Perms = nil
	}
	return nil
}

// readImport reads the file `user import` takes, with the caller's rights
// (before becomeOwner). "-" is standard input.
func readImport(authKeys, shadow string, names []string, stdin io.Reader) ([]byte, error) {
	var file string
	switch {
	case authKeys != "" && shadow != "":
		return nil, fmt.Errorf("%w: user import takes --authorized-keys or --shadow, not both", errUsage)
	case authKeys != "":
		if len(names) != 1 {
			return nil, fmt.Errorf("%w: user import --authorized-keys FILE NAME imports the keys of one account", errUsage)
		}
		file = authKeys
	case shadow != "":
		file = shadow
	default:
		return nil, fmt.Errorf("%w: user import needs --authorized-keys FILE NAME or --shadow FILE [NAME...]", errUsage)
	}
	if file == "-" {
		return io.ReadAll(io.LimitReader(stdin, 64<<20))
	}
	return os.ReadFile(file)
}

// importUsers brings accounts over, all in one edit of the users file or
// none. From an authorized_keys file: the keys go to the named account,
// which is created if it does not exist (with no password). From a shadow
// file: every account with a password hash silo verifies (or only the
// named ones) is added; one that exists already is an error.
func importUsers(cfg Config, store users.Backend, keysFile bool, data []byte, names []string, stdout io.Writer) error {
	if keysFile {
		keys, err := users.ParseAuthorizedKeys(data)
		if err != nil {
			return err
		}
		name, added, created := names[0], 0, false
		err = store.Update(func(f *users.File) error {
			i := f.Find(name)
			if i < 0 {
				f.Users = append(f.Users, users.User{Name: name})
				i, created = len(f.Users)-1, true
			}
			added = 0
			for _, k := range keys {
				if keyIndex(f.Users[i].Keys, k) < 0 {
					f.Users[i].Keys = append(f.Users[i].Keys, k)
					added++
				}
			}
			return f.CheckHomes(cfg.Homes)
		})
		if err != nil {
			return err
		}
		what := "to"
		if created {
			what = "to the new user"
		}
		fmt.Fprintf(stdout, "imported %d key(s) %s %s (%d already there)\n", added, what, name, len(keys)-added)
		return nil
	}
	entries, skipped, err := users.ParseShadow(data)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var picked []users.ShadowEntry
	for _, e := range entries {
		if len(want) == 0 || want[e.Name] {
			picked = append(picked, e)
			delete(want, e.Name)
		}
	}
	for _, n := range skipped {
		if want[n] {
			return fmt.Errorf("%s has no password hash to import", n)
		}
	}
	if len(want) > 0 {
		var missing []string
		for n := range want {
			missing = append(missing, n)
		}
		return fmt.Errorf("not in the file: %s", strings.Join(missing, ", "))
	}
	if len(picked) == 0 {
		return errors.New("no account with a password hash in the file")
	}
	if err := store.Update(func(f *users.File) error {
		for _, e := range picked {
			if f.Find(e.Name) >= 0 {
				return fmt.Errorf("user %s already exists; nothing imported", e.Name)
			}
			f.Users = append(f.Users, users.User{Name: e.Name, Password: e.Hash, Disabled: e.Disabled, Expires: e.Expires})
		}
		return f.CheckHomes(cfg.Homes)
	}); err != nil {
		return err
	}
	for _, e := range picked {
		note := ""
		if e.Disabled {
			note = " (disabled: its password was locked)"
		}
		fmt.Fprintf(stdout, "imported %s%s\n", e.Name, note)
	}
	if len(names) == 0 && len(skipped) > 0 {
		fmt.Fprintf(stdout, "skipped %d account(s) without a password: %s\n", len(skipped), strings.Join(skipped, ", "))
	}
	return nil
}
