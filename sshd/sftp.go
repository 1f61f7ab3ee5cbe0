package sshd

// The SFTP subsystem. This file is the pkg/sftp adapter: it turns SFTP
// requests (draft-ietf-secsh-filexfer-02) into vfs calls, and vfs errors
// into SFTP status codes with a short message that names only virtual
// paths. sftpstream.go is the packet layer between the channel and
// pkg/sftp, for what pkg/sftp does not do (its comment says what and why);
// sftpext.go answers the extensions pkg/sftp does not know.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"silo/activity"
	"silo/vfs"
)

type sftpHandler struct {
	fs         *vfs.FS
	user       string
	log        *slog.Logger
	st         *connState
	stream     *sftpStream
	acct       *account
	maxHandles int32        // per session
	maxPerUser int32        // per account, all sessions together
	handles    atomic.Int32 // open in this session
}

var (
	errTooManyHandles     = &statusError{sftp.ErrSSHFxFailure, "too many open handles in this session"}
	errTooManyUserHandles = &statusError{sftp.ErrSSHFxFailure, "too many open handles for this account"}
	errServerHandles      = &statusError{sftp.ErrSSHFxFailure, "the server has too many open files; try again later"}
)

// takeHandle counts a handle about to be opened, if the session, the
// account and the server may have one more; release gives it back.
func (h *sftpHandler) takeHandle() error {
	if h.handles.Add(1) > h.maxHandles {
		h.handles.Add(-1)
		return errTooManyHandles
	}
	if h.acct.handles.Add(1) > h.maxPerUser {
		h.acct.handles.Add(-1)
		h.handles.Add(-1)
		return errTooManyUserHandles
	}
	if s := h.st.s; s.handles.Add(1) > s.maxHandles {
		s.handles.Add(-1)
		h.acct.handles.Add(-1)
		h.handles.Add(-1)
		h.log.Warn("file handle refused: the server is at its descriptor budget", "budget", s.maxHandles)
		return errServerHandles
	}
	return nil
}

func (h *sftpHandler) release() {
	h.st.s.handles.Add(-1)
	h.acct.handles.Add(-1)
	h.handles.Add(-1)
}

// sftpExtensions are the extensions pkg/sftp serves that silo announces,
// with their versions (OpenSSH's PROTOCOL). Hard links are refused, so they
// are not announced; clients then say "server does not support" instead of
// failing mysteriously. The stream answers INIT with these and silo's own
// (sftpExtensionsAdded).
var sftpExtensions = [][2]string{{"posix-rename@openssh.com", "1"}, {"statvfs@openssh.com", "2"}}

func init() {
	// pkg/sftp's own VERSION reply, which no client sees, from the same
	// list.
	names := make([]string, len(sftpExtensions))
	for i, e := range sftpExtensions {
		names[i] = e[0]
	}
	if err := sftp.SetSFTPExtensions(names...); err != nil {
		panic(err)
	}
}

// serveSFTP runs an SFTP session on ch until the client ends it or ctx is
// done: the stream (sftpstream.go) reads the requests, serves READ and
// WRITE on h's files itself and hands the others on to pkg/sftp's
// RequestServer, with h as its handlers, which it runs only while there
// are such requests. No allocator: its pages would stay with a session
// for its whole life.
func serveSFTP(ctx context.Context, ch io.ReadWriteCloser, h *sftpHandler, touch func(), quirks clientQuirks) error {
	stream := newSFTPStream(ctx, ch, touch, int(h.maxHandles), h.acct.inflight)
	stream.quirks = quirks
	stream.log = h.log
	h.stream = stream
	stream.ext = h.extension
	stream.realPath = h.RealPath
	handlers := sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}
	stream.newRS = func(c io.ReadWriteCloser) *sftp.RequestServer {
		return sftp.NewRequestServer(c, handlers, sftp.WithRSMaxTxPacket(maxSFTPData))
	}
	stream.idle, stream.onIdle = cmp.Or(h.st.s.rsIdle, defaultRSIdle), h.st.s.rsIdleHook
	if hook := h.st.s.rsHandOnHook; hook != nil {
		stream.handingOn = func(typ byte) { hook(typ, stream.idleCheck) }
	}
	// When the channel or the connection goes, nothing more will be
	// answered: wake a reader that waits for a reply.
	defer context.AfterFunc(ctx, stream.shut)()
	defer stream.releaseAll()
	return stream.serve()
}

