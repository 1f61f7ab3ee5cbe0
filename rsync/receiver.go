package rsync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"silo/activity"
	"silo/vfs"
)

// umask applies to the modes of new entries when -p is off (rsync.c
// dest_mode).
const umask = 0o022

// recv is the state of a push: the generator (the session's goroutine)
// and the receiver (a second one) share the list and where it goes.
type recv struct {
	s      *session
	list   []*file
	root   string // virtual path of the transfer root
	single string // with one non-directory entry: its local path
	ioErr  int32

	okDirs map[string]bool // local directories this run created or checked
	bad    map[string]bool // local directories that could not be made
	inList map[string]bool // local paths of the live entries

	redo      chan int32    // receiver -> generator: files to request again; never full
	phaseDone chan struct{} // the receiver met the client's first NDX_DONE
	allDone   chan struct{}
	died      chan abort

	newDirs map[string]bool // directories this run made
	// asked marks the files the generator requested: the receiver takes
	// data for those only, so that no check of the generator's (the
	// parent is a directory of the transfer, not a link) is bypassed.
	asked []atomic.Bool
	// decided is how many entries the generator has gone through, under
	// mu; the receiver checks asked only once its index is decided.
	mu      sync.Mutex
	cond    *sync.Cond
	decided int
	deleted [5]int32 // files, dirs, links, devices, specials
	dels    int
}

func (r *recv) local(i int) string {
	if r.single != "" {
		return r.single
	}
	if r.list[i].name == "." {
		return r.root
	}
	return path.Join(r.root, r.list[i].name)
}

// receiver is the push side (main.c do_server_recv): read the list, place
// it, then generate requests while a second goroutine receives the data.
func (s *session) receiver() {
	c := s.c
	args := s.o.args
	if len(args) > 0 && args[0] == "." {
		args = args[1:]
	}
	dest := "."
	switch len(args) {
	case 0:
	case 1:
		dest = args[0]
	default:
		fatalf(1, "rsync: [silo] the server receives into one destination, not %d", len(args))
	}
	if s.o.deleteMode {
		s.filters = s.recvFilters()
	}
	list, ioErr := s.recvFileList()
	r := &recv{s: s, list: list, ioErr: ioErr, okDirs: map[string]bool{}, bad: map[string]bool{},
		inList: map[string]bool{}, newDirs: map[string]bool{}, asked: make([]atomic.Bool, len(list)), redo: make(chan int32, len(list)+1), phaseDone: make(chan struct{}),
		allDone: make(chan struct{}), died: make(chan abort, 1)}
	r.cond = sync.NewCond(&r.mu)
	r.place(dest)
	for i, f := range list {
		if !f.dead {
			r.inList[r.local(i)] = true
		}
	}
	s.readerDone = make(chan struct{})
	go func() {
		defer close(s.readerDone)
		r.receive()
	}()
	r.generate()
	c.flush()
}

// place decides where the list goes (main.c get_local_name).
func (r *recv) place(dest string) {
	s := r.s
	vp, trailing, ok := argPath(dest)
	if !ok {
		fatalf(3, "rsync: [Receiver] change_dir %q failed: %s", dest, errText(vfs.ErrEscape))
	}
	live := 0
	for _, f := range r.list {
		if !f.dead {
			live++
		}
	}
	fi, err := s.fs.Stat(vp)
	switch {
	case err == nil && fi.IsDir():
		r.root = vp
		r.okDirs[vp] = true
		return
	case err == nil && live > 1:
		fatalf(3, "rsync: [Receiver] ERROR: destination must be a directory when copying more than 1 file")
	case err == nil && live == 1 && r.list[0].isDir():
		fatalf(3, "rsync: [Receiver] ERROR: cannot overwrite non-directory with a directory")
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		fatalf(3, "rsync: [Receiver] change_dir#1 %q failed: %s", dest, errText(err))
	}
	if live > 1 || trailing || (live == 1 && r.list[0].isDir()) || live == 0 {
		if err != nil && !s.o.dryRun {
			if err := s.mkdirs(vp); err != nil {
				fatalf(3, "rsync: [Receiver] mkdir %q failed: %s", dest, errText(err))
			}
		}
		if err != nil && s.o.verbose > 0 {
			s.info("created directory %s", dest)
		}
		r.root = vp
		r.okDirs[vp] = true
		return
	}
	parent := path.Dir(vp)
	if pfi, err := s.fs.Stat(parent); err != nil || !pfi.IsDir() {
		fatalf(3, "rsync: [Receiver] change_dir#3 %q failed: %s", path.Dir(dest), errText(orErr(err, vfs.ErrNotDir)))
	}
	r.root = parent
	r.okDirs[parent] = true
	r.single = vp
}

