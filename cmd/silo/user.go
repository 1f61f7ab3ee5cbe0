package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
	if sub == "key" {
		if len(args) == 0 {
			return fmt.Errorf("%w: user key takes add, rm or list", errUsage)
		}
		sub, args = "key "+args[0], args[1:]
	}
	fs := flag.NewFlagSet("user "+sub, flag.ContinueOnError)
	configPath := fs.String("config", "config.toml", "configuration file")
	var (
		pwStdin  *bool
		keys     stringList
		acct     *accountFlags
		authKeys *string
		shadow   *string
		fromFile *string
	)
	nargs, more := 1, false // positional arguments: nargs, or more with more
	switch sub {
	case "add":
		pwStdin = fs.Bool("password-stdin", false, "read the password from the first line of stdin")
		fs.Var(&keys, "key", "public key file or authorized_keys line (repeatable)")
		acct = addAccountFlags(fs)
	case "set":
		acct = addAccountFlags(fs)
	case "passwd":
		pwStdin = fs.Bool("password-stdin", false, "read the password from the first line of stdin")
	case "del", "show", "rescan", "key list":
	case "key add", "key rm":
		nargs, more = 2, true
	case "import":
		authKeys = fs.String("authorized-keys", "", "an OpenSSH authorized_keys file: its keys for NAME")
		shadow = fs.String("shadow", "", "an /etc/shadow-style file of NAME:HASH lines")
		fromFile = fs.String("users", "", "a silo users file: all its accounts (one server's users.toml, into PostgreSQL)")
		nargs, more = 0, true
	case "list":
		nargs = 0
	default:
		return fmt.Errorf("%w: unknown user command %q", errUsage, sub)
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != nargs && !(more && len(pos) > nargs) {
		want := strconv.Itoa(nargs)
		if more {
			want = "at least " + want
		}
		return fmt.Errorf("%w: user %s takes %s argument(s), got %d", errUsage, sub, want, len(pos))
	}
	var importData []byte
	if sub == "import" && *fromFile != "" {
		if *authKeys != "" || *shadow != "" || len(pos) > 0 {
			return fmt.Errorf("%w: user import --users FILE takes every account of FILE, and nothing else", errUsage)
		}
		cfg, err := loadConfig(*configPath)
		if err != nil {
			return err
		}
		return importUsersFile(cfg, *fromFile, stdout)
	}
	if sub == "import" {
		if importData, err = readImport(*authKeys, *shadow, pos, stdin); err != nil {
			return err
		}
	}
	// Key files are read with the caller's rights, before becomeOwner.
	if sub == "key add" || sub == "key rm" {
		keys = pos[1:]
	}
	var keyLines []string
	for _, k := range keys {
		if sub == "key rm" && strings.HasPrefix(k, "SHA256:") {
			keyLines = append(keyLines, k)
			continue
		}
		lines, err := readKeys(k)
		if err != nil {
			if sub == "add" {
				return fmt.Errorf("--key %s: %w", k, err)
			}
			return fmt.Errorf("key %s: %w", k, err)
		}
		keyLines = append(keyLines, lines...)
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	if !cfg.Store.postgres() {
		if err := becomeOwner(filepath.Dir(cfg.Users)); err != nil {
			return err
		}
	}
	store, closeStore, err := cliAccounts(cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	var name string
	if len(pos) > 0 {
		name = pos[0]
	}
	names := pos[:min(len(pos), 1)]
	switch sub {
	case "import":
		names = pos
	case "list":
		names = nil
	}
	for _, n := range names {
		if err := users.ValidName(n); err != nil {
			return err
		}
	}
	// edit changes the named user's record under the users file's lock.
	edit := func(fn func(u *users.User) error) error {
		return store.Update(func(f *users.File) error {
			i := f.Find(name)
			if i < 0 {
				return fmt.Errorf("no user %s", name)
			}
			if err := fn(&f.Users[i]); err != nil {
				return err
			}
			return f.CheckHomes(cfg.Homes)
		})
	}

	switch sub {
	case "add":
		u := users.User{Name: name}
		if err := acct.apply(&u); err != nil {
			return err
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
		if err := store.Update(func(f *users.File) error {
			if f.Find(name) >= 0 {
				return fmt.Errorf("user %s already exists", name)
			}
			f.Users = append(f.Users, u)
			return f.CheckHomes(cfg.Homes)
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added user %s\n", name)
	case "set":
		if !acct.any() {
			return fmt.Errorf("%w: user set needs at least one flag to change", errUsage)
		}
		if err := edit(acct.apply); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "changed user %s\n", name)
	case "key add":
		added := 0
		if err := edit(func(u *users.User) error {
			added = 0
			for _, k := range keyLines {
				if keyIndex(u.Keys, k) < 0 {
					u.Keys = append(u.Keys, k)
					added++
				}
			}
			return nil
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added %d key(s) to %s (%d already there)\n", added, name, len(keyLines)-added)
	case "key rm":
		left := 0
		if err := edit(func(u *users.User) error {
			for _, k := range keyLines {
				i := keyIndex(u.Keys, k)
				if i < 0 {
					return fmt.Errorf("%s has no key %s", name, keyText(k))
				}
				u.Keys = append(u.Keys[:i], u.Keys[i+1:]...)
			}
			left = len(u.Keys)
			if left == 0 && u.Password == "" {
				return fmt.Errorf("that would leave %s no way to log in; add a key or a password first, or `silo user set %s --disable`", name, name)
			}
			return nil
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %d key(s) from %s, %d left\n", len(keyLines), name, left)
	case "key list":
		u, err := loadUser(store, name)
		if err != nil {
			return err
		}
		for _, line := range u.Keys {
			fmt.Fprintln(stdout, keyText(line))
		}
	case "import":
		return importUsers(cfg, store, *authKeys != "", importData, pos, stdout)
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
		if err := edit(func(u *users.User) error { u.Password = h; return nil }); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "password of %s changed\n", name)
	case "del":
		if err := store.Update(func(f *users.File) error {
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
		f, err := store.Load()
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
		if err := edit(func(u *users.User) error { u.Rescan++; return nil }); err != nil {
			return err
		}
		u, err := loadUser(store, name)
		if err != nil {
			return err
		}
		used := homeUsage(u.HomeDir(cfg.Homes))
		fmt.Fprintf(stdout, "%s uses %s in %s files; a running server recounts within a second\n", name, used.bytes, used.files)
	case "show":
		u, err := loadUser(store, name)
		if err != nil {
			return err
		}
		return showUser(stdout, u, cfg.Homes)
	}
	return nil
}

func loadUser(store users.Backend, name string) (users.User, error) {
	f, err := store.Load()
	if err != nil {
		return users.User{}, err
	}
	i := f.Find(name)
	if i < 0 {
		return users.User{}, fmt.Errorf("no user %s", name)
	}
	return f.Users[i], nil
}

// showUser prints everything the record says, and the home's usage.
func showUser(w io.Writer, u users.User, homes string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", u.Name)
	state := "enabled"
	if u.Disabled {
		state = "disabled"
	}
	fmt.Fprintf(tw, "state:\t%s\n", state)
	fmt.Fprintf(tw, "expires:\t%s\n", orText(u.Expires, "never"))
	fmt.Fprintf(tw, "password:\t%s\n", hashKind(u.Password))
	fmt.Fprintf(tw, "keys:\t%d\n", len(u.Keys))
	for _, line := range u.Keys {
		fmt.Fprintf(tw, "\t%s\n", keyText(line))
	}
	used := homeUsage(u.HomeDir(homes))
	fmt.Fprintf(tw, "used:\t%s of %s\n", used.bytes, quotaString(u.Quota))
	fmt.Fprintf(tw, "files:\t%s of %s\n", used.files, countString(u.MaxFiles))
	fmt.Fprintf(tw, "home:\t%s\n", u.HomeDir(homes))
	fmt.Fprintf(tw, "allow from:\t%s\n", orText(strings.Join(u.AllowFrom, ", "), "anywhere"))
	fmt.Fprintf(tw, "connections:\t%s\n", orText(countText(int64(u.MaxConnections)), "the server's max_connections_per_user"))
	fmt.Fprintf(tw, "upload rate:\t%s\n", rateString(u.UploadRate))
	fmt.Fprintf(tw, "download rate:\t%s\n", rateString(u.DownloadRate))
	if len(u.Perms) == 0 {
		fmt.Fprintf(tw, "permissions:\tall\n")
	}
	paths := slices.Sorted(maps.Keys(u.Perms))
	for i, p := range paths {
		label := "permissions:"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(tw, "%s\t%s %s\n", label, p, u.Perms[p])
	}
	return tw.Flush()
}

func orText(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

func countText(n int64) string {
	if n == 0 {
		return ""
	}
	return strconv.FormatInt(n, 10)
}

func rateString(z users.Size) string {
	if z == 0 {
		return "unlimited"
	}
	return z.String() + "/s"
}

// keyText describes an authorized_keys line as `user key list` prints it:
// type, SHA256 fingerprint, comment. A fingerprint alone stands for
// itself.
func keyText(line string) string {
	if strings.HasPrefix(line, "SHA256:") {
		return line
	}
	k, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(k.Type() + " " + ssh.FingerprintSHA256(k) + " " + comment)
}

// keyIndex finds the key of line (an authorized_keys line, or a SHA256
// fingerprint) among keys, by the key itself, not its comment.
func keyIndex(keys []string, line string) int {
	fp := line
	if !strings.HasPrefix(line, "SHA256:") {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return -1
		}
		fp = ssh.FingerprintSHA256(k)
	}
	return slices.IndexFunc(keys, func(l string) bool {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l))
		return err == nil && ssh.FingerprintSHA256(k) == fp
	})
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
