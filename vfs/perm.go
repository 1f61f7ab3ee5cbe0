package vfs

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Perm is a set of what an account may do at a path.
//
// What each operation needs, checked on the path it names (after following
// symbolic links on the way, and the last one too where the operation does):
//
//   - PermRead: open for reading (download, checksum, copy source).
//   - PermWrite: create, write, overwrite or truncate a file, mkdir,
//     symlink, chmod and times (setstat), rename to the path.
//   - PermDelete: remove, rmdir, rename from the path.
//   - PermList: read a directory.
//   - stat, lstat and readlink need any permission at the path, or a rule
//     below it that grants one, so that a client can walk to a directory it
//     may use (sftp's "cd /incoming", the stat OpenSSH's sftp makes before a
//     put) without seeing into the ones it may not. Realpath and statvfs
//     need nothing: they read no entry.
//
// A rename needs PermDelete at the source and PermWrite at the
// destination; moving a directory also needs PermDelete on every rule below
// the source and PermWrite on every rule below the destination, since it
// moves what those rules cover.
type Perm uint8

// The permissions, and the two sets with names of their own.
const (
	PermRead Perm = 1 << iota
	PermWrite
	PermDelete
	PermList

	PermNone Perm = 0
	PermAll       = PermRead | PermWrite | PermDelete | PermList
)

var permNames = []struct {
	p    Perm
	name string
}{{PermRead, "read"}, {PermWrite, "write"}, {PermDelete, "delete"}, {PermList, "list"}}

// ParsePerm reads a comma-separated list of read, write, delete and list,
// or all, or none.
func ParsePerm(s string) (Perm, error) {
	var p Perm
	for _, w := range strings.Split(s, ",") {
		w = strings.TrimSpace(w)
		switch w {
		case "all":
			p |= PermAll
			continue
		case "none":
			continue
		}
		known := false
		for _, n := range permNames {
			if n.name == w {
				p, known = p|n.p, true
			}
		}
		if !known {
			return 0, fmt.Errorf("unknown permission %q: want a comma list of read, write, delete, list, or all or none", w)
		}
	}
	return p, nil
}

// String lists the permissions as ParsePerm reads them.
func (p Perm) String() string {
	switch p {
	case PermAll:
		return "all"
	case PermNone:
		return "none"
	}
	var w []string
	for _, n := range permNames {
		if p&n.p != 0 {
			w = append(w, n.name)
		}
	}
	return strings.Join(w, ",")
}

// Rules give permissions per directory: the rule of the longest path that is
// the path operated on or one of its parents applies, so a rule covers its
// directory, everything below it, and a file of that name. A path that no
// rule covers allows everything; a nil or empty Rules restricts nothing.
// Paths are virtual and clean (Clean).
type Rules map[string]Perm

// ParseRules reads rules as written in a users file: virtual path to
// permission list. Each path must be absolute and clean.
func ParseRules(m map[string]string) (Rules, error) {
	if len(m) == 0 {
		return nil, nil
	}
	r := make(Rules, len(m))
	for p, s := range m {
		if err := CheckRulePath(p); err != nil {
			return nil, err
		}
		perm, err := ParsePerm(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		r[p] = perm
	}
	return r, nil
}

// CheckRulePath accepts a rule's path: absolute and clean, "/incoming" and
// not "incoming", "/incoming/" or "/a/../incoming".
func CheckRulePath(p string) error {
	if !strings.HasPrefix(p, "/") || Clean(p) != p || strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("permission path %q must be absolute and clean, like %q", p, Clean(p))
	}
	return nil
}

// At returns the permissions at the virtual path p and the path of the rule
// that gives them ("" where no rule covers p).
func (r Rules) At(p string) (Perm, string) {
	for q := Clean(p); ; q = path.Dir(q) {
		if perm, ok := r[q]; ok {
			return perm, q
		}
		if q == "/" {
			return PermAll, ""
		}
	}
}

// below reports the rules strictly below the virtual directory p.
func (r Rules) below(p string) []string {
	prefix := strings.TrimSuffix(p, "/") + "/"
	var q []string
	for k := range r {
		if strings.HasPrefix(k, prefix) {
			q = append(q, k)
		}
	}
	slices.Sort(q)
	return q
}

// PermissionError refuses an operation the account's rules do not allow. It
// matches fs.ErrPermission.
type PermissionError struct {
	Need Perm   // what the operation needs and the rule does not give
	Rule string // the path of the rule that applies
	Have Perm   // what that rule gives
}

func (e *PermissionError) Error() string {
	what := map[Perm]string{PermRead: "reading", PermWrite: "writing", PermDelete: "deleting", PermList: "listing"}[e.Need]
	if what == "" {
		what = "access"
	}
	return fmt.Sprintf("%s is not allowed here (%s: %s)", what, e.Rule, e.Have)
}

func (e *PermissionError) Is(target error) bool { return target == fs.ErrPermission }

// permSee stands for what stat needs: any permission.
const permSee Perm = 1 << 7

// allowAt checks that the rules give need at the virtual path p.
func (r Rules) allowAt(p string, need Perm) error {
	have, rule := r.At(p)
	if need == permSee {
		if have != PermNone {
			return nil
		}
		for _, q := range r.below(p) {
			if r[q] != PermNone {
				return nil
			}
		}
		return &PermissionError{Need: PermNone, Rule: rule, Have: have}
	}
	if miss := need &^ have; miss != 0 {
		return &PermissionError{Need: lowest(miss), Rule: rule, Have: have}
	}
	return nil
}

// lowest keeps one permission of a set, for a message that names one.
func lowest(p Perm) Perm { return p & -p }

