package main

// Listening sockets come from one of three places: systemd's socket
// activation (LISTEN_FDS), the previous silo process during an upgrade, or
// net.Listen on `listen`. The handover reuses the systemd protocol: the old
// process starts the binary at its path again with the listeners as fds
// 3.. and LISTEN_FDS set, and the new one tells it on a pipe that it is
// serving. The kernel keeps one accept queue per socket, so a connection
// that arrives while both processes hold it is accepted by one of them,
// never refused.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// readyFDEnv names the fd on which an upgraded process reports that it
// serves; its presence marks the process as started by a handover.
const readyFDEnv = "SILO_HANDOVER_READY_FD"

// listeners returns the sockets passed by systemd or by the previous
// process ("passed"), or else one listening on addr ("listen").
func listeners(addr string) ([]net.Listener, string, error) {
	lns, err := inheritedListeners()
	if err != nil || len(lns) > 0 {
		return lns, "passed", err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	return []net.Listener{ln}, "listen", nil
}

// inheritedListeners returns the sockets passed by systemd or by the
// previous process, or none.
func inheritedListeners() ([]net.Listener, error) {
	if os.Getenv(readyFDEnv) != "" {
		// The parent cannot know the pid it starts before exec, which
		// LISTEN_PID must name; the marker stands in for it.
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	lns, err := activation.Listeners()
	if err != nil {
		return nil, err
	}
	for i, ln := range lns {
		if ln == nil {
			return nil, fmt.Errorf("passed socket %d is not a listening stream socket", i+3)
		}
	}
	return lns, nil
}

// signalReady tells the previous process, if any, that this one serves.
func signalReady() error {
	v := os.Getenv(readyFDEnv)
	if v == "" {
		return nil
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q is not a file descriptor", readyFDEnv, v)
	}
	f := os.NewFile(uintptr(fd), "handover")
	defer f.Close()
	_, err = f.Write([]byte{1})
	return err
}

// handover starts the binary at its path again with the same arguments,
// passing it lns, and returns its pid once it serves. The binary may have
// been replaced since this process started: that is an upgrade. If the new
// process fails before it is ready, the error says how and this one goes on.
func handover(ctx context.Context, lns []net.Listener) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var names []string
	for _, ln := range lns {
		fl, ok := ln.(interface{ File() (*os.File, error) })
		if !ok {
			return 0, fmt.Errorf("listener %s cannot be passed on", ln.Addr())
		}
		f, err := fl.File()
		if err != nil {
			return 0, err
		}
		files = append(files, f)
		names = append(names, "silo")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	files = append(files, w)

	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	for _, kv := range os.Environ() {
		// WATCHDOG_PID names this process; without it the new one takes
		// the watchdog over once systemd knows it as the main process.
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID", readyFDEnv:
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env,
		"LISTEN_FDS="+strconv.Itoa(len(lns)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		readyFDEnv+"="+strconv.Itoa(3+len(lns)))
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	w.Close()
	files = files[:len(files)-1]

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := make(chan bool, 1)
	go func() {
		var b [1]byte
		n, _ := r.Read(b[:])
		ready <- n == 1
	}()
	select {
	case ok := <-ready:
		if ok {
			return cmd.Process.Pid, nil
		}
		select {
		case err := <-exited:
			return 0, fmt.Errorf("new process (pid %d) exited before serving: %v", cmd.Process.Pid, err)
		case <-ctx.Done():
			cmd.Process.Kill()
			return 0, fmt.Errorf("new process (pid %d) closed its ready pipe without serving; killed", cmd.Process.Pid)
		}
	case <-ctx.Done():
		cmd.Process.Kill()
		return 0, fmt.Errorf("new process (pid %d) not ready in time; killed", cmd.Process.Pid)
	}
}

// connCounter counts the connections accepted through its listeners that
// are still open, so that a process that handed its sockets over can wait
// for its own sessions to end.
type connCounter struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed while n == 0
}

func newConnCounter() *connCounter {
	z := make(chan struct{})
	close(z)
	return &connCounter{zero: z}
}

func (c *connCounter) add(d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 && d > 0 {
		c.zero = make(chan struct{})
	}
	c.n += d
	if c.n == 0 {
		close(c.zero)
	}
}

// idle returns a channel closed when no counted connection is open.
func (c *connCounter) idle() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.zero
}

func (c *connCounter) listener(ln net.Listener) net.Listener { return &countedListener{ln, c} }

type countedListener struct {
	net.Listener
	c *connCounter
}

func (l *countedListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.c.add(1)
	return &countedConn{Conn: conn, c: l.c}, nil
}

type countedConn struct {
	net.Conn
	c    *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.c.add(-1) })
	return c.Conn.Close()
}
