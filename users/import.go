package users

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// harmlessKeyOptions are authorized_keys options that only take away what
// silo never grants (a PTY, forwarding, an agent, X11, user rc files):
// dropping them on import grants nothing more.
var harmlessKeyOptions = map[string]bool{
	"restrict": true, "no-pty": true, "no-port-forwarding": true, "no-agent-forwarding": true,
	"no-X11-forwarding": true, "no-x11-forwarding": true, "no-user-rc": true,
}

// ParseAuthorizedKeys reads an OpenSSH authorized_keys file for import: one
// key line per account key, comments and blank lines skipped. Options that
// restrict only what silo never offers are dropped; any other (from=,
// command=, expiry-time=, ...) is refused with its line number, since silo
// would not enforce it.
func ParseAuthorizedKeys(data []byte) ([]string, error) {
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("line %d: not an authorized_keys line: %w", n, err)
		}
		for _, o := range opts {
			if !harmlessKeyOptions[o] {
				return nil, fmt.Errorf("line %d: key option %q is not supported; remove it, or the line", n, o)
			}
		}
		k := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
		if comment != "" {
			k += " " + comment
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no public key found")
	}
	return keys, nil
}

// ShadowEntry is one account read from an /etc/shadow-style file.
type ShadowEntry struct {
	Name, Hash string
	Disabled   bool   // the hash was locked with a leading "!"
	Expires    string // from the expiry field (days since 1970), as a date
}

// ParseShadow reads name:hash lines, as /etc/shadow holds them (further
// fields may follow; the eighth, the account's expiry in days since 1970,
// is kept). Lines whose hash field is empty or a lock with no hash ("*",
// "!", "!!", "!*") are accounts without a password, returned as skipped.
// A hash silo does not verify (yescrypt "$y$", MD5 "$1$", DES) is an error
// naming the line.
func ParseShadow(data []byte) (entries []ShadowEntry, skipped []string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 2 {
			return nil, nil, fmt.Errorf("line %d: want NAME:HASH", n)
		}
		e := ShadowEntry{Name: f[0], Hash: f[1]}
		if err := ValidName(e.Name); err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", n, err)
		}
		if h, ok := strings.CutPrefix(e.Hash, "!"); ok {
			e.Hash, e.Disabled = h, true
		}
		switch e.Hash {
		case "", "*", "!":
			skipped = append(skipped, e.Name)
			continue
		}
		if _, err := parseHash(e.Hash); err != nil {
			return nil, nil, fmt.Errorf("line %d (%s): %w", n, e.Name, err)
		}
		if len(f) > 7 && f[7] != "" {
			days, err := strconv.ParseInt(f[7], 10, 32)
			if err != nil || days < 0 {
				return nil, nil, fmt.Errorf("line %d (%s): expiry %q is not a number of days", n, e.Name, f[7])
			}
			e.Expires = time.Unix(days*86400, 0).UTC().Format(time.DateOnly)
		}
		entries = append(entries, e)
	}
	return entries, skipped, sc.Err()
}
