package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
)

// The session: one client connection and its server connection, from
// accept (Server.Serve) through startup (startup.go) to the relay, which an
// event loop drives (loop_linux.go, framing.go), and its end.

const (
	readBufSize  = 32 << 10
	writeBufSize = 32 << 10
)

// session is one client connection and its server connection.
type session struct {
	srv *Server
	set *settings      // as of the session's start
	cfg *config.Config // set.cfg

	client    net.Conn
	server    net.Conn
	cancelKey string
	user      string
	database  string

	// Startup phase: buffered, blocking I/O on the connections.
	clientIn *bufio.Reader // the client's bytes from its first on
	cr       *frameReader  // from the client
	sw       *bufio.Writer // to the server
	sr       *frameReader  // from the server
	cw       *bufio.Writer // to the client

	// Relay phase: driven by an event loop (framing.go, loop_linux.go), one
	// event at a time, so the protocol state below needs no locking.
	cin, cout  buffer    // bytes from and to the client
	sin, sout  buffer    // bytes from and to the server
	cPass      int       // bytes of the current client frame still to copy to the server
	sPass      int       // bytes of the current server frame still to copy (or drop)
	sDrop      bool      // the current server frame answers the proxy, not the client
	checks     checkSlot // the one checked statement in flight
	ending     bool      // the session is over once the output is written
	endErr     error     // why it ended
	guard      *sessionGuard
	guardGen   int64     // the configuration generation of guard (see followReload)
	own        *ownQuery // the proxy's own question in flight (ownquery.go)
	inBatch    bool      // extended-protocol messages were sent since the last Sync
	batchFirst bool      // the client message being handled opened the batch (see batchOpensIdle)
	reserved   int64     // bytes of Server.buffered held for the frame being gathered
	queue      responseQueue
	txStatus   txStatus // last ReadyForQuery status

	releaseSlot func()        // gives back the max_connections slot
	relayDone   chan struct{} // closed by the loop when the session is gone
	lifeMu      sync.Mutex    // orders adoption by a loop against a forced close
	closed      bool          // closeConns was called
	lp          *loop         // set under lifeMu, before the loop sees the session
	cfd, sfd    int           // the connections' descriptors as the loop owns them
	cEvents     uint32        // epoll events awaited on cfd
	sEvents     uint32        // epoll events awaited on sfd
}

// run drives a session from accept to close. Panics end this session only.
func (s *session) run() {
	defer func() {
		if r := recover(); r != nil {
			s.srv.metrics.panics.Add(1)
			s.srv.log.Error("session panic recovered", "panic", r, "stack", string(debug.Stack()))
		}
		s.closeConns()
		if s.releaseSlot != nil {
			s.releaseSlot()
		}
		if s.cancelKey != "" {
			s.srv.cancels.Delete(s.cancelKey)
		}
	}()
	err := s.start()
	if err != nil {
		s.logStartupEnd(err) // first: once the client knows, the log is complete
		s.tellClient(err)
		return
	}
	if s.server == nil {
		return // a CancelRequest, forwarded
	}
	s.srv.metrics.sessionsTotal.Add(1)
	s.srv.metrics.sessionsActive.Add(1)
	defer s.srv.metrics.sessionsActive.Add(-1)
	defer s.srv.metrics.sessionEnded(time.Now())
	err = s.relay()
	s.logEnd("session ended", err)
}

// fatalError ends a session during startup. PostgreSQL answers some bad
// input with a FATAL ErrorResponse and closes on other input without a
// word; the proxy does the same, so code is empty where the server is
// silent. cause is what the log gets (it may name the upstream, which the
// client is not told).
type fatalError struct {
	code  string // SQLSTATE; "" closes silently
	msg   string
	cause error
	v2    bool // in protocol 2's format, for a client that asked for it
}

func (e *fatalError) Error() string {
	if e.cause != nil {
		return e.cause.Error()
	}
	return e.msg
}

func (e *fatalError) Unwrap() error { return e.cause }

// fatalf is a FATAL for the client with the message also as the cause.
func fatalf(code, format string, args ...any) *fatalError {
	msg := fmt.Sprintf(format, args...)
	return &fatalError{code: code, msg: msg, cause: errors.New(msg)}
}

// silent closes without a word, as PostgreSQL does for what cause says.
func silent(cause error) *fatalError { return &fatalError{cause: cause} }