// mkdirs makes vp: its last element, or with --mkpath all that are
// missing.
func (s *session) mkdirs(vp string) error {
	err := s.fs.Mkdir(vp)
	if err == nil || !s.o.mkpath || !errors.Is(err, fs.ErrNotExist) || vp == "/" {
		s.report(activity.Mkdir, vp, "", err)
		return err
	}
	if err := s.mkdirs(path.Dir(vp)); err != nil {
		return err
	}
	err = s.fs.Mkdir(vp)
	s.report(activity.Mkdir, vp, "", err)
	return err
}

// rel is a local path as the client names it: relative to the transfer
// root.
func (r *recv) rel(lp string) string {
	if lp == r.root {
		return "."
	}
	if r.root == "/" {
		return lp[1:]
	}
	return lp[len(r.root)+1:]
}

// generate is the generator (generator.c generate_files): one decision
// per entry in index order, the phases, deletions and the goodbye.
func (r *recv) generate() {
	s, c := r.s, r.s.c
	defer r.decide(len(r.list)) // also when the generator fails
	var dirs []int
	for i, f := range r.list {
		r.decide(i)
		if f.dead {
			continue
		}
		if s.ctx.Err() != nil {
			fatalf(20, "")
		}
		r.check()
		lp := r.local(i)
		if f.name != "." && r.single == "" {
			parent := path.Dir(lp)
			if r.bad[parent] {
				r.bad[lp] = f.isDir()
				continue
			}
			if !r.okDirs[parent] {
				fatalf(2, "rsync: [silo] ABORTING: %q is not inside a directory of the transfer", f.name)
			}
		}
		switch {
		case f.isDir():
			if r.genDir(i, f, lp) {
				dirs = append(dirs, i)
			}
		case f.isLink():
			r.genLink(i, f, lp)
		case f.isReg():
			r.genFile(i, f, lp, false)
		default:
			s.warn("skipping non-regular file %q", f.name)
		}
	}
	r.decide(len(r.list))
	c.writeNdx(ndxDone)
	c.flush()
	// Phase 1: files that failed verification, with full checksums.
	for waiting := true; waiting; {
		select {
		case i := <-r.redo:
			r.genFile(int(i), r.list[i], r.local(int(i)), true)
			c.flush()
		case <-r.phaseDone:
			waiting = false
		case e := <-r.died:
			e.raise()
		}
	}
	for len(r.redo) > 0 {
		i := <-r.redo
		r.genFile(int(i), r.list[i], r.local(int(i)), true)
	}
	c.writeNdx(ndxDone)
	if s.proto >= 29 {
		c.writeNdx(ndxDone)
	}
	if s.proto >= 31 {
		if s.o.deleteMode {
			c.writeNdx(ndxDelStats)
			var b []byte
			for _, n := range r.deleted {
				b = appendVarint(b, n)
			}
			c.write(b)
		}
		c.writeNdx(ndxDone)
	}
	c.flush()
	select {
	case <-r.allDone:
	case e := <-r.died:
		e.raise()
	}
	if !s.o.dryRun {
		for _, i := range dirs {
			r.finishDir(r.list[i], r.local(i))
		}
	}
	c.writeNdx(ndxDone)
	c.flush()
}

// decide records that the entries before n are decided.
func (r *recv) decide(n int) {
	r.mu.Lock()
	r.decided = max(r.decided, n)
	r.mu.Unlock()
	r.cond.Broadcast()
}

// wasAsked reports whether file i was requested, once the generator has
// decided about it: a client only sends what it was asked for.
func (r *recv) wasAsked(i int) bool {
	r.mu.Lock()
	for r.decided <= i {
		r.cond.Wait()
	}
	r.mu.Unlock()
	return r.asked[i].Swap(false)
}

