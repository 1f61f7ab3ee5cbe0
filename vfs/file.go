package vfs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBusy: another session is writing the file.
var ErrBusy = errors.New("file is being written by another session")

// maxFileSize bounds offsets and sizes; past it, arithmetic could overflow.
const maxFileSize = 1 << 62

// fileID identifies a file across renames.
type fileID struct{ dev, ino uint64 }

func idOf(fi fs.FileInfo) fileID {
	st := fi.Sys().(*syscall.Stat_t)
	return fileID{uint64(st.Dev), st.Ino}
}

// File is an open regular file. Reads and writes take explicit offsets and
// may run concurrently.
type File struct {
	f    *os.File
	fs   *FS
	name string
	w    *writer // nil unless open for writing

	done chan struct{} // closed by Close or Abort: a rate-limited wait ends
	stop sync.Once
}

func (f *FS) newFile(osf *os.File, name string, w *writer) *File {
	return &File{f: osf, fs: f, name: Clean(name), w: w, done: make(chan struct{})}
}

// ended wakes what waits on the file's rate limit.
func (f *File) ended() { f.stop.Do(func() { close(f.done) }) }

// Name returns the virtual path the file was opened by.
func (f *File) Name() string { return f.name }

// OpenFile opens a regular file. flag takes os.O_RDONLY, O_WRONLY, O_RDWR,
// O_CREATE, O_EXCL and O_TRUNC; O_APPEND is ignored, because writes always go
// to the offset the caller gives. Directories, FIFOs, sockets and devices are
// refused without blocking.
//
// Opened for writing, a file is one of three kinds:
//   - new (it did not exist): written in place, counted as one more file
//     from the start; a failed upload leaves what arrived, to be resumed;
//   - resumed (existing, no O_TRUNC): written in place; a failure keeps what
//     was there and what arrived;
//   - overwritten (existing, O_TRUNC): written to a hidden temp file beside
//     it, which replaces it only when Close succeeds. Until then the old file
//     still counts, and the new one may use the space the old one will give
//     back.
//
// A file has one writer at a time: opening one that is being written fails
// with ErrBusy.
func (f *FS) OpenFile(name string, flag int) (*File, error) {
	flag &= os.O_RDONLY | os.O_WRONLY | os.O_RDWR | os.O_CREATE | os.O_EXCL | os.O_TRUNC
	need := PermRead
	switch flag & (os.O_WRONLY | os.O_RDWR) {
	case os.O_WRONLY:
		need = PermWrite
	case os.O_RDWR:
		need = PermRead | PermWrite
	}
	r, err := f.relFor("open", name, need, true)
	if err != nil {
		return nil, wrap("open", name, err)
	}
	if flag&(os.O_WRONLY|os.O_RDWR) == 0 {
		flag &^= os.O_CREATE | os.O_EXCL | os.O_TRUNC
		osf, err := f.openRegular(r, flag)
		if err != nil {
			return nil, wrap("open", name, err)
		}
		return f.newFile(osf, name, nil), nil
	}
	file, err := f.openWrite(r, name, flag)
	return file, wrap("open", name, err)
}

// openRegular opens r and makes sure it is a regular file.
func (f *FS) openRegular(r string, flag int) (*os.File, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a peer.
	osf, err := f.openAt(r, flag|unix.O_NONBLOCK|unix.O_CLOEXEC, fileMode)
	if err != nil {
		return nil, err
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
		return nil, err
	}
	return osf, nil
}

func (f *FS) openWrite(r, name string, flag int) (*File, error) {
	access := flag & (os.O_WRONLY | os.O_RDWR)
	osf, err := f.openRegular(r, access)
	switch {
	case err == nil && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		osf.Close()
		return nil, syscall.EEXIST
	case err == nil && flag&os.O_TRUNC != 0:
		return f.openOverwrite(r, name, osf, access)
	case err == nil:
		return f.register(osf, name)
	case errors.Is(err, fs.ErrNotExist) && flag&os.O_CREATE != 0:
		if err := f.reserve(0, 1); err != nil {
			return nil, err
		}
		osf, err = f.openRegular(r, access|os.O_CREATE|os.O_EXCL)
		if err != nil {
			f.adjust(0, -1)
			if errors.Is(err, fs.ErrExist) && flag&os.O_EXCL == 0 {
				// Another session created it meanwhile: open it as
				// existing (which finds it busy, or takes it over).
				return f.openWrite(r, name, flag&^os.O_CREATE)
			}
			return nil, err
		}
		return f.register(osf, name)
	}
	return nil, err
}

