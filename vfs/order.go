package vfs

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"slices"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Writes reach the disk in order, so that what is on disk of an upload is a
// prefix of what the client sent, with no holes, even if silo is killed. A
// write that arrives ahead of a gap (pkg/sftp runs several at once, by
// design) is held back in memory until the gap is filled. What is held is
// bounded per file, per home and per process; a write past a bound goes to
// disk at once, but only after a mark file has recorded the length of the
// prefix, so that the next Open of the home cuts the file back to it. No
// account's writes can take away another's crash safety: a full budget
// costs a system call per write, never a hole.
//
// OpenSSH's sftp has at most 64 requests of 255 KiB in flight (16 MiB), so
// an honest client never reaches the per-file bound.
var (
	maxHeldFile  int64 = 32 << 20
	maxHeldHome  int64 = 64 << 20
	maxHeldTotal int64 = 512 << 20
)

// maxSpans bounds the gaps one writer keeps track of: a client that writes
// thousands of pieces ahead of a gap is refused, not followed.
const maxSpans = 4096

var heldTotal atomic.Int64

// errTooScattered refuses a write that would leave more gaps than a writer
// tracks.
var errTooScattered = syscall.EAGAIN

// span is data beyond the prefix: held in memory, or already on disk
// (data nil) when a budget was full.
type span struct {
	off, n int64
	data   []byte
}

// hold takes n bytes of every budget, or of none.
func (w *writer) hold(n int64) bool {
	if w.heldN+n > maxHeldFile {
		return false
	}
	if w.fs.held.Add(n) > maxHeldHome {
		w.fs.held.Add(-n)
		return false
	}
	if heldTotal.Add(n) > maxHeldTotal {
		heldTotal.Add(-n)
		w.fs.held.Add(-n)
		return false
	}
	w.heldN += n
	return true
}

func (w *writer) unhold(n int64) {
	w.heldN -= n
	w.fs.held.Add(-n)
	heldTotal.Add(-n)
}

// ahead takes a write at off > hw: held back if the budgets allow,
// otherwise written now, behind a mark.
func (w *writer) ahead(p []byte, off int64) (int, error) {
	n := int64(len(p))
	i, _ := slices.BinarySearchFunc(w.spans, off, func(s span, off int64) int { return cmp.Compare(s.off, off) })
	if len(w.spans) >= maxSpans {
		return 0, errTooScattered
	}
	if w.hold(n) {
		// pkg/sftp reuses p once this returns: hold a copy.
		w.spans = slices.Insert(w.spans, i, span{off, n, slices.Clone(p)})
		return len(p), nil
	}
	if err := w.mark(true); err != nil {
		return 0, err
	}
	k, err := w.f.WriteAt(p, off)
	if err != nil {
		return k, err
	}
	if i > 0 && w.spans[i-1].data == nil && w.spans[i-1].off+w.spans[i-1].n == off {
		w.spans[i-1].n += n // the usual case: the next piece of a stream
	} else {
		w.spans = slices.Insert(w.spans, i, span{off, n, nil})
	}
	return len(p), nil
}

// drain puts the spans that now join the prefix on disk and extends the
// prefix over them; with all, it writes every held span, gaps or not (a
// read on the same handle must see them; a completed upload keeps them).
// The mark follows the prefix.
func (w *writer) drain(all bool) error {
	n := 0
	for ; n < len(w.spans) && w.spans[n].off <= w.hw; n++ {
		s := &w.spans[n]
		if s.data != nil {
			if _, err := w.f.WriteAt(s.data, s.off); err != nil {
				w.spans = slices.Delete(w.spans, 0, n)
				return err
			}
			w.unhold(s.n)
			s.data = nil
		}
		w.hw = max(w.hw, s.off+s.n)
	}
	w.spans = slices.Delete(w.spans, 0, n)
	if all {
		for i := range w.spans {
			s := &w.spans[i]
			if s.data == nil {
				continue
			}
			if err := w.mark(true); err != nil {
				return err
			}
			if _, err := w.f.WriteAt(s.data, s.off); err != nil {
				return err
			}
			w.unhold(s.n)
			s.data = nil
		}
	}
	return w.mark(w.spilled())
}