// check re-raises a failure of the receiver goroutine in the generator.
func (r *recv) check() {
	select {
	case e := <-r.died:
		e.raise()
	default:
	}
}

func (r *recv) itemize(i int, iflags int) {
	if r.s.proto >= 29 {
		r.s.writeNdxAttrs(int32(i), iflags)
	}
}

// genDir makes or checks a directory; it reports whether its mode and
// time are to be set at the end.
func (r *recv) genDir(i int, f *file, lp string) bool {
	s := r.s
	fi, err := s.fs.Lstat(lp)
	if err == nil && !fi.IsDir() {
		if !s.o.dryRun {
			err := s.fs.Remove(lp)
			s.report(activity.Remove, lp, "", err)
			if err != nil {
				s.fileError("rsync: [generator] cannot replace %q with a directory: %s", f.name, errText(err))
				r.bad[lp] = true
				return false
			}
		}
		err = fs.ErrNotExist
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.fileError("rsync: [generator] recv_generator: failed to stat %q: %s", f.name, errText(err))
		r.bad[lp] = true
		return false
	}
	if err != nil {
		if !s.o.dryRun {
			err := s.fs.Mkdir(lp)
			s.report(activity.Mkdir, lp, "", err)
			if err != nil {
				s.fileError("rsync: [generator] recv_generator: mkdir %q failed: %s", f.name, errText(err))
				r.bad[lp] = true
				return false
			}
		}
		r.newDirs[lp] = true
		r.itemize(i, itemLocalChange|itemIsNew)
	} else if s.o.deleteMode && f.content {
		r.deleteExtraneous(lp)
	}
	r.okDirs[lp] = true
	return true
}

func (r *recv) finishDir(f *file, lp string) {
	s := r.s
	switch {
	case s.o.perms:
		s.fs.Chmod(lp, fs.FileMode(f.mode&0o777))
	case r.newDirs[lp]:
		s.fs.Chmod(lp, fs.FileMode(f.mode&0o777&^umask))
	}
	if s.o.times && !s.o.omitDirTimes {
		mt := time.Unix(f.mtime, int64(f.nsec))
		s.fs.Chtimes(lp, mt, mt)
	}
}

// genLink makes a symbolic link with silo's link rules: its target must
// stay inside the home.
func (r *recv) genLink(i int, f *file, lp string) {
	s := r.s
	if !s.o.links {
		if s.o.verbose > 0 {
			s.info("skipping non-regular file %q", f.name)
		}
		return
	}
	fi, err := s.fs.Lstat(lp)
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if t, err := s.fs.Readlink(lp); err == nil && t == f.link {
			return
		}
	}
	if err == nil && !r.makeWay(f, lp, fi) {
		return
	}
	if !s.o.dryRun {
		err := s.fs.Symlink(f.link, lp)
		s.report(activity.Symlink, lp, f.link, err)
		if err != nil {
			s.fileError("rsync: [generator] symlink %q -> %q failed: %s", f.name, f.link, errText(err))
			return
		}
	}
	r.itemize(i, itemLocalChange|itemIsNew)
}

// makeWay removes what stands where a new entry goes: a file, a link, or
// an empty directory.
func (r *recv) makeWay(f *file, lp string, fi fs.FileInfo) bool {
	s := r.s
	if s.o.dryRun {
		return true
	}
	var err error
	if fi.IsDir() {
		err = s.fs.Rmdir(lp)
		s.report(activity.Rmdir, lp, "", err)
	} else {
		err = s.fs.Remove(lp)
		s.report(activity.Remove, lp, "", err)
	}
	if err != nil {
		s.fileError("rsync: [generator] could not make way for %q: %s", f.name, errText(err))
		return false
	}
	return true
}

