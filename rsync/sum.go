package rsync

import (
	"crypto/md5"
	"encoding/binary"
	"hash"
	"strings"

	"github.com/cespare/xxhash/v2"
	"github.com/zeebo/xxh3"
	"golang.org/x/crypto/md4"
)

// sum1 is rsync's rolling checksum (checksum.c get_checksum1) over bytes
// taken as signed: with unsigned bytes no block holding a byte >= 0x80
// would ever match the client's.
func sum1(p []byte) uint32 {
	var s1, s2 uint32
	for _, b := range p {
		s1 += uint32(int8(b))
		s2 += s1
	}
	return s1&0xffff | s2<<16
}

// rolling is sum1 over a window that slides one byte at a time.
type rolling struct{ s1, s2 uint32 }

func newRolling(p []byte) rolling {
	var r rolling
	for _, b := range p {
		r.s1 += uint32(int8(b))
		r.s2 += r.s1
	}
	return r
}

func (r rolling) value() uint32 { return r.s1&0xffff | r.s2<<16 }

// roll drops out from the front of a window of n bytes, and appends in
// unless the window is shrinking at the end of the file.
func (r *rolling) roll(out byte, n int, in byte, grow bool) {
	o := uint32(int8(out))
	r.s1 -= o
	r.s2 -= uint32(n) * o
	if grow {
		r.s1 += uint32(int8(in))
		r.s2 += r.s1
	}
}

// csum is a checksum algorithm (checksum.c valid_checksums).
type csum uint8

const (
	csumMD4 csum = iota // implied before protocol 30
	csumMD5
	csumXXH64
	csumXXH3
	csumXXH128
)

// offered is what the server lists in the negotiation, best first and in
// rsync's own order: each side picks from the other's list the name it
// ranks best, so the two agree only when both lists keep that order
// (section 2.4 of the protocol notes).
var offered = []csum{csumXXH128, csumXXH3, csumXXH64, csumMD5}

var csumNames = map[string]csum{
	"md4": csumMD4, "md5": csumMD5, "xxh64": csumXXH64, "xxhash": csumXXH64,
	"xxh3": csumXXH3, "xxh128": csumXXH128,
}

func (k csum) String() string {
	return [...]string{"md4", "md5", "xxh64", "xxh3", "xxh128"}[k]
}

// size is the length of a whole checksum: the most a block checksum may
// carry, and what follows a file's data.
func (k csum) size() int {
	if k == csumXXH64 || k == csumXXH3 {
		return 8
	}
	return 16
}

func offeredList() string {
	names := make([]string, len(offered))
	for i, k := range offered {
		names[i] = k.String()
	}
	return strings.Join(names, " ")
}

// negotiate picks from the client's list the algorithm the server ranks
// best (compat.c parse_negotiate_str).
func negotiate(list string) (csum, bool) {
	client := map[csum]bool{}
	for _, w := range strings.Fields(list) {
		if k, ok := csumNames[strings.ToLower(w)]; ok {
			client[k] = true
		}
	}
	for _, k := range offered {
		if client[k] {
			return k, true
		}
	}
	return 0, false
}

// sums are the checksum algorithms of a session (section 5.2 of the
// protocol notes): xfer for the block checksums and the whole-file
// checksum, flist for the -c list checksum.
//
// The xxHash sums follow rsync's checksum.c (get_checksum2, sum_init,
// file_checksum): a block is hashed with the seed as the hash's own seed
// (the int32 widened with its sign, as C converts it); the whole-file and
// list sums have no seed; the value goes on the wire little-endian, the
// low half of xxh128 first.
type sums struct {
	xfer, flist csum
	seedFirst   bool // MD5 with the seed before the data (compat flag C)
	// namedMD5: MD5 was negotiated or named with --checksum-choice, not
	// implied. rsync built with OpenSSL (as distributions build it)
	// then hashes a block through OpenSSL, which puts the seed first
	// whatever the compat flags say (checksum.c get_checksum2).
	namedMD5 bool
	seed     int32
}

func (s sums) seedBytes() []byte {
	if s.seed == 0 {
		return nil
	}
	return binary.LittleEndian.AppendUint32(nil, uint32(s.seed))
}

// block is the strong checksum of one block; its first xfer.size() bytes
// count.
func (s sums) block(p []byte) [16]byte {
	var out [16]byte
	seed := uint64(int64(s.seed))
	switch s.xfer {
	case csumXXH64:
		d := xxhash.NewWithSeed(seed)
		d.Write(p)
		binary.LittleEndian.PutUint64(out[:], d.Sum64())
	case csumXXH3:
		binary.LittleEndian.PutUint64(out[:], xxh3.HashSeed(p, seed))
	case csumXXH128:
		append128(out[:0], xxh3.Hash128Seed(p, seed))
	case csumMD4:
		h := md4.New()
		h.Write(p)
		h.Write(s.seedBytes())
		h.Sum(out[:0])
	default:
		h := md5.New()
		if s.seedFirst || s.namedMD5 {
			h.Write(s.seedBytes())
			h.Write(p)
		} else {
			h.Write(p)
			h.Write(s.seedBytes())
		}
		h.Sum(out[:0])
	}
	return out
}

