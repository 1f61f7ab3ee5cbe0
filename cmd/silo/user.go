package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"silo/internal/human"
	"silo/users"
	"silo/vfs"
)

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func userCmd(sub string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("user "+sub, flag.ContinueOnError)
	configPath := fs.String("config", "config.toml", "configuration file")
	var (
		pwStdin  *bool
		keys     stringList
		quota    *string
		maxFiles *int64
		home     *string
	)
	nargs := 1
	switch sub {
	case "add":
		pwStdin = fs.Bool("password-stdin", false, "read the password from the first line of stdin")
		fs.Var(&keys, "key", "public key file or authorized_keys line (repeatable)")
		quota = fs.String("quota", "", "disk quota, e.g. 100MiB, 5GB (0: unlimited)")
		maxFiles = fs.Int64("max-files", 0, "most files the user may have (0: unlimited)")
		home = fs.String("home", "", "home directory (default: homes/NAME)")
	case "passwd":
		pwStdin = fs.Bool("password-stdin", false, "read the password from the first line of stdin")
	case "del", "show", "rescan":
	case "list":
		nargs = 0
	default:
		return fmt.Errorf("%w: unknown user command %q", errUsage, sub)
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != nargs {
		return fmt.Errorf("%w: user %s takes %d argument(s), got %d", errUsage, sub, nargs, len(pos))
	}
	// Key files are read with the caller's rights, before becomeOwner.
	var keyLines []string
	for _, k := range keys {
		lines, err := readKeys(k)
		if err != nil {
			return fmt.Errorf("--key %s: %w", k, err)
		}
		keyLines = append(keyLines, lines...)
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	if err := becomeOwner(filepath.Dir(cfg.Users)); err != nil {
		return err
	}
	var name string
	if nargs == 1 {
		name = pos[0]
		if err := users.ValidName(name); err != nil {
			return err
		}
	}

	switch sub {
	case "add":
		u := users.User{Name: name, Home: *home, MaxFiles: *maxFiles}
		if *quota != "" {
			if u.Quota, err = users.ParseSize(*quota); err != nil {
				return fmt.Errorf("--quota: %w", err)
			}
		}
		u.Keys = keyLines
		switch {
		case *pwStdin:
			if u.Password, err = passwordFromStdin(stdin); err != nil {
				return err
			}
		case len(u.Keys) == 0 && isTerminal(stdin):
			if u.Password, err = passwordFromTerminal(stdin, stderr); err != nil {
				return err
			}
		}
		if u.Password == "" && len(u.Keys) == 0 {
			return errors.New("a user needs a password (typed on a terminal, or --password-stdin) or --key to log in")
		}
		if err := users.Update(cfg.Users, func(f *users.File) error {
			if f.Find(name) >= 0 {
				return fmt.Errorf("user %s already exists", name)
			}
			f.Users = append(f.Users, u)
			return f.CheckHomes(cfg.Homes)
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added user %s\n", name)
	case "passwd":
		var h string
		switch {
		case *pwStdin:
			h, err = passwordFromStdin(stdin)
		case isTerminal(stdin):
			h, err = passwordFromTerminal(stdin, stderr)
		default:
			return fmt.Errorf("%w: user passwd needs a terminal or --password-stdin", errUsage)
		}
		if err != nil {
			return err
		}
		if err := users.Update(cfg.Users, func(f *users.File) error {
			i := f.Find(name)
			if i < 0 {
				return fmt.Errorf("no user %s", name)
			}
			f.Users[i].Password = h
			return nil
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "password of %s changed\n", name)
	case "del":
		if err := users.Update(cfg.Users, func(f *users.File) error {
			i := f.Find(name)
			if i < 0 {
				return fmt.Errorf("no user %s", name)
			}
			f.Users = append(f.Users[:i], f.Users[i+1:]...)
			return nil
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted user %s (the home directory is kept)\n", name)
	case "list":
		f, err := users.Load(cfg.Users)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tLOGIN\tUSED\tQUOTA\tFILES\tMAX FILES\tHOME")
		for _, u := range f.Users {
			used := homeUsage(u.HomeDir(cfg.Homes))
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, loginMethods(u), used.bytes, quotaString(u.Quota),
				used.files, countString(u.MaxFiles), u.HomeDir(cfg.Homes))
		}
		return tw.Flush()
	case "rescan":
		if err := users.Update(cfg.Users, func(f *users.File) error {
			i := f.Find(name)
			if i < 0 {
				return fmt.Errorf("no user %s", name)
			}
			f.Users[i].Rescan++
			return nil
		}); err != nil {
			return err
		}
		f, err := users.Load(cfg.Users)
		if err != nil {
			return err
		}
		u := f.Users[f.Find(name)]
		used := homeUsage(u.HomeDir(cfg.Homes))
		fmt.Fprintf(stdout, "%s uses %s in %s files; a running server recounts within a second\n", name, used.bytes, used.files)
	case "show":
		f, err := users.Load(cfg.Users)
		if err != nil {
			return err
		}
		i := f.Find(name)
		if i < 0 {
			return fmt.Errorf("no user %s", name)
		}
		u := f.Users[i]
		tw := tabwriter.NewWriter(stdout, 0, 0, 1, ' ', 0)
		fmt.Fprintf(tw, "name:\t%s\n", u.Name)
		fmt.Fprintf(tw, "password:\t%s\n", hashKind(u.Password))
		fmt.Fprintf(tw, "keys:\t%d\n", len(u.Keys))
		for _, line := range u.Keys {
			k, comment, _, _, _ := ssh.ParseAuthorizedKey([]byte(line))
			fmt.Fprintf(tw, "\t%s %s %s\n", k.Type(), ssh.FingerprintSHA256(k), comment)
		}
		used := homeUsage(u.HomeDir(cfg.Homes))
		fmt.Fprintf(tw, "used:\t%s of %s\n", used.bytes, quotaString(u.Quota))
		fmt.Fprintf(tw, "files:\t%s of %s\n", used.files, countString(u.MaxFiles))
		fmt.Fprintf(tw, "home:\t%s\n", u.HomeDir(cfg.Homes))
		return tw.Flush()
	}
	return nil
}

// passwordFromStdin reads the first line of stdin and returns its hash.
func passwordFromStdin(stdin io.Reader) (string, error) {
	line, err := bufio.NewReaderSize(stdin, users.MaxPasswordLen+2).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("reading password from stdin: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("empty password")
	}
	return users.HashPassword(pw)
}

// becomeOwner makes root the owner of the users file's directory (the silo
// user of the Debian package) before the file is written, so that `silo user
// add` run as root leaves a users file the server can still read and
// rewrite. Anyone else stays who they are.
func becomeOwner(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil // created as root, as before
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid == 0 {
		return nil
	}
	// Go applies these to every thread of the process.
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setgid(int(st.Gid)); err != nil {
		return err
	}
	if err := syscall.Setuid(int(st.Uid)); err != nil {
		return err
	}
	return nil
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// passwordFromTerminal asks for the password twice without echo, as passwd
// does, and returns its hash.
func passwordFromTerminal(stdin io.Reader, prompt io.Writer) (string, error) {
	fd := int(stdin.(*os.File).Fd())
	read := func(p string) (string, error) {
		fmt.Fprint(prompt, p)
		pw, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("reading password: %w", err)
		}
		return string(pw), nil
	}
	pw, err := read("New password: ")
	if err != nil {
		return "", err
	}
	if pw == "" {
		return "", errors.New("empty password")
	}
	again, err := read("Retype new password: ")
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", errors.New("passwords do not match")
	}
	return users.HashPassword(pw)
}

// readKeys takes a public key file (one or more authorized_keys lines) or a
// single authorized_keys line.
func readKeys(arg string) ([]string, error) {
	data, err := os.ReadFile(arg)
	if errors.Is(err, os.ErrNotExist) && strings.ContainsRune(arg, ' ') {
		data, err = []byte(arg), nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if _, err := users.ParseKey(line); err != nil {
			return nil, err
		}
		keys = append(keys, line)
	}
	if len(keys) == 0 {
		return nil, errors.New("no public key found")
	}
	return keys, nil
}

type usageText struct{ bytes, files string }

// homeUsage reads a home's usage from disk for display; a home not created yet
// holds nothing.
func homeUsage(home string) usageText {
	u, err := vfs.Scan(home)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return usageText{"0 B", "0"}
	case err != nil:
		return usageText{"?", "?"}
	}
	return usageText{human.Bytes(u.Bytes), strconv.FormatInt(u.Files, 10)}
}

func loginMethods(u users.User) string {
	var m []string
	if u.Password != "" {
		m = append(m, "password")
	}
	if n := len(u.Keys); n > 0 {
		m = append(m, fmt.Sprintf("%d key(s)", n))
	}
	if len(m) == 0 {
		return "none"
	}
	return strings.Join(m, ", ")
}

func hashKind(h string) string {
	switch {
	case h == "":
		return "none"
	case strings.HasPrefix(h, "$argon2id$"):
		return "argon2id"
	case strings.HasPrefix(h, "$2"):
		return "bcrypt (upgraded to argon2id at next login)"
	case strings.HasPrefix(h, "$5$"), strings.HasPrefix(h, "$6$"):
		return "sha-crypt (upgraded to argon2id at next login)"
	}
	return "unknown"
}

func quotaString(z users.Size) string {
	if z == 0 {
		return "unlimited"
	}
	return z.String()
}

func countString(n int64) string {
	if n == 0 {
		return "unlimited"
	}
	return strconv.FormatInt(n, 10)
}
