// Package vfs is one user's jailed view of a home directory. Every operation
// takes a virtual path ("/" is the home) and goes through one os.Root opened
// on the home, so neither "..", nor a symbolic link planted on disk, nor a
// race with a rename can reach a file outside it. Errors carry the virtual
// path only, never a host path.
//
// vfs knows nothing of SSH or SFTP: it is to them what io/fs is to net/http.
package vfs

import (
	"io"
	"io/fs"
	"os"
	"path"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Modes of what silo creates. The home itself is 0700, which keeps other
// host users out of everything below it.
const (
	fileMode = 0o644
	dirMode  = 0o755
	homeMode = 0o700
)

// FS is a user's home. Its methods are safe for concurrent use.
type FS struct {
	root *os.Root
}

// Open opens the home at dir, creating it (mode 0700) if it does not exist.
func Open(dir string) (*FS, error) {
	if err := os.MkdirAll(dir, homeMode); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &FS{root: root}, nil
}

// Close releases the home. Files already open stay usable.
func (f *FS) Close() error { return f.root.Close() }

// Stat follows symbolic links (inside the home only).
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	r, err := rel(name)
	if err != nil {
		return nil, wrap("stat", name, err)
	}
	fi, err := f.root.Stat(r)
	return fi, wrap("stat", name, err)
}

// Lstat describes a symbolic link itself rather than its target.
func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	r, err := rel(name)
	if err != nil {
		return nil, wrap("lstat", name, err)
	}
	fi, err := f.root.Lstat(r)
	return fi, wrap("lstat", name, err)
}

// OpenFile opens a regular file. flag takes os.O_RDONLY, O_WRONLY, O_RDWR,
// O_CREATE, O_EXCL and O_TRUNC; O_APPEND is ignored, because writes always go
// to the offset the caller gives. Directories, FIFOs, sockets and devices are
// refused without blocking.
func (f *FS) OpenFile(name string, flag int) (*File, error) {
	r, err := rel(name)
	if err != nil {
		return nil, wrap("open", name, err)
	}
	flag &= os.O_RDONLY | os.O_WRONLY | os.O_RDWR | os.O_CREATE | os.O_EXCL | os.O_TRUNC
	// O_NONBLOCK: opening a FIFO must not wait for a peer.
	osf, err := f.root.OpenFile(r, flag|unix.O_NONBLOCK|unix.O_CLOEXEC, fileMode)
	if err != nil {
		return nil, wrap("open", name, err)
	}
	fi, err := osf.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = ErrNotRegular
		if fi.IsDir() {
			err = ErrIsDir
		}
	}
	if err != nil {
		osf.Close()
		return nil, wrap("open", name, err)
	}
	return &File{f: osf, name: Clean(name)}, nil
}

// Mkdir creates one directory (mode 0755).
func (f *FS) Mkdir(name string) error {
	r, err := rel(name)
	if err == nil {
		err = f.root.Mkdir(r, dirMode)
	}
	return wrap("mkdir", name, err)
}

// parent opens the directory that holds name and returns it with name's last
// element, for the *at system calls that must not follow that element.
func (f *FS) parent(name string) (*os.File, string, error) {
	r, err := rel(name)
	if err != nil {
		return nil, "", err
	}
	if r == "." {
		return nil, "", syscall.EBUSY // the home itself
	}
	dir, base := path.Split(r)
	if dir == "" {
		dir = "."
	}
	d, err := f.root.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", err
	}
	return d, base, nil
}

// Remove deletes a file or a symbolic link (not its target), never a
// directory.
func (f *FS) Remove(name string) error {
	return wrap("remove", name, f.unlinkat(name, 0))
}

// Rmdir deletes an empty directory; a non-empty one fails with ErrNotEmpty
// and stays as it is.
func (f *FS) Rmdir(name string) error {
	return wrap("rmdir", name, f.unlinkat(name, unix.AT_REMOVEDIR))
}

func (f *FS) unlinkat(name string, flags int) error {
	d, base, err := f.parent(name)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Unlinkat(int(d.Fd()), base, flags)
}

// Rename moves oldname to newname and fails with fs.ErrExist if newname
// exists (SFTP v3 rename). The check and the move are one system call.
func (f *FS) Rename(oldname, newname string) error {
	return f.rename(oldname, newname, unix.RENAME_NOREPLACE)
}

// PosixRename moves oldname to newname, replacing newname atomically if it
// exists (posix-rename@openssh.com, rename(2)).
func (f *FS) PosixRename(oldname, newname string) error {
	return f.rename(oldname, newname, 0)
}

