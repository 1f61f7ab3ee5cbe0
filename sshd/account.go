package sshd

import (
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sync/semaphore"
)

// account is what all the sessions of one user share, so that no account
// can take more than its part of the server: what its SFTP sessions have
// in flight, and the file handles they hold.
type account struct {
	inflight *semaphore.Weighted
	handles  atomic.Int32
}

// accounts holds one account per user name that has logged in since start.
type accounts struct {
	mu sync.Mutex
	m  map[string]*account
}

func (a *accounts) get(name string) *account {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = make(map[string]*account)
	}
	acct := a.m[name]
	if acct == nil {
		acct = &account{inflight: semaphore.NewWeighted(accountInflight)}
		a.m[name] = acct
	}
	return acct
}

// fdBudget is how many file handles all sessions together may hold: the
// process's descriptor limit (Go raises the soft limit to the hard one at
// start) less a reserve, so that accepting connections, logging in and
// reading the users file always have descriptors left.
func fdBudget() (limit, budget int64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 1 << 10
	}
	return int64(rl.Cur), max(64, int64(rl.Cur)-max(128, int64(rl.Cur)/8))
}
