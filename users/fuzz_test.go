package users

import (
	"strings"
	"testing"
)

// FuzzParse: any users file either fails with an error or yields users that
// all pass validation; nothing panics.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "[[user]]\nname = \"alice\"\nquota = \"10GiB\"\n", "[[user]]\nname = \"../x\"\n",
		"[[user]]\nname = \"a\"\nkeys = [\"ssh-ed25519 AAAA\"]\n", "[[user]]\nname = \"a\"\nquota = -1\n",
		"[[user]]\nname = \"a\"\npassword = \"$6$rounds=1000$s$h\"\n", "user = 5", "[[user]]\n[[user]]\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		file, err := Parse([]byte(data))
		if err != nil {
			return
		}
		if err := file.Validate(); err != nil {
			t.Fatalf("Parse accepted a file that does not validate: %v", err)
		}
		for _, u := range file.Users {
			if ValidName(u.Name) != nil || strings.ContainsAny(u.Name, "/\x00") {
				t.Fatalf("Parse accepted the name %q", u.Name)
			}
		}
	})
}

// The secret behind the fixed hashes of FuzzVerifyPassword.
const fuzzSecret = "correct horse battery staple"

// FuzzVerifyPassword: the verifier never panics, and a stored hash of the
// secret matches the secret and nothing else.
func FuzzVerifyPassword(f *testing.F) {
	argon, err := HashPassword(fuzzSecret)
	if err != nil {
		f.Fatal(err)
	}
	hashes := []string{
		argon,
		"$5$saltstring$hixOXgchwauyzVtlSM/e7UnQx0qiTk74JE/YU53IbE0",    // openssl passwd -5 -salt saltstring
		"$2b$04$bfBvkUFO0m4vLZ7ekJr7g.eMw75xesOuWIqnnz7orZnNP5UY01zcK", // bcrypt, cost 4
	}
	for _, h := range hashes {
		f.Add(h, fuzzSecret)
		f.Add(h, fuzzSecret+" ")
	}
	f.Add("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "x")
	f.Add("$6$rounds=$x$", "")
	f.Fuzz(func(t *testing.T, stored, password string) {
		// Stored hashes with a high but allowed cost would make each
		// input take seconds: parse those, verify the cheap ones.
		if s, err := parseHash(stored); err == nil {
			if a, ok := s.(*argon2idHash); !ok || uint64(a.memory)*uint64(a.time) <= 64<<10 {
				if _, isBcrypt := s.(bcryptHash); !isBcrypt {
					VerifyPassword(stored, password)
				}
			}
		}
		for _, h := range hashes[1:] {
			if ok, _ := VerifyPassword(h, password); ok != (password == fuzzSecret) {
				t.Fatalf("VerifyPassword(%q, %q) = %v", h, password, ok)
			}
		}
	})
}
