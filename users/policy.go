package users

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"silo/vfs"
)

// Reasons a login with a good credential is refused all the same. Like the
// errors of a bad credential they are for the server log only.
var (
	ErrDisabled      = errors.New("account disabled")
	ErrExpired       = errors.New("account expired")
	ErrSourceRefused = errors.New("address not in the account's allow_from")
)

// ParseExpiry reads an expiry as the users file writes it: "" (never), a
// date (YYYY-MM-DD, expiring at the start of that day, UTC) or an RFC 3339
// time. Never is the zero time.
func ParseExpiry(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a date (2027-06-30) nor an RFC 3339 time (2027-06-30T18:00:00+02:00)", s)
	}
	return t, nil
}

func parsePrefixes(list []string) ([]netip.Prefix, error) {
	ps := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR block (192.0.2.0/24; one address is 192.0.2.7/32)", s)
		}
		ps = append(ps, p.Masked())
	}
	return ps, nil
}

// LoginAllowed reports why u may not log in from addr at now, or nil. It
// is asked after the credential was verified, and again for open
// connections whenever the users file changes.
func (u *User) LoginAllowed(addr netip.Addr, now time.Time) error {
	if u.Disabled {
		return ErrDisabled
	}
	if exp, _ := ParseExpiry(u.Expires); !exp.IsZero() && !now.Before(exp) {
		return fmt.Errorf("%w on %s", ErrExpired, u.Expires)
	}
	if len(u.AllowFrom) == 0 {
		return nil
	}
	ps, _ := parsePrefixes(u.AllowFrom) // Validate checked them
	for _, p := range ps {
		if p.Contains(addr.Unmap()) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s", ErrSourceRefused, addr.Unmap())
}

// Rules returns the account's permission rules for its home.
func (u *User) Rules() vfs.Rules {
	r, _ := vfs.ParseRules(u.Perms) // Validate checked them
	return r
}

// Rates returns the account's rate limits on its files' data.
func (u *User) Rates() vfs.Rates {
	return vfs.Rates{Read: int64(u.DownloadRate), Write: int64(u.UploadRate)}
}
