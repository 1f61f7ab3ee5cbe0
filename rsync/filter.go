package rsync

import (
	"strings"
)

// rule is one filter rule the client sent (exclude.c): include or exclude
// a pattern, first match wins.
type rule struct {
	include   bool
	pattern   string
	dirOnly   bool // pattern ended in "/"
	anchored  bool // pattern began with "/": matched from the transfer root
	wholePath bool // pattern holds "/" or "**": matched against the path
	negate    bool
	sender    bool // applies to what the sender lists
	receiver  bool // protects from deletion
	clear     bool // "!": forget the rules so far
}

const (
	maxRules   = 10000
	maxRuleLen = 4096
)

// recvFilters reads the client's filter list: int32 length and text per
// rule, then 0 (exclude.c recv_filter_list).
func (s *session) recvFilters() []rule {
	var rules []rule
	for {
		n := s.c.int32()
		if n == 0 {
			return rules
		}
		if n < 0 || n > maxRuleLen || len(rules) >= maxRules {
			fatalf(2, "rsync: [silo] filter rule of %d bytes, or too many rules", n)
		}
		b := make([]byte, n)
		s.c.read(b)
		r, ok := s.parseRule(string(b))
		if !ok {
			fatalf(4, "rsync: [silo] the server does not support the filter rule %q", string(b))
		}
		if r.clear {
			rules = rules[:0]
			continue
		}
		rules = append(rules, r)
	}
}

func (s *session) parseRule(text string) (rule, bool) {
	r := rule{sender: true, receiver: true}
	if s.proto < 29 {
		// Old syntax: "+ " includes, "- " or nothing excludes.
		switch {
		case strings.HasPrefix(text, "+ "):
			r.include, text = true, text[2:]
		case strings.HasPrefix(text, "- "):
			text = text[2:]
		}
		return r.withPattern(text), text != ""
	}
	if text == "!" {
		return rule{clear: true}, true
	}
	if text == "" {
		return r, false
	}
	switch text[0] {
	case '+':
		r.include = true
	case '-':
	case 'S':
		r.include, r.receiver = true, false
	case 'H':
		r.receiver = false
	case 'R':
		r.include, r.sender = true, false
	case 'P':
		r.sender = false
	default:
		return r, false // merge rules (":" and "."), and anything unknown
	}
	i := 1
	for ; i < len(text) && text[i] != ' ' && text[i] != '_'; i++ {
		switch text[i] {
		case '/':
			r.anchored = true // against the full path: same as a leading "/"
		case '!':
			r.negate = true
		case 's':
			r.receiver = false
		case 'r':
			r.sender = false
		case 'p', 'C':
		default:
			return r, false
		}
	}
	if i >= len(text) {
		return r, false
	}
	pat := text[i+1:]
	if pat == "" {
		return r, false
	}
	return r.withPattern(pat), true
}

func (r rule) withPattern(p string) rule {
	if strings.HasSuffix(p, "/") && p != "/" {
		r.dirOnly = true
		p = strings.TrimRight(p, "/")
	}
	if strings.HasPrefix(p, "/") {
		r.anchored = true
		p = strings.TrimLeft(p, "/")
	}
	r.wholePath = r.anchored || strings.Contains(p, "/") || strings.Contains(p, "**")
	r.pattern = p
	return r
}

// excluded reports whether name (relative to the transfer root) is
// excluded by the rules that apply to the side asking.
func excluded(rules []rule, name string, isDir, senderSide bool) bool {
	if name == "." {
		return false
	}
	for _, r := range rules {
		if senderSide && !r.sender || !senderSide && !r.receiver {
			continue
		}
		if r.matches(name, isDir) {
			return !r.include
		}
	}
	return false
}

func (r rule) matches(name string, isDir bool) bool {
	if r.dirOnly && !isDir {
		return r.negate
	}
	var m bool
	switch {
	case !r.wholePath:
		m = wildmatch(r.pattern, name[strings.LastIndexByte(name, '/')+1:])
	case r.anchored:
		m = r.matchPath(name, isDir)
	default:
		m = r.matchPath(name, isDir)
		for i := 0; !m && i < len(name); i++ {
			if name[i] == '/' {
				m = r.matchPath(name[i+1:], isDir)
			}
		}
	}
	return m != r.negate
}

// matchPath matches a whole path; "dir/***" also matches the directory
// "dir" itself.
func (r rule) matchPath(name string, isDir bool) bool {
	if wildmatch(r.pattern, name) {
		return true
	}
	if p, ok := strings.CutSuffix(r.pattern, "/***"); ok && isDir {
		return wildmatch(p, name)
	}
	return false
}

// wildmatch matches rsync's wildcards: "*" within one path element, "**"
// across elements, "?" one character but "/", "[...]" a class, "\" an
// escape.
func wildmatch(p, s string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			double := strings.HasPrefix(p, "**")
			p = strings.TrimLeft(p, "*")
			if p == "" {
				return double || strings.IndexByte(s, '/') < 0
			}
			for i := 0; i <= len(s); i++ {
				if wildmatch(p, s[i:]) {
					return true
				}
				if i < len(s) && s[i] == '/' && !double {
					return false
				}
			}
			return false
		case '?':
			if s == "" || s[0] == '/' {
				return false
			}
			p, s = p[1:], s[1:]
		case '[':
			if s == "" || s[0] == '/' {
				return false
			}
			ok, rest, valid := matchClass(p, s[0])
			if !valid {
				if s[0] != '[' {
					return false
				}
				p, s = p[1:], s[1:]
				continue
			}
			if !ok {
				return false
			}
			p, s = rest, s[1:]
		case '\\':
			if len(p) > 1 {
				p = p[1:]
			}
			fallthrough
		default:
			if s == "" || s[0] != p[0] {
				return false
			}
			p, s = p[1:], s[1:]
		}
	}
	return s == ""
}

// matchClass matches c against the class at the start of p; it returns
// the rest of p, and valid=false when the class is not closed.
func matchClass(p string, c byte) (ok bool, rest string, valid bool) {
	i := 1
	neg := false
	if i < len(p) && (p[i] == '!' || p[i] == '^') {
		neg = true
		i++
	}
	first := true
	for i < len(p) {
		if p[i] == ']' && !first {
			return ok != neg, p[i+1:], true
		}
		first = false
		lo := p[i]
		if lo == '\\' && i+1 < len(p) {
			i++
			lo = p[i]
		}
		hi := lo
		if i+2 < len(p) && p[i+1] == '-' && p[i+2] != ']' {
			hi = p[i+2]
			i += 2
		}
		if lo <= c && c <= hi {
			ok = true
		}
		i++
	}
	return false, p, false
}
