package sshd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"silo/users"
	"silo/vfs"
)

// homes owns every open home: one vfs.FS per home directory, keyed by its
// cleaned, resolved path, whichever user names it. Sessions acquire a home
// and release it when they end; a home nobody has used for idleClose is
// closed, giving back its descriptor, and counted again from disk when it
// is next opened. Opening a home walks it to count its usage; the walk
// holds no lock that any other home needs.
type homes struct {
	root      string // the default homes' directory
	fsync     bool
	ledger    func(user string) vfs.Ledger // nil: usage is this server's alone
	idleClose time.Duration
	// Test hooks: opening is called before a home is opened (and walked),
	// closed after one is closed for being idle; clock is what rate limits
	// wait on (nil: the system's).
	opening, closed func(dir string)
	clock           vfs.Clock

	mu    sync.Mutex
	byDir map[string]*openHome
}

// openHome is one home in the registry. Lifecycle: created by the first
// acquire, which opens it while later ones wait on ready; it stays while
// refs > 0 and for idleClose after, unless its user is removed or its
// directory is replaced meanwhile.
type openHome struct {
	dir    string
	user   string
	ready  chan struct{} // closed once fs and err are set
	fs     *vfs.FS
	err    error
	id     fileKey // the directory opened, to notice a home moved away and back
	refs   int
	rescan int64 // the user's rescan counter when the usage was last computed
	timer  *time.Timer
}

type fileKey struct{ dev, ino uint64 }

func newHomes(root string, fsync bool, idleClose time.Duration, ledger func(string) vfs.Ledger) *homes {
	return &homes{root: root, fsync: fsync, idleClose: idleClose, ledger: ledger, byDir: make(map[string]*openHome)}
}

// errHomeTaken: a home is, or is inside, or holds, another user's home.
var errHomeTaken = errors.New("overlaps another user's home")

// acquire returns u's home, opened, and the function that releases it.
func (h *homes) acquire(u users.User) (*vfs.FS, func(), error) {
	dir, id, err := prepareHome(u.HomeDir(h.root))
	if err != nil {
		return nil, nil, fmt.Errorf("open home of %s: %w", u.Name, err)
	}
	h.mu.Lock()
	oh := h.byDir[dir]
	if oh != nil && (oh.user != u.Name || oh.id != id && isReady(oh)) {
		if oh.user != u.Name {
			h.mu.Unlock()
			return nil, nil, fmt.Errorf("home of %s %s: %w (%s)", u.Name, dir, errHomeTaken, oh.user)
		}
		// Replaced on disk since it was opened: the sessions still on the
		// old directory keep it, the new one is counted afresh.
		delete(h.byDir, dir)
		h.closeLocked(oh)
		oh = nil
	}
	if oh == nil {
		for d, other := range h.byDir {
			if other.user != u.Name && nested(d, dir) {
				h.mu.Unlock()
				return nil, nil, fmt.Errorf("home of %s %s: %w (%s)", u.Name, dir, errHomeTaken, other.user)
			}
		}
		oh = &openHome{dir: dir, user: u.Name, ready: make(chan struct{}), id: id, rescan: u.Rescan}
		h.byDir[dir] = oh
		h.mu.Unlock()
		if h.opening != nil {
			h.opening(dir)
		}
		opt := vfs.Options{Limits: limitsOf(u), Fsync: h.fsync, Rules: u.Rules(), Rates: u.Rates(), Clock: h.clock}
		if h.ledger != nil {
			opt.Ledger = h.ledger(u.Name)
		}
		oh.fs, oh.err = vfs.Open(dir, opt)
		close(oh.ready)
		h.mu.Lock()
		if oh.err != nil {
			if h.byDir[dir] == oh {
				delete(h.byDir, dir)
			}
			h.mu.Unlock()
			return nil, nil, fmt.Errorf("open home of %s: %w", u.Name, oh.err)
		}
	}
	oh.refs++
	if oh.timer != nil {
		oh.timer.Stop()
		oh.timer = nil
	}
	h.mu.Unlock()
	<-oh.ready
	if oh.err != nil {
		h.release(oh)
		return nil, nil, fmt.Errorf("open home of %s: %w", u.Name, oh.err)
	}
	applyAccount(oh.fs, u)
	return oh.fs, sync.OnceFunc(func() { h.release(oh) }), nil
}

// applyAccount gives an open home what its user's record says now: limits,
// permission rules, rates.
func applyAccount(fs *vfs.FS, u users.User) {
	fs.SetLimits(limitsOf(u))
	fs.SetRules(u.Rules())
	fs.SetRates(u.Rates())
}

func isReady(oh *openHome) bool {
	select {
	case <-oh.ready:
		return true
	default:
		return false
	}
}

// release ends one use of a home; the last one starts its idle timer.
func (h *homes) release(oh *openHome) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if oh.refs--; oh.refs > 0 {
		return
	}
	if h.byDir[oh.dir] != oh {
		h.closeLocked(oh) // dropped from the registry while in use
		return
	}
	oh.timer = time.AfterFunc(h.idleClose, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if oh.refs == 0 && h.byDir[oh.dir] == oh {
			delete(h.byDir, oh.dir)
			h.closeLocked(oh)
			if h.closed != nil {
				h.closed(oh.dir)
			}
		}
	})
}

// closeLocked closes a home that has left the registry, once nobody uses
// it. Caller holds mu.
func (h *homes) closeLocked(oh *openHome) {
	if oh.refs > 0 || !isReady(oh) || oh.fs == nil {
		return
	}
	if oh.timer != nil {
		oh.timer.Stop()
	}
	oh.fs.Close()
	oh.fs = nil
}

// each calls fn for every open home.
func (h *homes) each(fn func(user string, oh *openHome)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, oh := range h.byDir {
		if isReady(oh) && oh.err == nil && oh.fs != nil {
			fn(oh.user, oh)
		}
	}
}

// drop removes the named users' homes from the registry; each closes when
// its last session ends.
func (h *homes) drop(names []string) {
	gone := make(map[string]bool, len(names))
	for _, n := range names {
		gone[n] = true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for dir, oh := range h.byDir {
		if gone[oh.user] && isReady(oh) {
			delete(h.byDir, dir)
			h.closeLocked(oh)
		}
	}
}

// closeAll closes every home nobody uses, and the rest as their sessions
// end.
func (h *homes) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for dir, oh := range h.byDir {
		if isReady(oh) {
			delete(h.byDir, dir)
			h.closeLocked(oh)
		}
	}
}

// prepareHome creates a home (mode 0700) if it does not exist, and returns
// its resolved path and identity.
func prepareHome(dir string) (string, fileKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fileKey{}, err
	}
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fileKey{}, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fileKey{}, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return abs, fileKey{uint64(st.Dev), st.Ino}, nil
}

// nested reports whether two cleaned absolute paths are the same or one is
// inside the other.
func nested(a, b string) bool {
	a, b = strings.TrimSuffix(a, "/")+"/", strings.TrimSuffix(b, "/")+"/"
	return strings.HasPrefix(a, b) || strings.HasPrefix(b, a)
}