// Fileread opens a file for reading.
func (h *sftpHandler) Fileread(r *sftp.Request) (_ io.ReaderAt, err error) {
	defer h.recover(&err)
	defer h.st.mon.Timed("sftp", "open", h.st.mon.Now())
	if err := h.takeHandle(); err != nil {
		return nil, err
	}
	f, err := h.fs.OpenFile(r.Filepath, os.O_RDONLY)
	if err != nil {
		h.release()
		h.st.mon.Refused("sftp", activity.Open, vfs.Clean(r.Filepath), err)
		return nil, h.status(err)
	}
	return h.newFile(f, true, false, false), nil
}

// recover turns a panic in a handler into a failure of that request, logged
// with its stack: pkg/sftp runs handlers on goroutines of its own, where a
// panic would end the whole server.
func (h *sftpHandler) recover(err *error) {
	if p := recover(); p != nil {
		h.log.Error("sftp handler panic", "panic", p, "stack", string(debug.Stack()))
		*err = &statusError{sftp.ErrSSHFxFailure, "internal error"}
	}
}

// Filewrite opens a file for writing without reading.
func (h *sftpHandler) Filewrite(r *sftp.Request) (_ io.WriterAt, err error) {
	defer h.recover(&err)
	return h.open(r)
}

// OpenFile opens a file for reading and writing. Without it pkg/sftp would
// serve a READ|WRITE open through Filewrite and answer reads with zeros.
func (h *sftpHandler) OpenFile(r *sftp.Request) (_ sftp.WriterAtReaderAt, err error) {
	defer h.recover(&err)
	return h.open(r)
}

// open maps SFTP open flags to vfs ones. SSH_FXF_APPEND is not O_APPEND on
// the descriptor (pwrite would ignore the offsets pkg/sftp's workers
// write at): the stream moves each write of an APPEND handle to the end.
func (h *sftpHandler) open(r *sftp.Request) (*sftpFile, error) {
	pf := r.Pflags()
	flag := os.O_WRONLY
	if pf.Read {
		flag = os.O_RDWR
	}
	if pf.Creat {
		flag |= os.O_CREATE
	}
	if pf.Trunc {
		flag |= os.O_TRUNC
	}
	if pf.Excl {
		flag |= os.O_EXCL
	}
	defer h.st.mon.Timed("sftp", "open", h.st.mon.Now())
	if err := h.takeHandle(); err != nil {
		return nil, err
	}
	f, err := h.fs.OpenFile(r.Filepath, flag)
	if err != nil {
		h.release()
		h.st.mon.Refused("sftp", activity.Open, vfs.Clean(r.Filepath), err)
		return nil, h.status(err)
	}
	var size int64
	if pf.Append {
		if size, err = f.Size(); err != nil {
			f.Close()
			h.release()
			return nil, h.status(err)
		}
	}
	file := h.newFile(f, pf.Read, true, pf.Append)
	file.appendAt.Store(size)
	return file, nil
}

// sftpFile is an open file handle: it translates the errors of a vfs.File
// for the client, and logs the transfer when it closes.
type sftpFile struct {
	f         *vfs.File
	h         *sftpHandler
	canRead   bool
	write     bool
	appending bool
	appendAt  atomic.Int64 // where the next write of an APPEND handle goes
	read      atomic.Int64
	written   atomic.Int64
	aborted   atomic.Bool
	failed    atomic.Pointer[error] // the first write that failed
	tr        *activity.Transfer    // in the live view until Close
}

func (h *sftpHandler) newFile(f *vfs.File, read, write, appending bool) *sftpFile {
	h.st.handles.Add(1)
	file := &sftpFile{f: f, h: h, canRead: read, write: write, appending: appending}
	if write {
		file.tr = h.st.mon.Start("sftp", activity.Upload, f.Name(), -1)
	} else {
		size, _ := f.Size()
		file.tr = h.st.mon.Start("sftp", activity.Download, f.Name(), size)
	}
	h.stream.opened(file)
	return file
}

