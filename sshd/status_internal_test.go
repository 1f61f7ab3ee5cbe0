package sshd

import (
	"errors"
	"io/fs"
	"log/slog"
	"syscall"
	"testing"

	"github.com/pkg/sftp"

	"silo/vfs"
)

// Every error vfs can return reaches an SFTP client as the status and words
// written here, whatever sentinels an errno also matches.
func TestStatusTable(t *testing.T) {
	h := &sftpHandler{log: slog.New(slog.DiscardHandler)}
	at := func(err error) error { return &fs.PathError{Op: "op", Path: "/d/x", Err: err} }
	for _, tc := range []struct {
		err  error
		code error
		msg  string
	}{
		{at(vfs.ErrBusy), sftp.ErrSSHFxFailure, "file is being written by another session: /d/x"},
		{at(vfs.ErrEscape), sftp.ErrSSHFxPermissionDenied, "permission denied: /d/x leads outside your home"},
		{at(vfs.ErrNotRegular), sftp.ErrSSHFxFailure, "not a regular file: /d/x"},
		{at(vfs.ErrUnsupported), sftp.ErrSSHFxOpUnsupported, "operation not supported: /d/x"},
		{at(vfs.ErrUnchanged), sftp.ErrSSHFxFailure, "upload not completed: /d/x is unchanged"},
		{at(&vfs.QuotaError{Left: 1 << 20, Limit: 2 << 20}), sftp.ErrSSHFxFailure, "quota exceeded: 1 MiB left"},
		{at(&vfs.QuotaError{Files: true, Limit: 3}), sftp.ErrSSHFxFailure, "file limit reached: 3 files"},
		{at(&vfs.TargetError{Why: "absolute link targets are not allowed"}), sftp.ErrSSHFxPermissionDenied, "permission denied: absolute link targets are not allowed: /d/x"},
		{at(syscall.ENOTEMPTY), sftp.ErrSSHFxFailure, "directory not empty: /d/x"},
		{at(syscall.EEXIST), sftp.ErrSSHFxFailure, "already exists: /d/x"},
		{at(syscall.ENOENT), sftp.ErrSSHFxNoSuchFile, "no such file or directory: /d/x"},
		{at(syscall.ENOTDIR), sftp.ErrSSHFxNoSuchFile, "not a directory: /d/x"},
		{at(syscall.EISDIR), sftp.ErrSSHFxFailure, "is a directory: /d/x"},
		{at(syscall.EACCES), sftp.ErrSSHFxPermissionDenied, "permission denied: /d/x"},
		{at(syscall.EPERM), sftp.ErrSSHFxPermissionDenied, "permission denied: /d/x"},
		{at(syscall.EBUSY), sftp.ErrSSHFxFailure, "cannot change the home directory itself: /d/x"},
		{at(syscall.EINVAL), sftp.ErrSSHFxBadMessage, "invalid argument: /d/x"},
		{at(syscall.EAGAIN), sftp.ErrSSHFxFailure, "busy, try again: /d/x"},
		{at(syscall.ENOSPC), sftp.ErrSSHFxFailure, "no space left on the server"},
		{at(syscall.EDQUOT), sftp.ErrSSHFxFailure, "no space left on the server"},
		{at(syscall.ENAMETOOLONG), sftp.ErrSSHFxFailure, "file name too long: /d/x"},
		{at(syscall.ELOOP), sftp.ErrSSHFxFailure, "too many levels of symbolic links: /d/x"},
		{at(syscall.EFBIG), sftp.ErrSSHFxFailure, "file too large: /d/x"},
		{at(syscall.EROFS), sftp.ErrSSHFxFailure, "read-only file system: /d/x"},
		{at(syscall.EMFILE), sftp.ErrSSHFxFailure, "too many open files: /d/x"},
		{at(errors.New("odd")), sftp.ErrSSHFxFailure, "failure: /d/x"},
	} {
		got := h.status(tc.err)
		var se *statusError
		if !errors.As(got, &se) || se.code != tc.code || se.msg != tc.msg {
			t.Errorf("%v: got %v %q, want %v %q", tc.err, se.code, se.msg, tc.code, tc.msg)
		}
	}
}
