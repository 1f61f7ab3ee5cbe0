package rsync

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"silo/vfs"
)

// Vectors from the protocol notes (section 4.1, 5.2, 4.4).
func TestVectors(t *testing.T) {
	var b []byte
	for _, v := range []int32{0, 0x7f, 0x80, 0x3fff, 0x4000, 0x1fffff, 0x200000, 0x0fffffff, 0x10000000, -1} {
		b = appendVarint(b, v)
	}
	if got, want := hex.EncodeToString(b), "007f8080bfffc00040dfffffe0000020"+"efffffff"+"f000000010"+"f0ffffffff"; got != want {
		t.Errorf("varints: %s, want %s", got, want)
	}
	b = nil
	for _, v := range []int64{0, 6, 4096, 0x7fffff, 0x800000, 1 << 31} {
		b = appendVarlong(b, v, 3)
	}
	b = appendVarlong(b, 1704164645, 4)
	if got, want := hex.EncodeToString(b), "000000000600000010"+"7fffff"+"80000080"+"c000000080"+"65257d93"; got != want {
		t.Errorf("varlongs: %s, want %s", got, want)
	}
	c := &conn{proto: 31, wPos: -1, wNeg: 1}
	b = nil
	for _, v := range []int32{0, 1, 2, 5, 300, 70000, 69999, -1, -2, -3} {
		b = c.appendNdx(b, v)
	}
	if got, want := hex.EncodeToString(b), "010101"+"03"+"fe0127"+"fe80701101"+"fe806f1101"+"00ff01ff01"; got != want {
		t.Errorf("ndx: %s, want %s", got, want)
	}
	// And back.
	rc := newConn(bytes.NewReader(b), io.Discard)
	rc.proto = 31
	for _, want := range []int32{0, 1, 2, 5, 300, 70000, 69999, -1, -2, -3} {
		if got := rc.ndx(); got != want {
			t.Errorf("read ndx %d, want %d", got, want)
		}
	}
	if got := sum1([]byte("hello\n")); got != 0x0845021e {
		t.Errorf("sum1(hello) = %#x", got)
	}
	if got := sum1([]byte{0xff, 0x80}); got != 0xff7eff7f {
		t.Errorf("sum1(ff 80) = %#x", got)
	}
	// Rolling one byte at a time equals computing afresh.
	data := []byte("the quick brown fox jumps over the lazy dog \xff\x80\x90")
	r := newRolling(data[:8])
	for i := 1; i+8 <= len(data); i++ {
		r.roll(data[i-1], 8, data[i+7], true)
		if r.value() != sum1(data[i:i+8]) {
			t.Fatalf("rolling at %d", i)
		}
	}
	names := []string{"a.txt", "a/f", "a.b", "a-b", "a"}
	dirs := map[string]bool{"a": true, "a.b": true, "a-b": true}
	for _, proto := range []int{31, 27} {
		s := &session{proto: proto}
		var list []*file
		for _, n := range names {
			mode := uint32(sIFREG)
			if dirs[n] {
				mode = sIFDIR
			}
			list = append(list, &file{name: n, mode: mode})
		}
		s.sortList(list)
		var got []string
		for _, f := range list {
			got = append(got, f.name)
		}
		want := []string{"a.txt", "a-b", "a.b", "a", "a/f"}
		if proto < 29 {
			want = []string{"a", "a-b", "a.b", "a.txt", "a/f"}
		}
		if !slices.Equal(got, want) {
			t.Errorf("protocol %d order %v, want %v", proto, got, want)
		}
	}
}

