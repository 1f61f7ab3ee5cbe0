package sshd

// SFTP extensions pkg/sftp does not know, answered by the stream on the
// handler's vfs: OpenSSH's (PROTOCOL in OpenSSH's source), and two of
// draft-ietf-secsh-filexfer-09's (section 9) that WinSCP uses.

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"hash"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/pkg/sftp"

	"silo/vfs"
)

// sftpExtensionsAdded are announced in the VERSION reply, after those of
// pkg/sftp (sftpExtensions, sftp.go).
var sftpExtensionsAdded = [][2]string{
	{"limits@openssh.com", "1"},
	{"fstatvfs@openssh.com", "2"},
	{"fsync@openssh.com", "1"},
	{"lsetstat@openssh.com", "1"},
	{"expand-path@openssh.com", "1"},
	{"home-directory", "1"},
	{"copy-data", "1"},
	{"users-groups-by-id@openssh.com", "1"},
	{"check-file", "md5,sha1,sha224,sha256,sha384,sha512"},
	{"check-file-name", "1"},
	{"check-file-handle", "1"},
	{"space-available", "1"},
}

// errBadRequest is a request whose fields do not parse.
var errBadRequest = &statusError{sftp.ErrSSHFxBadMessage, "malformed request"}

// extension answers the extended request name with the fields in args:
// the reply's type and body (after the id), or an error for a status; ok
// is false for a name it does not know.
func (h *sftpHandler) extension(name string, args []byte) (typ byte, body []byte, err error, ok bool) {
	defer h.recover(&err)
	a := &fields{b: args}
	ok = true
	typ = fxpExtendedReply
	switch name {
	case "fsync@openssh.com":
		var f *sftpFile
		if f, err = h.handleFile(a.str(), false, false); err == nil {
			err = h.status(f.f.Sync())
		}
	case "fstatvfs@openssh.com":
		if _, err = h.handleFile(a.str(), false, false); err == nil {
			body, err = h.statvfsReply()
		}
	case "lsetstat@openssh.com":
		err = h.lsetstat(a)
	case "expand-path@openssh.com":
		var p string
		if p, err = h.expandPath(a.str()); err == nil {
			typ, body = fxpName, nameReply(p)
		}
	case "home-directory":
		if u := a.str(); u != "" && u != h.user {
			err = &statusError{sftp.ErrSSHFxPermissionDenied, "permission denied: another user's home"}
		} else {
			typ, body = fxpName, nameReply("/")
		}
	case "copy-data":
		err = h.copyData(a)
	case "users-groups-by-id@openssh.com":
		body = h.namesByID(a)
	case "check-file-name", "check-file-handle":
		body, err = h.checkFile(name == "check-file-handle", a)
	case "space-available":
		body, err = h.spaceAvailable(a.str())
	default:
		ok = false
	}
	return typ, body, err, ok
}

// handleFile finds the open file behind a handle, and checks that it is
// open for reading or writing as needed.
func (h *sftpHandler) handleFile(handle string, read, write bool) (*sftpFile, error) {
	f := h.stream.file([]byte(handle))
	switch {
	case f == nil:
		return nil, &statusError{sftp.ErrSSHFxFailure, "invalid handle"}
	case read && !f.canRead:
		return nil, &statusError{sftp.ErrSSHFxPermissionDenied, "permission denied: " + f.f.Name() + " is not open for reading"}
	case write && !f.write:
		return nil, &statusError{sftp.ErrSSHFxPermissionDenied, "permission denied: " + f.f.Name() + " is not open for writing"}
	}
	return f, nil
}

// lsetstat applies attributes without following a link: on a link, only
// its times.
func (h *sftpHandler) lsetstat(a *fields) error {
	name := a.str()
	flags, attrs := a.u32(), a.rest()
	if a.bad {
		return errBadRequest
	}
	fi, err := h.fs.Lstat(name)
	if err != nil {
		return h.status(err)
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		r := sftp.NewRequest("Setstat", name)
		r.Flags, r.Attrs = flags, attrs
		return h.status(h.setstat(r))
	}
	// A link has no size, owner or mode of its own to set (Linux has no
	// lchmod): only its times are set, the mode asked for is ignored.
	if flags&(attrSize|attrUIDGID) != 0 {
		return &statusError{sftp.ErrSSHFxOpUnsupported, "only the times of a symbolic link can be set: " + vfs.Clean(name)}
	}
	if flags&attrACModTime == 0 {
		return nil
	}
	t := &fields{b: attrs}
	if flags&attrPermissions != 0 {
		t.u32()
	}
	atime, mtime := t.u32(), t.u32()
	if t.bad {
		return errBadRequest
	}
	return h.status(h.fs.Lchtimes(name, time.Unix(int64(atime), 0), time.Unix(int64(mtime), 0)))
}