// tellClient is the one place a session that ends during startup tells the
// client why: one FATAL ErrorResponse at most, with its SQLSTATE.
func (s *session) tellClient(err error) {
	var fe *fatalError
	var pe *protocolError
	switch {
	case errors.As(err, &fe):
		switch {
		case fe.code == "":
		case fe.v2:
			_, _ = s.client.Write([]byte("EFATAL:  " + fe.msg + "\n\x00"))
		default:
			_ = writeFatal(s.client, fe.code, fe.msg)
		}
	case errors.As(err, &pe):
		_ = writeFatal(s.client, sqlstateProtocolViolation, pe.Error())
	default:
		return
	}
	lingerClose(s.client)
}

// lingerClose closes a connection the proxy has just written a FATAL to so
// that the client can read it: closing a socket whose peer's bytes are
// still unread (a startup packet the proxy refused without reading) sends
// a reset, and a reset makes the peer's kernel throw away what it had
// received but not yet handed over, the FATAL included. So the proxy says
// it is done writing, reads what is there for a moment, then closes.
func lingerClose(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	c.Close()
}

func (s *session) logEnd(what string, err error) {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errServerRefused) {
		s.srv.log.Debug(what, "user", s.user, "database", s.database, "err", err)
		return
	}
	var pe *protocolError
	if errors.As(err, &pe) || errors.Is(err, errProtocol) {
		// Hostile clients come in floods: a summary, not a line each.
		s.srv.metrics.protocolErrors.Add(1)
		if ok, suppressed := s.srv.startupLog.allow(time.Now()); ok {
			s.srv.log.Info(what, "client", s.client.RemoteAddr().String(), "user", s.user, "database", s.database, "err", err, "similar_lines_suppressed", suppressed)
		}
		return
	}
	s.srv.log.Info(what, "client", s.client.RemoteAddr().String(), "user", s.user, "database", s.database, "err", err)
}

// logStartupEnd logs a session that ended before its relay began. Clients
// that go away or are refused by the server are routine (debug); hostile or
// timed-out connections come in floods, so they are summarised.
func (s *session) logStartupEnd(err error) {
	var pe *protocolError
	if errors.As(err, &pe) || errors.Is(err, errProtocol) {
		s.srv.metrics.protocolErrors.Add(1)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errServerRefused) {
		s.srv.log.Debug("session ended during startup", "user", s.user, "database", s.database, "err", err)
		return
	}
	if ok, suppressed := s.srv.startupLog.allow(time.Now()); ok {
		s.srv.log.Info("session ended during startup", "client", s.client.RemoteAddr().String(), "user", s.user, "database", s.database, "err", err, "similar_lines_suppressed", suppressed)
	}
}

// closeConns ends the session from outside the relay (forced shutdown):
// a relaying session's client gets FATAL 57P01 first, as from PostgreSQL.
func (s *session) closeConns() {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if l := s.lp; l != nil {
		// Posted after the adoption's own post, so it finds the session.
		l.post(func() { l.terminate(s) })
		return
	}
	s.client.Close()
	if s.server != nil {
		s.server.Close()
	}
}

var (
	errShutdown     = errors.New("closed by shutdown")
	errSessionEnded = errors.New("session ended")
)

