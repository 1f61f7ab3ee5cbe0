package vfs

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// Errors of vfs's own. Every error a method returns is an *fs.PathError whose
// Path is the virtual path and whose Err is one of these, an fs sentinel
// (through syscall.Errno) or an errno; test them with errors.Is.
var (
	// ErrEscape: the path, or a symbolic link on it, leads outside the home.
	ErrEscape = errors.New("leads outside the home")
	// ErrNotRegular: the file is neither a regular file nor a directory (a
	// FIFO, socket or device), which silo never reads or writes.
	ErrNotRegular = errors.New("not a regular file")
	// ErrUnsupported: the operation is not offered (hard links, ownership).
	ErrUnsupported = errors.New("operation not supported")
	// ErrIsDir and ErrNotDir name the two kinds of wrong file type.
	ErrIsDir  = syscall.EISDIR
	ErrNotDir = syscall.ENOTDIR
	// ErrNotEmpty: rmdir of a directory that has entries.
	ErrNotEmpty = syscall.ENOTEMPTY

	errInvalidName = syscall.EINVAL
)

// TargetError refuses a new symbolic link's target, saying why (but not
// what the target was: it may be a host path). It matches ErrEscape: such
// a target could lead outside the home.
type TargetError struct{ Why string }

func (e *TargetError) Error() string { return e.Why }

func (e *TargetError) Is(target error) bool { return target == ErrEscape }

// osErrEscapesText is the text of os.Root's unexported error for a path or
// link that leaves the root; it is the only way to recognise that error.
const osErrEscapesText = "path escapes from parent"

// wrap turns an error from the os layer into a *fs.PathError on the virtual
// path, dropping the root-relative name and any host path the os layer put
// in it.
func wrap(op, vpath string, err error) error {
	if err == nil {
		return nil
	}
	return &fs.PathError{Op: op, Path: Clean(vpath), Err: cause(err)}
}

// cause digs the errno or sentinel out of os-layer wrappers.
func cause(err error) error {
	for {
		var next error
		switch e := err.(type) {
		case *fs.PathError:
			next = e.Err
		case *os.LinkError:
			next = e.Err
		case *os.SyscallError:
			next = e.Err
		}
		if next == nil {
			break
		}
		err = next
	}
	if err.Error() == osErrEscapesText {
		return ErrEscape
	}
	return err
}
