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
// is next opened. Opening a home walks it to count its usage, and closing
// one settles its usage with the ledger (a database, which may be slow or
// down): neither holds mu, so neither holds up any other home.
type homes struct {
	root      string // the default homes' directory
	fsync     bool
	ledger    func(user string) vfs.Ledger // nil: usage is this server's alone
	idleClose time.Duration
	// Test hooks: opening is called before a home is opened (and walked),
	// closed after one is closed for being idle, waiting when an acquire
	// waits for an earlier instance of the home to finish closing; clock
	// is what rate limits wait on (nil: the system's).
	opening, closed, waiting func(dir string)
	clock                    vfs.Clock

	mu    sync.Mutex
	byDir map[string]*openHome
	// closing holds the homes that have left the registry and are being
	// closed outside mu. A home of the same directory or user is opened
	// again only once that close has ended, so that the new instance's
	// walk and ledger entry never overlap the old one's last settle.
	closing map[*openHome]struct{}
}

// openHome is one home in the registry. Lifecycle: created by the first
// acquire, which opens it while later ones wait on ready; it stays while
// refs > 0 and for idleClose after, unless its user is removed or its
// directory is replaced meanwhile; then, once unused, it is retired
// (closed is made) and closed outside mu (closed is closed).
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
	closed chan struct{} // made when the close starts, closed when it has ended
}

type fileKey struct{ dev, ino uint64 }

func newHomes(root string, fsync bool, idleClose time.Duration, ledger func(string) vfs.Ledger) *homes {
	return &homes{root: root, fsync: fsync, idleClose: idleClose, ledger: ledger,
		byDir: make(map[string]*openHome), closing: make(map[*openHome]struct{})}
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
	var oh *openHome
	for {
		if done := h.closingLocked(dir, u.Name); done != nil {
			h.mu.Unlock()
			if h.waiting != nil {
				h.waiting(dir)
			}
			<-done
			h.mu.Lock()
			continue
		}
		oh = h.byDir[dir]
		if oh != nil && oh.user != u.Name {
			h.mu.Unlock()
			return nil, nil, fmt.Errorf("home of %s %s: %w (%s)", u.Name, dir, errHomeTaken, oh.user)
		}
		if oh == nil || oh.id == id || !isReady(oh) {
			break
		}
		// Replaced on disk since it was opened: the sessions still on the
		// old directory keep it, the new one is counted afresh.
		delete(h.byDir, dir)
		if old := h.retireLocked(oh); old != nil {
			h.mu.Unlock()
			h.shut(old)
			h.mu.Lock()
		}
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

// closingLocked returns the end of a close under way of a home in dir or
// of user, or nil. Caller holds mu.
func (h *homes) closingLocked(dir, user string) <-chan struct{} {
	for oh := range h.closing {
		if oh.dir == dir || oh.user == user {
			return oh.closed
		}
	}
	return nil
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
	if oh.refs--; oh.refs > 0 {
		h.mu.Unlock()
		return
	}
	if h.byDir[oh.dir] != oh {
		old := h.retireLocked(oh) // dropped from the registry while in use
		h.mu.Unlock()
		h.shut(old)
		return
	}
	oh.timer = time.AfterFunc(h.idleClose, func() {
		h.mu.Lock()
		var old *openHome
		if oh.refs == 0 && h.byDir[oh.dir] == oh {
			delete(h.byDir, oh.dir)
			old = h.retireLocked(oh)
		}
		h.mu.Unlock()
		if old != nil {
			h.shut(old)
			if h.closed != nil {
				h.closed(old.dir)
			}
		}
	})
	h.mu.Unlock()
}

// retireLocked takes a home that has left the registry out of use, once
// nobody uses it, and returns it for shut; nil if it is still in use, was
// never opened, or is closing already. Caller holds mu, and calls shut
// after unlocking it.
func (h *homes) retireLocked(oh *openHome) *openHome {
	if oh.refs > 0 || !isReady(oh) || oh.fs == nil || oh.closed != nil {
		return nil
	}
	if oh.timer != nil {
		oh.timer.Stop()
		oh.timer = nil
	}
	oh.closed = make(chan struct{})
	h.closing[oh] = struct{}{}
	return oh
}

// shut closes retired homes (nil ones are skipped). It must not be called
// with mu held: closing settles the home's usage with its ledger.
func (h *homes) shut(ohs ...*openHome) {
	for _, oh := range ohs {
		if oh == nil {
			continue
		}
		oh.fs.Close()
		h.mu.Lock()
		oh.fs = nil
		delete(h.closing, oh)
		h.mu.Unlock()
		close(oh.closed)
	}
}

// each calls fn for every open home. fn runs with mu held: it must not
// block.
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
// its last session ends. Those nobody uses close apart from the caller,
// which is the one goroutine that applies every account change (on a
// cluster, as the database pushes them): a ledger that is slow to answer
// must not hold up the changes behind it. closeAll waits for those closes.
func (h *homes) drop(names []string) {
	gone := make(map[string]bool, len(names))
	for _, n := range names {
		gone[n] = true
	}
	if old := h.retire(func(oh *openHome) bool { return gone[oh.user] }); len(old) > 0 {
		go h.shut(old...)
	}
}

// retire removes the homes that pass fn from the registry, and returns
// those nobody uses, for shut.
func (h *homes) retire(fn func(*openHome) bool) []*openHome {
	h.mu.Lock()
	defer h.mu.Unlock()
	var old []*openHome
	for dir, oh := range h.byDir {
		if isReady(oh) && fn(oh) {
			delete(h.byDir, dir)
			if r := h.retireLocked(oh); r != nil {
				old = append(old, r)
			}
		}
	}
	return old
}

// closeAll closes every home nobody uses, and the rest as their sessions
// end; it returns once every close under way has ended, the ones started
// before it included, so that the ledger has every lease back.
func (h *homes) closeAll() {
	h.shut(h.retire(func(*openHome) bool { return true })...)
	h.mu.Lock()
	var pending []chan struct{}
	for oh := range h.closing {
		pending = append(pending, oh.closed)
	}
	h.mu.Unlock()
	for _, c := range pending {
		<-c
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