func TestWildmatch(t *testing.T) {
	for _, c := range []struct {
		pat, name string
		dir, want bool
	}{
		{"*.bin", "x/y.bin", false, true},
		{"*.bin", "x.bin/y", false, false},
		{"a/**/e.txt", "a/b/c/e.txt", false, true},
		{"/mid.bin", "sub/mid.bin", false, false},
		{"/mid.bin", "mid.bin", false, true},
		{"x/***", "x", true, true},
		{"x/***", "a/x", false, false},
		{"x/***", "x/y/z", false, true},
		{"b/", "a/b", true, true},
		{"b/", "a/b", false, false},
		{"[a-c]?", "bz", false, true},
		{"[!a-c]?", "bz", false, false},
	} {
		s := &session{proto: 31}
		r, ok := s.parseRule("- " + c.pat)
		if !ok {
			t.Fatalf("rule %q refused", c.pat)
		}
		if got := excluded([]rule{r}, c.name, c.dir, true); got != c.want {
			t.Errorf("%q on %q (dir %v): %v, want %v", c.pat, c.name, c.dir, got, c.want)
		}
	}
}

// stream builds what a client sends, for protocol 27 (raw, no
// multiplexing) or 31 (multiplexed).
type stream struct {
	s   *session
	buf []byte
}

func newStream(proto int, opts string) *stream {
	s := &session{proto: proto, c: &conn{proto: proto, wPos: -1, wNeg: 1}}
	s.o.maxDelete, s.o.maxSize = -1, -1
	parseArgs(&s.o, strings.Fields(opts))
	s.varintFlags = proto >= 30
	s.sums = sums{xfer: csumMD5, flist: csumMD5, seedFirst: true, seed: 1}
	if proto < 30 {
		s.sums.xfer, s.sums.flist = csumMD4, csumMD4
	}
	st := &stream{s: s}
	st.raw(binary.LittleEndian.AppendUint32(nil, uint32(proto)))
	if proto >= 30 {
		st.raw(appendVstring(nil, "md5"))
	}
	return st
}

func (st *stream) raw(p []byte) { st.buf = append(st.buf, p...) }

// data adds protocol data: as it is before 30, in a frame from 30 on.
func (st *stream) data(p []byte) {
	if st.s.proto >= 30 {
		st.buf = binary.LittleEndian.AppendUint32(st.buf, uint32(mplexBase)<<24|uint32(len(p)))
	}
	st.buf = append(st.buf, p...)
}

func (st *stream) int32(v int32) { st.data(binary.LittleEndian.AppendUint32(nil, uint32(v))) }

func (st *stream) list(files ...*file) {
	var b []byte
	var codec flistCodec
	for _, f := range files {
		b = st.s.encodeEntry(b, &codec, f, 0, 0)
	}
	if st.s.varintFlags {
		b = append(b, 0, 0)
	} else {
		b = append(b, 0)
	}
	for range 2 { // uids, gids
		b = st.s.c.appendVarint30(b, 0)
		if st.s.proto >= 30 {
			b = append(b, 0) // the name of id 0 (compat flag u)
		}
	}
	if st.s.proto < 30 {
		b = binary.LittleEndian.AppendUint32(b, 0)
	}
	st.data(b)
}

// file sends the data of entry ndx as literal data, with its checksum.
func (st *stream) file(ndx int32, content []byte) {
	b := st.s.c.appendNdx(nil, ndx)
	if st.s.proto >= 29 {
		b = binary.LittleEndian.AppendUint16(b, itemTransfer)
	}
	b = appendSumHead(b, sumHead{})
	if len(content) > 0 {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(content)))
		b = append(b, content...)
	}
	b = binary.LittleEndian.AppendUint32(b, 0)
	h := st.s.sums.file()
	h.Write(content)
	st.data(h.Sum(b))
}

func (st *stream) done(n int) {
	for range n {
		st.data(st.s.c.appendNdx(nil, ndxDone))
	}
}

func reg(name, content string) *file {
	return &file{name: name, mode: sIFREG | 0o644, size: int64(len(content)), mtime: 1704164645}
}

func dir(name string) *file {
	return &file{name: name, mode: sIFDIR | 0o755, mtime: 1704164645, content: true}
}

