// Package scp serves OpenSSH's legacy scp protocol (what `scp -O` and PuTTY's
// `pscp -scp` speak) on a home: `scp -t` receives files into it, `scp -f`
// sends files from it. Everything goes through the home's vfs.FS, with its
// jail and quota; no program is started.
//
// The protocol (OpenSSH scp.c): the receiving side acknowledges each step
// with a zero byte, or answers with \x01 and a message (an error the other
// side prints, after which the transfer goes on) or \x02 (fatal). The
// sender sends, per file, an optional "T<mtime> 0 <atime> 0" line, then
// "C<mode> <size> <name>", the data and a zero byte; per directory
// "D<mode> 0 <name>", its entries and "E".
package scp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"syscall"
	"time"

	"silo/activity"
	"silo/vfs"
)

// options are the server-side flags OpenSSH's scp sends.
type options struct {
	sink, source bool // -t, -f
	recursive    bool // -r
	preserve     bool // -p
	targetDir    bool // -d: the target must be a directory
	args         []string
}

func parse(args []string) (options, error) {
	var o options
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			o.args = append(o.args, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			o.args = append(o.args, a)
			continue
		}
		for _, c := range a[1:] {
			switch c {
			case 't':
				o.sink = true
			case 'f':
				o.source = true
			case 'r':
				o.recursive = true
			case 'p':
				o.preserve = true
			case 'd':
				o.targetDir = true
			case 'v', 'q', 'E':
				// verbose, quiet, extended attributes: nothing to do
			default:
				return o, fmt.Errorf("unknown option -%c", c)
			}
		}
	}
	switch {
	case o.sink == o.source:
		return o, errors.New("exactly one of -t and -f is needed")
	case o.sink && len(o.args) != 1:
		return o, errors.New("-t takes one target")
	case o.source && len(o.args) == 0:
		return o, errors.New("-f takes at least one source")
	}
	return o, nil
}

// Run serves one scp command (args after "scp") over in and out, and
// returns the exit status: 0, or 1 if anything failed. Errors also reach
// the client as protocol error lines, which it prints. Transfers, changes
// and refusals are reported to rep (which may be nil).
func Run(ctx context.Context, fsys *vfs.FS, rep *activity.Conn, args []string, in io.Reader, out io.Writer) int {
	o, err := parse(args)
	s := &session{ctx: ctx, fs: fsys, rep: rep, in: bufio.NewReaderSize(in, 64<<10), out: out, o: o}
	if err != nil {
		s.fatal("%v", err)
		return 1
	}
	if o.sink {
		err = s.sink(o.args[0])
	} else {
		err = s.sourceAll(o.args)
	}
	if err != nil && !errors.Is(err, errStop) {
		s.fatal("%v", err)
		s.failed = true
	}
	if s.failed {
		return 1
	}
	return 0
}

type session struct {
	ctx    context.Context
	fs     *vfs.FS
	rep    *activity.Conn
	in     *bufio.Reader
	out    io.Writer
	o      options
	failed bool
}

// errStop ends a session whose peer sent a fatal error or went away.
var errStop = errors.New("scp: stopped")

// ack, warn and fatal are the three replies.
func (s *session) ack() error {
	_, err := s.out.Write([]byte{0})
	return err
}

// warn reports a failure the transfer survives; the client prints it as
// "scp: MESSAGE" and exits non-zero at the end.
func (s *session) warn(format string, a ...any) {
	s.failed = true
	msg := strings.ReplaceAll(fmt.Sprintf(format, a...), "\n", " ")
	fmt.Fprintf(s.out, "\x01scp: %s\n", msg)
}

func (s *session) fatal(format string, a ...any) {
	msg := strings.ReplaceAll(fmt.Sprintf(format, a...), "\n", " ")
	fmt.Fprintf(s.out, "\x02scp: %s\n", msg)
}

// maxLine bounds a protocol line; OpenSSH's own limit is smaller.
const maxLine = 8 << 10

func (s *session) readLine() (string, error) {
	var b []byte
	for {
		frag, err := s.in.ReadSlice('\n')
		b = append(b, frag...)
		if len(b) > maxLine {
			return "", errors.New("protocol error: line too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF && len(b) == 0 {
				return "", io.EOF
			}
			return "", errors.New("protocol error: lost connection")
		}
		return string(b[:len(b)-1]), nil
	}
}

// response reads the peer's reply to what was just sent: nil for an
// acknowledgement, errSkip for an error it reported (the item is skipped),
// errStop for a fatal one.
func (s *session) response() error {
	c, err := s.in.ReadByte()
	if err != nil {
		s.failed = true // the peer went away: what was sent may not have arrived
		return errStop
	}
	switch c {
	case 0:
		return nil
	case 1, 2:
		s.readLine()
		s.failed = true
		if c == 2 {
			return errStop
		}
		return errSkip
	}
	return errors.New("protocol error: unexpected reply")
}

var errSkip = errors.New("scp: skipped")

// validName checks a name from the protocol stream: one path element, not
// empty, "." or "..".
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// setstat applies -p's or a new file's mode, and -p's times, and reports
// each as a change.
func (s *session) setstat(np string, mode fs.FileMode, chmod bool, times *[2]time.Time) {
	if chmod {
		s.rep.Op("scp", activity.Setstat, vfs.Clean(np), "", fmt.Sprintf("chmod %04o", mode), s.fs.Chmod(np, mode))
	}
	if times != nil {
		s.rep.Op("scp", activity.Setstat, vfs.Clean(np), "", "times", s.fs.Chtimes(np, times[1], times[0]))
	}
}

// join makes a virtual path from a directory and a name.
func join(dir, name string) string { return path.Join(dir, name) }

// statAtime is a file's access time, where the system reports it.
func statAtime(fi fs.FileInfo) (time.Time, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(st.Atim.Sec, st.Atim.Nsec), true
}
