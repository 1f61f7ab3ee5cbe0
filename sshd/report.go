package sshd

// What sshd reports to the activity monitor (package activity), in one
// place: logins, and the SFTP requests that change the tree or are
// refused. The monitor's subscribers turn these into audit lines,
// metrics, hooks and the live status view.

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"

	"silo/activity"
	"silo/vfs"
)

// reportAttempt reports a login (the connection's account, for the status
// view) or a failed one. "none" probes and abandoned prompts are not
// attempts; a refusal for too many connections is a failure.
func (s *Server) reportAttempt(c gossh.ConnMetadata, method string, err error) {
	switch {
	case err == nil:
		stateOf(c).mon.LoggedIn(c.User(), shortID(hex.EncodeToString(c.SessionID())), string(c.ClientVersion()), method)
	case method == "none" && errors.Is(err, errNone), errors.Is(err, io.EOF):
	default:
		s.mon.Report(activity.Event{Kind: activity.LoginFailed, User: c.User(), Remote: c.RemoteAddr().String(),
			Method: method, Err: err})
	}
}

// sftpKinds maps the pkg/sftp methods that change the tree to the events
// they are.
var sftpKinds = map[string]activity.Kind{
	"Setstat": activity.Setstat, "Rename": activity.Rename, "Rmdir": activity.Rmdir,
	"Mkdir": activity.Mkdir, "Remove": activity.Remove, "Symlink": activity.Symlink,
	"Link": activity.Symlink,
}

// reportCmd reports a Filecmd request that ended with err (the vfs error,
// before its translation for the client).
func (h *sftpHandler) reportCmd(r *sftp.Request, err error) {
	kind, ok := sftpKinds[r.Method]
	if !ok {
		return
	}
	p, target, detail := vfs.Clean(r.Filepath), "", ""
	switch r.Method {
	case "Rename":
		target = vfs.Clean(r.Target)
	case "Symlink", "Link":
		// The link is Target; Filepath is what it points to, as sent.
		p, target = vfs.Clean(r.Target), r.Filepath
		if r.Method == "Link" {
			detail = "hard link"
		}
	case "Setstat":
		detail = setstatDetail(r)
	}
	h.st.mon.Op("sftp", kind, p, target, detail, err)
}

// setstatDetail says what a SETSTAT asked for: "truncate 10", "chmod 0644",
// "times", in the order setstat applies them.
func setstatDetail(r *sftp.Request) string {
	a, flags := r.Attributes(), r.AttrFlags()
	if a == nil {
		return ""
	}
	var parts []string
	if flags.UidGid {
		parts = append(parts, fmt.Sprintf("chown %d:%d", a.UID, a.GID))
	}
	if flags.Size {
		parts = append(parts, fmt.Sprintf("truncate %d", a.Size))
	}
	if flags.Permissions {
		parts = append(parts, fmt.Sprintf("chmod %04o", a.Mode&0o7777))
	}
	if flags.Acmodtime {
		parts = append(parts, "times")
	}
	return strings.Join(parts, ", ")
}

// HomeUsage is an open home's usage and its account's limits.
type HomeUsage struct {
	User   string
	Usage  vfs.Usage
	Limits vfs.Limits
}

// Usage reports every open home: those in use, and those used within the
// time a home stays open after its last session.
func (s *Server) Usage() []HomeUsage {
	var out []HomeUsage
	s.homes.each(func(name string, oh *openHome) {
		hu := HomeUsage{User: name, Usage: oh.fs.Usage()}
		if u, ok := s.cfg.Users.Lookup(name); ok {
			hu.Limits = limitsOf(u)
		}
		out = append(out, hu)
	})
	return out
}
