package users

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/GehirnInc/crypt"
	_ "github.com/GehirnInc/crypt/sha256_crypt" // registers $5$
	_ "github.com/GehirnInc/crypt/sha512_crypt" // registers $6$
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// MaxPasswordLen bounds what is ever handed to a hash function, so that a
// client cannot make one login attempt expensive by sending a huge password.
const MaxPasswordLen = 1024

// Argon2id parameters for new hashes: OWASP's minimum recommendation
// (m=19 MiB, t=2, p=1), which keeps a login near 30 ms on one core.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// Upper bounds on the cost parameters of stored hashes. A hash beyond them is
// refused when the users file is loaded rather than letting one login pin a
// CPU (or allocate gigabytes) for minutes.
const (
	maxArgonMemory  = 1 << 20 // KiB, 1 GiB
	maxArgonTime    = 64
	maxArgonThreads = 64
	maxBcryptCost   = 16
	maxCryptRounds  = 5_000_000
)

// ErrPasswordTooLong is returned for passwords over MaxPasswordLen bytes.
var ErrPasswordTooLong = fmt.Errorf("password longer than %d bytes", MaxPasswordLen)

var b64 = base64.RawStdEncoding

// HashPassword returns an argon2id hash of password in PHC string format,
// $argon2id$v=19$m=19456,t=2,p=1$SALT$HASH.
func HashPassword(password string) (string, error) {
	if len(password) > MaxPasswordLen {
		return "", ErrPasswordTooLong
	}
	if password == "" {
		return "", errors.New("empty password")
	}
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// hashScheme is a parsed stored hash that can check a password.
type hashScheme interface {
	verify(password []byte) bool
	// current reports whether the hash is argon2id with at least today's
	// parameters; anything else is re-hashed after a successful login.
	current() bool
}

// parseHash checks a stored hash's format and cost without hashing anything.
// Accepted: argon2id (PHC), bcrypt ($2a$, $2b$, $2y$), sha256-crypt ($5$) and
// sha512-crypt ($6$).
func parseHash(h string) (hashScheme, error) {
	switch {
	case strings.HasPrefix(h, "$argon2id$"):
		return parseArgon2id(h)
	case strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"), strings.HasPrefix(h, "$2y$"):
		cost, err := bcrypt.Cost([]byte(h))
		if err != nil {
			return nil, fmt.Errorf("bad bcrypt hash: %w", err)
		}
		if cost > maxBcryptCost {
			return nil, fmt.Errorf("bcrypt cost %d is above the limit of %d", cost, maxBcryptCost)
		}
		return bcryptHash(h), nil
	case strings.HasPrefix(h, "$5$"), strings.HasPrefix(h, "$6$"):
		return parseShaCrypt(h)
	case h == "":
		return nil, errors.New("empty hash")
	}
	return nil, errors.New("unsupported hash format (want $argon2id$, $2a$/$2b$/$2y$, $5$ or $6$)")
}

type argon2idHash struct {
	memory, time uint32
	threads      uint8
	salt, key    []byte
}

func parseArgon2id(h string) (*argon2idHash, error) {
	// $argon2id$v=19$m=..,t=..,p=..$salt$hash splits into 6 fields.
	f := strings.Split(h, "$")
	if len(f) != 6 || f[2] != "v="+strconv.Itoa(argon2.Version) {
		return nil, errors.New("bad argon2id hash: want $argon2id$v=19$m=M,t=T,p=P$SALT$HASH")
	}
	var a argon2idHash
	var m, t, p uint64
	for _, kv := range strings.Split(f[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad argon2id parameter %q", kv)
		}
		switch k {
		case "m":
			m = n
		case "t":
			t = n
		case "p":
			p = n
		default:
			return nil, fmt.Errorf("bad argon2id parameter %q", kv)
		}
	}
	switch {
	case m < 8*p || m > maxArgonMemory:
		return nil, fmt.Errorf("argon2id memory %d KiB is outside 8*p..%d", m, maxArgonMemory)
	case t < 1 || t > maxArgonTime:
		return nil, fmt.Errorf("argon2id time %d is outside 1..%d", t, maxArgonTime)
	case p < 1 || p > maxArgonThreads:
		return nil, fmt.Errorf("argon2id parallelism %d is outside 1..%d", p, maxArgonThreads)
	}
	a.memory, a.time, a.threads = uint32(m), uint32(t), uint8(p)
	var err error
	if a.salt, err = b64.DecodeString(f[4]); err != nil || len(a.salt) < 8 {
		return nil, errors.New("bad argon2id salt")
	}
	if a.key, err = b64.DecodeString(f[5]); err != nil || len(a.key) < 16 || len(a.key) > 128 {
		return nil, errors.New("bad argon2id hash value")
	}
	return &a, nil
}

func (a *argon2idHash) verify(pw []byte) bool {
	k := argon2.IDKey(pw, a.salt, a.time, a.memory, a.threads, uint32(len(a.key)))
	return subtle.ConstantTimeCompare(k, a.key) == 1
}

func (a *argon2idHash) current() bool {
	return a.memory >= argonMemory && a.time >= argonTime && a.threads >= argonThreads
}

type bcryptHash string

func (b bcryptHash) verify(pw []byte) bool {
	return bcrypt.CompareHashAndPassword([]byte(b), pw) == nil
}

func (bcryptHash) current() bool { return false }

type shaCryptHash struct {
	hash string
	c    crypt.Crypter
}

func parseShaCrypt(h string) (*shaCryptHash, error) {
	c := crypt.SHA512
	if strings.HasPrefix(h, "$5$") {
		c = crypt.SHA256
	}
	// $6$[rounds=N$]salt$hash
	f := strings.Split(h, "$")
	if len(f) < 4 || len(f) > 5 || f[len(f)-1] == "" {
		return nil, errors.New("bad sha-crypt hash: want $6$[rounds=N$]SALT$HASH")
	}
	if r, ok := strings.CutPrefix(f[2], "rounds="); ok {
		n, err := strconv.Atoi(r)
		if err != nil || n < 1 || n > maxCryptRounds {
			return nil, fmt.Errorf("sha-crypt rounds %q outside 1..%d", r, maxCryptRounds)
		}
	} else if len(f) != 4 {
		return nil, errors.New("bad sha-crypt hash: want $6$[rounds=N$]SALT$HASH")
	}
	return &shaCryptHash{hash: h, c: c.New()}, nil
}

func (s *shaCryptHash) verify(pw []byte) bool { return s.c.Verify(s.hash, pw) == nil }
func (*shaCryptHash) current() bool           { return false }

// dummyHash is verified in place of a real one when the user is unknown or has
// no password, so that the answer takes as long as a wrong password does.
var dummyHash = sync.OnceValue(func() hashScheme {
	h, err := HashPassword("silo timing equaliser")
	if err != nil {
		panic(err)
	}
	s, err := parseHash(h)
	if err != nil {
		panic(err)
	}
	return s
})

// VerifyPassword reports whether password matches the stored hash, and
// whether the hash should be replaced by a fresh argon2id one. A malformed
// hash never matches.
func VerifyPassword(stored, password string) (ok, rehash bool) {
	if len(password) > MaxPasswordLen {
		return false, false
	}
	s, err := parseHash(stored)
	if err != nil {
		dummyHash().verify([]byte(password))
		return false, false
	}
	ok = s.verify([]byte(password))
	return ok, ok && !s.current()
}
