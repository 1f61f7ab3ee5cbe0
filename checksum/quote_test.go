package checksum

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestQuoteLikeGNU(t *testing.T) {
	names := []string{"plain", "x y", "x!y", `x"y`, "x#y", "#y", "~y", "x~y", "x$y", "x%y", "x&y", "x'y", "x(y", "x*y", "x+y", "x,y", "x:y", "x;y", "x<y", "x=y", "x>y", "x?y", "x@y", "x[y", `x\y`, "x]y", "x^y", "x`y", "x{y", "x|y", "x\ty", "x\ny", "x\x01y", "xéy", "x\x7fy", "x\n", "\nx", "x\n\ny", "x'y z", "x'$y", "x'y!", "x'\ty", "'", "''", "\n", "\x1b"}
	dir := t.TempDir()
	for _, n := range names {
		cmd := exec.Command("md5sum", "--", n)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		out, _ := cmd.CombinedOutput()
		want := strings.TrimSuffix(strings.TrimPrefix(string(out), "md5sum: "), ": No such file or directory\n")
		if got := quote(n); got != want {
			t.Errorf("quote(%q) = %s, GNU %s", n, got, want)
		}
	}
}
