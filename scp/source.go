package scp

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"silo/activity"
	"silo/internal/strerror"
	"silo/vfs"
)

// sourceAll sends each argument, after the sink's go-ahead. An argument
// with glob characters is expanded in its directory, as the remote shell of
// a legacy scp server would.
func (s *session) sourceAll(args []string) error {
	if err := s.response(); err != nil {
		return errStop
	}
	for _, a := range args {
		names, err := s.expand(a)
		if err != nil {
			s.warn("%s: %s", a, strerror.Of(err))
			continue
		}
		for _, n := range names {
			if err := s.source(n); errors.Is(err, errStop) {
				return err
			}
		}
	}
	return nil
}

// expand matches the last element of a pattern against its directory.
func (s *session) expand(arg string) ([]string, error) {
	if !strings.ContainsAny(path.Base(arg), "*?[") {
		return []string{arg}, nil
	}
	if _, err := s.fs.Lstat(arg); err == nil {
		return []string{arg}, nil // a name that merely looks like a pattern
	}
	dir, pattern := path.Split(arg)
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fs.ErrNotExist
	}
	d, err := s.fs.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var names []string
	for {
		fis, err := d.Next(256)
		for _, fi := range fis {
			if ok, _ := path.Match(pattern, fi.Name()); ok && (!strings.HasPrefix(fi.Name(), ".") || strings.HasPrefix(pattern, ".")) {
				names = append(names, dir+fi.Name())
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(names) == 0 {
		return nil, fs.ErrNotExist
	}
	slices.Sort(names)
	return names, nil
}

// source sends one file or, with -r, one directory tree.
func (s *session) source(name string) error {
	if s.ctx.Err() != nil {
		return errStop
	}
	fi, err := s.fs.Stat(name)
	if err != nil {
		s.warn("%s: %s", name, strerror.Of(err))
		return nil
	}
	base := path.Base(vfs.Clean(name))
	if base == "/" {
		base = "." // the home itself: its entries go into the target
	}
	if strings.Contains(base, "\n") {
		s.warn("%s: skipping, filename contains a newline", name)
		return nil
	}
	switch {
	case fi.IsDir() && s.o.recursive:
		return s.sendDir(name, base, fi)
	case fi.IsDir() || !fi.Mode().IsRegular():
		s.warn("%s: not a regular file", name)
		return nil
	}
	return s.sendFile(name, base, fi)
}

// sendTimes sends the T record of -p.
func (s *session) sendTimes(fi fs.FileInfo) error {
	if !s.o.preserve {
		return nil
	}
	atime := fi.ModTime()
	if st, ok := statAtime(fi); ok {
		atime = st
	}
	fmt.Fprintf(s.out, "T%d 0 %d 0\n", fi.ModTime().Unix(), atime.Unix())
	return s.response()
}

func (s *session) sendFile(name, base string, fi fs.FileInfo) error {
	f, err := s.fs.OpenFile(name, os.O_RDONLY)
	if err != nil {
		s.rep.Refused("scp", activity.Open, vfs.Clean(name), err)
		s.warn("%s: %s", name, strerror.Of(err))
		return nil
	}
	defer f.Close()
	tr := s.rep.Start("scp", activity.Download, vfs.Clean(name), fi.Size())
	if err := s.sendTimes(fi); err != nil {
		return skipOrStop(err)
	}
	size := fi.Size()
	fmt.Fprintf(s.out, "C%04o %d %s\n", fi.Mode().Perm(), size, base)
	if err := s.response(); err != nil {
		return skipOrStop(err)
	}
	buf := make([]byte, min(size, 256<<10))
	var rerr error
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		if rerr == nil {
			var k int
			k, rerr = f.ReadAt(buf[:n], off)
			if rerr == io.EOF && int64(k) == n {
				rerr = nil
			}
			if rerr != nil {
				clear(buf[k:n]) // the file shrank: pad, to keep the stream in step
			}
		}
		if _, err := s.out.Write(buf[:n]); err != nil {
			tr.End(activity.ErrAborted)
			return errStop
		}
		tr.Add(n)
		off += n
	}
	if rerr != nil {
		tr.End(rerr)
		s.warn("%s: %s", name, strerror.Of(rerr))
	} else if err := s.ack(); err != nil {
		tr.End(activity.ErrAborted)
		return errStop
	} else {
		tr.End(nil)
	}
	return skipOrStop(s.response())
}

func (s *session) sendDir(name, base string, fi fs.FileInfo) error {
	if err := s.sendTimes(fi); err != nil {
		return skipOrStop(err)
	}
	fmt.Fprintf(s.out, "D%04o 0 %s\n", fi.Mode().Perm(), base)
	if err := s.response(); err != nil {
		return skipOrStop(err)
	}
	d, err := s.fs.ReadDir(name)
	if err != nil {
		s.rep.Refused("scp", activity.List, vfs.Clean(name), err)
		s.warn("%s: %s", name, strerror.Of(err))
	} else {
		defer d.Close()
		for {
			fis, err := d.Next(256)
			for _, e := range fis {
				if err := s.source(join(name, e.Name())); errors.Is(err, errStop) {
					return err
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				s.warn("%s: %s", name, strerror.Of(err))
				break
			}
		}
	}
	fmt.Fprint(s.out, "E\n")
	return skipOrStop(s.response())
}

// skipOrStop keeps a reported error from ending the transfer.
func skipOrStop(err error) error {
	if errors.Is(err, errSkip) {
		return nil
	}
	return err
}
