package rsync

import (
	"io"
	"path"
	"slices"
	"strings"

	"silo/vfs"
)

// argPath maps a path the client named on the command line to a virtual
// path of the home, as an SFTP chroot shows it: "~" and "/" are the home.
// A path that climbs above the home with ".." is refused, not clamped:
// the client meant a place silo does not show. dirSuffix reports a
// trailing "/" (or "/."), which means "the contents of".
func argPath(p string) (vpath string, dirSuffix bool, ok bool) {
	p = untilde(p)
	dirSuffix = p == "" || strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || p == "."
	rel := path.Clean(strings.TrimLeft(p, "/"))
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false, false
	}
	return vfs.Clean(rel), dirSuffix, true
}

// untilde makes "~" and "~/..." home-relative.
func untilde(p string) string {
	switch {
	case p == "~":
		return ""
	case strings.HasPrefix(p, "~/"):
		return p[2:]
	}
	return p
}

// expandGlob expands the wildcards of a sender's argument inside the
// home, as the shell a real rsync server runs under would: each element
// with "*", "?" or "[" is matched against a directory's entries. A word
// that matches nothing stays as it is, as in bash.
func (s *session) expandGlob(p string) []string {
	p = untilde(p)
	if !strings.ContainsAny(p, "*?[") {
		return []string{p}
	}
	trail := ""
	if strings.HasSuffix(p, "/") {
		trail = "/"
	}
	abs := strings.HasPrefix(p, "/")
	elems := strings.Split(strings.Trim(p, "/"), "/")
	cur := []string{""}
	for _, e := range elems {
		var next []string
		for _, dir := range cur {
			if !strings.ContainsAny(e, "*?[") {
				next = append(next, path.Join(dir, e))
				continue
			}
			if _, err := path.Match(e, ""); err != nil {
				return []string{p}
			}
			names := s.dirNames(dir)
			for _, n := range names {
				if strings.HasPrefix(n, ".") && !strings.HasPrefix(e, ".") {
					continue
				}
				if ok, _ := path.Match(e, n); ok {
					next = append(next, path.Join(dir, n))
				}
			}
		}
		cur = next
		if len(cur) == 0 || len(cur) > 100000 {
			return []string{p}
		}
	}
	for i := range cur {
		if abs {
			cur[i] = "/" + cur[i]
		}
		cur[i] += trail
	}
	return cur
}

// dirNames lists a directory of the home, sorted; nothing if it cannot
// be read.
func (s *session) dirNames(dir string) []string {
	if dir == "" {
		dir = "."
	}
	names, _ := s.readDirAll(vfs.Clean(dir))
	slices.Sort(names)
	return names
}

// readDirAll lists a directory of the home in full (up to the list limit).
func (s *session) readDirAll(vdir string) ([]string, error) {
	d, err := s.fs.ReadDir(vdir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var names []string
	for {
		fis, err := d.Next(1024)
		for _, fi := range fis {
			names = append(names, fi.Name())
		}
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return names, err
		}
		if len(names) > maxFiles {
			fatalf(11, "rsync: [silo] directory %s has too many entries", vdir)
		}
	}
}
