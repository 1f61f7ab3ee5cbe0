package sshd

import "time"

// SetHomeHooks sets how long an unused home stays open, and hooks called
// before a home is opened and after one is closed for being idle.
func SetHomeHooks(s *Server, idle time.Duration, opening, closed func(dir string)) {
	s.homes.idleClose, s.homes.opening, s.homes.closed = idle, opening, closed
}
