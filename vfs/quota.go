package vfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"silo/internal/human"
)

// Limits caps a home's Usage. Zero means unlimited.
type Limits struct {
	Bytes, Files int64
}

// Usage is what a home holds. Bytes: the apparent sizes (st_size) of its
// regular files, and EntryBytes for each directory and symbolic link, the
// block each takes on disk (a link's target, at most 4095 bytes, fits in
// it). Files: its entries, regular files, directories and links. The home
// itself counts for nothing.
type Usage struct {
	Bytes, Files int64
}

// EntryBytes is what a directory or a symbolic link counts against the
// byte quota, so that neither can fill the disk outside the count.
const EntryBytes = 4096

// QuotaError is returned when an operation would take a home past its
// limits. It matches ErrQuotaExceeded or ErrFileLimit with errors.Is.
type QuotaError struct {
	Files bool  // the file count, not the bytes, is at its limit
	Left  int64 // bytes (or files) still free
	Limit int64
}

// ErrQuotaExceeded and ErrFileLimit are the two kinds of QuotaError.
var (
	ErrQuotaExceeded = errors.New("quota exceeded")
	ErrFileLimit     = errors.New("file limit reached")
)

func (e *QuotaError) Error() string {
	if e.Files {
		return fmt.Sprintf("file limit reached: %d files", e.Limit)
	}
	return "quota exceeded: " + human.Bytes(e.Left) + " left"
}

func (e *QuotaError) Is(target error) bool {
	return target == ErrQuotaExceeded && !e.Files || target == ErrFileLimit && e.Files
}

// The accounting. Invariant: used counts every byte and file in the home,
// plus the growth that writes in flight have reserved, and never passes the
// limits. Everything that can grow usage reserves first, under mu; what
// shrinks it releases.

// reserve adds bytes and files to the usage if the limits allow it.
func (f *FS) reserve(bytes, files int64) error {
	if f.ledger != nil {
		return f.reserveLeased(bytes, files)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.overLocked(bytes, files); err != nil {
		return err
	}
	f.used.Bytes += bytes
	f.used.Files += files
	return nil
}

// adjust changes the usage without a check: negative to give back what was
// freed, positive only for a correction found on disk.
func (f *FS) adjust(bytes, files int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addLocked(bytes, files)
}

// Room reports, with the QuotaError a write would get, that the quota has
// no room for bytes more. It reserves nothing: writes still reserve what
// they take.
func (f *FS) Room(bytes int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.overLocked(bytes, 0)
}

// overLocked returns the QuotaError that growing by bytes and files would
// meet, or nil. Caller holds mu.
func (f *FS) overLocked(bytes, files int64) error {
	if f.limits.Files > 0 && files > 0 && f.used.Files+files > f.limits.Files {
		return &QuotaError{Files: true, Left: max(0, f.limits.Files-f.used.Files), Limit: f.limits.Files}
	}
	if f.limits.Bytes > 0 && bytes > 0 && f.used.Bytes+bytes > f.limits.Bytes {
		return &QuotaError{Left: max(0, f.limits.Bytes-f.used.Bytes), Limit: f.limits.Bytes}
	}
	return nil
}

// Usage returns the home's current usage, writes in flight included.
func (f *FS) Usage() Usage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used
}

// SetLimits changes the limits. Usage already over a lowered limit stays;
// only growth is refused.
func (f *FS) SetLimits(l Limits) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limits = l
}

// Rescan recomputes the usage from disk, for files changed outside silo.
// A file being written counts with what its writer has accounted, not with
// what the walk happens to see of it. A write that completes while the walk
// runs can still be missed or counted twice; the next rescan or restart
// settles it.
func (f *FS) Rescan() error {
	f.mu.Lock()
	writers := make([]*writer, 0, len(f.writers))
	skip := make(map[fileID]bool)
	for id, w := range f.writers {
		writers = append(writers, w)
		if w.temp == "" {
			skip[id] = true
		}
	}
	f.mu.Unlock()
	u, err := scan(f.root, false, skip, nil)
	if err != nil {
		return err
	}
	for _, w := range writers {
		u.Bytes += w.accounted()
	}
	if f.ledger != nil {
		return f.recount(u)
	}
	f.mu.Lock()
	f.used = u
	f.mu.Unlock()
	return nil
}

// recount is the end of Rescan with a ledger: the walk replaces the
// committed usage, and what this FS changed since it last settled is in
// the walk already.
func (f *FS) recount(u Usage) error {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	f.mu.Lock()
	f.settling = true
	f.mu.Unlock()
	err := f.ledger.Recount(u)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.settling = false
	if err != nil {
		f.lease = f.delta // as in settleLocked: no room left without asking
		return err
	}
	// The lease is what delta had left of it: room still held.
	f.lease = Usage{max(0, f.lease.Bytes-f.delta.Bytes), max(0, f.lease.Files-f.delta.Files)}
	f.delta, f.used = Usage{}, u
	return nil
}

// Scan computes the usage of the home at dir without changing anything, for
// reports when no server holds the home.
func Scan(dir string) (Usage, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Usage{}, err
	}
	defer root.Close()
	return scan(root, false, nil, nil)
}

// reservedRE matches the names of silo's own files in a home, which are
// not the user's: overwrite temp files, each created beside the file it
// replaces and renamed over it when the upload completes, so that one still
// there when a home is opened is from a crash (the file it was to replace
// is intact, and the temp file is removed); and mark files (order.go).
var (
	reservedRE = regexp.MustCompile(`^\.silo-(tmp|mark)\.[0-9a-f]{16}$`)
	markRE     = regexp.MustCompile(`^\.silo-mark\.[0-9a-f]{16}$`)
)

const tempPrefix = ".silo-tmp."

// scan walks the home without following links. With clean, it removes
// stale temp files and cuts files to the prefix their marks recorded (cuts,
// from readMarks); without, it leaves temp files out of the count. Files
// in skip are left out too. Mark files are never counted.
func scan(root *os.Root, clean bool, skip map[fileID]bool, cuts map[fileID]int64) (Usage, error) {
	var u Usage
	err := fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.Type().IsRegular():
			if reservedRE.MatchString(d.Name()) {
				if clean && !markRE.MatchString(d.Name()) {
					return root.Remove(p)
				}
				return nil
			}
			fi, err := d.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			id := idOf(fi)
			if skip[id] {
				u.Files++ // counted by its writer in bytes only
				return nil
			}
			size := fi.Size()
			if hw, ok := cuts[id]; ok && clean && size > hw {
				if err := cutBack(root, p, id, hw); err != nil {
					return err
				}
				size = hw
			}
			u.Bytes += size
			u.Files++
		case d.Type()&fs.ModeSymlink != 0, d.IsDir() && p != ".":
			u.Bytes += EntryBytes
			u.Files++
		}
		return nil
	})
	if err != nil {
		return u, fmt.Errorf("scanning home: %w", cause(err))
	}
	return u, nil
}

// cutBack truncates the file at p, if it is still the file id, to the
// prefix that its writer's mark recorded before silo stopped.
func cutBack(root *os.Root, p string, id fileID, size int64) error {
	f, err := root.OpenFile(p, os.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || idOf(fi) != id {
		return err
	}
	return f.Truncate(size)
}

// reserved reports whether a virtual path names a temp file, or something
// inside one: such names belong to silo, not to the user.
func reserved(clean string) bool {
	return strings.Contains(clean, "/"+tempPrefix) || strings.Contains(clean, "/"+markPrefix)
}
