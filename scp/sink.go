package scp

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"silo/activity"
	"silo/internal/strerror"
	"silo/vfs"
)

// sink receives into target: a directory that the sent entries go into, or
// the name of the one file (or, with -r, the new directory) that arrives.
func (s *session) sink(target string) error {
	fi, err := s.fs.Stat(target)
	targIsDir := err == nil && fi.IsDir()
	if s.o.targetDir && !targIsDir {
		s.fatal("%s: Not a directory", target)
		s.failed = true
		return errStop
	}
	if err := s.ack(); err != nil {
		return errStop
	}
	return s.sinkEntries(target, targIsDir, true)
}

// sinkEntries handles the records for one directory level, until "E" or,
// at the top, the end of the stream.
func (s *session) sinkEntries(target string, targIsDir, top bool) error {
	var times *[2]time.Time
	for {
		if s.ctx.Err() != nil {
			return errStop
		}
		line, err := s.readLine()
		if err == io.EOF && top {
			return nil
		}
		if err != nil {
			return err
		}
		if line == "" {
			return errors.New("protocol error: empty record")
		}
		switch line[0] {
		case 1, 2: // the source's error, which the client has printed
			s.failed = true
			if line[0] == 2 {
				return errStop
			}
			continue
		case 'E':
			if err := s.ack(); err != nil {
				return errStop
			}
			return nil
		case 'T':
			t, err := parseTimes(line[1:])
			if err != nil {
				return err
			}
			times = &t
			if err := s.ack(); err != nil {
				return errStop
			}
			continue
		case 'C', 'D':
		default:
			return fmt.Errorf("protocol error: expected control record")
		}
		mode, size, name, err := parseEntry(line[1:])
		if err != nil {
			return err
		}
		if !validName(name) {
			s.fatal("error: unexpected filename: %s", name)
			s.failed = true
			return errStop
		}
		np := target
		if targIsDir {
			np = join(target, name)
		}
		t := times
		times = nil
		if line[0] == 'D' {
			if err := s.sinkDir(np, mode, t); err != nil {
				return err
			}
			continue
		}
		if err := s.receive(np, mode, size, t); err != nil {
			return err
		}
	}
}

// sinkDir receives a directory: it exists or is made, then its entries.
func (s *session) sinkDir(np string, mode fs.FileMode, times *[2]time.Time) error {
	if !s.o.recursive {
		s.fatal("received directory without -r")
		s.failed = true
		return errStop
	}
	fi, err := s.fs.Stat(np)
	switch {
	case err == nil && !fi.IsDir():
		s.warn("%s: Not a directory", np)
		return nil
	case err != nil:
		err := s.fs.Mkdir(np)
		s.rep.Op("scp", activity.Mkdir, vfs.Clean(np), "", "", err)
		if err != nil {
			s.warn("%s: %s", np, strerror.Of(err))
			return nil
		}
	}
	if err := s.ack(); err != nil {
		return errStop
	}
	if err := s.sinkEntries(np, true, false); err != nil {
		return err
	}
	if s.o.preserve {
		s.setstat(np, mode, true, times)
	}
	return nil
}

// receive reads one file's data into np. A failed write (the quota, say) is
// reported after the data is consumed, so the stream stays in step; an
// overwrite that fails leaves the old file as it was.
func (s *session) receive(np string, mode fs.FileMode, size int64, times *[2]time.Time) error {
	_, statErr := s.fs.Stat(np)
	existed := statErr == nil
	f, err := s.fs.OpenFile(np, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		s.rep.Refused("scp", activity.Open, vfs.Clean(np), err)
		s.warn("%s: %s", np, strerror.Of(err))
		return nil // the source skips this file's data
	}
	tr := s.rep.Start("scp", activity.Upload, vfs.Clean(np), size)
	if err := s.ack(); err != nil {
		f.Abort()
		f.Close()
		tr.End(activity.ErrAborted)
		return errStop
	}
	buf := make([]byte, min(size, 256<<10))
	var werr error
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		if _, err := io.ReadFull(s.in, buf[:n]); err != nil {
			f.Abort()
			f.Close()
			tr.End(activity.ErrAborted)
			return errStop
		}
		if werr == nil {
			var k int
			k, werr = f.WriteAt(buf[:n], off)
			tr.Add(int64(k))
		}
		off += n
	}
	if err := s.response(); err != nil {
		// The source could not read all of its file: what arrived is not
		// the file. The source still waits for a reply.
		f.Abort()
		f.Close()
		tr.End(activity.ErrAborted)
		if errors.Is(err, errStop) {
			return err
		}
		s.warn("%s: incomplete", np)
		return nil
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	tr.End(werr)
	if werr != nil {
		s.warn("%s: %s", np, strerror.Of(werr))
		return nil
	}
	// As OpenSSH: a new file takes the sender's mode, an existing one only
	// with -p.
	if !s.o.preserve {
		times = nil
	}
	s.setstat(np, mode, !existed || s.o.preserve, times)
	return s.ackOrStop()
}

func (s *session) ackOrStop() error {
	if err := s.ack(); err != nil {
		return errStop
	}
	return nil
}

// parseEntry reads "MODE SIZE NAME" (after the C or D).
func parseEntry(rec string) (fs.FileMode, int64, string, error) {
	bad := fmt.Errorf("protocol error: bad record")
	if len(rec) < 6 || rec[4] != ' ' {
		return 0, 0, "", bad
	}
	mode, err := strconv.ParseUint(rec[:4], 8, 32)
	if err != nil {
		return 0, 0, "", fmt.Errorf("protocol error: bad mode")
	}
	sizeStr, name, ok := strings.Cut(rec[5:], " ")
	if !ok {
		return 0, 0, "", bad
	}
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil || size < 0 || size > 1<<62 {
		return 0, 0, "", fmt.Errorf("protocol error: size not delimited")
	}
	return fs.FileMode(mode) & fs.ModePerm, size, name, nil
}

// parseTimes reads "MTIME 0 ATIME 0" (after the T): mtime, then atime.
func parseTimes(rec string) ([2]time.Time, error) {
	var mt, mu, at, au int64
	if n, err := fmt.Sscanf(rec, "%d %d %d %d", &mt, &mu, &at, &au); n != 4 || err != nil ||
		mu < 0 || mu > 999999 || au < 0 || au > 999999 {
		return [2]time.Time{}, fmt.Errorf("protocol error: bad time record")
	}
	return [2]time.Time{time.Unix(mt, mu*1000), time.Unix(at, au*1000)}, nil
}
