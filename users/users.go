// Package users holds silo's accounts: names, password hashes, authorized
// keys, quotas and policy (permissions, allowed networks, expiry, rates),
// stored in a TOML users file (users.example.toml in the repository shows
// every key). The file is edited only through Update (a locked
// read-modify-write, replaced atomically), and read by a running server
// through a Store.
package users

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	"silo/internal/atomicfile"
	"silo/vfs"
)

// User is one account as stored in the users file.
type User struct {
	Name string `toml:"name"`
	// Password is a hash (see VerifyPassword), never a clear-text password.
	Password string   `toml:"password,omitempty"`
	Keys     []string `toml:"keys,omitempty"` // authorized_keys lines
	Quota    Size     `toml:"quota,omitzero"`
	MaxFiles int64    `toml:"max_files,omitzero"`
	// Home is absolute, or relative to the server's homes directory; empty
	// means homes/NAME.
	Home string `toml:"home,omitempty"`
	// Rescan is bumped by `silo user rescan`: a running server that sees it
	// change recomputes the user's usage from disk.
	Rescan int64 `toml:"rescan,omitzero"`

	// Disabled refuses every login; a running server closes the account's
	// connections when it reads the change.
	Disabled bool `toml:"disabled,omitempty"`
	// Expires is when the account stops working: a date ("2027-06-30",
	// the start of that day in UTC) or an RFC 3339 time. Empty: never.
	Expires string `toml:"expires,omitempty"`
	// AllowFrom lists the networks (CIDR blocks, "192.0.2.0/24",
	// "2001:db8::/32", one address as /32 or /128) logins may come from;
	// empty allows any.
	AllowFrom []string `toml:"allow_from,omitempty"`
	// MaxConnections caps the account's connections at once, in place of
	// the server's max_connections_per_user; 0 keeps the server's.
	MaxConnections int `toml:"max_connections,omitzero"`
	// UploadRate and DownloadRate cap the bytes per second written to and
	// read from the account's files, over all its sessions together; 0 is
	// unlimited.
	UploadRate   Size `toml:"upload_rate,omitzero"`
	DownloadRate Size `toml:"download_rate,omitzero"`
	// Perms maps virtual directories to permission lists ("/" = "read,list",
	// "/incoming" = "write"); see vfs.Perm. A rule covers its directory and
	// everything below it; a path no rule covers allows everything.
	Perms map[string]string `toml:"perms,omitempty"`
}