// Attribute flags (draft-ietf-secsh-filexfer-02, section 5).
const (
	attrSize        = 0x01
	attrUIDGID      = 0x02
	attrPermissions = 0x04
	attrACModTime   = 0x08
)

// expandPath answers expand-path@openssh.com: "~", "~/x" and "~NAME/x" with
// the account's own name are in the home, another user's "~other" is
// refused; anything else is made canonical as realpath does.
func (h *sftpHandler) expandPath(p string) (string, error) {
	if !strings.HasPrefix(p, "~") {
		return vfs.Clean(p), nil
	}
	user, rest, _ := strings.Cut(p[1:], "/")
	if user != "" && user != h.user {
		return "", &statusError{sftp.ErrSSHFxPermissionDenied, "permission denied: another user's home"}
	}
	return vfs.Clean(rest), nil
}

// copyData answers copy-data: a copy between two open handles on the
// server, through the same quota and one-writer rule as writes.
func (h *sftpHandler) copyData(a *fields) error {
	from, off, n, to, woff := a.str(), a.u64(), a.u64(), a.str(), a.u64()
	if a.bad || off > 1<<62 || n > 1<<62 || woff > 1<<62 {
		return errBadRequest
	}
	src, err := h.handleFile(from, true, false)
	if err != nil {
		return err
	}
	dst, err := h.handleFile(to, false, true)
	if err != nil {
		return err
	}
	if src.f == dst.f && n == 0 {
		return &statusError{sftp.ErrSSHFxFailure, "cannot copy a file onto itself to its end"}
	}
	// A copy that cannot fit is refused before it writes anything.
	if size, err := src.f.Size(); err == nil {
		want := int64(n)
		if n == 0 || int64(off+n) > size {
			want = max(0, size-int64(off))
		}
		if err := h.fits(dst.f, int64(woff)+want); err != nil {
			return err
		}
	}
	buf := make([]byte, 255<<10)
	for done := uint64(0); n == 0 || done < n; {
		k := len(buf)
		if n > 0 {
			k = int(min(uint64(k), n-done))
		}
		r, rerr := src.f.ReadAt(buf[:k], int64(off+done))
		if r > 0 {
			if _, err := dst.f.WriteAt(buf[:r], int64(woff+done)); err != nil {
				return h.status(err)
			}
			// The copy is the destination handle's upload.
			dst.written.Add(int64(r))
			dst.tr.Add(int64(r))
			done += uint64(r)
		}
		if rerr == io.EOF || r == 0 && rerr == nil {
			break
		}
		if rerr != nil {
			return h.status(rerr)
		}
		h.st.touch()
	}
	return nil
}

// fits refuses, with the quota's words, growing f to end when the home
// has no room for it. Writes reserve exactly; this only spares a copy that
// would fail halfway.
func (h *sftpHandler) fits(f *vfs.File, end int64) error {
	size, err := f.Size()
	if err != nil || end <= size {
		return nil
	}
	if err := h.fs.Room(end - size); err != nil {
		return h.status(err)
	}
	return nil
}

// namesByID answers users-groups-by-id@openssh.com: every id, the one the
// listings show as owner, is the account's name.
func (h *sftpHandler) namesByID(a *fields) []byte {
	uids, gids := &fields{b: []byte(a.str())}, &fields{b: []byte(a.str())}
	names := func(ids *fields) []byte {
		var out []byte
		for len(ids.b) >= 4 {
			ids.u32()
			out = appendString(out, h.user)
		}
		return out
	}
	u, g := names(uids), names(gids)
	return appendString(appendString(nil, string(u)), string(g))
}

