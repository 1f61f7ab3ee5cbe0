// Package strerror words errors as the C library's strerror does, for the
// built-in commands whose messages are those of their GNU or OpenSSH
// originals ("md5sum: x: No such file or directory").
package strerror

import (
	"errors"
	"io/fs"
	"strings"
	"syscall"

	"silo/vfs"
)

// table is searched in order: an errno matches the fs sentinels too
// (ENOTEMPTY is fs.ErrExist), so the more precise come first.
var table = []struct {
	is   error
	text string
}{
	{vfs.ErrBusy, vfs.ErrBusy.Error()},
	{vfs.ErrEscape, "Permission denied"},
	{vfs.ErrNotRegular, "Not a regular file"},
	{vfs.ErrUnsupported, "Operation not supported"},
	{vfs.ErrUnchanged, vfs.ErrUnchanged.Error()},
	{syscall.ENOTEMPTY, "Directory not empty"},
	{syscall.EISDIR, "Is a directory"},
	{syscall.ENOTDIR, "Not a directory"},
	{syscall.EDQUOT, "No space left on device"},
	{fs.ErrNotExist, "No such file or directory"},
	{fs.ErrExist, "File exists"},
	{fs.ErrPermission, "Permission denied"},
}

// Of describes err. Quota errors keep their own words, which say what to
// do; an errno silo has no words for is described by its own text.
func Of(err error) string {
	var qe *vfs.QuotaError
	if errors.As(err, &qe) {
		return qe.Error()
	}
	for _, e := range table {
		if errors.Is(err, e.is) {
			return e.text
		}
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		t := errno.Error()
		return strings.ToUpper(t[:1]) + t[1:]
	}
	return "Input/output error"
}
