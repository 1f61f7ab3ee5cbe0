package rsync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"syscall"
	"time"

	"silo/activity"
	"silo/vfs"
)

// Item flags (rsync.h ITEM_*): what the receiver wants, or what changed.
const (
	itemReportChange  = 1 << 1
	itemReportSize    = 1 << 2
	itemReportTime    = 1 << 3
	itemReportPerms   = 1 << 4
	itemBasisFollows  = 1 << 11
	itemXnameFollows  = 1 << 12
	itemIsNew         = 1 << 13
	itemLocalChange   = 1 << 14
	itemTransfer      = 1 << 15
	itemMissingData   = 1 << 16 // not on the wire
	chunkSize         = 32 << 10
	maxLiteralPending = chunkSize
)

// sender is the pull side (main.c do_server_sender, sender.c send_files):
// the list, then one reply per request until the client's generator is
// done.
func (s *session) sender() {
	c := s.c
	s.filters = s.recvFilters()
	start := time.Now()
	list, srcs := s.buildList()
	built := time.Since(start)
	start = time.Now()
	s.sendFileList(list)
	c.flush()
	sent := time.Since(start)
	if len(list) == 0 {
		return // the client runs no generator for an empty list
	}
	c.beforeBlock = c.flush
	success := make(map[int32]bool)
	if s.o.removeSource {
		s.onIndex = func(tag byte, ndx int32) {
			if tag == msgSuccess && ndx >= 0 && int(ndx) < len(list) {
				success[ndx] = true
			}
		}
	}
	var total int64
	for _, f := range list {
		if f.isReg() || f.isLink() {
			total += f.size
		}
	}
	maxPhase := 2
	if s.proto < 29 {
		maxPhase = 1
	}
	phase := 0
	for {
		ndx, iflags := s.readNdxAttrs(len(list))
		if ndx == ndxDone {
			if phase++; phase > maxPhase {
				break
			}
			c.writeNdx(ndxDone)
			continue
		}
		if s.ctx.Err() != nil {
			fatalf(20, "")
		}
		if int(ndx) == len(list) && iflags == itemIsNew {
			continue // a keep-alive (io.c maybe_send_keepalive)
		}
		if ndx < 0 || int(ndx) >= len(list) {
			fatalf(2, "rsync: [silo] invalid file index %d from the client", ndx)
		}
		f := list[ndx]
		if iflags&itemTransfer == 0 || s.o.dryRun {
			s.writeNdxAttrs(ndx, iflags)
			continue
		}
		if !f.isReg() {
			fatalf(2, "rsync: [silo] the client asked for the data of %q, which is not a file", f.name)
		}
		s.sendOne(ndx, iflags, f, srcs[ndx])
	}
	c.writeNdx(ndxDone)
	// Statistics (main.c handle_stats), then the goodbye.
	c.flush()
	var b []byte
	for _, v := range []int64{c.nread, c.nwritten, total} {
		b = c.appendVarlong30(b, v, 3)
	}
	if s.proto >= 29 {
		b = c.appendVarlong30(b, built.Milliseconds(), 3)
		b = c.appendVarlong30(b, sent.Milliseconds(), 3)
	}
	c.write(b)
	c.flush()
	if s.proto < 29 {
		if n := c.int32(); n != ndxDone {
			fatalf(2, "rsync: [silo] invalid packet at end of run (%d)", n)
		}
	} else {
		if n, _ := s.readNdxAttrs(len(list)); n != ndxDone {
			fatalf(2, "rsync: [silo] invalid packet at end of run (%d)", n)
		}
		if s.proto >= 31 {
			c.writeNdx(ndxDone)
			c.flush()
			if n, _ := s.readNdxAttrs(len(list)); n != ndxDone {
				fatalf(2, "rsync: [silo] invalid packet at end of run (%d)", n)
			}
		}
	}
	for ndx := range success {
		s.removeSent(list[ndx], srcs[ndx])
	}
}

