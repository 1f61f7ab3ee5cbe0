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