func (f *sftpFile) ReadAt(p []byte, off int64) (n int, err error) {
	defer f.h.recover(&err)
	defer f.h.st.mon.Timed("sftp", "read", f.h.st.mon.Now())
	n, err = f.f.ReadAt(p, off)
	f.read.Add(int64(n))
	if !f.write {
		f.tr.Add(int64(n))
	}
	if err != nil && err != io.EOF {
		err = f.h.status(err)
	}
	return n, err
}

func (f *sftpFile) WriteAt(p []byte, off int64) (n int, err error) {
	defer f.h.recover(&err)
	defer f.h.st.mon.Timed("sftp", "write", f.h.st.mon.Now())
	n, err = f.f.WriteAt(p, off)
	f.written.Add(int64(n))
	f.tr.Add(int64(n))
	if err != nil {
		first := err // not the named result, which the return below rewrites
		f.failed.CompareAndSwap(nil, &first)
	}
	return n, f.h.status(err)
}

func (f *sftpFile) Close() (err error) {
	defer f.h.recover(&err)
	err = f.f.Close()
	f.h.release()
	f.h.st.handles.Add(-1)
	if !f.write && f.read.Load() == 0 {
		f.tr.Discard()
		return f.h.status(err)
	}
	result := err
	switch failed := f.failed.Load(); {
	case f.aborted.Load():
		result = activity.ErrAborted
	case failed != nil:
		result = *failed
	}
	n := f.read.Load()
	if f.write {
		n = f.written.Load()
	}
	f.tr.EndBytes(n, result)
	return f.h.status(err)
}

// TransferError is pkg/sftp telling that the session ended with the file
// still open: the upload is aborted, not completed.
func (f *sftpFile) TransferError(error) {
	f.aborted.Store(true)
	f.f.Abort()
}

// Filecmd runs the requests that change the tree.
func (h *sftpHandler) Filecmd(r *sftp.Request) (err error) {
	defer h.recover(&err)
	defer h.st.mon.Timed("sftp", strings.ToLower(r.Method), h.st.mon.Now())
	switch r.Method {
	case "Setstat":
		err = h.setstat(r)
	case "Rename":
		err = h.fs.Rename(r.Filepath, r.Target)
	case "Rmdir":
		err = h.fs.Rmdir(r.Filepath)
	case "Mkdir":
		err = h.fs.Mkdir(r.Filepath)
	case "Remove":
		err = h.fs.Remove(r.Filepath)
	case "Symlink":
		// pkg/sftp follows OpenSSH's order: Filepath is the link's
		// target (raw, as the client sent it) and Target the new link;
		// the stream has put other clients' fields in that order.
		err = h.fs.Symlink(r.Filepath, r.Target)
	case "Link":
		err = &statusError{sftp.ErrSSHFxOpUnsupported, "hard links are not supported: " + vfs.Clean(r.Target)}
	default:
		return sftp.ErrSSHFxOpUnsupported
	}
	h.reportCmd(r, err)
	return h.status(err)
}

// PosixRename replaces the target atomically if it exists.
func (h *sftpHandler) PosixRename(r *sftp.Request) (err error) {
	defer h.recover(&err)
	defer h.st.mon.Timed("sftp", "posix-rename", h.st.mon.Now())
	err = h.fs.PosixRename(r.Filepath, r.Target)
	h.st.mon.Op("sftp", activity.Rename, vfs.Clean(r.Filepath), vfs.Clean(r.Target), "replace", err)
	return h.status(err)
}

// setstat applies size (truncate or extend), permissions (masked to 0777) and
// times, in that order. Changing ownership is refused.
func (h *sftpHandler) setstat(r *sftp.Request) error {
	a := r.Attributes()
	if a == nil {
		return &statusError{sftp.ErrSSHFxBadMessage, "malformed attributes"}
	}
	flags := r.AttrFlags()
	if flags.UidGid {
		fi, err := h.fs.Lstat(r.Filepath)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || st.Uid != a.UID || st.Gid != a.GID {
			return &fs.PathError{Op: "chown", Path: vfs.Clean(r.Filepath), Err: vfs.ErrUnsupported}
		}
	}
	if flags.Size {
		if a.Size > 1<<62 {
			return &fs.PathError{Op: "truncate", Path: vfs.Clean(r.Filepath), Err: syscall.EFBIG}
		}
		if err := h.fs.Truncate(r.Filepath, int64(a.Size)); err != nil {
			return err
		}
	}
	if flags.Permissions {
		if err := h.fs.Chmod(r.Filepath, fs.FileMode(a.Mode)); err != nil {
			return err
		}
	}
	if flags.Acmodtime {
		if err := h.fs.Chtimes(r.Filepath, time.Unix(int64(a.Atime), 0), time.Unix(int64(a.Mtime), 0)); err != nil {
			return err
		}
	}
	return nil
}

