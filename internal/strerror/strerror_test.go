package strerror

import (
	"errors"
	"io/fs"
	"syscall"
	"testing"

	"silo/vfs"
)

func TestOf(t *testing.T) {
	at := func(err error) error { return &fs.PathError{Op: "op", Path: "/x", Err: err} }
	for _, tc := range []struct {
		err  error
		want string
	}{
		{at(syscall.ENOENT), "No such file or directory"},
		{at(syscall.ENOTEMPTY), "Directory not empty"},
		{at(syscall.EEXIST), "File exists"},
		{at(syscall.EISDIR), "Is a directory"},
		{at(syscall.ENOTDIR), "Not a directory"},
		{at(syscall.EACCES), "Permission denied"},
		{at(vfs.ErrEscape), "Permission denied"},
		{at(vfs.ErrNotRegular), "Not a regular file"},
		{at(vfs.ErrBusy), "file is being written by another session"},
		{at(&vfs.QuotaError{Files: true, Limit: 2}), "file limit reached: 2 files"},
		{at(syscall.ENOSPC), "No space left on device"},
		{at(syscall.EDQUOT), "No space left on device"},
		{at(syscall.EROFS), "Read-only file system"},
		{at(syscall.EMFILE), "Too many open files"},
		{at(syscall.ENAMETOOLONG), "File name too long"},
		{at(syscall.ELOOP), "Too many levels of symbolic links"},
		{at(errors.New("odd")), "Input/output error"},
	} {
		if got := Of(tc.err); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.err, got, tc.want)
		}
	}
}
