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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

// FS is a user's home: its files, its limits and its usage. Its methods are
// safe for concurrent use by any number of sessions.
type FS struct {
	root  *os.Root
	fsync bool

	held atomic.Int64 // bytes of out-of-order writes held in memory (order.go)

	rules               atomic.Pointer[Rules] // nil: no rule (perm.go)
	checked             func()                // test hook: a permission check passed
	clock               Clock
	readRate, writeRate throttle // rate.go

	// leaseMu serialises the calls to ledger (ledger.go); it is taken
	// before mu, never after.
	ledger  Ledger
	leaseMu sync.Mutex

	mu      sync.Mutex // guards what follows; taken after a writer's mu, never before
	limits  Limits
	used    Usage
	writers map[fileID]*writer
	// With a ledger: what this FS leased, what it changed since it last
	// settled (never above lease while it grows), the extra room it last
	// asked for, whether a Settle is under way, the timer that gives the
	// lease back, and whether the FS is closing.
	lease, delta, chunk Usage
	settling            bool
	returner            *time.Timer
	closing             bool
}

// Options are the settings of a home.
type Options struct {
	Limits Limits
	// Fsync makes Close of a written file wait until it is on stable
	// storage, and a replacing rename until the directory is.
	Fsync bool
	// Rules are the account's permissions per directory (perm.go).
	Rules Rules
	// Rates cap the bytes per second of file data (rate.go); Clock is
	// what they wait on, the system's when nil.
	Rates Rates
	Clock Clock

	// Ledger shares the usage with the other servers of the home; nil:
	// this server is the only one. With a ledger, Open leaves temp files
	// and marks alone: another server may be writing them.
	Ledger Ledger
}

// Open opens the home at dir, creating it (mode 0700) if it does not exist,
// and computes its usage from disk. Temp files that a crash left behind are
// removed (without a ledger); the files they were to replace are intact.
func Open(dir string, opt Options) (*FS, error) {
	if err := os.MkdirAll(dir, homeMode); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	used, err := openUsage(root, opt.Ledger)
	if err != nil {
		root.Close()
		return nil, err
	}
	f := &FS{root: root, fsync: opt.Fsync, limits: opt.Limits, used: used, writers: make(map[fileID]*writer), clock: opt.Clock,
		ledger: opt.Ledger}
	if f.clock == nil {
		f.clock = systemClock{}
	}
	f.SetRules(opt.Rules)
	f.SetRates(opt.Rates)
	return f, nil
}

// openUsage counts a home being opened. Alone, it removes the temp files a
// crash left and cuts files back to their marks; with a ledger it leaves
// them, since another server may be writing them, and the ledger says what
// the home holds.
func openUsage(root *os.Root, ledger Ledger) (Usage, error) {
	if ledger != nil {
		used, err := scan(root, false, nil, nil)
		if err != nil {
			return used, err
		}
		return ledger.Open(used)
	}
	cuts, marks, err := readMarks(root)
	if err != nil {
		return Usage{}, err
	}
	used, err := scan(root, true, nil, cuts)
	if err != nil {
		return used, err
	}
	for _, m := range marks {
		root.Remove(m)
	}
	return used, nil
}

// rel maps a virtual path for an operation: names of silo's temp files are
// not the user's to touch.
func (f *FS) rel(name string) (string, error) {
	if reserved(Clean(name)) {
		return "", fs.ErrPermission
	}
	return rel(name)
}

// relFor is rel for an operation that needs the permission need at name
// (see Perm); follow says whether the operation follows a symbolic link as
// name's last element. Under permission rules the name returned is the one
// that was checked: with the links on it resolved (the last one too, with
// follow), so that the operation acts on what was checked (see openAt).
func (f *FS) relFor(op, name string, need Perm, follow bool) (string, error) {
	r, err := f.rel(name)
	if err != nil {
		return "", err
	}
	return f.allow(op, name, r, need, follow)
}

// Close releases the home. Files already open stay usable.
func (f *FS) Close() error {
	f.closeLedger()
	return f.root.Close()
}

// Stat follows symbolic links (inside the home only).
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	r, err := f.relFor("stat", name, permSee, true)
	if err != nil {
		return nil, wrap("stat", name, err)
	}
	fi, err := f.root.Stat(r)
	return fi, wrap("stat", name, err)
}

// Lstat describes a symbolic link itself rather than its target.
func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	r, err := f.relFor("lstat", name, permSee, false)
	if err != nil {
		return nil, wrap("lstat", name, err)
	}
	fi, err := f.root.Lstat(r)
	return fi, wrap("lstat", name, err)
}

