package vfs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// budgets sets the bounds on held-back writes for one test.
func budgets(t *testing.T, file, home, total int64) {
	old := [3]int64{maxHeldFile, maxHeldHome, maxHeldTotal}
	maxHeldFile, maxHeldHome, maxHeldTotal = file, home, total
	t.Cleanup(func() { maxHeldFile, maxHeldHome, maxHeldTotal = old[0], old[1], old[2] })
}

// crash opens the home again while the first FS still has writers open,
// as a restart after kill -9 finds it.
func crash(t *testing.T, dir string) *FS {
	t.Helper()
	f, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func markFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, ".silo-mark.*"))
	return m
}

// Whatever holds the budgets, a file written out of order is, after a
// crash, a prefix of what was sent.
func TestPrefixSurvivesCrashWhateverTheBudgets(t *testing.T) {
	for _, tc := range []struct {
		name              string
		file, home, total int64
	}{
		{"file budget", 64 << 10, 64 << 20, 512 << 20},
		{"home budget", 32 << 20, 64 << 10, 512 << 20},
		{"process budget", 32 << 20, 64 << 20, 64 << 10},
		{"no budget", 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			budgets(t, tc.file, tc.home, tc.total)
			f, dir := newQuotaFS(t, Limits{})
			data := randBytes(1 << 20)
			file, err := f.OpenFile("up", create)
			if err != nil {
				t.Fatal(err)
			}
			// 32 KiB at 0 in order, then everything from 64 KiB on, and
			// the gap at 32 KiB never: on disk beyond the prefix.
			const piece = 32 << 10
			if _, err := file.WriteAt(data[:piece], 0); err != nil {
				t.Fatal(err)
			}
			for off := 2 * piece; off < len(data); off += piece {
				if _, err := file.WriteAt(data[off:off+piece], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			if len(markFiles(t, dir)) != 1 {
				t.Fatalf("marks: %v", markFiles(t, dir))
			}
			g := crash(t, dir)
			got, _ := os.ReadFile(filepath.Join(dir, "up"))
			if !bytes.Equal(got, data[:piece]) {
				t.Fatalf("after the crash the file has %d bytes, want the %d-byte prefix", len(got), piece)
			}
			if u := g.Usage(); u.Bytes != piece || u.Files != 1 {
				t.Fatalf("usage after the crash: %+v", u)
			}
			if m := markFiles(t, dir); len(m) != 0 {
				t.Fatalf("marks left: %v", m)
			}
			// The gap filled in the first FS now joins the prefix, which
			// the mark follows; closing leaves no mark.
			file.Abort()
			file.Close()
		})
	}
}

// Filling the gap extends the prefix over what was written ahead of it, and
// the mark goes once nothing lies beyond the prefix.
func TestSpilledWritesJoinThePrefix(t *testing.T) {
	budgets(t, 0, 0, 0)
	f, dir := newQuotaFS(t, Limits{})
	data := randBytes(256 << 10)
	file, err := f.OpenFile("up", create)
	if err != nil {
		t.Fatal(err)
	}
	for off := len(data) - 32<<10; off > 0; off -= 32 << 10 {
		if _, err := file.WriteAt(data[off:off+32<<10], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if len(markFiles(t, dir)) != 1 {
		t.Fatal("no mark while data lies beyond the prefix")
	}
	if _, err := file.WriteAt(data[:32<<10], 0); err != nil {
		t.Fatal(err)
	}
	if m := markFiles(t, dir); len(m) != 0 {
		t.Fatalf("mark kept after the gap was filled: %v", m)
	}
	crash(t, dir)
	if got, _ := os.ReadFile(filepath.Join(dir, "up")); !bytes.Equal(got, data) {
		t.Fatalf("file has %d bytes, want all %d", len(got), len(data))
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
}

// An upload broken off with data beyond a gap keeps only the prefix, so
// that a resume from the file's end leaves no hole.
func TestAbortedUploadKeepsOnlyThePrefix(t *testing.T) {
	budgets(t, 0, 0, 0)
	f, dir := newQuotaFS(t, Limits{})
	data := randBytes(128 << 10)
	file, _ := f.OpenFile("up", create)
	file.WriteAt(data[:32<<10], 0)
	file.WriteAt(data[64<<10:], 64<<10)
	file.Abort()
	file.Close()
	if got, _ := os.ReadFile(filepath.Join(dir, "up")); !bytes.Equal(got, data[:32<<10]) {
		t.Fatalf("file has %d bytes, want the 32 KiB prefix", len(got))
	}
	if m := markFiles(t, dir); len(m) != 0 {
		t.Fatalf("marks left: %v", m)
	}
	checkUsage(t, f, dir)
}

// One home's held-back writes do not use up another's budget.
func TestHeldBackBudgetIsPerHome(t *testing.T) {
	budgets(t, 32<<20, 256<<10, 512<<20)
	a, _ := newQuotaFS(t, Limits{})
	b, bdir := newQuotaFS(t, Limits{})
	fa, _ := a.OpenFile("x", create)
	for off := int64(32 << 10); off < 1<<20; off += 32 << 10 {
		fa.WriteAt(make([]byte, 32<<10), off)
	}
	if a.held.Load() != 256<<10 {
		t.Fatalf("home a holds %d bytes", a.held.Load())
	}
	fb, _ := b.OpenFile("y", create)
	fb.WriteAt(make([]byte, 32<<10), 32<<10)
	if b.held.Load() != 32<<10 || len(markFiles(t, bdir)) != 0 {
		t.Fatalf("home b holds %d bytes, marks %v", b.held.Load(), markFiles(t, bdir))
	}
	fa.Close()
	fb.Close()
	if a.held.Load() != 0 || b.held.Load() != 0 || heldTotal.Load() != 0 {
		t.Fatalf("held after close: %d %d %d", a.held.Load(), b.held.Load(), heldTotal.Load())
	}
}

// BenchmarkOutOfOrderWrites measures what a full budget costs a writer:
// every second 255 KiB write arrives ahead of a gap, and is held in memory
// ("held") or written behind a mark ("spilled"). `make bench` prints both.
func BenchmarkOutOfOrderWrites(b *testing.B) {
	const piece, total = 255 << 10, 64 << 20
	data := randBytes(piece)
	for _, tc := range []struct {
		name   string
		budget int64
	}{{"held", 512 << 20}, {"spilled", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			old := [3]int64{maxHeldFile, maxHeldHome, maxHeldTotal}
			maxHeldFile, maxHeldHome, maxHeldTotal = tc.budget, tc.budget, tc.budget
			defer func() { maxHeldFile, maxHeldHome, maxHeldTotal = old[0], old[1], old[2] }()
			f, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(total)
			for range b.N {
				file, err := f.OpenFile("x", create)
				if err != nil {
					b.Fatal(err)
				}
				for off := int64(0); off+2*piece <= total; off += 2 * piece {
					file.WriteAt(data, off+piece)
					file.WriteAt(data, off)
				}
				if err := file.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
