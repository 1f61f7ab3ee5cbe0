package activity

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"time"
)

// Audit is the subscriber that writes the audit log: one line per finished
// transfer ("transfer"), one per change a user makes ("change"), one per
// refusal ("refused", with the reason), one per kicked connection.
// Lines carry session, user and remote first, as a session's own log lines
// do, then virtual paths only.
type Audit struct{ log *slog.Logger }

// NewAudit writes the audit lines to log.
func NewAudit(log *slog.Logger) *Audit { return &Audit{log: log} }

// Observe writes e's line.
func (a *Audit) Observe(e Event) {
	attrs := make([]any, 0, 24)
	add := func(kv ...any) { attrs = append(attrs, kv...) }
	switch e.Kind {
	case Login, LoginFailed, Blocked:
		// sshd writes these lines itself, where the attempt is judged
		// (fail2ban's filters match them as they are).
		return
	case Kicked:
		a.log.Info("connection kicked", "session", e.Session, "user", e.User, "remote", e.Remote)
		return
	}
	add("session", e.Session, "user", e.User, "remote", e.Remote)
	reason := e.Reason()
	level := slog.LevelInfo
	if reason != "" {
		level = slog.LevelWarn
	}
	if e.Kind == Upload || e.Kind == Download {
		add("path", e.Path, "direction", string(e.Kind), "bytes", e.Size,
			"duration", e.Duration.Round(time.Millisecond), "protocol", e.Protocol, "result", result(e.Err))
		if reason != "" {
			add("reason", reason)
		}
		a.log.Log(context.Background(), level, "transfer", attrs...)
		return
	}
	add("op", string(e.Kind), "protocol", e.Protocol, "path", e.Path)
	if e.Target != "" {
		add("target", e.Target)
	}
	if e.Detail != "" {
		add("detail", e.Detail)
	}
	add("result", result(e.Err))
	msg := "change"
	if reason != "" {
		msg = "refused"
		add("reason", reason)
	}
	a.log.Log(context.Background(), level, msg, attrs...)
}

// result is a log line's result: ok, aborted, or failed with the error's
// words (without the operation and path that the line has already).
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrAborted):
		return "aborted"
	}
	return "failed: " + errText(err)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
