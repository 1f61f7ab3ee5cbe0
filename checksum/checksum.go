// Package checksum runs md5sum, sha1sum, sha224sum, sha256sum, sha384sum,
// sha512sum and b2sum inside a home, as GNU coreutils 9 does: same options,
// same output byte for byte, same exit status. Files are read through the
// home's vfs.FS, so paths are virtual and nothing outside the home is read.
package checksum

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/blake2b"

	"silo/activity"
	"silo/internal/strerror"
	"silo/vfs"
)

// algorithm is one command's hash.
type algorithm struct {
	tag  string // the name in --tag lines and messages
	bits int    // digest size
	new  func(bits int) hash.Hash
}

var algorithms = map[string]algorithm{
	"md5sum":    {"MD5", 128, func(int) hash.Hash { return md5.New() }},
	"sha1sum":   {"SHA1", 160, func(int) hash.Hash { return sha1.New() }},
	"sha224sum": {"SHA224", 224, func(int) hash.Hash { return sha256.New224() }},
	"sha256sum": {"SHA256", 256, func(int) hash.Hash { return sha256.New() }},
	"sha384sum": {"SHA384", 384, func(int) hash.Hash { return sha512.New384() }},
	"sha512sum": {"SHA512", 512, func(int) hash.Hash { return sha512.New() }},
	"b2sum": {"BLAKE2b", 512, func(bits int) hash.Hash {
		h, _ := blake2b.New(bits/8, nil)
		return h
	}},
}

// Is reports whether name is one of the checksum commands.
func Is(name string) bool {
	_, ok := algorithms[name]
	return ok
}

// Run runs the command name with args (without the command name) and
// returns its exit status. Reading stops, with status 1, when ctx ends. A
// file the user may not read is reported to rep (which may be nil).
func Run(ctx context.Context, fsys *vfs.FS, rep *activity.Conn, name string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	alg, ok := algorithms[name]
	if !ok {
		fmt.Fprintf(stderr, "silo: command not supported: %s\n", name)
		return 127
	}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	r := &run{ctx: ctx, fs: fsys, rep: rep, name: name, alg: alg, bits: alg.bits, stdin: stdin, out: out, errw: stderr}
	files, err := r.parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\nTry '%s --help' for more information.\n", name, err, name)
		return 1
	}
	if len(files) == 0 {
		files = []string{"-"}
	}
	ok = true
	for _, f := range files {
		var good bool
		if r.check {
			good = r.checkFile(f)
		} else {
			good = r.sumFile(f)
		}
		ok = ok && good
		if ctx.Err() != nil {
			return 1
		}
	}
	if !ok {
		return 1
	}
	return 0
}

type run struct {
	ctx   context.Context
	fs    *vfs.FS
	rep   *activity.Conn
	name  string
	alg   algorithm
	bits  int
	stdin io.Reader
	out   *bufio.Writer
	errw  io.Writer

	check, tag, zero, binary, text       bool
	quiet, status, strict, warn, ignMiss bool
	lengthSet                            bool
}

// parse reads GNU-style options, anywhere among the operands (getopt
// permutes them), until "--".
func (r *run) parse(args []string) ([]string, error) {
	var files []string
	long := map[string]*bool{
		"check": &r.check, "tag": &r.tag, "zero": &r.zero, "binary": &r.binary, "text": &r.text,
		"quiet": &r.quiet, "status": &r.status, "strict": &r.strict, "warn": &r.warn, "ignore-missing": &r.ignMiss,
	}
	short := map[byte]*bool{'c': &r.check, 'z': &r.zero, 'b': &r.binary, 't': &r.text, 'w': &r.warn}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			files = append(files, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "--"):
			opt, val, hasVal := strings.Cut(a[2:], "=")
			if r.name == "b2sum" && opt == "length" {
				if !hasVal {
					if i+1 >= len(args) {
						return nil, fmt.Errorf("option '--length' requires an argument")
					}
					i++
					val = args[i]
				}
				if err := r.setLength(val); err != nil {
					return nil, err
				}
				continue
			}
			p := long[opt]
			if p == nil || hasVal {
				return nil, fmt.Errorf("unrecognized option '%s'", a)
			}
			*p = true
		case strings.HasPrefix(a, "-") && a != "-":
			for j := 1; j < len(a); j++ {
				c := a[j]
				if c == 'l' && r.name == "b2sum" {
					val := a[j+1:]
					if val == "" {
						if i+1 >= len(args) {
							return nil, fmt.Errorf("option requires an argument -- 'l'")
						}
						i++
						val = args[i]
					}
					if err := r.setLength(val); err != nil {
						return nil, err
					}
					break
				}
				p := short[c]
				if p == nil {
					return nil, fmt.Errorf("invalid option -- '%c'", c)
				}
				*p = true
			}
		default:
			files = append(files, a)
		}
	}
	switch {
	case r.tag && r.text:
		return nil, errors.New("--tag does not support --text mode")
	case r.check && r.tag:
		return nil, errors.New("the --tag option is meaningless when verifying checksums")
	case r.check && (r.binary || r.text):
		return nil, errors.New("the --binary and --text options are meaningless when verifying checksums")
	case !r.check && r.ignMiss:
		return nil, errors.New("the --ignore-missing option is meaningful only when verifying checksums")
	case !r.check && r.status:
		return nil, errors.New("the --status option is meaningful only when verifying checksums")
	case !r.check && r.warn:
		return nil, errors.New("the --warn option is meaningful only when verifying checksums")
	case !r.check && r.quiet:
		return nil, errors.New("the --quiet option is meaningful only when verifying checksums")
	case !r.check && r.strict:
		return nil, errors.New("the --strict option is meaningful only when verifying checksums")
	}
	return files, nil
}