// genFile decides about a regular file (generator.c recv_generator) and
// requests it if needed; redo asks again after a failed verification.
func (r *recv) genFile(i int, f *file, lp string, redo bool) {
	s, c := r.s, r.s.c
	if s.o.maxSize >= 0 && f.size > s.o.maxSize || f.size < s.o.minSize {
		return
	}
	fi, err := s.fs.Lstat(lp)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.fileError("rsync: [generator] recv_generator: failed to stat %q: %s", f.name, errText(err))
		return
	}
	if s.o.existing && !exists {
		return
	}
	if exists && !fi.Mode().IsRegular() {
		if s.o.ignoreExist {
			return
		}
		if !r.makeWay(f, lp, fi) {
			return
		}
		exists = false
	}
	if exists && s.o.ignoreExist && !redo {
		return
	}
	if exists && !redo && r.unchanged(f, lp, fi) {
		r.fixAttrs(i, f, lp, fi)
		r.success(i)
		return
	}
	if exists && s.o.update && !redo && fi.ModTime().Unix() > f.mtime {
		return
	}
	appendMode := s.o.appendMode > 0 && !redo
	if appendMode && exists && fi.Size() >= f.size {
		return
	}
	var old int64
	if exists {
		old = fi.Size()
	}
	if err := s.roomFor(f.size - old); err != nil {
		s.fileError("rsync: [receiver] write failed on %q: %s", r.rel(lp), errText(err))
		return
	}
	iflags := itemTransfer
	if !exists {
		iflags |= itemIsNew
	} else {
		if fi.Size() != f.size {
			iflags |= itemReportSize
		}
		if fi.ModTime().Unix() != f.mtime {
			iflags |= itemReportTime
		}
	}
	if s.o.checksum {
		iflags |= itemReportChange
	}
	r.asked[i].Store(true)
	r.decide(i + 1) // before the request goes: its data may come at once
	c.wmu.Lock()
	b := c.appendNdx(nil, int32(i))
	c.wmu.Unlock()
	if s.proto >= 29 {
		b = binary.LittleEndian.AppendUint16(b, uint16(iflags))
	}
	c.write(b)
	if s.o.dryRun {
		return
	}
	bp, bsize := lp, old
	if pp, psize, ok := r.partialBasis(lp); ok && !appendMode {
		bp, bsize = pp, psize
	}
	if bsize == 0 || (s.o.wholeFile && !appendMode) {
		c.write(appendSumHead(nil, sumHead{}))
		return
	}
	h := s.blockSizes(bsize, redo)
	if appendMode {
		c.write(appendSumHead(nil, h))
		return
	}
	r.sendSums(bp, f, h)
}

// partialPath is where --partial-dir keeps the part of lp received.
func (r *recv) partialPath(lp string) string {
	return path.Join(path.Dir(lp), r.s.o.partialDir, path.Base(lp))
}

// partialBasis is the part of lp an interrupted run left in the partial
// directory, which is the basis of the next try.
func (r *recv) partialBasis(lp string) (string, int64, bool) {
	if r.s.o.partialDir == "" || r.s.o.inplace {
		return "", 0, false
	}
	pp := r.partialPath(lp)
	fi, err := r.s.fs.Lstat(pp)
	if err != nil || !fi.Mode().IsRegular() {
		return "", 0, false
	}
	return pp, fi.Size(), true
}

// roomFor checks that the quota has room for a file to grow by n bytes
// before any of it is asked for: a file that cannot fit is not sent, and
// one rewritten in place is not half changed. The writes still reserve
// what they take, as other sessions may use the room meanwhile.
func (s *session) roomFor(n int64) error {
	if n <= 0 || s.o.dryRun {
		return nil
	}
	return s.fs.Room(n)
}

// sendSums sends the checksum header and the block checksums of the
// basis lp. A basis that cannot be read is sent as none.
func (r *recv) sendSums(lp string, f *file, h sumHead) {
	s, c := r.s, r.s.c
	fh, err := s.fs.OpenFile(lp, os.O_RDONLY)
	if err != nil {
		c.write(appendSumHead(nil, sumHead{}))
		return
	}
	defer fh.Close()
	buf := make([]byte, h.blength)
	sums := make([]byte, 0, (4+16)*min(int(h.count), 4096))
	var hb []byte
	hb = appendSumHead(hb, h)
	c.write(hb)
	for i := int32(0); i < h.count; i++ {
		n := int(h.blength)
		if i == h.count-1 && h.remainder != 0 {
			n = int(h.remainder)
		}
		got, _ := fh.ReadAt(buf[:n], int64(i)*int64(h.blength))
		// A basis that shrank meanwhile: the missing bytes are zeros,
		// which simply will not match.
		clear(buf[got:n])
		sums = binary.LittleEndian.AppendUint32(sums, sum1(buf[:n]))
		strong := s.sums.block(buf[:n])
		sums = append(sums, strong[:h.s2length]...)
		if len(sums) >= wbufSize {
			c.write(sums)
			sums = sums[:0]
		}
	}
	c.write(sums)
}