// Mkdir creates one directory (mode 0755); it counts as an entry.
func (f *FS) Mkdir(name string) error {
	r, err := f.relFor("mkdir", name, PermWrite, false)
	if err == nil {
		err = f.reserve(EntryBytes, 1)
	}
	if err == nil {
		if err = f.mkdirAt(r); err != nil {
			f.adjust(-EntryBytes, -1)
		}
	}
	return wrap("mkdir", name, err)
}

// parent opens the directory that holds name and returns it with name's last
// element, for the *at system calls that must not follow that element.
func (f *FS) parent(r string) (*os.File, string, error) {
	if r == "." {
		return nil, "", syscall.EBUSY // the home itself
	}
	dir, base := path.Split(r)
	if dir == "" {
		dir = "."
	}
	d, err := f.openAt(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", err
	}
	return d, base, nil
}

// Remove deletes a file or a symbolic link (not its target), never a
// directory, and gives back what it counted. A file being written is busy.
func (f *FS) Remove(name string) error {
	r, err := f.relFor("remove", name, PermDelete, false)
	if err != nil {
		return wrap("remove", name, err)
	}
	d, base, err := f.parent(r)
	if err != nil {
		return wrap("remove", name, err)
	}
	defer d.Close()
	// The check and the unlink happen under mu, on the same directory
	// entry, so that no writer can take the file in between.
	f.mu.Lock()
	defer f.mu.Unlock()
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return wrap("remove", name, err)
	}
	if f.busyLocked(&st) {
		return wrap("remove", name, ErrBusy)
	}
	release, busy := f.lockedElsewhere(int(d.Fd()), base, &st)
	if busy {
		return wrap("remove", name, ErrBusy)
	}
	defer release()
	if err := unix.Unlinkat(int(d.Fd()), base, 0); err != nil {
		return wrap("remove", name, err)
	}
	f.forgetLocked(&st)
	return nil
}

// busyLocked reports whether st is a regular file being written. Caller
// holds mu.
func (f *FS) busyLocked(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFREG && f.writers[fileID{uint64(st.Dev), st.Ino}] != nil
}

// forgetLocked gives back what an entry that is gone counted. Caller holds
// mu.
func (f *FS) forgetLocked(st *unix.Stat_t) {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		f.addLocked(-st.Size, -1)
	case unix.S_IFLNK, unix.S_IFDIR:
		f.addLocked(-EntryBytes, -1)
	}
}

// Rmdir deletes an empty directory; a non-empty one fails with ErrNotEmpty
// and stays as it is.
func (f *FS) Rmdir(name string) error {
	r, err := f.relFor("rmdir", name, PermDelete, false)
	if err == nil {
		err = f.unlinkat(r, unix.AT_REMOVEDIR)
	}
	if err == nil {
		f.adjust(-EntryBytes, -1)
	}
	return wrap("rmdir", name, err)
}

