package users

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestHashPasswordIsArgon2idPHC(t *testing.T) {
	h, err := HashPassword("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q is not argon2id with m=19456,t=2,p=1", h)
	}
	h2, _ := HashPassword("s3cret")
	if h == h2 {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	if ok, rehash := VerifyPassword(h, "s3cret"); !ok || rehash {
		t.Fatalf("VerifyPassword(own hash) = %v, %v; want true, false", ok, rehash)
	}
	if ok, _ := VerifyPassword(h, "s3cret "); ok {
		t.Fatal("a different password matched")
	}
	if _, err := HashPassword(strings.Repeat("x", MaxPasswordLen+1)); err == nil {
		t.Fatal("hashed a password over the limit")
	}
}

func TestVerifyLegacyHashes(t *testing.T) {
	b, _ := bcrypt.GenerateFromPassword([]byte("Hello world!"), 4)
	bcryptB := "$2b$" + string(b[4:])
	bcryptY := "$2y$" + string(b[4:])
	for _, tc := range []struct{ name, hash string }{
		// As made by openssl passwd -5 / -6 (glibc crypt(3) gives the same).
		{"sha256-crypt", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"},
		{"sha256-crypt rounds", "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"},
		{"sha512-crypt", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
		{"bcrypt 2a", string(b)},
		{"bcrypt 2b", bcryptB},
		{"bcrypt 2y", bcryptY},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseHash(tc.hash); err != nil {
				t.Fatalf("parse: %v", err)
			}
			if ok, rehash := VerifyPassword(tc.hash, "Hello world!"); !ok || !rehash {
				t.Fatalf("right password: ok=%v rehash=%v, want true, true", ok, rehash)
			}
			if ok, _ := VerifyPassword(tc.hash, "Hello world?"); ok {
				t.Fatal("wrong password matched")
			}
		})
	}
}