// readNdxAttrs reads an index and, from protocol 29, its item flags
// (rsync.c read_ndx_and_attrs). Deletion statistics are echoed, as the
// client expects of a sender.
func (s *session) readNdxAttrs(n int) (int32, int) {
	c := s.c
	for {
		ndx := c.ndx()
		if ndx == ndxDelStats && s.proto >= 31 {
			var b []byte
			for range 5 {
				b = appendVarint(b, c.varint())
			}
			c.writeNdx(ndxDelStats)
			c.write(b)
			continue
		}
		if ndx < 0 || s.proto < 29 {
			return ndx, itemTransfer | itemMissingData
		}
		iflags := c.short()
		if iflags&itemBasisFollows != 0 {
			c.byte()
		}
		if iflags&itemXnameFollows != 0 {
			c.vstring(maxPath)
		}
		return ndx, iflags
	}
}

func (s *session) writeNdxAttrs(ndx int32, iflags int) {
	c := s.c
	c.wmu.Lock()
	b := c.appendNdx(nil, ndx)
	c.wmu.Unlock()
	if s.proto >= 29 {
		b = binary.LittleEndian.AppendUint16(b, uint16(iflags&^(itemBasisFollows|itemXnameFollows)))
	}
	c.write(b)
}

// block is one basis block's checksums, as the client sent them.
type block struct {
	sum1   uint32
	strong [16]byte
}

// sendOne answers one request: the file's delta against the client's
// basis, then the whole-file checksum.
func (s *session) sendOne(ndx int32, iflags int, f *file, src string) {
	c := s.c
	h := s.readSumHead()
	var blocks []block
	if s.o.appendMode == 0 && h.count > 0 {
		blocks = make([]block, h.count)
		for i := range blocks {
			blocks[i].sum1 = uint32(c.int32())
			c.read(blocks[i].strong[:h.s2length])
		}
	}
	fh, err := s.fs.OpenFile(src, os.O_RDONLY)
	var size int64
	if err == nil {
		var fi fs.FileInfo
		if fi, err = s.fs.Lstat(src); err == nil {
			size = fi.Size()
		}
	}
	appendAt := int64(0)
	if err == nil && s.o.appendMode > 0 {
		appendAt = h.flength()
		if appendAt > size {
			fh.Close()
			s.warn("rsync: [sender] skipped diminished file: %s", f.name)
			s.noSend(ndx)
			return
		}
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.warn("file has vanished: %q", f.name)
			s.setExit(24)
		} else {
			s.cfg.Activity.Refused("rsync", activity.Open, vfs.Clean(src), err)
			s.fileError("rsync: [sender] send_files failed to open %q: %s", f.name, errText(err))
		}
		if fh != nil {
			fh.Close()
		}
		s.noSend(ndx)
		return
	}
	defer fh.Close()
	xfer := s.cfg.Activity.Start("rsync", activity.Download, vfs.Clean(src), size)
	s.writeNdxAttrs(ndx, iflags)
	c.write(appendSumHead(nil, h))
	tw := s.newTokenWriter()
	sum := s.sums.file()
	w := &window{f: fh, size: size}
	if appendAt > 0 && (s.o.appendMode == 2 || s.proto < 30) {
		for off := int64(0); off < appendAt; {
			p := w.get(off, int(min(chunkSize, appendAt-off)), off)
			sum.Write(p)
			off += int64(len(p))
		}
	}
	lit := s.match(w, appendAt, h, blocks, tw, sum)
	tw.end()
	c.write(sum.Sum(nil))
	// A file that shrank or could not be read fails the client's check of
	// the whole-file checksum, and it asks again.
	xfer.Add(size)
	xfer.EndBytes(lit, w.err)
}

func (s *session) noSend(ndx int32) {
	if s.proto >= 30 {
		s.c.msg(msgNoSend, binary.LittleEndian.AppendUint32(nil, uint32(ndx)))
	}
}

// window is a bounded view of the file being sent: the bytes from the
// oldest still needed (pending literal data) to a little past the block
// being looked at.
type window struct {
	f    *vfs.File
	size int64
	buf  []byte
	off  int64 // buf holds [off, off+len(buf))
	err  error
}

