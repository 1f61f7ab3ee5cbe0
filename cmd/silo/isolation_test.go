package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// slowReaderBudget is what 200 SFTP sessions of one account that ask for
// 255 KiB READs and never read the replies may cost silo above the same
// sessions idle (README, "Running it in the open"); about 66 MiB is typical
// here, most of it garbage the collector has not yet taken back.
const slowReaderBudget = 96 << 20

func keyAuth(t *testing.T, keyFile string) ssh.AuthMethod {
	t.Helper()
	pem, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.PublicKeys(signer)
}

// rssOf reads a process's resident set size.
func rssOf(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func sftpFrame(typ byte, id uint32, fields ...[]byte) []byte {
	body := binary.BigEndian.AppendUint32([]byte{typ}, id)
	for _, f := range fields {
		body = append(body, f...)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

func sftpString(s string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(s))), s...)
}

// readFrame reads one SFTP packet: type and body after it.
func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, err
	}
	return b[0], b[1:], nil
}

// stalledReader opens an SFTP session, opens /big, and returns a function
// that sends n READs of 255 KiB whose replies it never reads.
func stalledReader(t *testing.T, c *ssh.Client) func(n int) {
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	w, _ := sess.StdinPipe()
	r, _ := sess.StdoutPipe()
	if err := sess.RequestSubsystem("sftp"); err != nil {
		t.Fatal(err)
	}
	w.Write(append(binary.BigEndian.AppendUint32(nil, 5), 1, 0, 0, 0, 3))
	if typ, _, err := readFrame(r); err != nil || typ != 2 {
		t.Fatalf("version: %d %v", typ, err)
	}
	w.Write(sftpFrame(3, 1, sftpString("/big"), binary.BigEndian.AppendUint32(nil, 1), binary.BigEndian.AppendUint32(nil, 0)))
	typ, body, err := readFrame(r)
	if err != nil || typ != 102 {
		t.Fatalf("open: %d %v", typ, err)
	}
	handle := body[4:]
	return func(n int) {
		for i := range n {
			off := binary.BigEndian.AppendUint64(nil, uint64(i%32)*(255<<10))
			w.Write(sftpFrame(5, uint32(2+i), handle, off, binary.BigEndian.AppendUint32(nil, 255<<10)))
		}
	}
}

// An account whose sessions ask for data and never take it holds a bounded
// amount of silo's memory, and other accounts' transfers go on meanwhile.
func TestSlowReadersHoldBoundedMemory(t *testing.T) {
	cfg := writeConfig(t, testConfig)
	dir := filepath.Dir(cfg)
	aliceKey := addKeyUser(t, cfg, "alice")
	bobKey := addKeyUser(t, cfg, "bob")
	s := startSilo(t, cfg)
	big := make([]byte, 8<<20)
	rand.Read(big)
	os.MkdirAll(filepath.Join(dir, "homes", "alice"), 0o700)
	os.WriteFile(filepath.Join(dir, "homes", "alice", "big"), big, 0o644)
	pid := s.cmd.Process.Pid

	const conns, sessions = 20, 10
	var attacks []func(int)
	for range conns {
		c, err := dialSilo(s.addr, "alice", ssh.InsecureIgnoreHostKey(), keyAuth(t, aliceKey))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		for range sessions {
			attacks = append(attacks, stalledReader(t, c))
		}
	}
	idle := rssOf(t, pid)
	var wg sync.WaitGroup
	for _, a := range attacks {
		wg.Add(1)
		go func() { defer wg.Done(); a(64) }()
	}
	wg.Wait()

	// Bob's transfers go on, and silo's memory is sampled while they run.
	peak := rssOf(t, pid)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bc, err := dialSilo(s.addr, "bob", ssh.InsecureIgnoreHostKey(), keyAuth(t, bobKey))
		if err != nil {
			t.Error(err)
			return
		}
		defer bc.Close()
		cl, err := sftp.NewClient(bc)
		if err != nil {
			t.Error(err)
			return
		}
		defer cl.Close()
		small := big[:1<<20]
		for i := range 8 {
			name := fmt.Sprintf("f%d", i)
			f, err := cl.Create(name)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := f.Write(small); err != nil {
				t.Errorf("bob's upload while alice stalls: %v", err)
			}
			f.Close()
			f, err = cl.Open(name)
			if err != nil {
				t.Error(err)
				return
			}
			got, err := io.ReadAll(f)
			f.Close()
			if err != nil || !bytes.Equal(got, small) {
				t.Errorf("bob's download while alice stalls: %d bytes, %v", len(got), err)
			}
		}
	}()
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		default:
		}
		peak = max(peak, rssOf(t, pid))
	}
	t.Logf("silo RSS: %d MiB with 200 idle sessions, at most %d MiB with them stalled", idle>>20, peak>>20)
	if peak-idle > slowReaderBudget {
		t.Fatalf("200 stalled sessions cost %d MiB, more than %d MiB", (peak-idle)>>20, slowReaderBudget>>20)
	}
}

// One account that opens every handle it can stops at its own limit, and
// all accounts together stop short of silo's descriptor limit, so that
// others can still log in (and, within their limit, transfer).
func TestHandlesLeaveDescriptorsForOthers(t *testing.T) {
	for _, tc := range []struct {
		name, limits, nofile, refusal string
		bobUploads                    bool
	}{
		{"account limit", "", "4096", "too many open handles for this account", true},
		{"server budget", "max_open_handles_per_user = 100000\n", "1000", "the server has too many open files", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeConfig(t, testConfig+"\n[limits]\nmax_open_handles = 100000\n"+tc.limits)
			dir := filepath.Dir(cfg)
			aliceKey := addKeyUser(t, cfg, "alice")
			bobKey := addKeyUser(t, cfg, "bob")
			os.MkdirAll(filepath.Join(dir, "homes", "alice"), 0o700)
			os.WriteFile(filepath.Join(dir, "homes", "alice", "f"), []byte("x"), 0o644)
			s := startSiloCmd(t, exec.Command("sh", "-c", `ulimit -n "$2" && exec "$0" serve --config "$1"`, siloBin, cfg, tc.nofile))

			opened := 0
			var refusal error
			for c := 0; c < 8 && refusal == nil; c++ {
				conn, err := dialSilo(s.addr, "alice", ssh.InsecureIgnoreHostKey(), keyAuth(t, aliceKey))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				cl, err := sftp.NewClient(conn)
				if err != nil {
					t.Fatal(err)
				}
				for range 1000 {
					if _, err := cl.Open("f"); err != nil {
						refusal = err
						break
					}
					opened++ // and held open
				}
			}
			if refusal == nil || !strings.Contains(refusal.Error(), tc.refusal) {
				t.Fatalf("after %d handles: %v", opened, refusal)
			}
			bc, err := dialSilo(s.addr, "bob", ssh.InsecureIgnoreHostKey(), keyAuth(t, bobKey))
			if err != nil {
				t.Fatalf("bob's login while alice holds %d handles: %v", opened, err)
			}
			defer bc.Close()
			cl, err := sftp.NewClient(bc)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cl.Stat("/"); err != nil {
				t.Fatalf("bob's stat: %v", err)
			}
			if tc.bobUploads {
				f, err := cl.Create("up")
				if err == nil {
					f.Write([]byte("hello"))
					err = f.Close()
				}
				if err != nil {
					t.Fatalf("bob's upload: %v", err)
				}
			}
			t.Logf("alice held %d handles; bob logged in", opened)
		})
	}
}