func (f *FS) rename(oldname, newname string, flags uint) error {
	od, obase, err := f.parent(oldname)
	if err != nil {
		return wrap("rename", oldname, err)
	}
	defer od.Close()
	nd, nbase, err := f.parent(newname)
	if err != nil {
		return wrap("rename", newname, err)
	}
	defer nd.Close()
	err = unix.Renameat2(int(od.Fd()), obase, int(nd.Fd()), nbase, flags)
	if err == unix.EINVAL && flags&unix.RENAME_NOREPLACE != 0 {
		// The filesystem lacks RENAME_NOREPLACE: check, then move. The
		// window between the two only matters to this user's own sessions.
		if unix.Fstatat(int(nd.Fd()), nbase, new(unix.Stat_t), unix.AT_SYMLINK_NOFOLLOW) == nil {
			err = unix.EEXIST
		} else {
			err = unix.Renameat(int(od.Fd()), obase, int(nd.Fd()), nbase)
		}
	}
	if err == unix.ENOENT {
		return wrap("rename", oldname, err)
	}
	return wrap("rename", newname, err)
}

// Symlink creates linkname pointing at target. The target must be relative
// and, resolved from linkname's directory, stay inside the home.
func (f *FS) Symlink(target, linkname string) error {
	r, err := rel(linkname)
	if err != nil {
		return wrap("symlink", linkname, err)
	}
	if escapes(path.Dir(Clean(linkname)), target) {
		return wrap("symlink", linkname, ErrEscape)
	}
	return wrap("symlink", linkname, f.root.Symlink(target, r))
}

// Readlink returns a symbolic link's target. A link that leads outside the
// home (written there by someone other than silo) is refused, so that its
// target, a host path, is never shown.
func (f *FS) Readlink(name string) (string, error) {
	r, err := rel(name)
	if err != nil {
		return "", wrap("readlink", name, err)
	}
	target, err := f.root.Readlink(r)
	if err != nil {
		return "", wrap("readlink", name, err)
	}
	if escapes(path.Dir(Clean(name)), target) {
		return "", wrap("readlink", name, ErrEscape)
	}
	return target, nil
}

// Chmod sets the permission bits; anything above 0777 is masked off.
func (f *FS) Chmod(name string, mode fs.FileMode) error {
	r, err := rel(name)
	if err == nil {
		err = f.root.Chmod(r, mode&fs.ModePerm)
	}
	return wrap("chmod", name, err)
}

// Chtimes sets the access and modification times.
func (f *FS) Chtimes(name string, atime, mtime time.Time) error {
	r, err := rel(name)
	if err == nil {
		err = f.root.Chtimes(r, atime, mtime)
	}
	return wrap("chtimes", name, err)
}

// Truncate sets a regular file's size, cutting it or extending it with a
// hole.
func (f *FS) Truncate(name string, size int64) error {
	if size < 0 {
		return wrap("truncate", name, syscall.EINVAL)
	}
	file, err := f.OpenFile(name, os.O_WRONLY)
	if err != nil {
		return err
	}
	err = file.f.Truncate(size)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	return wrap("truncate", name, err)
}

// StatFS describes the filesystem that holds the home.
func (f *FS) StatFS() (unix.Statfs_t, error) {
	var st unix.Statfs_t
	d, err := f.root.Open(".")
	if err != nil {
		return st, wrap("statfs", "/", err)
	}
	defer d.Close()
	return st, wrap("statfs", "/", unix.Fstatfs(int(d.Fd()), &st))
}

// ReadDir opens a directory for listing in batches, so that a directory of
// any size is never held in memory whole.
func (f *FS) ReadDir(name string) (*Dir, error) {
	r, err := rel(name)
	if err != nil {
		return nil, wrap("opendir", name, err)
	}
	d, err := f.root.OpenFile(r, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, wrap("opendir", name, err)
	}
	return &Dir{f: d, name: Clean(name)}, nil
}

// Dir is an open directory listing.
type Dir struct {
	f    *os.File
	name string
}

// Next returns up to n more entries, described as by Lstat, and io.EOF once
// none are left.
func (d *Dir) Next(n int) ([]fs.FileInfo, error) {
	fis, err := d.f.Readdir(n)
	if err != nil && err != io.EOF {
		err = wrap("readdir", d.name, err)
	}
	return fis, err
}

// Close ends the listing.
func (d *Dir) Close() error { return d.f.Close() }

// File is an open regular file. Reads and writes take explicit offsets and
// may run concurrently.
type File struct {
	f    *os.File
	name string
}

// Name returns the virtual path the file was opened by.
func (f *File) Name() string { return f.name }

// ReadAt reads len(p) bytes at off; io.EOF marks the end of the file.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.f.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = wrap("read", f.name, err)
	}
	return n, err
}

// WriteAt writes p at off.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.f.WriteAt(p, off)
	return n, wrap("write", f.name, err)
}

// Stat describes the open file.
func (f *File) Stat() (fs.FileInfo, error) {
	fi, err := f.f.Stat()
	return fi, wrap("stat", f.name, err)
}

// Close closes the file.
func (f *File) Close() error {
	return wrap("close", f.name, f.f.Close())
}