// get returns the bytes [p, p+n), keeping everything from keep (<= p) on.
// A read error ends the file where it happened.
func (w *window) get(p int64, n int, keep int64) []byte {
	end := p + int64(n)
	if p >= w.off && end <= w.off+int64(len(w.buf)) {
		return w.buf[p-w.off : end-w.off]
	}
	if keep > w.off {
		drop := min(int(keep-w.off), len(w.buf))
		w.buf = w.buf[:copy(w.buf, w.buf[drop:])]
		w.off += int64(drop)
	}
	want := int(min(w.size, end+256<<10) - w.off)
	if cap(w.buf) < want {
		nb := make([]byte, len(w.buf), want)
		copy(nb, w.buf)
		w.buf = nb
	}
	have := len(w.buf)
	got, err := w.f.ReadAt(w.buf[have:want], w.off+int64(have))
	w.buf = w.buf[:have+got]
	if have+got < want {
		if err == nil || err == io.EOF {
			err = syscall.EIO
		}
		if w.err == nil {
			w.err = err
		}
		w.size = w.off + int64(len(w.buf))
		end = min(end, w.size)
		p = min(p, end)
	}
	return w.buf[p-w.off : end-w.off]
}

// match sends the file from start as a delta against blocks (match.c): a
// rolling checksum finds candidate blocks, the strong checksum confirms
// them. It returns the literal bytes sent.
func (s *session) match(w *window, start int64, h sumHead, blocks []block, tw tokenWriter, sum hash.Hash) int64 {
	var literal int64
	lit, pos := start, start
	flushLit := func() {
		for lit < pos {
			p := w.get(lit, int(min(chunkSize, pos-lit)), lit)
			if len(p) == 0 {
				pos = lit
				return
			}
			tw.literal(p)
			sum.Write(p)
			literal += int64(len(p))
			lit += int64(len(p))
		}
	}
	if len(blocks) == 0 || h.blength == 0 || (s.compress == compressZlib && s.proto < 31 && h.blength > 0xffff) {
		// Classic zlib before 31 mishandles blocks over 64 KiB in its
		// history: such a file goes as literal data.
		pos = w.size
		flushLit()
		return literal
	}
	blen := int64(h.blength)
	var tags [1 << 16]bool
	idx := make(map[uint32][]int32, len(blocks))
	for i, b := range blocks {
		tags[tag(b.sum1)] = true
		idx[b.sum1] = append(idx[b.sum1], int32(i))
	}
	blockLen := func(i int32) int64 {
		if i == h.count-1 && h.remainder != 0 {
			return int64(h.remainder)
		}
		return blen
	}
	inplace := s.o.inplace
	next := int32(0) // the block after the last match, preferred
	var r rolling
	fresh := true
	for pos < w.size {
		n := min(blen, w.size-pos)
		win := w.get(pos, int(min(n+1, w.size-pos)), lit)
		if int64(len(win)) < n {
			break // the file shrank
		}
		if fresh {
			r = newRolling(win[:n])
			fresh = false
		}
		v := r.value()
		if tags[tag(v)] {
			if cands := idx[v]; cands != nil {
				var strong [16]byte
				computed := false
				found := int32(-1)
				try := func(i int32) bool {
					if blockLen(i) != n || (inplace && int64(i)*blen < pos) {
						return false
					}
					if !computed {
						strong = s.sums.block(win[:n])
						computed = true
					}
					return bytes.Equal(strong[:h.s2length], blocks[i].strong[:h.s2length])
				}
				if next < h.count && blocks[next].sum1 == v && try(next) {
					found = next
				} else {
					for _, i := range cands {
						if try(i) {
							found = i
							break
						}
					}
				}
				if found >= 0 {
					flushLit()
					data := w.get(pos, int(n), pos)
					tw.block(found, data)
					sum.Write(data)
					pos += n
					lit = pos
					next = found + 1
					fresh = true
					continue
				}
			}
		}
		grow := pos+n < w.size
		var in byte
		if grow {
			in = win[n]
		}
		r.roll(win[0], int(n), in, grow)
		pos++
		if pos-lit >= maxLiteralPending+blen {
			flushLit()
		}
	}
	pos = w.size
	flushLit()
	return literal
}