func (f *FS) unlinkat(r string, flags int) error {
	d, base, err := f.parent(r)
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
// exists (posix-rename@openssh.com, rename(2)); what newname held is given
// back.
func (f *FS) PosixRename(oldname, newname string) error {
	return f.rename(oldname, newname, 0)
}

func (f *FS) rename(oldname, newname string, flags uint) error {
	or, err := f.relFor("rename", oldname, PermDelete, false)
	if err == nil {
		err = f.allowTree("rename", oldname, or, PermDelete)
	}
	if err != nil {
		return wrap("rename", oldname, err)
	}
	nr, err := f.relFor("rename", newname, PermWrite, false)
	if err == nil {
		err = f.allowTree("rename", newname, nr, PermWrite)
	}
	if err != nil {
		return wrap("rename", newname, err)
	}
	od, obase, err := f.parent(or)
	if err != nil {
		return wrap("rename", oldname, err)
	}
	defer od.Close()
	nd, nbase, err := f.parent(nr)
	if err != nil {
		return wrap("rename", newname, err)
	}
	defer nd.Close()
	// As in Remove: the checks and the move under mu.
	f.mu.Lock()
	defer f.mu.Unlock()
	var ost, nst unix.Stat_t
	if err := unix.Fstatat(int(od.Fd()), obase, &ost, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return wrap("rename", oldname, err)
	}
	if f.busyLocked(&ost) {
		return wrap("rename", oldname, ErrBusy)
	}
	release, busy := f.lockedElsewhere(int(od.Fd()), obase, &ost)
	if busy {
		return wrap("rename", oldname, ErrBusy)
	}
	defer release()
	replaced := unix.Fstatat(int(nd.Fd()), nbase, &nst, unix.AT_SYMLINK_NOFOLLOW) == nil
	if replaced && f.busyLocked(&nst) {
		return wrap("rename", newname, ErrBusy)
	}
	if replaced {
		release, busy := f.lockedElsewhere(int(nd.Fd()), nbase, &nst)
		if busy {
			return wrap("rename", newname, ErrBusy)
		}
		defer release()
	}
	err = unix.Renameat2(int(od.Fd()), obase, int(nd.Fd()), nbase, flags)
	if err == unix.EINVAL && flags&unix.RENAME_NOREPLACE != 0 {
		// The filesystem lacks RENAME_NOREPLACE: the check above, under mu,
		// then the move.
		if replaced {
			err = unix.EEXIST
		} else {
			err = unix.Renameat(int(od.Fd()), obase, int(nd.Fd()), nbase)
		}
	}
	switch {
	case err == unix.ENOENT:
		return wrap("rename", oldname, err)
	case err != nil:
		return wrap("rename", newname, err)
	}
	if replaced && (nst.Dev != ost.Dev || nst.Ino != ost.Ino) {
		f.forgetLocked(&nst)
	}
	return nil
}

// Symlink creates linkname pointing at target, which must be relative and
// free of ".." (see checkTarget); it is stored cleaned ("./a//b" as "a/b").
func (f *FS) Symlink(target, linkname string) error {
	r, err := f.relFor("symlink", linkname, PermWrite, false)
	if err != nil {
		return wrap("symlink", linkname, err)
	}
	if err := checkTarget(target); err != nil {
		return wrap("symlink", linkname, err)
	}
	if err := f.reserve(EntryBytes, 1); err != nil {
		return wrap("symlink", linkname, err)
	}
	if err := f.symlinkAt(path.Clean(target), r); err != nil {
		f.adjust(-EntryBytes, -1)
		return wrap("symlink", linkname, err)
	}
	return nil
}

// checkTarget accepts a link target only if it is relative and has no ".."
// element. Such a target walks only downward from the link's directory,
// through names that are entries of the directory reached so far: a
// directory inside the home, or a link inside it, which is itself such a
// target. So a host program that follows the link (a backup tool, a web
// server) ends inside the home or nowhere, and no later rename, rmdir or
// new link can change that, which a check of where a target leads at
// creation cannot promise: the directories it climbs out of can be
// replaced afterwards. The rule is lexical on purpose; it needs nothing on
// disk to hold.
func checkTarget(target string) error {
	refuse := func(why string) error { return &TargetError{why} }
	switch {
	case target == "":
		return refuse("empty link targets are not allowed")
	case strings.IndexByte(target, 0) >= 0:
		return refuse("link targets may not contain a NUL byte")
	case path.IsAbs(target):
		return refuse("absolute link targets are not allowed")
	case slices.Contains(strings.Split(target, "/"), ".."):
		return refuse(`link targets may not contain ".."`)
	}
	return nil
}

// Readlink returns a symbolic link's target. A link that breaks the rule of
// checkTarget (written by someone other than silo, or by an older version)
// is refused, so that a target that may lead out, or a host path, is never
// shown.
func (f *FS) Readlink(name string) (string, error) {
	r, err := f.relFor("readlink", name, permSee, false)
	if err != nil {
		return "", wrap("readlink", name, err)
	}
	target, err := f.root.Readlink(r)
	if err != nil {
		return "", wrap("readlink", name, err)
	}
	if checkTarget(target) != nil {
		// Not the TargetError, whose words would show the target.
		return "", wrap("readlink", name, ErrEscape)
	}
	return target, nil
}

// Chmod sets the permission bits; anything above 0777 is masked off, and
// the owner keeps read and write (and search, on a directory), so that silo
// can always account for and serve what the home holds. The home's own
// mode is left as it is.
func (f *FS) Chmod(name string, mode fs.FileMode) error {
	r, err := f.relFor("chmod", name, PermWrite, true)
	if err != nil {
		return wrap("chmod", name, err)
	}
	if r == "." {
		// The home stays 0700, which keeps other host users out of all
		// of it, whatever the user asks for.
		return nil
	}
	mode &= fs.ModePerm
	if w := f.writerOf(r); w != nil {
		if err := w.chmod(mode | 0o600); err != errWriterGone {
			return wrap("chmod", name, err)
		}
	}
	fi, err := f.root.Stat(r)
	if err == nil {
		if fi.IsDir() {
			mode |= 0o700
		} else {
			mode |= 0o600
		}
		err = f.chmodAt(r, mode)
	}
	return wrap("chmod", name, err)
}

// Chtimes sets the access and modification times.
func (f *FS) Chtimes(name string, atime, mtime time.Time) error {
	r, err := f.relFor("chtimes", name, PermWrite, true)
	if err != nil {
		return wrap("chtimes", name, err)
	}
	if w := f.writerOf(r); w != nil {
		if err := w.chtimes(atime, mtime); err != errWriterGone {
			return wrap("chtimes", name, err)
		}
	}
	return wrap("chtimes", name, f.chtimesAt(r, atime, mtime))
}

// Lchtimes sets the times of a symbolic link itself, or of whatever else
// name is, without following a link (lsetstat@openssh.com).
func (f *FS) Lchtimes(name string, atime, mtime time.Time) error {
	r, err := f.relFor("chtimes", name, PermWrite, false)
	if err != nil {
		return wrap("chtimes", name, err)
	}
	if fi, err := f.root.Lstat(r); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		return f.Chtimes(name, atime, mtime)
	}
	d, base, err := f.parent(r)
	if err != nil {
		return wrap("chtimes", name, err)
	}
	defer d.Close()
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	return wrap("chtimes", name, unix.UtimesNanoAt(int(d.Fd()), base, ts, unix.AT_SYMLINK_NOFOLLOW))
}