// checkFile answers check-file-name and check-file-handle: the hash of a
// range of a file, in blocks or whole.
func (h *sftpHandler) checkFile(byHandle bool, a *fields) ([]byte, error) {
	target, algs, off, n, block := a.str(), a.str(), a.u64(), a.u64(), a.u32()
	if a.bad || off > 1<<62 || n > 1<<62 || block != 0 && block < 256 {
		return nil, errBadRequest
	}
	alg, newHash := "", (func() hash.Hash)(nil)
	for _, name := range strings.Split(algs, ",") {
		if f := checkHashes[name]; f != nil {
			alg, newHash = name, f
			break
		}
	}
	if newHash == nil {
		return nil, &statusError{sftp.ErrSSHFxOpUnsupported, "no supported hash algorithm in " + algs}
	}
	var f *vfs.File
	if byHandle {
		sf, err := h.handleFile(target, true, false)
		if err != nil {
			return nil, err
		}
		f = sf.f
	} else {
		var err error
		if f, err = h.fs.OpenFile(target, os.O_RDONLY); err != nil {
			return nil, h.status(err)
		}
		defer f.Close()
	}
	reply := appendString(appendString(nil, "check-file"), alg)
	hs := newHash()
	buf := make([]byte, 255<<10)
	inBlock := uint64(0)
	for done := uint64(0); n == 0 || done < n; {
		k := uint64(len(buf))
		if n > 0 {
			k = min(k, n-done)
		}
		if block > 0 {
			k = min(k, uint64(block)-inBlock)
		}
		r, err := f.ReadAt(buf[:k], int64(off+done))
		hs.Write(buf[:r])
		done += uint64(r)
		inBlock += uint64(r)
		if block > 0 && inBlock == uint64(block) {
			reply, hs, inBlock = hs.Sum(reply), newHash(), 0
		}
		if err == io.EOF || r == 0 && err == nil {
			break
		}
		if err != nil {
			return nil, h.status(err)
		}
		h.st.touch()
	}
	if block == 0 || inBlock > 0 {
		reply = hs.Sum(reply)
	}
	return reply, nil
}

var checkHashes = map[string]func() hash.Hash{
	"md5": md5.New, "sha1": sha1.New, "sha224": sha256.New224, "sha256": sha256.New,
	"sha384": sha512.New384, "sha512": sha512.New,
}

// spaceAvailable answers space-available with what statvfs reports.
func (h *sftpHandler) spaceAvailable(p string) ([]byte, error) {
	if _, err := h.fs.Stat(p); err != nil {
		return nil, h.status(err)
	}
	st, err := h.fs.StatFS()
	if err != nil {
		return nil, h.status(err)
	}
	unit := uint64(st.Frsize)
	size, free := st.Blocks*unit, st.Bavail*unit
	var b []byte
	for _, v := range []uint64{size, free, size, free} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return binary.BigEndian.AppendUint32(b, uint32(min(unit, 1<<31))), nil
}

// statvfsReply is statvfs@openssh.com's reply body.
func (h *sftpHandler) statvfsReply() ([]byte, error) {
	st, err := h.StatVFS(nil)
	if err != nil {
		return nil, err
	}
	var b []byte
	for _, v := range []uint64{st.Bsize, st.Frsize, st.Blocks, st.Bfree, st.Bavail, st.Files, st.Ffree, st.Favail, st.Fsid, st.Flag, st.Namemax} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b, nil
}

// nameReply is an SSH_FXP_NAME body of one name, with no attributes.
func nameReply(p string) []byte {
	b := binary.BigEndian.AppendUint32(nil, 1)
	b = appendString(b, p)
	b = appendString(b, p)
	return binary.BigEndian.AppendUint32(b, 0)
}

func appendString(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

// fields reads a request's fields in turn; a short one sets bad.
type fields struct {
	b   []byte
	bad bool
}

func (f *fields) u32() uint32 {
	if len(f.b) < 4 {
		f.bad = true
		return 0
	}
	v := binary.BigEndian.Uint32(f.b)
	f.b = f.b[4:]
	return v
}

func (f *fields) u64() uint64 {
	hi, lo := f.u32(), f.u32()
	return uint64(hi)<<32 | uint64(lo)
}

func (f *fields) str() string {
	n := f.u32()
	if f.bad || uint32(len(f.b)) < n {
		f.bad = true
		return ""
	}
	s := string(f.b[:n])
	f.b = f.b[n:]
	return s
}

func (f *fields) rest() []byte {
	b := f.b
	f.b = nil
	return b
}
