package sshd

import (
	"context"
	"io"
)

// AddTestCommand adds a built-in command that runs fn. Call it before any
// session runs a command.
func (s *Server) AddTestCommand(name string, fn func(ctx context.Context, stdin io.Reader, stdout io.Writer) int) {
	if s.testCommands == nil {
		s.testCommands = make(map[string]func(context.Context, io.Reader, io.Writer) int)
	}
	s.testCommands[name] = fn
}
