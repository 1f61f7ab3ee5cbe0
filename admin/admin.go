// Package admin is silo's local admin socket: a Unix socket, mode 0600,
// on which the running server answers a small HTTP+JSON API. `silo status`
// and `silo kick` use it; scripts may too (curl --unix-socket PATH
// http://silo/v1/status). It is never on the network, and needs no secret:
// the socket's permissions, and a check of the peer's user id, guard it.
//
// The API:
//
//	GET  /v1/status             the connections and running transfers:
//	                            activity.Status as JSON
//	POST /v1/kick?target=NAME   close every connection of the user NAME,
//	                            or the one whose session id is NAME:
//	                            {"closed": N}
//
// Errors are {"error": "..."} with a 4xx status.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"silo/activity"
)

// Server serves the API for one monitor.
type Server struct {
	mon  *activity.Monitor
	log  *slog.Logger
	http *http.Server
}

// New returns a server of mon's status; log receives kicks and refused
// peers.
func New(mon *activity.Monitor, log *slog.Logger) *Server {
	s := &Server{mon: mon, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/kick", s.kick)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s
}

// Serve answers on l until Shutdown or Close; it returns http.ErrServerClosed
// then.
func (s *Server) Serve(l net.Listener) error {
	return s.http.Serve(&peerListener{Listener: l, log: s.log})
}

// Shutdown stops serving once the requests being answered are done.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// Close stops serving at once.
func (s *Server) Close() error { return s.http.Close() }

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	reply(w, http.StatusOK, s.mon.Status())
}

func (s *Server) kick(w http.ResponseWriter, r *http.Request) {
	target := r.URL.Query().Get("target")
	if target == "" {
		reply(w, http.StatusBadRequest, map[string]string{"error": "target (a user name or a session id) is required"})
		return
	}
	n := s.mon.Kick(target)
	s.log.Info("kick", "target", target, "closed", n)
	reply(w, http.StatusOK, map[string]int{"closed": n})
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// peerListener drops connections from other users than the server's own
// (and root): the socket's mode already keeps them out, unless its
// directory was made more open than it should be.
type peerListener struct {
	net.Listener
	log *slog.Logger
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && (uid == uint32(os.Getuid()) || uid == 0) {
			return c, nil
		}
		l.log.Warn("admin socket: connection refused", "peer_uid", uid, "err", err)
		c.Close()
	}
}

func peerUID(c net.Conn) (uint32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.New("not a Unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Uid, nil
}

// Listener is the admin socket, listening.
type Listener struct {
	net.Listener
	path string
	id   fileID
}

type fileID struct{ dev, ino uint64 }

func idOf(path string) (fileID, bool) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, false
	}
	return fileID{uint64(st.Dev), st.Ino}, true
}

// Listen creates the socket at path, mode 0600, replacing a socket left
// there (by a process that crashed, or by the one this one upgrades: it
// goes on serving its own until it stops). Anything else at path is an
// error. The socket is bound in a private directory, given its mode and
// only then moved to path, so no one can connect to it before.
func Listen(path string) (*Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("admin socket %s: exists and is not a socket", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// A short name: a socket's path is limited to 107 bytes.
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".a")
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	sock := filepath.Join(tmp, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// The path changes below: Close removes it only if it is still this
	// socket (see Close).
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Rename(sock, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	id, _ := idOf(path)
	return &Listener{Listener: l, path: path, id: id}, nil
}

// Close stops listening and removes the socket, unless another process
// has put its own at the path since.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	if id, ok := idOf(l.path); ok && id == l.id {
		os.Remove(l.path)
	}
	return err
}

// Client speaks the API over the socket at a path.
type Client struct {
	path string
	http http.Client
}

// NewClient returns a client of the socket at path.
func NewClient(path string) *Client {
	c := &Client{path: path}
	c.http.Transport = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return c
}

// ErrNotRunning: no server answers on the socket.
var ErrNotRunning = errors.New("no silo server answers on the admin socket")

// Status fetches the server's status.
func (c *Client) Status(ctx context.Context) (activity.Status, error) {
	var st activity.Status
	err := c.call(ctx, http.MethodGet, "/v1/status", &st)
	return st, err
}

// Kick closes the connections of a user or of a session, and returns how
// many it closed.
func (c *Client) Kick(ctx context.Context, target string) (int, error) {
	var r struct{ Closed int }
	err := c.call(ctx, http.MethodPost, "/v1/kick?target="+url.QueryEscape(target), &r)
	return r.Closed, err
}

func (c *Client) call(ctx context.Context, method, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://silo"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("%s: %w", c.path, ErrNotRunning)
		case errors.Is(err, syscall.EACCES):
			return fmt.Errorf("%s: permission denied: run as the server's user, or as root", c.path)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("admin socket: %s: %s", resp.Status, e.Error)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