// File is the whole users file: one [[user]] table per account.
type File struct {
	Users []User `toml:"user"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)

// ValidName reports whether name may be an account name: 1 to 64 letters,
// digits, '.', '_' or '-', not starting with '.' or '-'. Only such names are
// ever used as a path component.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid user name %q: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'", name)
	}
	return nil
}

// ParseKey parses one authorized_keys line. Key options (from=, command=,
// ...) are refused: silo does not enforce them, and silently ignoring a from=
// restriction would grant more than the operator wrote.
func ParseKey(line string) (ssh.PublicKey, error) {
	key, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, fmt.Errorf("not an authorized_keys line: %w", err)
	}
	if len(opts) > 0 {
		return nil, fmt.Errorf("key options are not supported: %s", strings.Join(opts, ","))
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("one key per line")
	}
	return key, nil
}

// Validate checks a user record: its name, its hash format and cost, its
// keys and its limits.
func (u *User) Validate() error {
	if err := ValidName(u.Name); err != nil {
		return err
	}
	if u.Password != "" {
		if _, err := parseHash(u.Password); err != nil {
			return fmt.Errorf("user %s: password: %w", u.Name, err)
		}
	}
	for i, k := range u.Keys {
		if _, err := ParseKey(k); err != nil {
			return fmt.Errorf("user %s: key %d: %w", u.Name, i+1, err)
		}
	}
	if u.Quota < 0 {
		return fmt.Errorf("user %s: quota must not be negative", u.Name)
	}
	if u.MaxFiles < 0 {
		return fmt.Errorf("user %s: max_files must not be negative", u.Name)
	}
	if strings.ContainsRune(u.Home, 0) {
		return fmt.Errorf("user %s: home contains a NUL byte", u.Name)
	}
	if _, err := ParseExpiry(u.Expires); err != nil {
		return fmt.Errorf("user %s: expires: %w", u.Name, err)
	}
	if _, err := parsePrefixes(u.AllowFrom); err != nil {
		return fmt.Errorf("user %s: allow_from: %w", u.Name, err)
	}
	if u.MaxConnections < 0 {
		return fmt.Errorf("user %s: max_connections must not be negative", u.Name)
	}
	if u.UploadRate < 0 || u.DownloadRate < 0 {
		return fmt.Errorf("user %s: upload_rate and download_rate must not be negative", u.Name)
	}
	if _, err := vfs.ParseRules(u.Perms); err != nil {
		return fmt.Errorf("user %s: perms: %w", u.Name, err)
	}
	return nil
}

// HomeDir returns where u's home is on the host, given the server's homes
// directory.
func (u *User) HomeDir(homes string) string {
	switch {
	case u.Home == "":
		return filepath.Join(homes, u.Name) // Validate checked the name
	case filepath.IsAbs(u.Home):
		return filepath.Clean(u.Home)
	}
	return filepath.Join(homes, u.Home)
}

// CheckHomes refuses two users whose homes, given the server's homes
// directory, are the same directory or one inside the other: each would
// count the other's files as its own. Links on the way are resolved where
// the directories exist.
func (f *File) CheckHomes(homes string) error {
	type home struct{ key, name string }
	list := make([]home, 0, len(f.Users))
	for i := range f.Users {
		list = append(list, home{resolvedPath(f.Users[i].HomeDir(homes)) + "/", f.Users[i].Name})
	}
	slices.SortFunc(list, func(a, b home) int { return strings.Compare(a.key, b.key) })
	// A home inside another sorts right after it, or after homes that
	// are inside it too.
	for i := 1; i < len(list); i++ {
		if a, b := list[i-1], list[i]; strings.HasPrefix(b.key, a.key) {
			return fmt.Errorf("users %s and %s have overlapping homes: %s and %s",
				a.name, b.name, strings.TrimSuffix(a.key, "/"), strings.TrimSuffix(b.key, "/"))
		}
	}
	return nil
}

// resolvedPath makes p absolute, with the links in the part of it that
// exists resolved.
func resolvedPath(p string) string {
	p, _ = filepath.Abs(p)
	rest := ""
	for dir := p; ; dir = filepath.Dir(dir) {
		if r, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(r, rest)
		}
		if dir == filepath.Dir(dir) {
			return p
		}
		rest = filepath.Join(filepath.Base(dir), rest)
	}
}

// Find returns the index of the named user, or -1.
func (f *File) Find(name string) int {
	for i := range f.Users {
		if f.Users[i].Name == name {
			return i
		}
	}
	return -1
}

// Validate checks every user and that names are unique; its error lists
// each bad record.
func (f *File) Validate() error {
	var errs []error
	seen := make(map[string]bool, len(f.Users))
	for i := range f.Users {
		u := &f.Users[i]
		if err := u.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[u.Name] {
			errs = append(errs, fmt.Errorf("user %s appears twice", u.Name))
		}
		seen[u.Name] = true
	}
	return errors.Join(errs...)
}

// Parse decodes and validates a users file. Unknown keys are errors, so that
// a typo never silently drops a quota.
func Parse(data []byte) (*File, error) {
	var f File
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("unknown key %q", k.String()))
	}
	if err := f.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &f, nil
}

// Load reads and parses the users file at path. A missing file is an empty
// one.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &File{}, nil
	}
	if err != nil {
		return nil, err
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Update applies fn to the users file at path under an exclusive lock
// (path + ".lock"), validates the result and replaces the file atomically.
// The file and its directory are created if missing. If fn returns an error
// the file is left as it was.
func Update(path string, fn func(*File) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	f, err := Load(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		return err
	}
	if err := f.Validate(); err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString("# silo users file; edit with `silo user ...`. Passwords are hashes.\n")
	if err := toml.NewEncoder(&buf).Encode(f); err != nil {
		return err
	}
	return atomicfile.Write(path, buf.Bytes(), 0o600)
}
