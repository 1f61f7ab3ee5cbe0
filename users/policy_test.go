package users

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"silo/vfs"
)

// The commented example in the repository is a valid users file that sets
// every key a user record has.
func TestExampleUsersFile(t *testing.T) {
	data, err := os.ReadFile("../users.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse(data)
	if err != nil {
		t.Fatalf("users.example.toml: %v", err)
	}
	p := f.Users[f.Find("partner")]
	if p.Rules()["/incoming"] != vfs.PermWrite || p.Rules()["/"] != vfs.PermNone || p.UploadRate != 10<<20 ||
		p.MaxConnections != 2 || len(p.AllowFrom) != 2 || p.Expires != "2030-06-30" {
		t.Errorf("partner: %+v", p)
	}
	for _, key := range []string{"name", "password", "keys", "quota", "max_files", "home", "allow_from", "max_connections",
		"upload_rate", "download_rate", "expires", "perms", "disabled", "rescan"} {
		if !strings.Contains(string(data), "\n  "+key+" =") && !strings.Contains(string(data), "[user."+key+"]") &&
			!strings.Contains(string(data), "`"+key+" =") {
			t.Errorf("the example does not show %s", key)
		}
	}
}

func TestValidatePolicy(t *testing.T) {
	for _, tc := range []struct {
		u    User
		want string
	}{
		{User{Name: "a", Expires: "2027-13-01"}, "neither a date"},
		{User{Name: "a", AllowFrom: []string{"192.0.2.1"}}, "not a CIDR block"},
		{User{Name: "a", MaxConnections: -1}, "max_connections must not be negative"},
		{User{Name: "a", UploadRate: -1}, "must not be negative"},
		{User{Name: "a", Perms: map[string]string{"incoming": "write"}}, "must be absolute and clean"},
		{User{Name: "a", Perms: map[string]string{"/incoming/": "write"}}, "must be absolute and clean"},
		{User{Name: "a", Perms: map[string]string{"/x/../y": "write"}}, "must be absolute and clean"},
		{User{Name: "a", Perms: map[string]string{"/": "read,execute"}}, `unknown permission "execute"`},
	} {
		if err := tc.u.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.u, err, tc.want)
		}
	}
}

func TestLoginAllowed(t *testing.T) {
	now := time.Date(2030, 6, 29, 23, 59, 59, 0, time.UTC)
	in, out := netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("198.51.100.1")
	mapped := netip.MustParseAddr("::ffff:192.0.2.9")
	for _, tc := range []struct {
		u    User
		addr netip.Addr
		at   time.Time
		want error
	}{
		{User{}, out, now, nil},
		{User{Disabled: true}, in, now, ErrDisabled},
		{User{Expires: "2030-06-30"}, in, now, nil},
		{User{Expires: "2030-06-30"}, in, now.Add(time.Second), ErrExpired},
		{User{Expires: "2030-06-30T01:00:00+02:00"}, in, now, ErrExpired},
		{User{AllowFrom: []string{"192.0.2.0/24"}}, in, now, nil},
		{User{AllowFrom: []string{"192.0.2.0/24"}}, mapped, now, nil},
		{User{AllowFrom: []string{"192.0.2.0/24"}}, out, now, ErrSourceRefused},
	} {
		err := tc.u.LoginAllowed(tc.addr, tc.at)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%+v from %s at %s: got %v, want %v", tc.u, tc.addr, tc.at, err, tc.want)
		}
	}
}

func TestParseShadow(t *testing.T) {
	h, _ := HashPassword("pw")
	data := "# comment\nroot:*:1::\nnobody:!:1::\nbob:" + h + ":1:0:99999:7::366:\nlocked:!" + h + "\n"
	entries, skipped, err := ParseShadow([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0] != (ShadowEntry{Name: "bob", Hash: h, Expires: "1971-01-02"}) ||
		entries[1] != (ShadowEntry{Name: "locked", Hash: h, Disabled: true}) || strings.Join(skipped, ",") != "root,nobody" {
		t.Errorf("got %+v, skipped %v", entries, skipped)
	}
	for _, bad := range []string{"justaname\n", "bob:$1$md5$x\n", "../x:" + h + "\n", "bob:" + h + ":1:::::soon:\n"} {
		if _, _, err := ParseShadow([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
