package sshd

import (
	"errors"
	"io"
	"slices"
	"time"

	gssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"silo/users"
)

// extUser is the Permissions extension that carries the account name from a
// verified credential to the session handlers. Only the auth callbacks below
// set it, and x/crypto hands a connection the Permissions of the one attempt
// that succeeded, so it is the only source of identity.
const extUser = "silo-user"

// algorithms is x/crypto's secure set with SHA-1 removed: no
// diffie-hellman-group14-sha1 or group1, no hmac-sha1, no ssh-rsa (SHA-1)
// signatures, no DSA, no CBC.
func algorithms() gossh.Algorithms {
	a := gossh.SupportedAlgorithms()
	insecure := gossh.InsecureAlgorithms()
	drop := func(list, bad []string) []string {
		return slices.DeleteFunc(list, func(x string) bool {
			return slices.Contains(bad, x) || x == gossh.HMACSHA1 || x == gossh.KeyAlgoRSA
		})
	}
	a.KeyExchanges = drop(a.KeyExchanges, insecure.KeyExchanges)
	a.Ciphers = drop(a.Ciphers, insecure.Ciphers)
	a.MACs = drop(a.MACs, insecure.MACs)
	a.PublicKeyAuths = drop(a.PublicKeyAuths, insecure.PublicKeyAuths)
	return a
}

// serverConfig builds the x/crypto configuration of one connection; gliderlabs
// calls it once per connection.
func (s *Server) serverConfig(ctx gssh.Context) *gossh.ServerConfig {
	a := &connAuth{s: s, ctx: ctx}
	algs := algorithms()
	if offer, ok := ctx.Value(offerKey{}).([]string); ok {
		algs.Ciphers = offer // offer.go
	}
	return &gossh.ServerConfig{
		Config: gossh.Config{
			KeyExchanges: algs.KeyExchanges,
			Ciphers:      algs.Ciphers,
			MACs:         algs.MACs,
		},
		PublicKeyAuthAlgorithms: algs.PublicKeyAuths,
		MaxAuthTries:            s.gate.limits().MaxAuthTries,
		// gliderlabs turns NoClientAuth on when it has no auth handlers of
		// its own; the callback makes "none" fail whatever it does.
		NoClientAuth:                true,
		NoClientAuthCallback:        a.none,
		PasswordCallback:            a.password,
		PublicKeyCallback:           a.publicKey,
		VerifiedPublicKeyCallback:   a.verifiedKey,
		KeyboardInteractiveCallback: a.keyboardInteractive,
		AuthLogCallback:             a.logAttempt,
	}
}

// connAuth holds the auth callbacks of one connection. They are predicates;
// the identity they grant travels only in the Permissions they return, and
// what they record (failed attempts, the user name) is in the connection's
// state.
type connAuth struct {
	s   *Server
	ctx gssh.Context // gliderlabs' context of the connection, which holds its *gossh.ServerConn after the handshake
}

var (
	errNone        = errors.New("method none is not accepted")
	errUserChanged = errors.New("user name changed between attempts")
)

func (a *connAuth) sameUser(c gossh.ConnMetadata) error { return stateOf(c).sameUser(c.User()) }

// grant logs the connection in as name, whose credential was verified: the
// Permissions that carry the identity, once the account's policy (disabled,
// expires, allow_from) and its connection limit allow it. A refusal by
// policy reaches the client as a failed attempt, like a wrong password.
func (a *connAuth) grant(c gossh.ConnMetadata, name string) (*gossh.Permissions, error) {
	sshConn := func() *gossh.ServerConn {
		conn, _ := a.ctx.Value(gssh.ContextKeyConn).(*gossh.ServerConn)
		return conn
	}
	st := stateOf(c)
	u, ok := a.s.cfg.Users.Lookup(name)
	if !ok {
		return nil, users.ErrUnknownUser // removed since its credential was checked
	}
	if err := u.LoginAllowed(st.addr, time.Now()); err != nil {
		return nil, err
	}
	if err := st.login(name, u.MaxConnections, sshConn); err != nil {
		return nil, err
	}
	return &gossh.Permissions{Extensions: map[string]string{extUser: name}}, nil
}

func (a *connAuth) none(c gossh.ConnMetadata) (*gossh.Permissions, error) {
	if err := a.sameUser(c); err != nil {
		return nil, err
	}
	return nil, errNone
}

func (a *connAuth) password(c gossh.ConnMetadata, pw []byte) (*gossh.Permissions, error) {
	if err := a.sameUser(c); err != nil {
		return nil, err
	}
	u, err := a.s.cfg.Users.CheckPassword(c.User(), string(pw))
	if err != nil {
		return nil, err
	}
	return a.grant(c, u.Name)
}

// keyboardInteractive asks one "Password:" question and checks the answer as
// a password.
func (a *connAuth) keyboardInteractive(c gossh.ConnMetadata, ask gossh.KeyboardInteractiveChallenge) (*gossh.Permissions, error) {
	if err := a.sameUser(c); err != nil {
		return nil, err
	}
	answers, err := ask("", "", []string{"Password: "}, []bool{false})
	if err != nil {
		return nil, err
	}
	if len(answers) != 1 {
		return nil, errors.New("expected one answer")
	}
	return a.password(c, []byte(answers[0]))
}

// publicKey approves a key for the user. x/crypto calls it for keys that are
// only offered too; the approval grants nothing until the client has signed
// with the key, after which verifiedKey runs.
func (a *connAuth) publicKey(c gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	if err := a.sameUser(c); err != nil {
		return nil, err
	}
	u, err := a.s.cfg.Users.CheckKey(c.User(), key)
	if err != nil {
		return nil, err
	}
	// Not logged in yet: this may be a query for a key never used.
	return &gossh.Permissions{Extensions: map[string]string{extUser: u.Name}}, nil
}

func (a *connAuth) verifiedKey(c gossh.ConnMetadata, key gossh.PublicKey, p *gossh.Permissions, _ string) (*gossh.Permissions, error) {
	if err := a.sameUser(c); err != nil {
		return nil, err
	}
	return a.grant(c, p.Extensions[extUser])
}

// logAttempt writes one line per login success or failure, for people and for
// fail2ban. The method "none" is every client's first probe, not a failure
// worth a line.
func (a *connAuth) logAttempt(c gossh.ConnMetadata, method string, err error) {
	attrs := []any{"remote", c.RemoteAddr().String(), "user", c.User(), "method", method}
	if err != nil && method != "none" && !errors.Is(err, errTooManyConns) && !errors.Is(err, io.EOF) &&
		!errors.Is(err, ErrUnavailable) {
		stateOf(c).failedAttempt(err)
	}
	a.s.reportAttempt(c, method, err)
	switch {
	case err == nil:
		a.s.log.Info("login", attrs...)
	case method == "none" && errors.Is(err, errNone):
		a.s.log.Debug("login method none refused", attrs...)
	case errors.Is(err, io.EOF):
		// The client went away during a keyboard-interactive prompt: no
		// credential was refused, and the failure that made it give up
		// has its own line already.
		a.s.log.Debug("login abandoned", attrs...)
	default:
		a.s.log.Warn("login failed", append(attrs, "reason", err.Error())...)
	}
}
