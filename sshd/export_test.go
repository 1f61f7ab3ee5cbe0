package sshd

import (
	"context"
	"io"
	"time"

	"silo/vfs"
)

// SetHomeHooks sets how long an unused home stays open, and hooks called
// before a home is opened and after one is closed for being idle.
func SetHomeHooks(s *Server, idle time.Duration, opening, closed func(dir string)) {
	s.homes.idleClose, s.homes.opening, s.homes.closed = idle, opening, closed
}

// SetHomeWaitHook sets a hook called when a session's home waits for an
// earlier instance of it to finish closing.
func SetHomeWaitHook(s *Server, waiting func(dir string)) { s.homes.waiting = waiting }

// AddTestCommand adds a built-in command that runs fn. Call it before any
// session runs a command.
func (s *Server) AddTestCommand(name string, fn func(ctx context.Context, stdin io.Reader, stdout io.Writer) int) {
	if s.testCommands == nil {
		s.testCommands = make(map[string]func(context.Context, io.Reader, io.Writer) int)
	}
	s.testCommands[name] = fn
}

// SetRateClock makes the rate limits of homes opened from now on measure
// time with, and wait on, c.
func SetRateClock(s *Server, c vfs.Clock) { s.homes.clock = c }

// SetSFTPIdle sets how long an SFTP session's RequestServer is kept with
// nothing to do, and a hook told of each idle check: ended, or kept for
// the handles it has open.
func SetSFTPIdle(s *Server, idle time.Duration, hook func(ended bool)) {
	s.rsIdle, s.rsIdleHook = idle, hook
}

// SetSFTPHandOnHook sets a hook called as an SFTP session's stream is about
// to hand a request of type typ on to pkg/sftp; it may run the session's
// idle check, as its timer would at that moment.
func SetSFTPHandOnHook(s *Server, hook func(typ byte, idleCheck func())) { s.rsHandOnHook = hook }
