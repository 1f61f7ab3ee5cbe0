package sshd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"silo/vfs"
)

// sftpPacket frames one client packet: type, then id and fields.
func sftpPacket(typ byte, fields ...any) []byte {
	body := []byte{typ}
	for _, f := range fields {
		switch v := f.(type) {
		case uint32:
			body = binary.BigEndian.AppendUint32(body, v)
		case uint64:
			body = binary.BigEndian.AppendUint64(body, v)
		case string:
			body = binary.BigEndian.AppendUint32(body, uint32(len(v)))
			body = append(body, v...)
		}
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// serveStream runs the real SFTP stack (stream filter, pkg/sftp's request
// server, silo's handlers) over one client byte stream, on fsys, until the
// stream ends.
func serveStream(fsys *vfs.FS, in []byte) {
	st := &connState{s: &Server{maxHandles: 64}}
	h := &sftpHandler{fs: fsys, user: "fuzz", log: slog.New(slog.DiscardHandler), st: st,
		acct: st.s.accounts.get("fuzz"), maxHandles: 16, maxPerUser: 32}
	serveSFTP(context.Background(), &pipeChannel{r: bytes.NewReader(in)}, h, func() {}, clientQuirks{})
}

type pipeChannel struct {
	r io.Reader
}

func (p *pipeChannel) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipeChannel) Write(b []byte) (int, error) { return len(b), nil }
func (p *pipeChannel) Close() error                { return nil }

// FuzzSFTPStream feeds arbitrary bytes as an SFTP client stream: nothing
// panics, and nothing outside the home is touched.
func FuzzSFTPStream(f *testing.F) {
	initPkt := sftpPacket(1, uint32(3))
	seq := func(pkts ...[]byte) []byte { return bytes.Join(append([][]byte{initPkt}, pkts...), nil) }
	const read, write, creat, trunc = 1, 2, 8, 16
	f.Add(seq(sftpPacket(3, uint32(1), "/f", uint32(write|creat|trunc), uint32(0)),
		sftpPacket(6, uint32(2), "1", uint64(0), "hello"), sftpPacket(4, uint32(3), "1")))
	f.Add(seq(sftpPacket(14, uint32(1), "../outside/x", uint32(0)), sftpPacket(20, uint32(2), "../outside", "/l"),
		sftpPacket(17, uint32(3), "l/secret"), sftpPacket(13, uint32(4), "../../outside/secret")))
	f.Add(seq(sftpPacket(200, uint32(1), "posix-rename@openssh.com", "/a", "../outside/secret"),
		sftpPacket(200, uint32(2), "limits@openssh.com"), sftpPacket(200, uint32(3), "statvfs@openssh.com", "/")))
	f.Add(seq(sftpPacket(9, uint32(1), "/", uint32(1), uint64(1<<40)), sftpPacket(11, uint32(2), "/"),
		sftpPacket(12, uint32(3), "1"), sftpPacket(16, uint32(4), "../../.."), sftpPacket(19, uint32(5), "/l")))
	f.Add(seq(sftpPacket(3, uint32(1), "/g", uint32(read|write|creat), uint32(4), uint32(0o777)),
		sftpPacket(6, uint32(2), "1", uint64(1<<30), "x"), sftpPacket(5, uint32(3), "1", uint64(0), uint32(300000))))
	f.Add([]byte{0, 0, 0, 1, 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 3})

	// One home for the whole fuzz process, emptied between inputs: a fresh
	// temp directory and home per input would cost more than the input.
	top := f.TempDir()
	home := filepath.Join(top, "home")
	outside := filepath.Join(top, "outside")
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644)
	fsys, err := vfs.Open(home, vfs.Options{Limits: vfs.Limits{Bytes: 1 << 20, Files: 50}})
	if err != nil {
		f.Fatal(err)
	}
	defer fsys.Close()
	f.Fuzz(func(t *testing.T, in []byte) {
		serveStream(fsys, in)
		entries, _ := os.ReadDir(top)
		if len(entries) != 2 {
			t.Fatalf("entries beside the home: %v", entries)
		}
		got, _ := os.ReadDir(outside)
		data, err := os.ReadFile(filepath.Join(outside, "secret"))
		if len(got) != 1 || err != nil || string(data) != "secret" {
			t.Fatalf("outside the home changed: %v %q %v", got, data, err)
		}
		fi, err := os.Lstat(filepath.Join(outside, "secret"))
		if err != nil || fi.Mode() != 0o644 {
			t.Fatalf("outside file's mode changed: %v", fi.Mode())
		}
		// Empty the home for the next input.
		entries, _ = os.ReadDir(home)
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(home, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
		if err := fsys.Rescan(); err != nil {
			t.Fatal(err)
		}
	})
}