// StatVFS answers statvfs@openssh.com (sftp's df) with the home's
// filesystem.
func (h *sftpHandler) StatVFS(r *sftp.Request) (_ *sftp.StatVFS, err error) {
	defer h.recover(&err)
	st, err := h.fs.StatFS()
	if err != nil {
		return nil, h.status(err)
	}
	return &sftp.StatVFS{
		Bsize: uint64(st.Bsize), Frsize: uint64(st.Frsize),
		Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail,
		Files: st.Files, Ffree: st.Ffree, Favail: st.Ffree,
		Fsid:    uint64(uint32(st.Fsid.Val[0]))<<32 | uint64(uint32(st.Fsid.Val[1])),
		Flag:    uint64(st.Flags),
		Namemax: uint64(st.Namelen),
	}, nil
}

// Filelist serves opendir/readdir ("List") and stat ("Stat").
func (h *sftpHandler) Filelist(r *sftp.Request) (_ sftp.ListerAt, err error) {
	defer h.recover(&err)
	defer h.st.mon.Timed("sftp", strings.ToLower(r.Method), h.st.mon.Now())
	switch r.Method {
	case "List":
		if err := h.takeHandle(); err != nil {
			return nil, err
		}
		d, err := h.fs.ReadDir(r.Filepath)
		if err != nil {
			h.release()
			h.st.mon.Refused("sftp", activity.List, vfs.Clean(r.Filepath), err)
			return nil, h.status(err)
		}
		return &dirLister{d: d, h: h}, nil
	case "Stat":
		fi, err := h.fs.Stat(r.Filepath)
		if err != nil {
			h.st.mon.Refused("sftp", activity.Stat, vfs.Clean(r.Filepath), err)
			return nil, h.status(err)
		}
		return oneInfo{fi}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

// Lstat describes a symbolic link itself.
func (h *sftpHandler) Lstat(r *sftp.Request) (_ sftp.ListerAt, err error) {
	defer h.recover(&err)
	fi, err := h.fs.Lstat(r.Filepath)
	if err != nil {
		return nil, h.status(err)
	}
	return oneInfo{fi}, nil
}

// RealPath canonicalises a path without touching the disk: the home is "/",
// and ".." never climbs above it.
func (h *sftpHandler) RealPath(p string) (string, error) {
	return vfs.Clean(p), nil
}

// Readlink returns a link's target if it stays inside the home.
func (h *sftpHandler) Readlink(p string) (_ string, err error) {
	defer h.recover(&err)
	t, err := h.fs.Readlink(p)
	h.st.mon.Refused("sftp", activity.Stat, vfs.Clean(p), err)
	return t, h.status(err)
}

// LookupUserName shows the account's own name as every file's owner in long
// listings: host user names mean nothing to the client.
func (h *sftpHandler) LookupUserName(string) string { return h.user }

// LookupGroupName likewise.
func (h *sftpHandler) LookupGroupName(string) string { return h.user }

type oneInfo struct{ fi fs.FileInfo }

func (o oneInfo) ListAt(buf []os.FileInfo, off int64) (int, error) {
	if off > 0 || len(buf) == 0 {
		return 0, io.EOF
	}
	buf[0] = o.fi
	return 1, io.EOF
}

// dirLister streams a directory: pkg/sftp asks for consecutive batches.
type dirLister struct {
	d    *vfs.Dir
	h    *sftpHandler
	next int64
}

func (l *dirLister) ListAt(buf []os.FileInfo, off int64) (_ int, err error) {
	defer l.h.recover(&err)
	if off != l.next {
		return 0, &statusError{sftp.ErrSSHFxFailure, "directory listing read out of order"}
	}
	fis, err := l.d.Next(len(buf))
	n := copy(buf, fis)
	l.next += int64(n)
	if err != nil && err != io.EOF {
		err = l.h.status(err)
	}
	return n, err
}

func (l *dirLister) Close() error {
	l.h.release()
	return l.d.Close()
}

// statusError is an SFTP status code with the message the client sees.
// pkg/sftp finds the code with errors.As.
type statusError struct {
	code error // one of sftp.ErrSSHFx*
	msg  string
}

func (e *statusError) Error() string { return e.msg }
func (e *statusError) Unwrap() error { return e.code }

// sftpErrors words vfs errors for SFTP clients, searched in order: an errno
// matches the fs sentinels too (ENOTEMPTY is fs.ErrExist), so the more
// precise come first. %s is the virtual path.
var sftpErrors = []struct {
	is   error
	code error
	msg  string
}{
	{vfs.ErrBusy, sftp.ErrSSHFxFailure, "file is being written by another session: %s"},
	{vfs.ErrEscape, sftp.ErrSSHFxPermissionDenied, "permission denied: %s leads outside your home"},
	{vfs.ErrNotRegular, sftp.ErrSSHFxFailure, "not a regular file: %s"},
	{vfs.ErrUnsupported, sftp.ErrSSHFxOpUnsupported, "operation not supported: %s"},
	{vfs.ErrUnchanged, sftp.ErrSSHFxFailure, "upload not completed: %s is unchanged"},
	{syscall.ENOTEMPTY, sftp.ErrSSHFxFailure, "directory not empty: %s"},
	{syscall.EISDIR, sftp.ErrSSHFxFailure, "is a directory: %s"},
	{syscall.ENOTDIR, sftp.ErrSSHFxNoSuchFile, "not a directory: %s"},
	{syscall.EBUSY, sftp.ErrSSHFxFailure, "cannot change the home directory itself: %s"},
	{syscall.EINVAL, sftp.ErrSSHFxBadMessage, "invalid argument: %s"},
	{syscall.EAGAIN, sftp.ErrSSHFxFailure, "busy, try again: %s"},
	{syscall.ENOSPC, sftp.ErrSSHFxFailure, "no space left on the server"},
	{syscall.EDQUOT, sftp.ErrSSHFxFailure, "no space left on the server"},
	{fs.ErrNotExist, sftp.ErrSSHFxNoSuchFile, "no such file or directory: %s"},
	{fs.ErrExist, sftp.ErrSSHFxFailure, "already exists: %s"},
	{fs.ErrPermission, sftp.ErrSSHFxPermissionDenied, "permission denied: %s"},
}

// status translates a vfs error into an SFTP status with a message a person
// can act on. Paths in it are virtual. An errno without words of its own
// gets its system text; anything else is logged here and reaches the client
// as a plain failure.
func (h *sftpHandler) status(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var se *statusError
	if errors.As(err, &se) {
		return err
	}
	p := "/"
	var pe *fs.PathError
	if errors.As(err, &pe) {
		p = pe.Path
	}
	var qe *vfs.QuotaError
	if errors.As(err, &qe) {
		return &statusError{sftp.ErrSSHFxFailure, qe.Error()}
	}
	var perm *vfs.PermissionError
	if errors.As(err, &perm) {
		return &statusError{sftp.ErrSSHFxPermissionDenied, "permission denied: " + p + ": " + perm.Error()}
	}
	var te *vfs.TargetError
	if errors.As(err, &te) {
		return &statusError{sftp.ErrSSHFxPermissionDenied, "permission denied: " + te.Error() + ": " + p}
	}
	for _, e := range sftpErrors {
		if errors.Is(err, e.is) {
			msg := e.msg
			if strings.Contains(msg, "%s") {
				msg = fmt.Sprintf(msg, p)
			}
			return &statusError{e.code, msg}
		}
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return &statusError{sftp.ErrSSHFxFailure, fmt.Sprintf("%s: %s", errno.Error(), p)}
	}
	h.log.Error("sftp operation failed", "err", err)
	return &statusError{sftp.ErrSSHFxFailure, "failure: " + p}
}
