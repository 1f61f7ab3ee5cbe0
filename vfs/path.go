package vfs

import (
	"path"
	"strings"
)

// Clean returns the canonical virtual form of p: absolute, slash-separated,
// with no "." or ".." elements. A relative p is taken from the home ("/"),
// and ".." at the top stays at the top, as it does at a filesystem's root.
func Clean(p string) string {
	return path.Clean("/" + p)
}

// rel maps a virtual path to the name os.Root resolves: "." for the home, or
// a relative path free of ".." elements. Whatever p is, the result names
// something inside the root or rel fails; os.Root then enforces the same for
// symbolic links met on disk.
func rel(p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", errInvalidName
	}
	c := Clean(p)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

// escapes reports whether a relative symlink target, resolved lexically from
// the directory dir (a virtual path), would climb above the home. Absolute
// targets always count as escaping: a target is a host path to the kernel.
func escapes(dir, target string) bool {
	if target == "" || path.IsAbs(target) {
		return true
	}
	depth := 0
	if c := Clean(dir); c != "/" {
		depth = strings.Count(c, "/")
	}
	for _, e := range strings.Split(target, "/") {
		switch e {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}
