package sshd

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/pkg/sftp"
)

// A panic in an SFTP handler fails that request, with its stack in the log,
// instead of ending the server (pkg/sftp runs handlers on its own
// goroutines, where nothing else would recover it).
func TestHandlerPanicIsContained(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	h := &sftpHandler{fs: nil, log: slog.New(slog.NewTextHandler(&logs, nil)), st: &connState{}, maxHandles: 1}
	err := h.Filecmd(sftp.NewRequest("Mkdir", "/d")) // a nil home: a nil pointer dereference
	if err == nil || err.Error() != "internal error" {
		t.Fatalf("got %v, want an internal error", err)
	}
	if !strings.Contains(logs.String(), "sftp handler panic") || !strings.Contains(logs.String(), "goroutine") {
		t.Fatalf("no panic and stack in the log:\n%s", logs.String())
	}
}