// rulesNow returns the home's rules; nil when there are none.
func (f *FS) rulesNow() Rules {
	if r := f.rules.Load(); r != nil {
		return *r
	}
	return nil
}

// SetRules replaces the home's permission rules; operations started
// afterwards are checked against them.
func (f *FS) SetRules(r Rules) {
	if len(r) == 0 {
		f.rules.Store(nil)
		return
	}
	r = maps.Clone(r)
	f.rules.Store(&r)
}

// allow checks that the rules give need for the root-relative name r (from
// rel, which name was mapped by). With follow, a symbolic link as the last
// element is followed, as the operation itself will; links on the way are
// always followed. It returns the name to operate on: r without rules, and
// otherwise the name checked, with its links resolved. A name that cannot
// be resolved (a directory on the way is missing, say) fails as the
// operation would.
func (f *FS) allow(op, name, r string, need Perm, follow bool) (string, error) {
	rules := f.rulesNow()
	if rules == nil {
		return r, nil
	}
	v, err := f.resolvedPath(r, follow)
	if err != nil {
		return "", wrap(op, name, err)
	}
	if err := rules.allowAt(v, need); err != nil {
		return "", &fs.PathError{Op: op, Path: Clean(name), Err: err}
	}
	if f.checked != nil {
		f.checked()
	}
	if v == "/" {
		return ".", nil
	}
	return v[1:], nil
}

// openAt opens the root-relative name r. Under permission rules, r is the
// name allow checked, whose links were resolved then, and it is opened only
// if no link has appeared on it since (openat2's RESOLVE_NO_SYMLINKS): a
// session that swaps a link between the check and the open gets "try
// again", never the file the swapped link leads to. Without openat2
// (Linux before 5.6) it is opened through the root as without rules.
func (f *FS) openAt(r string, flag int, mode os.FileMode) (*os.File, error) {
	if f.rulesNow() == nil {
		return f.root.OpenFile(r, flag, mode)
	}
	d, err := f.root.Open(".")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	how := unix.OpenHow{Flags: uint64(flag) | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS}
	if flag&os.O_CREATE != 0 {
		how.Mode = uint64(mode.Perm()) // openat2 refuses a mode without O_CREAT
	}
	for {
		fd, err := unix.Openat2(int(d.Fd()), r, &how)
		switch err {
		case nil:
			return os.NewFile(uintptr(fd), r), nil
		case unix.EINTR:
			continue
		case unix.ENOSYS, unix.EPERM:
			// No openat2, or a seccomp filter that refuses it.
			return f.root.OpenFile(r, flag, mode)
		case unix.ELOOP, unix.EXDEV:
			return nil, syscall.EAGAIN
		}
		return nil, err
	}
}

// mkdirAt and symlinkAt create the root-relative name r. Under permission
// rules they do it in r's directory opened as openAt opens it, so that a
// link put on the checked path since is not followed.
func (f *FS) mkdirAt(r string) error {
	if f.rulesNow() == nil {
		return f.root.Mkdir(r, dirMode)
	}
	return f.inParent(r, func(dir int, base string) error { return unix.Mkdirat(dir, base, dirMode) })
}

func (f *FS) symlinkAt(target, r string) error {
	if f.rulesNow() == nil {
		return f.root.Symlink(target, r)
	}
	return f.inParent(r, func(dir int, base string) error { return unix.Symlinkat(target, dir, base) })
}

func (f *FS) inParent(r string, fn func(dir int, base string) error) error {
	if r == "." {
		return syscall.EEXIST // the home
	}
	d, base, err := f.parent(r)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(int(d.Fd()), base)
}

// chmodAt and chtimesAt change the file at the root-relative name r, which
// they follow if it is a link. Under permission rules they change the file
// that openAt finds, through its descriptor's /proc/self/fd entry (an
// O_PATH descriptor cannot be changed itself), where /proc is mounted.
func (f *FS) chmodAt(r string, mode fs.FileMode) error {
	if f.rulesNow() == nil || !procFD() {
		return f.root.Chmod(r, mode)
	}
	return f.viaFD(r, func(p string) error { return os.Chmod(p, mode) })
}

func (f *FS) chtimesAt(r string, atime, mtime time.Time) error {
	if f.rulesNow() == nil || !procFD() {
		return f.root.Chtimes(r, atime, mtime)
	}
	return f.viaFD(r, func(p string) error { return os.Chtimes(p, atime, mtime) })
}

func (f *FS) viaFD(r string, fn func(p string) error) error {
	d, err := f.openAt(r, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn("/proc/self/fd/" + strconv.Itoa(int(d.Fd())))
}

var procFD = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/self/fd")
	return err == nil
})

// allowTree checks need on every rule strictly below the directory r (a
// rename moves what they cover).
func (f *FS) allowTree(op, name, r string, need Perm) error {
	rules := f.rulesNow()
	if rules == nil {
		return nil
	}
	v, err := f.resolvedPath(r, false)
	if err != nil {
		v = Clean(r)
	}
	for _, q := range rules.below(v) {
		if miss := need &^ rules[q]; miss != 0 {
			return &fs.PathError{Op: op, Path: Clean(name), Err: &PermissionError{Need: lowest(miss), Rule: q, Have: rules[q]}}
		}
	}
	return nil
}

// resolvedPath is the virtual path of what r leads to, links resolved.
func (f *FS) resolvedPath(r string, follow bool) (string, error) {
	if follow {
		rr, err := f.resolve(r)
		if err != nil {
			return "", err
		}
		return Clean(rr), nil
	}
	if r == "." {
		return "/", nil
	}
	dir, base := path.Split(r)
	rd, err := f.resolve(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return "", err
	}
	return Clean(path.Join(rd, base)), nil
}