// register makes osf, written in place, the file's one writer. A file just
// created is new, so it cannot be busy.
func (f *FS) register(osf *os.File, name string) (*File, error) {
	fi, err := osf.Stat()
	if err == nil {
		w := &writer{fs: f, f: osf, id: idOf(fi), size: fi.Size(), hw: fi.Size()}
		if err = f.addWriter(w); err == nil {
			return f.newFile(osf, name, w), nil
		}
	}
	osf.Close()
	return nil, err
}

// openOverwrite starts an overwrite of the file open as orig: the new
// content goes to a temp file in the same directory as the file itself, so
// that an overwrite through a symbolic link replaces the link's target, not
// the link, and only once the upload is complete.
func (f *FS) openOverwrite(r, name string, orig *os.File, access int) (*File, error) {
	kept := false // orig stays open as the writer's lock (lockOf)
	defer func() {
		if !kept {
			orig.Close()
		}
	}()
	fi, err := orig.Stat()
	if err != nil {
		return nil, err
	}
	if r, err = f.resolve(r); err != nil {
		return nil, err
	}
	dir, base, err := f.parent(r)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(int(dir.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil ||
		(fileID{uint64(st.Dev), st.Ino}) != idOf(fi) {
		// A link on the way changed since the open: the file found is
		// not the one opened.
		dir.Close()
		return nil, syscall.EAGAIN
	}
	var tmp *os.File
	var tname string
	for range 5 {
		var rnd [8]byte
		rand.Read(rnd[:])
		tname = tempPrefix + hex.EncodeToString(rnd[:])
		fd, err := unix.Openat(int(dir.Fd()), tname, access|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(fi.Mode().Perm()))
		if err == nil {
			tmp = os.NewFile(uintptr(fd), tname)
			break
		}
		if err != unix.EEXIST {
			dir.Close()
			return nil, err
		}
	}
	if tmp == nil {
		dir.Close()
		return nil, syscall.EEXIST
	}
	w := &writer{fs: f, f: tmp, id: idOf(fi), credit: fi.Size(), dir: dir, temp: tname, base: base}
	if f.ledger != nil {
		w.held = orig
	}
	if err := f.addWriter(w); err != nil {
		w.discard()
		return nil, err
	}
	kept = w.held != nil
	return f.newFile(tmp, name, w), nil
}

func (f *FS) addWriter(w *writer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.writers[w.id] != nil {
		return ErrBusy
	}
	if w.temp == "" {
		// Removed between our open and now (Remove checks for writers
		// under mu): writing it would count bytes nobody can see.
		if fi, err := w.f.Stat(); err != nil || fi.Sys().(*syscall.Stat_t).Nlink == 0 {
			return syscall.ENOENT
		}
	}
	if f.ledger != nil {
		// Other servers of the home see the writer by its lock (see
		// lockedElsewhere): in place the file itself, for an overwrite
		// the file it replaces.
		lf := w.f
		if w.held != nil {
			lf = w.held
		}
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == unix.EWOULDBLOCK {
			return ErrBusy
		} else if err != nil {
			return err
		}
	}
	// With a ledger, the lease is given back once the last writer has
	// closed, not while writers come and go (ledger.go).
	f.stopReturnLocked()
	f.writers[w.id] = w
	return nil
}

// lockedElsewhere reports whether the regular file base in dirfd, found as
// st, is being written by another server of the home (its writer's flock).
// When it is not, the shared lock taken to tell stays until release, so
// that no other server can start writing the file while the caller removes
// or replaces it. Without a ledger the home is this server's alone.
func (f *FS) lockedElsewhere(dirfd int, base string, st *unix.Stat_t) (release func(), busy bool) {
	if f.ledger == nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return func() {}, false
	}
	fd, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return func() {}, false // gone, or not ours to open: the operation says
	}
	if err := unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB); err == unix.EWOULDBLOCK {
		unix.Close(fd)
		return nil, true
	}
	return func() { unix.Close(fd) }, false
}

// writerOf returns the writer of the file at r (following links), if any.
func (f *FS) writerOf(r string) *writer {
	fi, err := f.root.Stat(r)
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writers[idOf(fi)]
}

// Size is the file's size as its handle sees it: for a file being
// written, what its writes have made of it so far (nothing yet, for an
// overwrite).
func (f *File) Size() (int64, error) {
	if f.w != nil {
		f.w.mu.Lock()
		defer f.w.mu.Unlock()
		return f.w.size, nil
	}
	fi, err := f.f.Stat()
	if err != nil {
		return 0, wrap("stat", f.name, err)
	}
	return fi.Size(), nil
}

