package rsync

import (
	"bytes"
	"io/fs"
	"slices"
	"strings"
)

// Unix file types as they travel in the list.
const (
	sIFMT   = 0o170000
	sIFDIR  = 0o040000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sIFCHR  = 0o020000
	sIFBLK  = 0o060000
	sIFIFO  = 0o010000
	sIFSOCK = 0o140000
)

// Flag bits of a list entry (rsync.h XMIT_*). Some bits mean different
// things for different types.
const (
	xmitTopDir          = 1 << 0
	xmitSameMode        = 1 << 1
	xmitExtendedFlags   = 1 << 2
	xmitSameRdevPre28   = 1 << 2
	xmitSameUID         = 1 << 3
	xmitSameGID         = 1 << 4
	xmitSameName        = 1 << 5
	xmitLongName        = 1 << 6
	xmitSameTime        = 1 << 7
	xmitSameRdevMajor   = 1 << 8
	xmitNoContentDir    = 1 << 8
	xmitHlinked         = 1 << 9
	xmitUserNameFollows = 1 << 10
	xmitRdevMinor8Pre30 = 1 << 11
	xmitGroupNameFollow = 1 << 11
	xmitIOErrorEndList  = 1 << 12
	xmitModNsec         = 1 << 13
)

// Limits on what a client may make the server hold.
const (
	maxPath      = 1023
	maxFiles     = 1 << 20
	maxNameBytes = 128 << 20
)

// file is one entry of the file list.
type file struct {
	name    string // relative, "/"-separated; "." is the transfer root
	mode    uint32 // Unix mode with type bits
	size    int64
	mtime   int64
	nsec    int32
	link    string // symlink target
	sum     []byte // whole-file checksum, with -c
	top     bool   // came straight from an argument
	content bool   // a directory whose contents are listed
	dead    bool   // a duplicate, kept for its index
	dev     uint64 // sender side: the device, for -x
}

func (f *file) isDir() bool  { return f.mode&sIFMT == sIFDIR }
func (f *file) isReg() bool  { return f.mode&sIFMT == sIFREG }
func (f *file) isLink() bool { return f.mode&sIFMT == sIFLNK }
func (f *file) isDevice() bool {
	t := f.mode & sIFMT
	return t == sIFCHR || t == sIFBLK
}
func (f *file) isSpecial() bool {
	t := f.mode & sIFMT
	return t == sIFIFO || t == sIFSOCK
}

func wireMode(m fs.FileMode) uint32 {
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch {
	case m.IsDir():
		return perm | sIFDIR
	case m&fs.ModeSymlink != 0:
		return perm | sIFLNK
	case m&fs.ModeNamedPipe != 0:
		return perm | sIFIFO
	case m&fs.ModeSocket != 0:
		return perm | sIFSOCK
	case m&fs.ModeCharDevice != 0:
		return perm | sIFCHR
	case m&fs.ModeDevice != 0:
		return perm | sIFBLK
	case m.IsRegular():
		return perm | sIFREG
	}
	return 0
}

// flistCodec holds the "same as the previous entry" state of one list's
// encoding or decoding (flist.c send_file_entry, recv_file_entry).
type flistCodec struct {
	lastName string
	mode     uint32
	mtime    int64
	uid, gid int32
	rdevMaj  int32
}