func tag(v uint32) uint16 { return uint16(v ^ v>>16) }

// removeSent deletes a file the client confirmed it received
// (--remove-source-files), unless it changed since it was listed.
func (s *session) removeSent(f *file, src string) {
	fi, err := s.fs.Lstat(src)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != f.size || fi.ModTime().Unix() != f.mtime {
		s.warn("rsync: [sender] not removing %s: it changed since it was sent", f.name)
		return
	}
	err = s.fs.Remove(src)
	s.report(activity.Remove, src, "", err)
	if err != nil {
		s.fileError("rsync: [sender] sender failed to remove %s: %s", f.name, errText(err))
	} else if s.o.verbose > 0 {
		s.info("sender removed %s", f.name)
	}
}

// buildList walks the sources (flist.c send_file_list) into a sorted list;
// srcs holds each entry's virtual path. Names the client's rules exclude
// are never listed: the client aborts on one.
func (s *session) buildList() ([]*file, []string) {
	args := s.o.args
	if len(args) > 0 && args[0] == "." {
		args = args[1:]
	}
	if len(args) == 0 {
		args = []string{"."}
	}
	b := &listBuilder{s: s}
	for _, a := range args {
		for _, g := range s.expandGlob(a) {
			b.addArg(g)
		}
	}
	// Entries go out in sorted order, so that the index the client
	// computes after its own sort is the one sent.
	order := make([]int, len(b.list))
	for i := range order {
		order[i] = i
	}
	sorted := make([]*file, len(b.list))
	copy(sorted, b.list)
	byName := make(map[*file]string, len(b.list))
	for i, f := range b.list {
		byName[f] = b.srcs[i]
	}
	s.sortList(sorted)
	srcs := make([]string, len(sorted))
	for i, f := range sorted {
		srcs[i] = byName[f]
	}
	return sorted, srcs
}

type listBuilder struct {
	s     *session
	list  []*file
	srcs  []string
	bytes int
}

func (b *listBuilder) addArg(a string) {
	s := b.s
	vp, contents, ok := argPath(a)
	if !ok {
		s.fileError("rsync: [sender] link_stat %q failed: %s", a, errText(vfs.ErrEscape))
		return
	}
	fi, err := s.fs.Lstat(vp)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && s.o.ignoreMissing {
			return
		}
		s.fileError("rsync: [sender] link_stat %q failed: %s", a, errText(err))
		return
	}
	name := path.Base(vp)
	if contents || vp == "/" {
		name = "."
	}
	if contents && !fi.IsDir() {
		if fi.Mode()&fs.ModeSymlink != 0 {
			// "link/" names the directory the link leads to, inside the
			// home.
			if fi, err = s.fs.Stat(vp); err != nil || !fi.IsDir() {
				s.fileError("rsync: [sender] change_dir %q failed: %s", a, errText(orErr(err, vfs.ErrNotDir)))
				return
			}
		} else {
			s.fileError("rsync: [sender] change_dir %q failed: %s", a, errText(vfs.ErrNotDir))
			return
		}
	}
	if fi.IsDir() && !s.o.recursive && !s.o.dirs {
		s.info("skipping directory %s", name)
		return
	}
	f := b.entry(name, vp, fi)
	if f == nil {
		return
	}
	f.top = true
	if f.isDir() && (s.o.recursive || (s.o.dirs && name == ".")) {
		f.content = true
		b.walk(name, vp, f.dev, s.o.recursive)
	}
}