// file starts the checksum that follows a file's data: MD4 of the seed
// and the data before protocol 30, the unseeded sum from then on.
func (s sums) file() hash.Hash {
	h := newSum(s.xfer)
	if s.xfer == csumMD4 {
		h.Write(s.seedBytes())
	}
	return h
}

// list starts the -c checksum of a file, which has no seed.
func (s sums) list() hash.Hash { return newSum(s.flist) }

func newSum(k csum) hash.Hash {
	switch k {
	case csumMD4:
		return md4.New()
	case csumXXH64:
		return xxh64Sum{xxhash.New()}
	case csumXXH3:
		return xxh3Sum{xxh3.New()}
	case csumXXH128:
		return xxh128Sum{xxh3.New128()}
	}
	return md5.New()
}

// The xxHash sums with rsync's little-endian Sum; the libraries' own is
// the canonical big-endian form.
type (
	xxh64Sum  struct{ *xxhash.Digest }
	xxh3Sum   struct{ *xxh3.Hasher }
	xxh128Sum struct{ *xxh3.Hasher128 }
)

func (h xxh64Sum) Sum(b []byte) []byte  { return binary.LittleEndian.AppendUint64(b, h.Sum64()) }
func (h xxh3Sum) Sum(b []byte) []byte   { return binary.LittleEndian.AppendUint64(b, h.Sum64()) }
func (h xxh128Sum) Sum(b []byte) []byte { return append128(b, h.Sum128()) }

func append128(b []byte, v xxh3.Uint128) []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(b, v.Lo), v.Hi)
}

// sumHead is the header of a file's block checksums (io.c read_sum_head).
type sumHead struct {
	count     int32
	blength   int32
	s2length  int32
	remainder int32
}

func (h sumHead) flength() int64 {
	n := int64(h.count) * int64(h.blength)
	if h.remainder != 0 {
		n -= int64(h.blength - h.remainder)
	}
	return n
}

// Bounds on what a client's header may make the sender hold.
const (
	maxBlockLen    = 128 << 10
	maxBlockLenOld = 8 << 20 // before protocol 30 rsync allows 2^29; silo keeps memory bounded
	maxBlocks      = 1 << 22
)

func (s *session) readSumHead() sumHead {
	c := s.c
	h := sumHead{count: c.int32(), blength: c.int32(), s2length: c.int32(), remainder: c.int32()}
	maxLen := int32(maxBlockLen)
	if s.proto < 30 {
		maxLen = maxBlockLenOld
	}
	if h.count < 0 || h.count > maxBlocks || h.blength < 0 || h.blength > maxLen ||
		h.s2length < 0 || int(h.s2length) > s.sums.xfer.size() || h.remainder < 0 || h.remainder > h.blength ||
		(h.count > 0 && h.blength == 0) {
		fatalf(2, "rsync: [silo] invalid checksum header (count=%d blength=%d s2length=%d remainder=%d)",
			h.count, h.blength, h.s2length, h.remainder)
	}
	return h
}

func appendSumHead(b []byte, h sumHead) []byte {
	for _, v := range []int32{h.count, h.blength, h.s2length, h.remainder} {
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
	}
	return b
}

// blockSizes picks the block and strong-checksum lengths for a basis of
// size n (generator.c sum_sizes_sqroot).
func (s *session) blockSizes(n int64, full bool) sumHead {
	maxLen := int64(maxBlockLen)
	if s.proto < 30 {
		maxLen = 1 << 29
	}
	if s.compress == compressZlib {
		// Classic zlib feeds each matched block into its history, and
		// the stock client's zlib takes at most a window (32 KiB) of it
		// at once ("deflate on token returned 0"); before 31 a block
		// over 64 KiB is also inserted wrongly (section 6 of the notes).
		maxLen = 32 << 10
	}
	var bl int64
	switch {
	case s.o.blockSize > 0:
		bl = min(int64(s.o.blockSize), maxLen)
	case n <= 700*700:
		bl = 700
	default:
		c, cnt := int64(1), 0
		for l := n; l>>2 > 0; l >>= 2 {
			c <<= 1
			cnt++
		}
		if c >= maxLen {
			bl = maxLen
		} else {
			for ; c >= 8; c >>= 1 {
				bl |= c
				if n < bl*bl {
					bl &^= c
				}
			}
			bl = max(bl, 700)
		}
	}
	s2 := int64(s.sums.xfer.size())
	if !full {
		b := int64(10)
		for l := n; l>>1 > 0; l >>= 1 {
			b += 2
		}
		for c := bl; c>>1 > 0 && b > 0; c >>= 1 {
			b--
		}
		s2 = min(max((b+1-32+7)/8, 2), s2)
	}
	h := sumHead{blength: int32(bl), s2length: int32(s2)}
	h.count = int32((n + bl - 1) / bl)
	h.remainder = int32(n % bl)
	return h
}
