package vfs

import (
	"errors"
	"io/fs"
	"path"
	"strings"
	"syscall"
)

// maxLinks is how many symbolic links one resolution may follow, as the
// kernel's MAXSYMLINKS.
const maxLinks = 40

// resolve turns a root-relative name into the name of what it leads to,
// with no symbolic link left in it: each element is looked at on disk in
// turn, so the prefix already walked is always a real directory and a link
// met next (".." included) is spliced onto it exactly. A name that climbs
// above the home fails with ErrEscape. The last element need not exist.
//
// The answer can be stale as soon as it is given (a session may change
// links meanwhile): callers that act on it check that what they open is
// the file they found.
func (f *FS) resolve(r string) (string, error) {
	var done []string // elements of the resolved prefix
	todo := strings.Split(r, "/")
	links := 0
	for len(todo) > 0 {
		e := todo[0]
		todo = todo[1:]
		switch e {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return "", ErrEscape
			}
			done = done[:len(done)-1]
			continue
		}
		cur := path.Join(append(done, e)...)
		fi, err := f.root.Lstat(cur)
		if err != nil {
			if len(todo) == 0 && errors.Is(cause(err), fs.ErrNotExist) {
				done = append(done, e)
				break
			}
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = append(done, e)
			continue
		}
		if links++; links > maxLinks {
			return "", syscall.ELOOP
		}
		target, err := f.root.Readlink(cur)
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			return "", ErrEscape
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	if len(done) == 0 {
		return ".", nil
	}
	return path.Join(done...), nil
}