func orErr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// entry adds one list entry for fi, unless it cannot be sent.
func (b *listBuilder) entry(name, vp string, fi fs.FileInfo) *file {
	s := b.s
	f := &file{name: name, mode: wireMode(fi.Mode()), size: fi.Size()}
	mt := fi.ModTime()
	f.mtime, f.nsec = mt.Unix(), int32(mt.Nanosecond())
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		f.dev = uint64(st.Dev)
	}
	switch {
	case f.isDir():
	case f.isReg():
		if s.o.checksum {
			sum, err := s.fileSum(vp)
			if err != nil {
				s.fileError("rsync: [sender] read errors mapping %q: %s", name, errText(err))
				return nil
			}
			f.sum = sum
		}
	case f.isLink():
		// Without -l the entry still goes, with no target: a listing
		// shows it, a receiver skips it.
		if s.o.links {
			target, err := s.fs.Readlink(vp)
			if err != nil {
				s.fileError("rsync: [sender] readlink_stat %q failed: %s", name, errText(err))
				return nil
			}
			f.link, f.size = target, int64(len(target))
		}
	default:
		return nil // devices, FIFOs and sockets are never sent
	}
	if f.mode == 0 {
		return nil
	}
	b.bytes += len(name) + len(f.link) + 64
	if len(b.list) >= maxFiles || b.bytes > maxNameBytes {
		fatalf(11, "rsync: [silo] too many files to send (at most %d)", maxFiles)
	}
	b.list = append(b.list, f)
	b.srcs = append(b.srcs, vp)
	return f
}

// walk lists the directory vp (named name in the list), recursively with
// -r, one level with -d.
func (b *listBuilder) walk(name, vp string, dev uint64, recurse bool) {
	s := b.s
	names, err := s.readDirAll(vp)
	if err != nil {
		s.fileError("rsync: [sender] opendir %q failed: %s", name, errText(err))
		s.ioError |= 1
	}
	for _, n := range names {
		child := n
		if name != "." {
			child = name + "/" + n
		}
		cvp := path.Join(vp, n)
		fi, err := s.fs.Lstat(cvp)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				s.fileError("rsync: [sender] readlink_stat %q failed: %s", child, errText(err))
				s.ioError |= 1
			}
			continue
		}
		if excluded(s.filters, child, fi.IsDir(), true) {
			continue
		}
		f := b.entry(child, cvp, fi)
		if f == nil || !f.isDir() {
			continue
		}
		if recurse && (!s.o.oneFS || f.dev == dev) {
			f.content = true
			b.walk(child, cvp, dev, true)
		}
	}
}

func (s *session) fileSum(vp string) ([]byte, error) {
	fh, err := s.fs.OpenFile(vp, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	h := s.sums.list()
	if _, err := io.Copy(h, io.NewSectionReader(fh, 0, 1<<62)); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// sendFileList sends the list, its end marker, the id lists and, before
// protocol 30, the I/O-error word.
func (s *session) sendFileList(list []*file) {
	c := s.c
	uid, gid := int32(os.Getuid()), int32(os.Getgid())
	var st flistCodec
	var b []byte
	for _, f := range list {
		b = s.encodeEntry(b, &st, f, uid, gid)
		if len(b) >= wbufSize {
			c.write(b)
			b = b[:0]
		}
	}
	ioErr := s.ioError
	switch {
	case s.varintFlags:
		b = append(b, 0)
		b = appendVarint(b, ioErr)
	case ioErr != 0 && s.safeFlist && s.proto >= 28:
		b = append(b, xmitExtendedFlags, xmitIOErrorEndList>>8)
		b = appendVarint(b, ioErr)
	default:
		b = append(b, 0)
	}
	if !s.o.numericIDs {
		name := s.cfg.User
		if len(name) > 255 {
			name = name[:255]
		}
		for _, id := range []struct {
			want bool
			id   int32
		}{{s.o.owner, uid}, {s.o.group, gid}} {
			if !id.want {
				continue
			}
			if id.id != 0 && name != "" {
				b = c.appendVarint30(b, id.id)
				b = append(b, byte(len(name)))
				b = append(b, name...)
			}
			b = c.appendVarint30(b, 0)
			if s.id0Names {
				n0 := "root"
				if id.id == 0 && name != "" {
					n0 = name
				}
				b = append(b, byte(len(n0)))
				b = append(b, n0...)
			}
		}
	}
	if s.proto < 30 {
		b = binary.LittleEndian.AppendUint32(b, uint32(ioErr))
	}
	c.write(b)
	if s.proto >= 30 && !s.safeFlist && ioErr != 0 {
		c.msg(msgIOError, binary.LittleEndian.AppendUint32(nil, uint32(ioErr)))
	}
}
