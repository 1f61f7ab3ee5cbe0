package sshd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"

	gssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"silo/checksum"
	"silo/rsync"
	"silo/scp"
	"silo/users"
	"silo/vfs"
)

// session is one session channel (RFC 4254 section 6): it runs at most one
// program, the sftp subsystem or an exec command, and then reports its exit
// status and closes.
type session struct {
	ctx    context.Context // ends when the channel or the connection closes
	st     *connState
	ch     gossh.Channel
	user   users.User
	fs     *vfs.FS
	log    *slog.Logger
	quirks clientQuirks // of the client's version string

	done   chan struct{}
	cancel context.CancelFunc
}

// handleSession serves one session channel of an authenticated connection.
func (s *Server) handleSession(_ *gssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx gssh.Context) {
	st := stateOf(conn)
	if !st.enter() {
		nc.Reject(gossh.ConnectionFailed, "connection closed")
		return
	}
	defer st.wg.Done()
	name := ""
	if conn.Permissions != nil {
		name = conn.Permissions.Extensions[extUser]
	}
	if name == "" {
		nc.Reject(gossh.Prohibited, "not authenticated")
		return
	}
	if n := st.sessions.Add(1); int(n) > s.gate.limits().MaxSessions {
		st.sessions.Add(-1)
		nc.Reject(gossh.ResourceShortage, "too many sessions on this connection")
		return
	}
	defer st.sessions.Add(-1)
	st.mon.SessionOpened()
	defer st.mon.SessionClosed()
	// The connection was registered as the user's at login, so a user
	// removed from now on has it closed; one removed before is not found.
	u, ok := s.cfg.Users.Lookup(name)
	if !ok {
		nc.Reject(gossh.Prohibited, "account removed")
		return
	}
	log := s.log.With("session", shortID(ctx.SessionID()), "user", name, "remote", conn.RemoteAddr().String())
	fsys, release, err := s.homes.acquire(u)
	if err != nil {
		log.Error("home unavailable", "err", err)
		nc.Reject(gossh.ResourceShortage, "home directory unavailable")
		return
	}
	defer release()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	sctx, cancel := context.WithCancel(st.ctx)
	defer cancel()
	sess := &session{ctx: sctx, st: st, ch: ch, user: u, fs: fsys, log: log, quirks: quirksOf(string(conn.ClientVersion())),
		done: make(chan struct{}), cancel: cancel}
	defer func() {
		if p := recover(); p != nil {
			log.Error("session panic", "panic", p, "stack", string(debug.Stack()))
			ch.Close()
		}
	}()
	sess.serve(reqs)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// serve answers the channel's requests until the channel closes. Only
// "subsystem sftp" and "exec" start a program, once; pty-req, env, x11-req,
// auth-agent-req and the rest are refused. A shell or another subsystem
// ends the channel with a message and exit status 1: a refused request
// leaves clients such as Dropbear's waiting for a program that never
// starts.
func (sess *session) serve(reqs <-chan *gossh.Request) {
	started := false
	for req := range reqs {
		var payload struct{ Value string }
		switch {
		case started:
		case req.Type == "shell",
			req.Type == "subsystem" && gossh.Unmarshal(req.Payload, &payload) == nil && payload.Value != "sftp":
			// Accepted, and answered as by a program that prints why and
			// exits 1: clients print that, where a failed request leaves
			// some of them waiting.
			sess.log.Info("session program refused", "request", req.Type, "subsystem", payload.Value)
			req.Reply(true, nil)
			started = true
			go sess.run("refused", "")
			continue
		case req.Type == "subsystem" || req.Type == "exec":
			if gossh.Unmarshal(req.Payload, &payload) != nil {
				break
			}
			started = true
			req.Reply(true, nil)
			go sess.run(req.Type, payload.Value)
			continue
		}
		req.Reply(false, nil)
	}
	// The channel is closed: a program still running (a hash of a large
	// file, say) has no one to report to.
	sess.cancel()
	if started {
		<-sess.done
	}
}

// serviceOnly is what a client asking for a shell is told.
const serviceOnly = "This service allows sftp, scp, rsync and checksum commands only.\r\n"

// run executes the program, then sends exit-status and closes the channel,
// in that order: OpenSSH's clients report failure when the channel closes
// without an exit status.
func (sess *session) run(kind, arg string) {
	defer close(sess.done)
	code := 0
	func() {
		defer func() {
			if p := recover(); p != nil {
				sess.log.Error("session panic", "panic", p, "stack", string(debug.Stack()))
				code = 255
			}
		}()
		switch kind {
		case "refused":
			io.WriteString(sess.ch.Stderr(), serviceOnly)
			code = 1
		case "subsystem":
			code = sess.sftp()
		default:
			sess.st.commandStarted()
			defer sess.st.commandEnded()
			code = sess.exec(arg)
		}
	}()
	sess.ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{uint32(code)}))
	sess.ch.Close()
	sess.st.quiet()
}

