package checksum

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// checkFile verifies the checksum lines in name ("-" is stdin), printing
// and summing up as GNU's --check does.
func (r *run) checkFile(name string) bool {
	display := name
	var src io.Reader
	if name == "-" {
		display = "standard input"
		src = r.stdin
	} else {
		f, err := r.open(name)
		if err != nil {
			fmt.Fprintf(r.errw, "%s: %s: %s\n", r.name, quote(name), describe(err))
			return false
		}
		defer f.Close()
		src = io.NewSectionReader(f, 0, 1<<62)
	}
	var improper, unreadable, mismatched, verified int
	properlyFormatted := false
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sep := byte('\n')
	if r.zero {
		sep = 0
	}
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := strings.IndexByte(string(data), sep); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for lineNo := 1; sc.Scan(); lineNo++ {
		if r.ctx.Err() != nil {
			return false
		}
		line := strings.TrimLeft(sc.Text(), " \t")
		if line == "" || line[0] == '#' {
			continue
		}
		file, want, bits, ok := r.parseLine(line)
		if !ok {
			improper++
			if r.warn {
				fmt.Fprintf(r.errw, "%s: %s: %d: improperly formatted %s checksum line\n", r.name, quote(display), lineNo, r.alg.tag)
			}
			continue
		}
		properlyFormatted = true
		got, err := r.digest(file, bits)
		if err != nil {
			if r.ignMiss && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			unreadable++
			fmt.Fprintf(r.errw, "%s: %s: %s\n", r.name, quote(file), describe(err))
			if !r.status {
				fmt.Fprintf(r.out, "%s: FAILED open or read\n", shown(file))
			}
			continue
		}
		verified++
		if !strings.EqualFold(got, want) {
			mismatched++
			if !r.status {
				fmt.Fprintf(r.out, "%s: FAILED\n", shown(file))
			}
		} else if !r.status && !r.quiet {
			fmt.Fprintf(r.out, "%s: OK\n", shown(file))
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(r.errw, "%s: %s: %s\n", r.name, quote(name), describe(err))
		return false
	}
	r.out.Flush()
	if !properlyFormatted {
		fmt.Fprintf(r.errw, "%s: %s: no properly formatted checksum lines found\n", r.name, quote(display))
		return false
	}
	if !r.status {
		warn := func(n int, one, many string) {
			if n == 1 {
				fmt.Fprintf(r.errw, "%s: WARNING: 1 %s\n", r.name, one)
			} else if n > 1 {
				fmt.Fprintf(r.errw, "%s: WARNING: %d %s\n", r.name, n, many)
			}
		}
		warn(improper, "line is improperly formatted", "lines are improperly formatted")
		warn(unreadable, "listed file could not be read", "listed files could not be read")
		warn(mismatched, "computed checksum did NOT match", "computed checksums did NOT match")
	}
	if r.ignMiss && verified == 0 {
		fmt.Fprintf(r.errw, "%s: %s: no file was verified\n", r.name, quote(display))
		return false
	}
	return mismatched == 0 && unreadable == 0 && (!r.strict || improper == 0)
}

// parseLine reads "HEX  NAME", "HEX *NAME" or "TAG (NAME) = HEX", each
// optionally with a leading backslash meaning that NAME is escaped.
func (r *run) parseLine(line string) (name, sum string, bits int, ok bool) {
	escaped := strings.HasPrefix(line, "\\")
	if escaped {
		line = line[1:]
	}
	if name, sum, bits, ok = r.parseTag(line); !ok {
		name, sum, bits, ok = r.parseStandard(line)
	}
	if !ok {
		return "", "", 0, false
	}
	if escaped {
		if name, ok = unescape(name); !ok {
			return "", "", 0, false
		}
	}
	return name, sum, bits, true
}

func (r *run) parseTag(line string) (string, string, int, bool) {
	tag, rest, ok := strings.Cut(line, " (")
	if !ok {
		return "", "", 0, false
	}
	bits := r.bits
	switch {
	case tag == r.alg.tag:
	case r.name == "b2sum" && strings.HasPrefix(tag, "BLAKE2b-"):
		if _, err := fmt.Sscanf(tag, "BLAKE2b-%d", &bits); err != nil || bits <= 0 || bits > 512 || bits%8 != 0 {
			return "", "", 0, false
		}
	default:
		return "", "", 0, false
	}
	i := strings.LastIndex(rest, ") = ")
	if i < 0 {
		return "", "", 0, false
	}
	name, sum := rest[:i], rest[i+4:]
	if !isHex(sum) || len(sum)*4 != bits {
		return "", "", 0, false
	}
	return name, sum, bits, true
}

func (r *run) parseStandard(line string) (string, string, int, bool) {
	i := strings.IndexByte(line, ' ')
	if i < 0 || i+2 > len(line) || (line[i+1] != ' ' && line[i+1] != '*') {
		return "", "", 0, false
	}
	sum, name := line[:i], line[i+2:]
	bits := len(sum) * 4
	if !isHex(sum) || name == "" {
		return "", "", 0, false
	}
	if r.name == "b2sum" && !r.lengthSet {
		if bits > 512 || bits%8 != 0 {
			return "", "", 0, false
		}
	} else if bits != r.bits {
		return "", "", 0, false
	}
	return name, sum, bits, true
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// shown is a file name in --check output: escaped, with a leading backslash,
// if it needs it.
func shown(name string) string {
	if s, escaped := escape(name); escaped {
		return "\\" + s
	}
	return name
}

// quote writes a file name for a diagnostic as GNU does (gnulib's
// shell-escape quoting, C locale): as is if a shell would read it back
// unchanged, else in single quotes, or double quotes if it holds a single
// quote and nothing a double quote treats specially; control and non-ASCII
// bytes as $'\n' or $'\303' outside the quotes.
func quote(s string) string {
	needs, ctrl := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x20 || c >= 0x7f:
			needs, ctrl = true, true
		case strings.IndexByte(" !\"$&'()*:;<=>?[\\^`|", c) >= 0:
			needs = true
		case i == 0 && (c == '#' || c == '~'):
			needs = true
		}
	}
	if s == "" {
		return "''"
	}
	if !needs {
		return s
	}
	if strings.IndexByte(s, '\'') >= 0 && !ctrl && !strings.ContainsAny(s, "$`\"\\!") {
		return `"` + s + `"`
	}
	var b strings.Builder
	b.WriteByte('\'')
	inDollar := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f {
			if !inDollar {
				b.WriteString("'$'")
				inDollar = true
			}
			if e := strings.IndexByte("\a\b\f\n\r\t\v", c); e >= 0 {
				b.WriteByte('\\')
				b.WriteByte("abfnrtv"[e])
			} else {
				fmt.Fprintf(&b, "\\%03o", c)
			}
			continue
		}
		if inDollar {
			b.WriteString("''")
			inDollar = false
		}
		if c == '\'' {
			b.WriteString(`'\''`)
		} else {
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}
