package sshd

import "regexp"

// clientQuirks are the ways some clients depart from what silo expects,
// known by the version string a client sends before key exchange, as
// OpenSSH's compat.c knows them. Keep the table small, and each entry
// tested with the client it names.
type clientQuirks struct {
	// draftSymlink: SSH_FXP_SYMLINK's fields come in the draft's order
	// (linkpath, targetpath). OpenSSH's sftp-server reads them the other
	// way round, and so do pkg/sftp and the clients that know it; these
	// clients send the draft's order to any server that does not call
	// itself OpenSSH.
	draftSymlink bool
}

var quirkTable = []struct {
	client *regexp.Regexp
	quirks clientQuirks
}{
	{regexp.MustCompile(`^SSH-2\.0-AsyncSSH_`), clientQuirks{draftSymlink: true}},
	{regexp.MustCompile(`^SSH-2\.0-ssh2js`), clientQuirks{draftSymlink: true}},
}

// quirksOf looks a client's version string up in the table.
func quirksOf(clientVersion string) clientQuirks {
	for _, e := range quirkTable {
		if e.client.MatchString(clientVersion) {
			return e.quirks
		}
	}
	return clientQuirks{}
}
