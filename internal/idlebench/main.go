// Command idlebench measures what idle SFTP sessions cost a server: it
// opens sessions, a given number per connection, sends each an INIT and a
// REALPATH, holds them, and prints the server's resident memory (from
// /proc) and goroutines (go_goroutines from its metrics endpoint) per
// session, at each count asked for. It is run by scripts/bench.sh.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:2023", "the server")
	user := flag.String("user", "bench", "the account")
	keyFile := flag.String("key", "", "the account's private key")
	pid := flag.Int("pid", 0, "the server's process, for its RSS")
	metrics := flag.String("metrics", "", "the server's metrics URL, for go_goroutines")
	counts := flag.String("sessions", "500,1000", "session counts to measure at, ascending")
	per := flag.Int("per", 10, "sessions per connection")
	settle := flag.Duration("settle", 3*time.Second, "how long sessions are held before a measure")
	flag.Parse()

	key, err := os.ReadFile(*keyFile)
	check(err)
	signer, err := ssh.ParsePrivateKey(key)
	check(err)
	cfg := &ssh.ClientConfig{User: *user, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 30 * time.Second}

	time.Sleep(*settle)
	rss0, g0 := measure(*pid, *metrics)
	fmt.Printf("%-9s %9s %12s %14s %11s\n", "sessions", "RSS_MiB", "RSS_KiB/sess", "goroutines", "gor/sess")
	fmt.Printf("%-9d %9.1f %12s %14d %11s\n", 0, float64(rss0)/1024, "-", g0, "-")
	var conns []*ssh.Client
	open := 0
	for _, c := range strings.Split(*counts, ",") {
		want, err := strconv.Atoi(c)
		check(err)
		for open < want {
			if open%*per == 0 {
				conn, err := ssh.Dial("tcp", *addr, cfg)
				check(err)
				conns = append(conns, conn)
			}
			check(session(conns[len(conns)-1]))
			open++
		}
		time.Sleep(*settle)
		rss, g := measure(*pid, *metrics)
		fmt.Printf("%-9d %9.1f %12.1f %14d %11.2f\n", open, float64(rss)/1024,
			float64(rss-rss0)/float64(open), g, float64(g-g0)/float64(open))
	}
	for _, c := range conns {
		c.Close()
	}
}

// session opens an SFTP session on c, sends INIT and REALPATH, reads both
// replies, and leaves it open.
func session(c *ssh.Client) error {
	s, err := c.NewSession()
	if err != nil {
		return err
	}
	w, err := s.StdinPipe()
	if err != nil {
		return err
	}
	r, err := s.StdoutPipe()
	if err != nil {
		return err
	}
	if err := s.RequestSubsystem("sftp"); err != nil {
		return err
	}
	init := []byte{0, 0, 0, 5, 1, 0, 0, 0, 3}
	realpath := []byte{0, 0, 0, 10, 16, 0, 0, 0, 1, 0, 0, 0, 1, '.'}
	for _, pkt := range [][]byte{init, realpath} {
		if _, err := w.Write(pkt); err != nil {
			return err
		}
		var n [4]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return err
		}
		if _, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint32(n[:]))); err != nil {
			return err
		}
	}
	return nil
}

// measure returns the server's resident memory in KiB and its goroutines.
func measure(pid int, url string) (rss int64, goroutines int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	check(err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			rss, err = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			check(err)
		}
	}
	resp, err := http.Get(url)
	check(err)
	defer resp.Body.Close()
	sc = bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			goroutines, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			check(err)
		}
	}
	return rss, goroutines
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlebench:", err)
		os.Exit(1)
	}
}