// encodeEntry appends f's record to b.
func (s *session) encodeEntry(b []byte, st *flistCodec, f *file, uid, gid int32) []byte {
	c := s.c
	var x int
	if f.mode == st.mode {
		x |= xmitSameMode
	} else {
		st.mode = f.mode
	}
	if !s.o.owner || (uid == st.uid && st.lastName != "") {
		x |= xmitSameUID
	} else {
		st.uid = uid
	}
	if !s.o.group || (gid == st.gid && st.lastName != "") {
		x |= xmitSameGID
	} else {
		st.gid = gid
	}
	if f.mtime == st.mtime {
		x |= xmitSameTime
	} else {
		st.mtime = f.mtime
	}
	if f.nsec != 0 && s.proto >= 31 {
		x |= xmitModNsec
	}
	if f.isDir() {
		if s.proto >= 30 {
			if f.content {
				if f.top {
					x |= xmitTopDir
				}
			} else {
				x |= xmitNoContentDir
			}
		} else if f.top {
			x |= xmitTopDir
		}
	}
	l1 := 0
	for l1 < len(st.lastName) && l1 < len(f.name) && l1 < 255 && st.lastName[l1] == f.name[l1] {
		l1++
	}
	l2 := len(f.name) - l1
	if l1 > 0 {
		x |= xmitSameName
	}
	if l2 > 255 {
		x |= xmitLongName
	}
	switch {
	case s.varintFlags:
		if x == 0 {
			x = xmitExtendedFlags
		}
		b = appendVarint(b, int32(x))
	case s.proto >= 28:
		if x == 0 && !f.isDir() {
			x |= xmitTopDir
		}
		if x&0xff00 != 0 || x == 0 {
			x |= xmitExtendedFlags
			b = append(b, byte(x), byte(x>>8))
		} else {
			b = append(b, byte(x))
		}
	default:
		if x&0xff == 0 {
			if f.isDir() {
				x |= xmitLongName
			} else {
				x |= xmitTopDir
			}
		}
		b = append(b, byte(x))
	}
	if x&xmitSameName != 0 {
		b = append(b, byte(l1))
	}
	if x&xmitLongName != 0 {
		b = c.appendVarint30(b, int32(l2))
	} else {
		b = append(b, byte(l2))
	}
	b = append(b, f.name[l1:]...)
	st.lastName = f.name

	b = c.appendVarlong30(b, f.size, 3)
	if x&xmitSameTime == 0 {
		if s.proto >= 30 {
			b = appendVarlong(b, f.mtime, 4)
		} else {
			b = append(b, byte(f.mtime), byte(f.mtime>>8), byte(f.mtime>>16), byte(f.mtime>>24))
		}
	}
	if x&xmitModNsec != 0 {
		b = appendVarint(b, f.nsec)
	}
	if x&xmitSameMode == 0 {
		b = append(b, byte(f.mode), byte(f.mode>>8), byte(f.mode>>16), byte(f.mode>>24))
	}
	if s.o.owner && x&xmitSameUID == 0 {
		b = c.appendVarint30(b, uid)
	}
	if s.o.group && x&xmitSameGID == 0 {
		b = c.appendVarint30(b, gid)
	}
	if s.o.links && f.isLink() {
		b = c.appendVarint30(b, int32(len(f.link)))
		b = append(b, f.link...)
	}
	if s.o.checksum && (f.isReg() || s.proto < 28) {
		sum := f.sum
		if sum == nil {
			sum = make([]byte, s.sums.flist.size())
		}
		b = append(b, sum...)
	}
	return b
}

// decodeEntry reads the entry whose flag word was x. Names are checked
// here: a name that could leave the destination ends the session.
func (s *session) decodeEntry(st *flistCodec, x int) *file {
	c := s.c
	l1 := 0
	if x&xmitSameName != 0 {
		l1 = int(c.byte())
	}
	var l2 int
	if x&xmitLongName != 0 {
		l2 = int(c.varint30())
	} else {
		l2 = int(c.byte())
	}
	if l1 > len(st.lastName) || l2 < 0 || l1+l2 > maxPath {
		fatalf(2, "rsync: [silo] overflow in a file-list name (%d+%d bytes)", l1, l2)
	}
	nb := make([]byte, l1+l2)
	copy(nb, st.lastName[:l1])
	c.read(nb[l1:])
	f := &file{name: string(nb)}
	st.lastName = f.name

	f.size = c.varlong30(3)
	if x&xmitSameTime == 0 {
		if s.proto >= 30 {
			st.mtime = c.varlong(4)
		} else {
			st.mtime = int64(uint32(c.int32()))
		}
	}
	f.mtime = st.mtime
	if x&xmitModNsec != 0 && s.proto >= 31 {
		f.nsec = c.varint()
		if f.nsec < 0 || f.nsec >= 1e9 {
			f.nsec = 0
		}
	}
	if x&xmitSameMode == 0 {
		st.mode = uint32(c.int32())
	}
	f.mode = st.mode
	switch f.mode & sIFMT {
	case sIFDIR, sIFREG, sIFLNK, sIFCHR, sIFBLK, sIFIFO, sIFSOCK:
	default:
		fatalf(2, "rsync: [silo] file-list entry %q has an unknown type (mode %o)", f.name, f.mode)
	}
	if f.size < 0 {
		fatalf(2, "rsync: [silo] file-list entry %q has a negative size", f.name)
	}
	if s.o.owner && x&xmitSameUID == 0 {
		st.uid = c.varint30()
		if x&xmitUserNameFollows != 0 && s.proto >= 30 {
			c.read(make([]byte, c.byte()))
		}
	}
	if s.o.group && x&xmitSameGID == 0 {
		st.gid = c.varint30()
		if x&xmitGroupNameFollow != 0 && s.proto >= 30 {
			c.read(make([]byte, c.byte()))
		}
	}
	if (s.o.devices && f.isDevice()) || (s.o.specials && f.isSpecial() && s.proto < 31) {
		if s.proto < 28 {
			if x&xmitSameRdevPre28 == 0 {
				c.int32()
			}
		} else {
			if x&xmitSameRdevMajor == 0 {
				st.rdevMaj = c.varint30()
			}
			switch {
			case s.proto >= 30:
				c.varint()
			case x&xmitRdevMinor8Pre30 != 0:
				c.byte()
			default:
				c.int32()
			}
		}
	}
	if s.o.links && f.isLink() {
		n := c.varint30()
		if n < 0 || n > maxPath {
			fatalf(2, "rsync: [silo] symlink target of %d bytes for %q", n, f.name)
		}
		b := make([]byte, n)
		c.read(b)
		f.link = string(b)
	}
	if x&xmitHlinked != 0 {
		fatalf(2, "rsync: [silo] hard-link data in the file list")
	}
	if s.o.checksum && (f.isReg() || s.proto < 28) {
		f.sum = make([]byte, s.sums.flist.size())
		c.read(f.sum)
	}
	if f.isDir() {
		if s.proto >= 30 {
			f.content = x&xmitNoContentDir == 0
			f.top = f.content && x&xmitTopDir != 0
		} else {
			f.content = true
			f.top = x&xmitTopDir != 0
		}
	}
	return f
}

