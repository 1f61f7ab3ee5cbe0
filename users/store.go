package users

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Reasons a credential is refused. They are for the server log; a client is
// told only that authentication failed.
var (
	ErrUnknownUser = errors.New("unknown user")
	ErrBadPassword = errors.New("wrong password")
	ErrNoPassword  = errors.New("user has no password")
	ErrUnknownKey  = errors.New("key not authorized")
)

// Backend is where the accounts are kept: the users file (FileBackend), or
// a database shared by several servers. Load reads every account; Update
// applies fn to all of them as one locked read-modify-write, keeping
// nothing if fn or the validation of its result fails.
type Backend interface {
	Load() (*File, error)
	Update(fn func(*File) error) error
}

// FileBackend is the users file at path, through Load and Update.
type FileBackend string

// Load reads the users file.
func (p FileBackend) Load() (*File, error) { return Load(string(p)) }

// Update edits the users file under its lock.
func (p FileBackend) Update(fn func(*File) error) error { return Update(string(p), fn) }

// Store is a running server's read view of the accounts. It is safe for
// concurrent use; Reload swaps the whole view at once.
type Store struct {
	src   Backend
	path  string // the users file, for Watch; empty for another backend
	homes string // the server's homes directory, for CheckHomes
	log   *slog.Logger

	mu     sync.RWMutex
	byName map[string]*entry
	stamp  stamp
}

type entry struct {
	user User
	keys map[string]bool // ssh wire encoding of each authorized key
}

// stamp identifies one version of the file on disk.
type stamp struct {
	ino, size   uint64
	mtime, ctim int64
}

// OpenStore loads the users file at path, for a server whose default homes
// are in homes. A missing file is an empty store.
func OpenStore(path, homes string, log *slog.Logger) (*Store, error) {
	s := &Store{src: FileBackend(path), path: path, homes: homes, log: log}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// NewStore loads the accounts from b, for a server whose default homes are
// in homes. Whoever learns that b changed calls Reload.
func NewStore(b Backend, homes string, log *slog.Logger) (*Store, error) {
	s := &Store{src: b, homes: homes, log: log}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

func statStamp(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}
	}
	st := fi.Sys().(*syscall.Stat_t)
	return stamp{ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Nano(), ctim: st.Ctim.Nano()}
}

// Reload re-reads the accounts. On error the previous view stays in force.
// It returns the names of users that existed before and do not any more.
func (s *Store) Reload() (removed []string, err error) {
	var st stamp
	if s.path != "" {
		st = statStamp(s.path)
	}
	f, err := s.src.Load()
	if err != nil {
		return nil, err
	}
	if err := f.CheckHomes(s.homes); err != nil {
		if s.path != "" {
			return nil, fmt.Errorf("%s: %w", s.path, err)
		}
		return nil, err
	}
	byName := make(map[string]*entry, len(f.Users))
	for _, u := range f.Users {
		e := &entry{user: u, keys: make(map[string]bool, len(u.Keys))}
		for _, line := range u.Keys {
			k, _ := ParseKey(line) // Load validated every key
			e.keys[string(k.Marshal())] = true
		}
		byName[u.Name] = e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.byName {
		if byName[name] == nil {
			removed = append(removed, name)
		}
	}
	s.byName, s.stamp = byName, st
	slices.Sort(removed)
	return removed, nil
}

// Watch reloads the users file whenever it changes on disk, checking every
// interval, until ctx ends; for a store of another backend it does nothing.
// After each reload attempt it calls onReload with the removed users or the
// error.
//
// A change is loaded only once the file has stayed the same for one
// interval: a file rewritten in place (an editor, a shell redirection) is
// empty or half-written for a moment, and loading that moment would remove
// every account it lacks and close their sessions.
func (s *Store) Watch(ctx context.Context, interval time.Duration, onReload func(removed []string, err error)) {
	if s.path == "" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	s.watch(ctx, t.C, onReload)
}

// watch is Watch's loop, one check per tick.
func (s *Store) watch(ctx context.Context, tick <-chan time.Time, onReload func(removed []string, err error)) {
	var seen stamp   // the changed version seen at the last tick
	var pending bool // seen is set
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
		s.mu.RLock()
		old := s.stamp
		s.mu.RUnlock()
		cur := statStamp(s.path)
		if cur == old {
			continue
		}
		if !pending || cur != seen {
			seen, pending = cur, true
			continue
		}
		pending = false
		removed, err := s.Reload()
		if err != nil {
			// Do not retry a broken file every tick: wait for the next change.
			s.mu.Lock()
			s.stamp = statStamp(s.path)
			s.mu.Unlock()
		}
		onReload(removed, err)
	}
}

// Lookup returns the named user.
func (s *Store) Lookup(name string) (User, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.byName[name]
	if e == nil {
		return User{}, false
	}
	return e.user, true
}

// Len returns the number of users.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.byName)
}

// CheckPassword verifies name's password. Unknown users and users without a
// password cost the same hashing time as a wrong password. After a successful
// login with a legacy hash (bcrypt, sha-crypt, weaker argon2id) the stored
// hash is replaced by a fresh argon2id one.
func (s *Store) CheckPassword(name, password string) (User, error) {
	if len(password) > MaxPasswordLen {
		return User{}, ErrPasswordTooLong
	}
	u, ok := s.Lookup(name)
	if !ok || u.Password == "" {
		dummyHash().verify([]byte(password))
		if !ok {
			return User{}, ErrUnknownUser
		}
		return User{}, ErrNoPassword
	}
	good, rehash := VerifyPassword(u.Password, password)
	if !good {
		return User{}, ErrBadPassword
	}
	if rehash {
		s.rehash(name, u.Password, password)
	}
	return u, nil
}

func (s *Store) rehash(name, old, password string) {
	h, err := HashPassword(password)
	if err == nil {
		err = s.src.Update(func(f *File) error {
			// Leave the record alone if it changed since this login read it.
			if i := f.Find(name); i >= 0 && f.Users[i].Password == old {
				f.Users[i].Password = h
			}
			return nil
		})
	}
	// No Reload here: Watch sees the file change and reloads it, telling the
	// server what else changed (a user removed meanwhile, say).
	if err != nil {
		s.log.Warn("could not upgrade password hash to argon2id", "user", name, "err", err)
		return
	}
	s.log.Info("upgraded password hash to argon2id", "user", name)
}

// CheckKey reports whether key is one of name's authorized keys.
func (s *Store) CheckKey(name string, key ssh.PublicKey) (User, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.byName[name]
	if e == nil {
		return User{}, ErrUnknownUser
	}
	if !e.keys[string(key.Marshal())] {
		return User{}, ErrUnknownKey
	}
	return e.user, nil
}