func (sess *session) sftp() int {
	lim := sess.st.s.gate.limits()
	h := &sftpHandler{fs: sess.fs, user: sess.user.Name, log: sess.log, st: sess.st,
		acct: sess.st.s.accounts.get(sess.user.Name), maxHandles: int32(lim.MaxOpenHandles),
		maxPerUser: int32(lim.MaxOpenHandlesPerUser)}
	sess.log.Debug("sftp session started")
	err := serveSFTP(sess.ctx, replies{sess.ch, sess.st}, h, sess.st.touch, sess.quirks)
	if err != nil && err != io.EOF {
		sess.log.Info("sftp session ended", "err", err)
		return 1
	}
	sess.log.Debug("sftp session ended")
	return 0
}

// exec runs a built-in command. Nothing is ever handed to a shell or to
// another program.
func (sess *session) exec(cmdline string) int {
	args, err := splitWords(cmdline)
	if err != nil {
		fmt.Fprintf(sess.ch.Stderr(), "silo: %v\n", err)
		return 2
	}
	if len(args) == 0 {
		fmt.Fprintln(sess.ch.Stderr(), "silo: no command given")
		return 127
	}
	sess.log.Debug("command started", "command", args[0])
	stdio := cmdIO{sess.ch, sess.st}
	stderr := cmdIO{sess.ch.Stderr(), sess.st}
	if run := sess.st.s.testCommands[args[0]]; run != nil {
		return run(sess.ctx, stdio, stdio)
	}
	if checksum.Is(args[0]) {
		code := checksum.Run(sess.ctx, sess.fs, sess.st.mon, args[0], args[1:], stdio, stdio, stderr)
		sess.log.Info("command", "command", args[0], "args", len(args)-1, "status", code)
		return code
	}
	if rsync.IsServer(args) {
		code := rsync.Run(sess.ctx, sess.fs, rsync.Config{User: sess.user.Name, Log: sess.log, Activity: sess.st.mon}, args[1:], sess.ch, sess.ch, sess.ch.Stderr())
		sess.log.Info("command", "command", "rsync", "args", strings.Join(args[1:], " "), "status", code)
		return code
	}
	if args[0] == "scp" {
		code := scp.Run(sess.ctx, sess.fs, sess.st.mon, args[1:], stdio, stdio)
		sess.log.Info("command", "command", "scp", "args", strings.Join(args[1:], " "), "status", code)
		return code
	}
	sess.log.Info("command not supported", "command", args[0])
	fmt.Fprintf(sess.ch.Stderr(), "silo: command not supported: %s\n", args[0])
	return 127
}

// cmdIO is a command's side of its channel (stdin and stdout, or stderr).
// While the command waits on it, for input or for the client to take
// output, the command is not working, and the connection may go idle.
type cmdIO struct {
	rw io.ReadWriter
	st *connState
}

func (c cmdIO) Read(p []byte) (int, error) {
	c.st.waitIO()
	defer c.st.doneIO()
	return c.rw.Read(p)
}

func (c cmdIO) Write(p []byte) (int, error) {
	c.st.waitIO()
	defer c.st.doneIO()
	return c.rw.Write(p)
}

// replies is an SFTP session's channel: after each reply is sent, a server
// that is shutting down may close the connection.
type replies struct {
	gossh.Channel
	st *connState
}

func (r replies) Write(p []byte) (int, error) {
	n, err := r.Channel.Write(p)
	r.st.quiet()
	return n, err
}