// unchanged is the quick check (generator.c quick_check_ok).
func (r *recv) unchanged(f *file, lp string, fi fs.FileInfo) bool {
	s := r.s
	if fi.Size() != f.size {
		return false
	}
	switch {
	case s.o.ignoreTimes:
		return false
	case s.o.checksum:
		sum, err := s.fileSum(lp)
		return err == nil && bytes.Equal(sum, f.sum)
	case s.o.sizeOnly:
		return true
	}
	d := fi.ModTime().Unix() - f.mtime
	return d == 0 || (s.o.modifyWindow > 0 && d <= s.o.modifyWindow && -d <= s.o.modifyWindow)
}

// fixAttrs brings an unchanged file's mode and time in line.
func (r *recv) fixAttrs(i int, f *file, lp string, fi fs.FileInfo) {
	s := r.s
	iflags := 0
	if s.o.perms && uint32(fi.Mode().Perm()) != f.mode&0o777 {
		iflags |= itemReportPerms
		if !s.o.dryRun {
			s.fs.Chmod(lp, fs.FileMode(f.mode&0o777))
		}
	}
	if s.o.times && fi.ModTime().Unix() != f.mtime {
		iflags |= itemReportTime
		if !s.o.dryRun {
			mt := time.Unix(f.mtime, int64(f.nsec))
			s.fs.Chtimes(lp, mt, mt)
		}
	}
	if iflags != 0 {
		r.itemize(i, iflags|itemLocalChange)
	}
}

// deleteExtraneous removes what is in the directory lp but not in the
// list (--delete), unless the client's rules protect it, or the client
// reported an I/O error.
func (r *recv) deleteExtraneous(lp string) {
	s := r.s
	s.mu.Lock()
	ioErr := r.ioErr | s.clientIOErr
	s.mu.Unlock()
	if ioErr&1 != 0 && !s.o.ignoreErrors {
		if r.dels >= 0 {
			s.fileError("IO error encountered -- skipping file deletion")
			r.dels = -1
		}
		return
	}
	if r.dels < 0 {
		return
	}
	names, err := s.readDirAll(lp)
	if err != nil {
		s.fileError("rsync: [generator] opendir %q failed: %s", r.rel(lp), errText(err))
		return
	}
	for _, n := range names {
		child := path.Join(lp, n)
		if r.inList[child] || (n == s.o.partialDir && fromDir(n)) {
			continue
		}
		r.delete(child)
	}
}

// fromDir reports whether a --partial-dir value is one name, kept in
// each directory (and so never deleted as extraneous).
func fromDir(p string) bool { return p != "" && !strings.Contains(p, "/") }