// start runs the startup phase: client negotiation (bounded by
// limits.startup_timeout), then limits, the upstream connection,
// authentication and the guard's catalog checks (bounded by
// limits.login_timeout), ending with the first ReadyForQuery relayed to the
// client. Its errors say what the client is told (tellClient).
func (s *session) start() error {
	if !s.srv.startupSlots.acquire(s.cfg.Limits.MaxStartupConnections) {
		s.srv.metrics.refusedStartup.Add(1)
		return fatalf(sqlstateTooManyConnections, "sorry, too many clients already")
	}
	defer s.srv.startupSlots.release()
	_ = s.client.SetDeadline(time.Now().Add(s.cfg.Limits.StartupTimeout))
	pkt, cancel, err := s.negotiateClient()
	if err != nil || cancel {
		return err
	}
	// A packet PostgreSQL would refuse for its layout goes to the server,
	// which answers it as it would directly; the names are for the logs.
	params, _ := startupParams(pkt)
	s.user, s.database = params["user"], params["database"]
	if s.database == "" {
		s.database = s.user
	}
	if n := s.srv.active.Add(1); n > int64(s.cfg.Limits.MaxConnections) {
		s.srv.active.Add(-1)
		s.srv.metrics.refusedTooMany.Add(1)
		return &fatalError{code: sqlstateTooManyConnections, msg: "sorry, too many clients already",
			cause: fmt.Errorf("refused: %d client connections (limits.max_connections)", n-1)}
	}
	s.srv.activeHeld(s)

	deadline := time.Now().Add(s.cfg.Limits.LoginTimeout)
	_ = s.client.SetDeadline(deadline)
	server, err := s.srv.dialUpstream(s.set, min(time.Until(deadline), s.cfg.Limits.StartupTimeout))
	if err != nil {
		s.srv.metrics.upstreamErrors.Add(1)
		// The client is not told where the server is or why the
		// connection failed; the log is.
		return &fatalError{code: sqlstateConnectionFailure, msg: "pgoptimist: could not connect to the database server",
			cause: fmt.Errorf("upstream %s: %w", s.cfg.Upstream.Address, err)}
	}
	s.server = server
	_ = s.server.SetDeadline(deadline)
	s.sw = bufio.NewWriterSize(s.server, writeBufSize)
	s.cw = bufio.NewWriterSize(s.client, writeBufSize)
	s.cr = &frameReader{r: s.clientIn, flush: s.sw, maxSize: s.cfg.Limits.MaxMessageBytes}
	s.sr = &frameReader{r: bufio.NewReaderSize(s.server, readBufSize), flush: s.cw}

	if _, err := s.sw.Write(pkt); err != nil {
		return err
	}
	if err := s.sw.Flush(); err != nil {
		return err
	}
	ready, err := s.authenticate()
	if err != nil {
		return err
	}
	s.guard, s.guardGen, err = s.srv.guards.forSession(s, deadline)
	if err != nil {
		s.srv.metrics.refusedGuard.Add(1)
		return &fatalError{code: sqlstateCannotConnectNow,
			msg:   "pgoptimist: cannot check the guarded tables of this database; the session is refused rather than run unguarded",
			cause: fmt.Errorf("guard discovery: %w", err)}
	}
	if _, err := s.cw.Write(ready); err != nil {
		return err
	}
	if err := s.cw.Flush(); err != nil {
		return err
	}
	_ = s.client.SetDeadline(time.Time{})
	_ = s.server.SetDeadline(time.Time{})
	return nil
}

// activeHeld arranges for the session's connection slot to be released.
func (srv *Server) activeHeld(s *session) {
	s.releaseSlot = func() { srv.active.Add(-1) }
}

var errClientTerminated = errors.New("client sent Terminate")

// relay hands the session to an event loop and waits until it ends.
func (s *session) relay() error {
	s.relayDone = make(chan struct{})
	if err := s.srv.loops.next().adopt(s); err != nil {
		return err
	}
	<-s.relayDone
	s.unreserve()
	if s.guard != nil && s.guard.store != nil {
		s.guard.store.close() // the loop is done with the session
	}
	if q := s.own; q != nil {
		// The loop is done with the session: end its question, so a
		// discovery it had claimed goes to the next session.
		s.own = nil
		q.done(errSessionEnded)
	}
	if errors.Is(s.endErr, errClientTerminated) || errors.Is(s.endErr, io.EOF) || errors.Is(s.endErr, errShutdown) {
		return nil
	}
	return s.endErr
}

// fatal queues a FATAL error for the client and ends the session once it is
// written.
func (s *session) fatal(code, msg string, cause error) { s.fatalDetail(code, msg, "", cause) }

// fatalDetail is the one way a relaying session tells its client that it
// ends (startup has tellClient): one FATAL, and no frame after it.
func (s *session) fatalDetail(code, msg, detail string, cause error) {
	if s.ending {
		return
	}
	s.cout.append(encodeError("FATAL", code, msg, detail, "")...)
	s.end(cause)
}

func (s *session) end(err error) {
	if !s.ending {
		s.ending, s.endErr = true, err
	}
}

// terminate ends a relaying session for a forced shutdown: the client gets
// FATAL 57P01, as PostgreSQL's clients do when an administrator stops the
// server, unless a server frame is half copied to it (the FATAL would land
// inside it).
func (l *loop) terminate(s *session) {
	if l.ref(s.cfd).s != s {
		return
	}
	ctls, stls := l.ref(s.cfd).tls, l.ref(s.sfd).tls
	if s.sPass == 0 {
		s.fatal(sqlstateAdminShutdown, "terminating connection due to administrator command", errShutdown)
		_ = writeSide(s.cfd, ctls, &s.cout)
	}
	if s.cPass == 0 && s.sout.len() == 0 {
		_ = writeSide(s.sfd, stls, &buffer{b: append([]byte(nil), terminateFrame...)})
	}
	l.closeSession(s, errShutdown)
}
