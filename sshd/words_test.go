package sshd

import (
	"slices"
	"testing"
)

func TestSplitWords(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][]string{
		`md5sum a b`:                {"md5sum", "a", "b"},
		`  md5sum   a  `:            {"md5sum", "a"},
		`md5sum 'a b' "c d" e\ f`:   {"md5sum", "a b", "c d", "e f"},
		`md5sum a;id`:               {"md5sum", "a;id"},
		`md5sum $(id) ` + "`id`":    {"md5sum", "$(id)", "`id`"},
		`md5sum "a\"b" 'c'\''d'`:    {"md5sum", `a"b`, "c'd"},
		`md5sum "\$x \a"`:           {"md5sum", `$x \a`},
		`md5sum ''`:                 {"md5sum", ""},
		`md5sum a"b"'c'`:            {"md5sum", "abc"},
		"md5sum a\\\nb":             {"md5sum", "ab"},
		`scp -t -- /x`:              {"scp", "-t", "--", "/x"},
		``:                          nil,
		`   `:                       nil,
		`md5sum 'new` + "\n" + `l'`: {"md5sum", "new\nl"},
	} {
		got, err := splitWords(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("splitWords(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`md5sum 'a`, `md5sum "a`, `md5sum "a\"`} {
		if _, err := splitWords(bad); err == nil {
			t.Errorf("splitWords(%q) accepted", bad)
		}
	}
}
