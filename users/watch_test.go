package users

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A users file rewritten in place is empty for a moment; a check that
// falls in that moment must not remove every account.
func TestWatchWaitsForFileToSettle(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.toml")
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMm3ykzHOQXKkoqOf1NWYh3RPBEWR56/D6ujl2GPnl3q"
	one := "[[user]]\nname = \"alice\"\nkeys = [\"" + key + " alice\"]\n"
	if err := os.WriteFile(path, []byte(one), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(path, filepath.Join(dir, "homes"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tick := make(chan time.Time)
	type result struct {
		removed []string
		err     error
	}
	reloads := make(chan result, 10)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.watch(ctx, tick, func(removed []string, err error) { reloads <- result{removed, err} })
	}()
	defer func() { cancel(); <-done }()

	// The truncated file, seen at one check.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{}
	// The write completes before the next check, with a second account.
	two := one + "[[user]]\nname = \"bob\"\nkeys = [\"" + key + " bob\"]\n"
	if err := os.WriteFile(path, []byte(two), 0o600); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{}
	tick <- time.Time{} // settled: loaded at this check
	tick <- time.Time{} // the loop has finished the check before
	close(reloads)
	var got []result
	for r := range reloads {
		got = append(got, r)
	}
	if len(got) != 1 || got[0].err != nil || len(got[0].removed) != 0 {
		t.Fatalf("reloads %+v, want one that removed nobody", got)
	}
	if _, ok := s.Lookup("alice"); !ok {
		t.Error("alice lost")
	}
	if _, ok := s.Lookup("bob"); !ok {
		t.Error("bob not loaded")
	}
}