// delete removes lp and, for a directory, what it holds, depth first.
func (r *recv) delete(lp string) bool {
	s := r.s
	fi, err := s.fs.Lstat(lp)
	if err != nil {
		return false
	}
	rel := r.rel(lp)
	if excluded(s.filters, rel, fi.IsDir(), false) && !s.o.deleteExclude {
		return false
	}
	if s.o.maxDelete >= 0 && r.dels >= s.o.maxDelete {
		s.mu.Lock()
		r.ioErr |= 4
		s.mu.Unlock()
		s.setExit(25)
		return false
	}
	kind := 0
	switch {
	case fi.IsDir():
		kind = 1
		names, err := s.readDirAll(lp)
		if err != nil {
			return false
		}
		for _, n := range names {
			r.delete(path.Join(lp, n))
		}
		if !s.o.dryRun {
			err = s.fs.Rmdir(lp)
			s.report(activity.Rmdir, lp, "", err)
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		kind = 2
		if !s.o.dryRun {
			err = s.fs.Remove(lp)
			s.report(activity.Remove, lp, "", err)
		}
	case fi.Mode().IsRegular():
		if !s.o.dryRun {
			err = s.fs.Remove(lp)
			s.report(activity.Remove, lp, "", err)
		}
	default:
		kind = 4
		if !s.o.dryRun {
			err = s.fs.Remove(lp)
			s.report(activity.Remove, lp, "", err)
		}
	}
	if err != nil {
		s.fileError("rsync: [generator] delete_file: %s %q failed: %s", map[bool]string{true: "rmdir", false: "unlink"}[fi.IsDir()], rel, errText(err))
		return false
	}
	r.dels++
	r.deleted[kind]++
	if s.proto >= 29 {
		msg := []byte(rel)
		if fi.IsDir() {
			msg = append(msg, 0)
		}
		s.c.msg(msgDeleted, msg)
	} else if s.o.verbose > 0 {
		s.info("deleting %s", rel)
	}
	return true
}

// receive is the receiver goroutine (receiver.c recv_files): it reads the
// client's replies until the last NDX_DONE.
func (r *recv) receive() {
	s := r.s
	defer func() {
		if p := recover(); p != nil {
			e, ok := p.(abort)
			if !ok {
				if p != errClientExit {
					// A bug: the generator panics with it, as the
					// session's own code would.
					e.bug = p
				}
				e.code = 12
			}
			r.died <- e
		}
	}()
	need := 2
	switch {
	case s.proto >= 31:
		need = 4
	case s.proto >= 29:
		need = 3
	}
	dones := 0
	for {
		ndx, iflags := s.readNdxAttrs(len(r.list))
		if ndx == ndxDone {
			dones++
			if dones == 1 {
				close(r.phaseDone)
			}
			if dones == need {
				close(r.allDone)
				return
			}
			continue
		}
		if ndx < 0 || int(ndx) >= len(r.list) {
			fatalf(2, "rsync: [silo] invalid file index %d from the client", ndx)
		}
		if iflags&itemTransfer == 0 || s.o.dryRun {
			continue
		}
		f := r.list[ndx]
		if !f.isReg() || f.dead || !r.wasAsked(int(ndx)) {
			fatalf(2, "rsync: [silo] the client sent data for %q, which was not asked for", f.name)
		}
		r.receiveFile(int(ndx), f, dones > 0)
	}
}

// receiveFile rebuilds one file from the client's delta and the basis, in
// a file that replaces the old one only when complete and verified.
func (r *recv) receiveFile(i int, f *file, redo bool) {
	s, c := r.s, r.s.c
	lp := r.local(i)
	xfer := s.cfg.Activity.Start("rsync", activity.Upload, vfs.Clean(lp), f.size)
	h := s.readSumHead()
	appendMode := s.o.appendMode > 0 && !redo
	inplace := s.o.inplace && !redo || appendMode
	var offset int64
	if appendMode {
		offset = h.flength()
	}
	sum := s.sums.file()
	// With --partial-dir the file is rebuilt in the partial directory
	// (from what an earlier run left there, if anything) and moved into
	// place when complete.
	bp, op := lp, lp
	pp, _, fromPartial := r.partialBasis(lp)
	if fromPartial && !appendMode {
		bp = pp
	}
	if s.o.partialDir != "" && !inplace {
		op = r.partialPath(lp)
		if err := s.fs.Mkdir(path.Dir(op)); err != nil && !errors.Is(err, fs.ErrExist) {
			op = lp
		}
	}
	var basis *vfs.File
	if h.count > 0 || (appendMode && offset > 0) {
		basis, _ = s.fs.OpenFile(bp, os.O_RDONLY)
	}
	if basis != nil {
		defer basis.Close()
	}
	var out *vfs.File
	var werr error
	isNew := false
	if _, err := s.fs.Lstat(op); errors.Is(err, fs.ErrNotExist) {
		isNew = true
	}
	flag := os.O_WRONLY | os.O_CREATE
	if !inplace {
		flag |= os.O_TRUNC
	}
	out, werr = s.fs.OpenFile(op, flag)
	if appendMode && (s.o.appendMode == 2 || s.proto < 30) && werr == nil {
		werr = hashPrefix(basis, offset, sum)
	}
	if out == nil && werr == nil {
		werr = vfs.ErrNotRegular
	}
	var literal int64
	done := false
	defer func() {
		if done || out == nil {
			return
		}
		// The session broke off mid-file (the panic goes on up).
		switch {
		case s.o.partial && literal > 0:
			out.Close()
			if op == lp {
				s.fs.Chtimes(lp, time.Unix(0, 0), time.Unix(0, 0))
			}
		default:
			out.Abort()
			out.Close()
			if isNew && !inplace {
				s.fs.Remove(op)
			}
		}
		xfer.EndBytes(literal, activity.ErrAborted)
	}()
	tr := s.newTokenReader()
	var bbuf []byte
	for {
		lit, blk, end := tr.next()
		if end {
			break
		}
		var data []byte
		if lit != nil {
			data = lit
			literal += int64(len(lit))
		} else {
			if blk < 0 || blk >= h.count {
				fatalf(2, "rsync: [silo] block %d of %q is out of range (%d blocks)", blk, f.name, h.count)
			}
			n := int(h.blength)
			if blk == h.count-1 && h.remainder != 0 {
				n = int(h.remainder)
			}
			if cap(bbuf) < n {
				bbuf = make([]byte, n)
			}
			data = bbuf[:n]
			got := 0
			if basis != nil {
				got, _ = basis.ReadAt(data, int64(blk)*int64(h.blength))
			}
			clear(data[got:])
			tr.blockData(data)
		}
		if offset+int64(len(data)) > f.size {
			fatalf(2, "rsync: [silo] the client sent more data for %q than its listed size", f.name)
		}
		sum.Write(data)
		if werr == nil {
			_, werr = out.WriteAt(data, offset)
		}
		xfer.Add(int64(len(data)))
		offset += int64(len(data))
	}
	var wantBuf [16]byte
	want := wantBuf[:s.sums.xfer.size()]
	c.read(want)
	got := sum.Sum(nil)
	done = true
	var result error
	switch {
	case werr != nil:
		if out != nil {
			out.Abort()
			out.Close()
			if isNew && !inplace {
				s.fs.Remove(op)
			}
		}
		s.fileError("rsync: [receiver] write failed on %q: %s", r.rel(lp), errText(werr))
		result = werr
	case !bytes.Equal(got, want):
		if inplace {
			out.Truncate(offset)
			out.Close()
		} else {
			out.Abort()
			out.Close()
			if isNew {
				s.fs.Remove(op)
			}
		}
		result = errVerification
		if redo {
			s.fileError("ERROR: %s failed verification -- update discarded.", r.rel(lp))
		} else {
			s.warn("WARNING: %s failed verification -- update discarded (will try again).", r.rel(lp))
			r.redo <- int32(i)
		}
	default:
		if inplace {
			out.Truncate(offset)
		}
		r.setAttrs(f, op, isNew || op != lp)
		err := out.Close()
		if err == nil && op != lp {
			if err = s.fs.PosixRename(op, lp); err == nil {
				s.fs.Rmdir(path.Dir(op)) // if it is now empty
			}
		}
		if err != nil {
			s.fileError("rsync: [receiver] rename failed for %q: %s", r.rel(lp), errText(err))
			result = err
			if isNew && !inplace {
				s.fs.Remove(op)
			}
		} else {
			if s.o.times {
				// A time set before the close is the temp file's; an
				// in-place file's last write may follow it.
				mt := time.Unix(f.mtime, int64(f.nsec))
				s.fs.Chtimes(lp, mt, mt)
			}
			r.success(i)
		}
	}
	xfer.EndBytes(literal, result)
}

// errVerification: a file rebuilt here did not match the sender's
// whole-file checksum.
var errVerification = errors.New("verification")

// success tells a client with --remove-source-files that file i is safe
// here, so that it may remove its copy.
func (r *recv) success(i int) {
	if r.s.o.removeSource && !r.s.o.dryRun {
		r.s.c.msg(msgSuccess, binary.LittleEndian.AppendUint32(nil, uint32(i)))
	}
}

func hashPrefix(basis *vfs.File, n int64, sum io.Writer) error {
	if basis == nil {
		return vfs.ErrNotRegular
	}
	_, err := io.Copy(sum, io.NewSectionReader(basis, 0, n))
	return err
}

// setAttrs gives a file just written its mode: the sender's with -p, else
// the sender's less the umask for a new file, else the old file's.
func (r *recv) setAttrs(f *file, lp string, isNew bool) {
	s := r.s
	switch {
	case s.o.perms:
		s.fs.Chmod(lp, fs.FileMode(f.mode&0o777))
	case isNew:
		s.fs.Chmod(lp, fs.FileMode(f.mode&0o777&^umask))
	}
}