// ReadAt reads len(p) bytes at off; io.EOF marks the end of the file.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if f.w != nil {
		f.w.flushHeld()
	}
	n, err := f.f.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = wrap("read", f.name, err)
	}
	// Charged after the read, by what it found: a read at the end of a
	// file takes nothing.
	if terr := f.throttleRead(n); terr != nil {
		return 0, terr
	}
	return n, err
}

// WriteAt writes p at off, if the quota has room for the growth.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if f.w == nil {
		return 0, wrap("write", f.name, syscall.EBADF)
	}
	if err := f.throttleWrite(len(p)); err != nil {
		return 0, err
	}
	n, err := f.w.writeAt(p, off)
	return n, wrap("write", f.name, err)
}

// Truncate sets the size of a file open for writing.
func (f *File) Truncate(size int64) error {
	if f.w == nil {
		return wrap("truncate", f.name, syscall.EBADF)
	}
	return wrap("truncate", f.name, f.w.truncate(size))
}

// Sync makes what has been written durable (fsync@openssh.com): the data
// now, and for an overwrite, the directory too once Close has renamed the
// new content into place.
func (f *File) Sync() error {
	if f.w == nil {
		return wrap("fsync", f.name, f.f.Sync())
	}
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	if f.w.closed {
		return wrap("fsync", f.name, os.ErrClosed)
	}
	if err := f.w.drain(true); err != nil {
		f.w.fail(err)
		return wrap("fsync", f.name, err)
	}
	f.w.synced = true
	return wrap("fsync", f.name, f.w.f.Sync())
}

// Abort marks an upload as broken off (the client went away): Close then
// keeps only what arrived in order, and an overwrite leaves the old file.
func (f *File) Abort() {
	f.ended()
	if f.w != nil {
		f.w.mu.Lock()
		f.w.aborted = true
		f.w.mu.Unlock()
	}
}

// Close finishes the file. For an overwrite, it is the moment the new
// content replaces the old; if any write failed, or the upload was aborted,
// the old file stays as it was and Close returns ErrUnchanged. A file
// written in place keeps what arrived in order, and Close reports only what
// goes wrong in closing: a failed write was reported by the write.
func (f *File) Close() error {
	f.ended()
	if f.w == nil {
		return wrap("close", f.name, f.f.Close())
	}
	return wrap("close", f.name, f.w.close())
}

// writer is the state of a file open for writing. Its writes are accounted
// against the quota by the growth they cause, and put on disk in order (see
// order.go).
type writer struct {
	fs *FS
	f  *os.File
	id fileID // of the file written, or, for an overwrite, of the file replaced

	// Overwrite: the temp file's directory and name, and the name it
	// replaces.
	dir        *os.File
	temp, base string
	credit     int64 // the replaced file's size, which counts already
	// held is the replaced file, kept open for its lock while other
	// servers share the home (addWriter).
	held *os.File

	mu      sync.Mutex
	size    int64  // apparent size, as accounted
	hw      int64  // [0, hw) holds the client's data without holes
	spans   []span // what lies beyond hw, by offset
	heldN   int64  // bytes of spans held in memory
	aborted bool   // the client went away
	synced  bool   // the client asked for durability (Sync)
	err     error  // the first write failure
	closed  bool

	// The mark file, while data beyond hw is on disk, and the hw it
	// holds.
	markf    *os.File
	markName string
	marked   int64
}

// charge is what a file of size bytes counts against the quota beyond what
// already counts: all of it in place, the excess over the replaced file for
// an overwrite.
func (w *writer) charge(size int64) int64 {
	return max(0, size-w.credit)
}

// accounted is what the writer counts in bytes beyond what already counted
// before it opened: the file's whole accounted size in place, an
// overwrite's charge.
func (w *writer) accounted() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.charge(w.size)
}

// grow accounts the file's apparent size growing to end.
func (w *writer) grow(end int64) error {
	if end <= w.size {
		return nil
	}
	if err := w.fs.reserve(w.charge(end)-w.charge(w.size), 0); err != nil {
		return err
	}
	w.size = end
	return nil
}

// shrink accounts the size falling to size.
func (w *writer) shrink(size int64) {
	if size < w.size {
		w.fs.adjust(w.charge(size)-w.charge(w.size), 0)
		w.size = size
	}
}

func (w *writer) writeAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if off < 0 || end > maxFileSize || end < off {
		return 0, syscall.EFBIG
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	if err := w.grow(end); err != nil {
		w.fail(err)
		return 0, err
	}
	if off > w.hw {
		n, err := w.ahead(p, off)
		if err != nil {
			w.fail(err)
		}
		return n, err
	}
	n, err := w.f.WriteAt(p, off)
	if err != nil {
		w.fail(err)
		return n, err
	}
	if end > w.hw {
		w.hw = end
		if err := w.drain(false); err != nil {
			w.fail(err)
			return n, err
		}
	}
	return n, nil
}