// safeName reports whether a name from the client stays below the
// destination: relative, no "..", no empty or "." elements but a lone ".",
// no NUL.
func safeName(name string) bool {
	if name == "." {
		return true
	}
	if name == "" || name[0] == '/' || strings.IndexByte(name, 0) >= 0 {
		return false
	}
	for _, e := range strings.Split(name, "/") {
		if e == "" || e == "." || e == ".." {
			return false
		}
	}
	return true
}

// recvFileList reads the list the client sends (push), its end marker, id
// lists and I/O-error word; it returns the list sorted and cleaned, and
// the client's I/O-error bits.
func (s *session) recvFileList() ([]*file, int32) {
	c := s.c
	var st flistCodec
	var list []*file
	var ioErr int32
	total := 0
entries:
	for {
		var x int
		switch {
		case s.varintFlags:
			x = int(c.varint())
		case s.proto >= 28:
			x = int(c.byte())
			if x&xmitExtendedFlags != 0 {
				x |= int(c.byte()) << 8
			}
		default:
			x = int(c.byte())
		}
		if x == 0 {
			if s.varintFlags {
				ioErr |= c.varint()
			}
			break entries
		}
		if !s.varintFlags && s.proto >= 28 && x == xmitExtendedFlags|xmitIOErrorEndList && (s.proto >= 31 || s.safeFlist) {
			ioErr |= c.varint()
			break entries
		}
		f := s.decodeEntry(&st, x)
		if !safeName(f.name) {
			fatalf(2, "rsync: [silo] ABORTING due to unsafe pathname from sender: %q", f.name)
		}
		if f.name == "." && !f.isDir() {
			fatalf(2, "rsync: [silo] ABORTING: \".\" in the file list is not a directory")
		}
		total += len(f.name) + len(f.link) + 64
		if len(list) >= maxFiles || total > maxNameBytes {
			fatalf(11, "rsync: [silo] the file list is too long (at most %d entries)", maxFiles)
		}
		list = append(list, f)
	}
	s.recvIDLists()
	if s.proto < 30 {
		ioErr |= c.int32()
	}
	s.sortList(list)
	// Duplicates: keep the first, but a directory wins; the loser stays
	// in place, deactivated, so that indexes keep their meaning.
	seen := make(map[string]*file, len(list))
	for _, f := range list {
		prev, ok := seen[f.name]
		switch {
		case !ok:
			seen[f.name] = f
		case f.isDir() && !prev.isDir():
			prev.dead = true
			seen[f.name] = f
		default:
			f.dead = true
		}
	}
	return list, ioErr
}

func (s *session) recvIDLists() {
	if s.o.numericIDs {
		return
	}
	for _, want := range []bool{s.o.owner, s.o.group} {
		if !want {
			continue
		}
		for n := 0; ; n++ {
			id := s.c.varint30()
			if id == 0 {
				break
			}
			if n > maxFiles {
				fatalf(2, "rsync: [silo] id list too long")
			}
			s.c.read(make([]byte, s.c.byte()))
		}
		if s.id0Names {
			s.c.read(make([]byte, s.c.byte()))
		}
	}
}

// sortList orders a list as both sides must (flist.c f_name_cmp): from
// protocol 29 on, component by component, a file before a directory at
// the first difference, directories compared with a trailing "/"; before
// 29, plain bytes of the whole name.
func (s *session) sortList(list []*file) {
	if s.proto < 29 {
		slices.SortStableFunc(list, func(a, b *file) int { return strings.Compare(a.name, b.name) })
		return
	}
	slices.SortStableFunc(list, func(a, b *file) int { return nameCmp(a.name, a.isDir(), b.name, b.isDir()) })
}

func nameCmp(a string, aDir bool, b string, bDir bool) int {
	if a == b {
		return 0
	}
	if a == "." {
		return -1
	}
	if b == "." {
		return 1
	}
	for {
		ae, arest, amore := strings.Cut(a, "/")
		be, brest, bmore := strings.Cut(b, "/")
		ad := amore || aDir // this component is a directory
		bd := bmore || bDir
		if ae != be || ad != bd {
			if ad != bd {
				if !ad {
					return -1
				}
				return 1
			}
			if ad {
				return bytes.Compare([]byte(ae+"/"), []byte(be+"/"))
			}
			return strings.Compare(ae, be)
		}
		if !amore {
			return -1 // a is the directory b is in
		}
		if !bmore {
			return 1
		}
		a, b = arest, brest
	}
}