func TestHashesRefused(t *testing.T) {
	for _, h := range []string{
		"", "plaintext", "$1$md5crypt$xyz", "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", // 4 GiB
		"$argon2id$v=19$m=19456,t=1000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=19456,t=2$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$2b$31$" + strings.Repeat("a", 53),
		"$6$rounds=999999999$salt$hash",
	} {
		if _, err := parseHash(h); err == nil {
			t.Errorf("parseHash(%q) accepted", h)
		}
		if ok, _ := VerifyPassword(h, "x"); ok {
			t.Errorf("VerifyPassword(%q) matched", h)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{
		"0": 0, "1048576": 1 << 20, "100MiB": 100 << 20, "5GB": 5e9, "2GiB": 2 << 30, "1.5k": 1536,
		"10 kb": 10000, "1T": 1 << 40, "7b": 7,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "10XB", "MiB", "1e400", "NaN"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	if s := Size(1536 << 10).String(); s != "1.5 MiB" {
		t.Errorf("String = %q", s)
	}
}

func TestParseUsersFile(t *testing.T) {
	good := `
[[user]]
name = "alice"
password = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"
quota = "10GiB"
max_files = 100

[[user]]
name = "bob.b-2"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMm3ykzHOQXKkoqOf1NWYh3RPBEWR56/D6ujl2GPnl3q bob"]
quota = 1000
`
	f, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if f.Users[0].Quota != 10<<30 || f.Users[1].Quota != 1000 || f.Users[0].MaxFiles != 100 {
		t.Fatalf("parsed %+v", f.Users)
	}
	for name, bad := range map[string]string{
		"unknown key":    "[[user]]\nname = \"a\"\nquoat = 5\n",
		"bad name":       "[[user]]\nname = \"../etc\"\n",
		"dot name":       "[[user]]\nname = \".hidden\"\n",
		"dash name":      "[[user]]\nname = \"-x\"\n",
		"duplicate":      "[[user]]\nname = \"a\"\n[[user]]\nname = \"a\"\n",
		"bad key":        "[[user]]\nname = \"a\"\nkeys = [\"ssh-ed25519 nope\"]\n",
		"key options":    "[[user]]\nname = \"a\"\nkeys = [\"from=\\\"10.0.0.1\\\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMm3ykzHOQXKkoqOf1NWYh3RPBEWR56/D6ujl2GPnl3q\"]\n",
		"negative quota": "[[user]]\nname = \"a\"\nquota = -1\n",
		"bad quota":      "[[user]]\nname = \"a\"\nquota = \"lots\"\n",
		"bad hash":       "[[user]]\nname = \"a\"\npassword = \"hunter2\"\n",
		"syntax":         "[[user]\nname = \"a\"\n",
		"negative files": "[[user]]\nname = \"a\"\nmax_files = -3\n",
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestUpdateIsAtomicAndValidated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "users.toml")
	add := func(name string) error {
		return Update(path, func(f *File) error {
			f.Users = append(f.Users, User{Name: name, Password: "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"})
			return nil
		})
	}
	if err := add("alice"); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if err := add("../evil"); err == nil {
		t.Fatal("an invalid name was written")
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("a refused update changed the file")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("users file mode %v, want 0600", fi.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Fatalf("temp file left behind: %s", e.Name())
		}
	}
}

func TestStoreRehashesLegacyHashOnLogin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.toml")
	legacy := "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
	Update(path, func(f *File) error { f.Users = []User{{Name: "alice", Password: legacy}}; return nil })
	s, err := OpenStore(path, filepath.Join(filepath.Dir(path), "homes"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CheckPassword("alice", "wrong"); err != ErrBadPassword {
		t.Fatalf("wrong password: %v", err)
	}
	if u, _ := s.Lookup("alice"); u.Password != legacy {
		t.Fatal("a failed login changed the hash")
	}
	if _, err := s.CheckPassword("alice", "Hello world!"); err != nil {
		t.Fatalf("right password: %v", err)
	}
	f, _ := Load(path)
	if h := f.Users[0].Password; !strings.HasPrefix(h, "$argon2id$") {
		t.Fatalf("stored hash after login: %q, want argon2id", h)
	}
	if _, err := s.CheckPassword("alice", "Hello world!"); err != nil {
		t.Fatalf("login with the upgraded hash: %v", err)
	}
}

// countingScheme counts the verifications of the hash it wraps.
type countingScheme struct {
	hashScheme
	n *int
}

func (c countingScheme) verify(pw []byte) bool { *c.n++; return c.hashScheme.verify(pw) }

// An unknown user and a user without a password cost the hashing time of a
// wrong password: the same argon2id verification, on a hash made with
// today's parameters. An over-long password is refused before any hashing.
func TestStoreUnknownUserCostsAHash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.toml")
	h, _ := HashPassword("pw")
	if err := Update(path, func(f *File) error {
		f.Users = []User{{Name: "alice", Password: h}, {Name: "keyonly", Keys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMm3ykzHOQXKkoqOf1NWYh3RPBEWR56/D6ujl2GPnl3q"}}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(path, filepath.Join(filepath.Dir(path), "homes"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	real := dummyHash()
	if !real.current() {
		t.Fatal("the stand-in hash is not argon2id with today's parameters")
	}
	verified := 0
	old := dummyHash
	dummyHash = func() hashScheme { return countingScheme{real, &verified} }
	t.Cleanup(func() { dummyHash = old })
	for _, name := range []string{"nobody", "keyonly"} {
		verified = 0
		if _, err := s.CheckPassword(name, "wrong"); err == nil {
			t.Fatalf("%s logged in", name)
		}
		if verified != 1 {
			t.Errorf("%s: the stand-in hash was verified %d times, want once", name, verified)
		}
	}
	verified = 0
	if ok, _ := VerifyPassword("$argon2id$garbage", "wrong"); ok || verified != 1 {
		t.Errorf("a malformed stored hash: ok=%v, %d stand-in verifications, want 1", ok, verified)
	}
	verified = 0
	if _, err := s.CheckPassword("alice", "wrong"); err != ErrBadPassword || verified != 0 {
		t.Errorf("wrong password: %v, %d stand-in verifications; want ErrBadPassword and its own hash only", err, verified)
	}
	if _, err := s.CheckPassword("nobody", strings.Repeat("x", MaxPasswordLen+1)); err != ErrPasswordTooLong || verified != 0 {
		t.Fatalf("over-long password: %v, %d verifications; want ErrPasswordTooLong before any", err, verified)
	}
}

func TestCheckHomes(t *testing.T) {
	homes := t.TempDir()
	os.MkdirAll(filepath.Join(homes, "real"), 0o700)
	os.Symlink("real", filepath.Join(homes, "alias"))
	for _, tc := range []struct {
		name  string
		users []User
		want  string
	}{
		{"distinct", []User{{Name: "alice"}, {Name: "alice2"}, {Name: "bob", Home: "/srv/x"}}, ""},
		{"same", []User{{Name: "alice"}, {Name: "bob", Home: "alice"}}, "users alice and bob have overlapping homes"},
		{"inside", []User{{Name: "alice"}, {Name: "bob", Home: "alice/sub"}}, "users alice and bob have overlapping homes"},
		{"holds", []User{{Name: "bob", Home: homes}, {Name: "alice"}}, "have overlapping homes"},
		{"through a link", []User{{Name: "carol", Home: "alias/c"}, {Name: "dave", Home: "real"}}, "users dave and carol have overlapping homes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := (&File{Users: tc.users}).CheckHomes(homes)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// A users file whose homes overlap is refused at start and on reload; on
// reload the previous users stay in force.
func TestStoreRefusesOverlappingHomes(t *testing.T) {
	dir := t.TempDir()
	path, homes := filepath.Join(dir, "users.toml"), filepath.Join(dir, "homes")
	write := func(body string) { os.WriteFile(path, []byte(body), 0o600) }
	write("[[user]]\nname = \"alice\"\nkeys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMm3ykzHOQXKkoqOf1NWYh3RPBEWR56/D6ujl2GPnl3q\"]\n")
	s, err := OpenStore(path, homes, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	write("[[user]]\nname = \"alice\"\nkeys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMm3ykzHOQXKkoqOf1NWYh3RPBEWR56/D6ujl2GPnl3q\"]\n" +
		"[[user]]\nname = \"mallory\"\nhome = \"alice\"\nkeys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMm3ykzHOQXKkoqOf1NWYh3RPBEWR56/D6ujl2GPnl3q\"]\n")
	if _, err := s.Reload(); err == nil || !strings.Contains(err.Error(), "users alice and mallory have overlapping homes") {
		t.Fatalf("reload: %v", err)
	}
	if _, ok := s.Lookup("alice"); !ok {
		t.Fatal("alice lost after a refused reload")
	}
	if _, ok := s.Lookup("mallory"); ok {
		t.Fatal("mallory admitted")
	}
	if _, err := OpenStore(path, homes, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a store with overlapping homes opened")
	}
}