// flushHeld puts held-back writes on disk before a read on the same handle.
func (w *writer) flushHeld() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.drain(true); err != nil {
		w.fail(err)
	}
}

func (w *writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// errWriterGone: the writer closed meanwhile; act on the path instead.
var errWriterGone = errors.New("writer closed")

// truncate sets the size: setstat or fsetstat of a file being written.
func (w *writer) truncate(size int64) error {
	if size < 0 || size > maxFileSize {
		return syscall.EINVAL
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errWriterGone
	}
	if w.err != nil && size < w.hw {
		// After a failed write, what is on disk is the prefix that
		// arrived in order, and it stays: OpenSSH's sftp cuts a failed
		// resume back to the data it sent in this session (to 0 for
		// reput), which would destroy what was there before.
		size = w.hw
	}
	if err := w.grow(size); err != nil {
		return err
	}
	if err := w.f.Truncate(size); err != nil {
		return err
	}
	w.shrink(size)
	w.hw = min(w.hw, size)
	w.cut(size)
	return w.mark(w.spilled())
}

// chmod and chtimes act on the file being written (for an overwrite, the
// new content), so that fsetstat before close is not lost. Under mu, the
// file cannot be closed (and its descriptor reused) meanwhile.
func (w *writer) chmod(mode fs.FileMode) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errWriterGone
	}
	return w.f.Chmod(mode)
}

func (w *writer) chtimes(atime, mtime time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errWriterGone
	}
	tv := []unix.Timeval{unix.NsecToTimeval(atime.UnixNano()), unix.NsecToTimeval(mtime.UnixNano())}
	return unix.Futimes(int(w.f.Fd()), tv)
}

func (w *writer) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return os.ErrClosed
	}
	w.closed = true
	defer func() {
		w.fs.mu.Lock()
		delete(w.fs.writers, w.id)
		w.fs.armReturnLocked()
		w.fs.mu.Unlock()
		if w.held != nil {
			w.held.Close()
		}
	}()
	broken := w.aborted || w.err != nil
	if !broken {
		if err := w.drain(true); err != nil {
			w.fail(err)
			broken = true
		}
	}
	w.dropHeld()
	if broken && w.spilled() {
		// Only the prefix stays, as after a crash: a resume then
		// continues from an end with nothing missing before it. If
		// that fails, the mark stays for the next Open to act on.
		if err := w.f.Truncate(w.hw); err != nil {
			w.fail(err)
			w.markf.Close()
			w.markf = nil
		}
	}
	w.spans = nil
	if err := w.unmark(); err != nil {
		w.fail(err)
	}
	if w.temp != "" && broken {
		w.discard()
		return ErrUnchanged
	}
	// The size on disk settles the account: held-back data that was
	// dropped, or writes that failed, reserved more than was written.
	var err error
	if fi, serr := w.f.Stat(); serr == nil {
		disk := fi.Size()
		w.fs.adjust(w.charge(disk)-w.charge(w.size), 0)
		w.size = disk
		if fi.Sys().(*syscall.Stat_t).Nlink == 0 && w.temp == "" {
			// Removed while open (only possible outside silo): it counts
			// no more.
			w.fs.adjust(-w.size, -1)
		}
	}
	if w.fs.fsync {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if w.temp == "" {
		return err
	}
	defer w.dir.Close()
	if err != nil {
		unix.Unlinkat(int(w.dir.Fd()), w.temp, 0)
		w.fs.adjust(-w.charge(w.size), 0)
		return err
	}
	// The temp file takes the old one's place: the old file's bytes no
	// longer count, the new file's all do.
	if err := unix.Renameat(int(w.dir.Fd()), w.temp, int(w.dir.Fd()), w.base); err != nil {
		unix.Unlinkat(int(w.dir.Fd()), w.temp, 0)
		w.fs.adjust(-w.charge(w.size), 0)
		return err
	}
	w.fs.adjust(w.size-w.credit-w.charge(w.size), 0)
	if w.fs.fsync || w.synced {
		return w.dir.Sync()
	}
	return nil
}

// ErrUnchanged: an overwrite did not complete (a write failed, or the
// client went away), and the file it was to replace is as it was.
var ErrUnchanged = errors.New("the upload did not complete; the file is unchanged")

// discard drops an overwrite's temp file and its charge.
func (w *writer) discard() {
	w.f.Close()
	unix.Unlinkat(int(w.dir.Fd()), w.temp, 0)
	w.dir.Close()
	w.fs.adjust(-w.charge(w.size), 0)
}