// dropHeld forgets what is held in memory, keeping track of what is on
// disk.
func (w *writer) dropHeld() {
	w.spans = slices.DeleteFunc(w.spans, func(s span) bool {
		if s.data != nil {
			w.unhold(s.n)
		}
		return s.data != nil
	})
}

// cut forgets what lies at or beyond size.
func (w *writer) cut(size int64) {
	kept := w.spans[:0]
	for _, s := range w.spans {
		if s.off >= size {
			if s.data != nil {
				w.unhold(s.n)
			}
			continue
		}
		if end := s.off + s.n; end > size {
			if s.data != nil {
				w.unhold(end - size)
				s.data = s.data[:size-s.off]
			}
			s.n = size - s.off
		}
		kept = append(kept, s)
	}
	clear(w.spans[len(kept):])
	w.spans = kept
}

// spilled reports data on disk beyond the prefix.
func (w *writer) spilled() bool {
	return slices.ContainsFunc(w.spans, func(s span) bool { return s.data == nil })
}

// mark records the prefix's length in the writer's mark file when need is
// set (data beyond the prefix is on disk, or about to be), creating the
// file the first time, and removes the mark file otherwise. Temp files of
// overwrites need none: a restart removes them whole.
func (w *writer) mark(need bool) error {
	if w.temp != "" {
		return nil
	}
	if !need {
		return w.unmark()
	}
	if w.markf != nil && w.marked == w.hw {
		return nil
	}
	if w.markf == nil {
		f, name, err := w.fs.createMark()
		if err != nil {
			return err
		}
		w.markf, w.markName = f, name
	}
	var b [24]byte
	binary.BigEndian.PutUint64(b[0:], w.id.dev)
	binary.BigEndian.PutUint64(b[8:], w.id.ino)
	binary.BigEndian.PutUint64(b[16:], uint64(w.hw))
	if _, err := w.markf.WriteAt(b[:], 0); err != nil {
		return err
	}
	w.marked = w.hw
	return nil
}

// unmark removes the mark file, if any.
func (w *writer) unmark() error {
	if w.markf == nil {
		return nil
	}
	w.markf.Close()
	w.markf = nil
	return w.fs.root.Remove(w.markName)
}

const markPrefix = ".silo-mark."

// createMark creates an empty mark file at the top of the home.
func (f *FS) createMark() (*os.File, string, error) {
	for range 5 {
		var rnd [8]byte
		rand.Read(rnd[:])
		name := markPrefix + hex.EncodeToString(rnd[:])
		mf, err := f.root.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return mf, name, nil
		}
		if !os.IsExist(err) {
			return nil, "", err
		}
	}
	return nil, "", syscall.EEXIST
}

// readMarks finds the mark files a crash left at the top of the home, with
// the prefix length each recorded.
func readMarks(root *os.Root) (map[fileID]int64, []string, error) {
	d, err := root.Open(".")
	if err != nil {
		return nil, nil, err
	}
	defer d.Close()
	cuts := make(map[fileID]int64)
	var names []string
	for {
		des, err := d.ReadDir(1024)
		for _, de := range des {
			if !markRE.MatchString(de.Name()) {
				continue
			}
			names = append(names, de.Name())
			var b [24]byte
			if mf, err := root.OpenFile(de.Name(), os.O_RDONLY|unix.O_NOFOLLOW, 0); err == nil {
				_, rerr := io.ReadFull(mf, b[:])
				mf.Close()
				if rerr == nil {
					id := fileID{binary.BigEndian.Uint64(b[0:]), binary.BigEndian.Uint64(b[8:])}
					hw := int64(binary.BigEndian.Uint64(b[16:]))
					if old, ok := cuts[id]; !ok || hw < old {
						cuts[id] = hw
					}
				}
			}
		}
		if err == io.EOF || len(des) == 0 {
			return cuts, names, nil
		}
		if err != nil {
			return nil, nil, err
		}
	}
}