// Truncate sets a regular file's size, cutting it or extending it with a
// hole; growth counts against the quota. On a file being written it acts on
// what is being written (the new content of an overwrite).
func (f *FS) Truncate(name string, size int64) error {
	r, err := f.relFor("truncate", name, PermWrite, true)
	if err != nil {
		return wrap("truncate", name, err)
	}
	if w := f.writerOf(r); w != nil {
		if err := w.truncate(size); err != errWriterGone {
			return wrap("truncate", name, err)
		}
	}
	file, err := f.OpenFile(name, os.O_WRONLY)
	if err != nil {
		return err
	}
	err = file.Truncate(size)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	return err
}

// unlimitedFiles is what StatFS reports free of entries without a limit.
const unlimitedFiles = 1 << 31

// StatFS describes the filesystem that holds the home, as seen by the user:
// where a limit is set, the quota is the size and what it leaves is free;
// without one, the disk's free space is free and the size is that and the
// home's usage.
func (f *FS) StatFS() (unix.Statfs_t, error) {
	var st unix.Statfs_t
	d, err := f.root.Open(".")
	if err != nil {
		return st, wrap("statfs", "/", err)
	}
	defer d.Close()
	if err := unix.Fstatfs(int(d.Fd()), &st); err != nil {
		return st, wrap("statfs", "/", err)
	}
	f.mu.Lock()
	l, u := f.limits, f.used
	f.mu.Unlock()
	if l.Bytes > 0 {
		// Fragments of one byte make the figures exact: f_blocks and
		// f_bfree are in units of f_frsize.
		free := uint64(max(0, l.Bytes-u.Bytes))
		st.Frsize = 1
		st.Blocks = uint64(l.Bytes)
		st.Bfree, st.Bavail = free, free
	}
	if l.Bytes == 0 {
		// No quota: what is free on the disk, and the home's usage, but
		// not the size or usage of the rest of the host's disk.
		st.Blocks = st.Bavail + uint64(u.Bytes)/max(1, uint64(st.Frsize))
		st.Bfree = st.Bavail
	}
	// The file counts, the filesystem's id and its flags are the host's:
	// the user sees only the home's.
	st.Files, st.Ffree = uint64(u.Files)+uint64(unlimitedFiles), uint64(unlimitedFiles)
	if l.Files > 0 {
		st.Files = uint64(l.Files)
		st.Ffree = uint64(max(0, l.Files-u.Files))
	}
	st.Fsid, st.Flags = unix.Fsid{}, 0
	return st, nil
}

// ReadDir opens a directory for listing in batches, so that a directory of
// any size is never held in memory whole.
func (f *FS) ReadDir(name string) (*Dir, error) {
	r, err := f.relFor("opendir", name, PermList, true)
	if err != nil {
		return nil, wrap("opendir", name, err)
	}
	d, err := f.openAt(r, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
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
// none are left; with n <= 0, all that are left and a nil error, as
// os.File.Readdir.
func (d *Dir) Next(n int) ([]fs.FileInfo, error) {
	for {
		fis, err := d.f.Readdir(n)
		if err != nil && err != io.EOF {
			err = wrap("readdir", d.name, err)
		}
		// silo's temp files are not the user's.
		fis = slices.DeleteFunc(fis, func(fi fs.FileInfo) bool { return reservedRE.MatchString(fi.Name()) })
		// A batch of temp files only is not the end: read on, unless
		// Readdir has already read everything (n <= 0).
		if len(fis) > 0 || err != nil || n <= 0 {
			return fis, err
		}
	}
}

// Close ends the listing.
func (d *Dir) Close() error { return d.f.Close() }