// The argument sets a fuzz input picks from with its first byte.
var fuzzArgs = [][]string{
	{"--server", "-logDtpre.iLsfxCIvu", "--checksum-seed=1", ".", "dst/"},
	{"--server", "-logDtpr", "--checksum-seed=1", ".", "dst/"},
	{"--server", "--sender", "-logDtpre.iLsfxCIvu", "--checksum-seed=1", ".", "src/"},
	{"--server", "--sender", "-logDtpr", "--checksum-seed=1", ".", "src/"},
	{"--server", "-logDtprze.iLsfxCIvu", "--delete", "--inplace", "--checksum-seed=1", ".", "src/"},
	{"--server", "-vlogDtprze.LsfxCIvu", "--old-compress", "--partial", "--checksum-seed=1", ".", "dst/"},
}

func pushSeed(proto int, files []*file, data map[int32]string) []byte {
	opts := "-logDtpre.iLsfxCIvu"
	if proto < 30 {
		opts = "-logDtpr"
	}
	st := newStream(proto, opts)
	st.list(files...)
	for ndx, d := range data {
		st.file(ndx, []byte(d))
	}
	if proto >= 31 {
		st.done(4)
	} else {
		st.done(2)
	}
	sel := byte(0)
	if proto < 30 {
		sel = 1
	}
	return append([]byte{sel}, st.buf...)
}

// serve runs the server over one client stream on a home in top/home.
func serve(t testing.TB, top string, in []byte) (int, []byte) {
	home := filepath.Join(top, "home")
	fsys, err := vfs.Open(home, vfs.Options{Limits: vfs.Limits{Bytes: 1 << 20, Files: 100}})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	args := fuzzArgs[0]
	if len(in) > 0 {
		args = fuzzArgs[int(in[0])%len(fuzzArgs)]
		in = in[1:]
	}
	var out bytes.Buffer
	code := Run(context.Background(), fsys, Config{User: "fuzz"}, args, bytes.NewReader(in), &out, io.Discard)
	return code, out.Bytes()
}

func fuzzHome(t testing.TB) string {
	top := t.TempDir()
	home := filepath.Join(top, "home")
	os.MkdirAll(filepath.Join(home, "src", "sub"), 0o755)
	os.WriteFile(filepath.Join(home, "src", "a"), []byte("hello\n"), 0o644)
	os.WriteFile(filepath.Join(home, "src", "sub", "b"), bytes.Repeat([]byte("b"), 5000), 0o644)
	os.Symlink("../outside", filepath.Join(home, "out"))
	os.Mkdir(filepath.Join(top, "outside"), 0o755)
	os.WriteFile(filepath.Join(top, "outside", "secret"), []byte("secret"), 0o644)
	return top
}

func checkOutside(t *testing.T, top string) {
	entries, _ := os.ReadDir(top)
	if len(entries) != 2 {
		t.Fatalf("entries beside the home: %v", entries)
	}
	got, _ := os.ReadDir(filepath.Join(top, "outside"))
	data, err := os.ReadFile(filepath.Join(top, "outside", "secret"))
	if len(got) != 1 || err != nil || string(data) != "secret" {
		t.Fatalf("outside the home changed: %v %q %v", got, data, err)
	}
}