func (r *run) setLength(v string) error {
	n, err := strconv.Atoi(v)
	switch {
	case err != nil || n < 0 || n > 512:
		if err == nil && n > 512 {
			return fmt.Errorf("invalid length: '%s'\n%s: maximum digest length for 'BLAKE2b' is 512 bits", v, r.name)
		}
		return fmt.Errorf("invalid length: '%s'", v)
	case n%8 != 0:
		return fmt.Errorf("invalid length: '%s'\n%s: length is not a multiple of 8", v, r.name)
	}
	if n == 0 {
		n = 512
	}
	r.bits, r.lengthSet = n, true
	return nil
}

// tagName is the algorithm's name in --tag lines: b2sum gives its length
// unless it is the default.
func (r *run) tagName(bits int) string {
	if r.name == "b2sum" && bits != 512 {
		return fmt.Sprintf("BLAKE2b-%d", bits)
	}
	return r.alg.tag
}

// open opens a file to read, and reports a refusal.
func (r *run) open(name string) (*vfs.File, error) {
	f, err := r.fs.OpenFile(name, os.O_RDONLY)
	if err != nil {
		r.rep.Refused("checksum", activity.Open, vfs.Clean(name), err)
	}
	return f, err
}

// digest hashes the named file ("-" is stdin).
func (r *run) digest(name string, bits int) (string, error) {
	h := r.alg.new(bits)
	var src io.Reader
	if name == "-" {
		src = r.stdin
	} else {
		f, err := r.open(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		src = io.NewSectionReader(f, 0, 1<<62)
	}
	buf := make([]byte, 256<<10)
	for {
		if err := r.ctx.Err(); err != nil {
			return "", err
		}
		n, err := src.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sumFile prints one line for one operand.
func (r *run) sumFile(name string) bool {
	sum, err := r.digest(name, r.bits)
	if err != nil {
		fmt.Fprintf(r.errw, "%s: %s: %s\n", r.name, quote(name), describe(err))
		return false
	}
	shown, escaped := name, false
	if !r.zero {
		shown, escaped = escape(name)
	}
	if escaped {
		r.out.WriteByte('\\')
	}
	if r.tag {
		fmt.Fprintf(r.out, "%s (%s) = %s", r.tagName(r.bits), shown, sum)
	} else {
		mode := byte(' ')
		if r.binary {
			mode = '*'
		}
		fmt.Fprintf(r.out, "%s %c%s", sum, mode, shown)
	}
	if r.zero {
		r.out.WriteByte(0)
	} else {
		r.out.WriteByte('\n')
	}
	return true
}

// escape writes a name as GNU does in checksum lines: backslash, newline
// and carriage return escaped, and a leading backslash on the line to say
// so.
func escape(name string) (string, bool) {
	if !strings.ContainsAny(name, "\\\n\r") {
		return name, false
	}
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`, "\r", `\r`).Replace(name), true
}

func unescape(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i++; i >= len(s) {
			return "", false
		}
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		default:
			return "", false
		}
	}
	return b.String(), true
}

// describe is the message for a failed read: strerror's words, and
// "Interrupted" when the channel closed under a running hash.
func describe(err error) string {
	if errors.Is(err, context.Canceled) {
		return "Interrupted"
	}
	return strerror.Of(err)
}