// TestHostileLists sends what the stock client never would: each is
// refused with a clean exit, and nothing outside the home is touched.
func TestHostileLists(t *testing.T) {
	long := strings.Repeat("x", 2000)
	// Whichever of the generator's check and the receiver's comes first:
	// the stream sends data before it could have been asked for.
	const either = "not inside a directory of the transfer|was not asked for"
	for _, c := range []struct {
		name  string
		files []*file
		msg   string
	}{
		{"dotdot", []*file{dir("."), reg("../outside/x", "x")}, "unsafe pathname"},
		{"absolute", []*file{dir("."), reg("/etc/x", "x")}, "unsafe pathname"},
		{"long", []*file{dir("."), reg(long, "x")}, "overflow in a file-list name"},
		{"through a listed link", []*file{dir("."), {name: "l", mode: sIFLNK | 0o777, link: "/etc", size: 4}, reg("l/f", "x")}, either},
		{"through a planted link", []*file{dir("."), reg("out/x", "x")}, either},
		{"dot as a file", []*file{reg(".", "x")}, "is not a directory"},
	} {
		for _, proto := range []int{27, 31} {
			top := fuzzHome(t)
			data := map[int32]string{}
			for i := 1; i < len(c.files); i++ {
				data[int32(i)] = "x"
			}
			code, out := serve(t, top, pushSeed(proto, c.files, data))
			found := false
			for _, m := range strings.Split(c.msg, "|") {
				found = found || bytes.Contains(out, []byte(m))
			}
			if code != 2 || !found {
				t.Errorf("%s at %d: exit %d, want 2 and %q\n%q", c.name, proto, code, c.msg, out)
			}
			checkOutside(t, top)
		}
	}
	// A well-formed push lands, at both protocols.
	for _, proto := range []int{27, 31} {
		top := fuzzHome(t)
		code, _ := serve(t, top, pushSeed(proto, []*file{dir("."), reg("f", "hello\n")}, map[int32]string{1: "hello\n"}))
		got, _ := os.ReadFile(filepath.Join(top, "home", "dst", "f"))
		if code != 0 || string(got) != "hello\n" {
			t.Errorf("push at %d: exit %d, f = %q", proto, code, got)
		}
	}
}

// FuzzServer feeds arbitrary client streams to the server, pushes and
// pulls, on a real home: nothing panics and nothing outside the home is
// touched.
func FuzzServer(f *testing.F) {
	for _, proto := range []int{27, 31} {
		f.Add(pushSeed(proto, []*file{dir("."), reg("f", "hello\n"), dir("sub"), reg("sub/g", "")}, map[int32]string{1: "hello\n", 3: ""}))
		f.Add(pushSeed(proto, []*file{dir("."), reg("../x", "x")}, map[int32]string{1: "x"}))
		f.Add(pushSeed(proto, []*file{dir("."), {name: "l", mode: sIFLNK | 0o777, link: "../outside", size: 10}, reg("l/secret", "x")}, map[int32]string{2: "x"}))
		// A pull: the filter list, a request for each file, the phases.
		opts, sel := "-logDtpre.iLsfxCIvu", byte(2)
		if proto < 30 {
			opts, sel = "-logDtpr", 3
		}
		st := newStream(proto, opts)
		st.int32(0)
		for ndx := int32(1); ndx <= 3; ndx++ {
			b := st.s.c.appendNdx(nil, ndx)
			if proto >= 29 {
				b = binary.LittleEndian.AppendUint16(b, itemTransfer)
			}
			st.data(appendSumHead(b, sumHead{count: 1, blength: 700, s2length: 2, remainder: 6}))
			st.data([]byte{0x1e, 0x02, 0x45, 0x08, 0xb1, 0x94})
		}
		st.done(5)
		f.Add(append([]byte{sel}, st.buf...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		top := fuzzHome(t)
		serve(t, top, in)
		checkOutside(t, top)
	})
}

// The server's choice from a client's list is the name it ranks best.
func TestNegotiate(t *testing.T) {
	for _, c := range []struct {
		list string
		want csum
		ok   bool
	}{
		{"xxh128 xxh3 xxh64 md5 md4 sha1", csumXXH128, true},
		{"md5 xxh3", csumXXH3, true},
		{"XXHASH md4", csumXXH64, true},
		{"md5 md4", csumMD5, true},
		{"md4 sha1 none", 0, false},
		{"", 0, false},
	} {
		if got, ok := negotiate(c.list); got != c.want || ok != c.ok {
			t.Errorf("negotiate(%q) = %v, %v; want %v, %v", c.list, got, ok, c.want, c.ok)
		}
	}
}
