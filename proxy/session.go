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
	cr *frameReader  // from the client
	sw *bufio.Writer // to the server
	sr *frameReader  // from the server
	cw *bufio.Writer // to the client

	// Relay phase: driven by an event loop (relay.go, loop_linux.go), one
	// event at a time, so the protocol state below needs no locking.
	cin, cout buffer // bytes from and to the client
	sin, sout buffer // bytes from and to the server
	cPass     int    // bytes of the current client frame still to copy to the server
	sPass     int    // bytes of the current server frame still to copy (or drop)
	sDrop     bool   // the current server frame answers the proxy, not the client
	hold      *checkState
	chk       checkState // the one check in flight (see newCheck)
	ending    bool       // the session is over once the output is written
	endErr    error      // why it ended
	guard     *sessionGuard
	queue     responseQueue
	txStatus  byte // last ReadyForQuery status

	releaseSlot func()        // gives back the max_connections slot
	relayDone   chan struct{} // closed by the loop when the session is gone
	lifeMu      sync.Mutex    // orders adoption by a loop against a forced close
	closed      bool          // closeConns was called
	lp          *loop         // set under lifeMu, before the loop sees the session
	cfd, sfd    int           // the connections' descriptors as the loop owns them
	cEvents     uint32        // epoll events awaited on cfd
	sEvents     uint32        // epoll events awaited on sfd
	pumps       sync.WaitGroup
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
	if err := s.start(); err != nil || s.server == nil { // no server: a CancelRequest, already forwarded
		s.logEnd("session startup failed", err)
		return
	}
	s.srv.metrics.sessionsTotal.Add(1)
	s.srv.metrics.sessionsActive.Add(1)
	defer s.srv.metrics.sessionsActive.Add(-1)
	defer s.srv.metrics.sessionEnded(time.Now())
	err := s.relay()
	s.logEnd("session ended", err)
}

func (s *session) logEnd(what string, err error) {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errServerRefused) {
		s.srv.log.Debug(what, "user", s.user, "database", s.database, "err", err)
		return
	}
	var pe *protocolError
	if errors.As(err, &pe) || errors.Is(err, errProtocol) {
		s.srv.metrics.protocolErrors.Add(1)
	}
	s.srv.log.Info(what, "client", s.client.RemoteAddr().String(), "user", s.user, "database", s.database, "err", err)
}

// closeConns ends the session from outside the relay (forced shutdown).
func (s *session) closeConns() {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if l := s.lp; l != nil {
		// Posted after the adoption's own post, so it finds the session.
		l.post(func() { l.closeSession(s, errShutdown) })
		return
	}
	s.client.Close()
	if s.server != nil {
		s.server.Close()
	}
}

var errShutdown = errors.New("closed by shutdown")

// start runs the startup phase: client negotiation, limits, the upstream
// connection, authentication and guard discovery, ending with the first
// ReadyForQuery relayed to the client.
func (s *session) start() error {
	deadline := time.Now().Add(s.cfg.Limits.StartupTimeout)
	_ = s.client.SetDeadline(deadline)
	pkt, cancel, err := s.negotiateClient()
	if err != nil || cancel {
		var pe *protocolError
		if errors.As(err, &pe) {
			_ = writeFatal(s.client, "08P01", pe.Error())
		}
		return err
	}
	params, err := startupParams(pkt)
	if err != nil {
		_ = writeFatal(s.client, "08P01", err.Error())
		return err
	}
	s.user, s.database = params["user"], params["database"]
	if s.database == "" {
		s.database = s.user
	}
	if n := s.srv.active.Add(1); n > int64(s.cfg.Limits.MaxConnections) {
		s.srv.active.Add(-1)
		s.srv.metrics.refusedTooMany.Add(1)
		_ = writeFatal(s.client, "53300", "sorry, too many clients already")
		return fmt.Errorf("refused: %d client connections (limits.max_connections)", n-1)
	}
	s.srv.activeHeld(s)

	server, err := s.srv.dialUpstream(s.set, time.Until(deadline))
	if err != nil {
		s.srv.metrics.upstreamErrors.Add(1)
		_ = writeFatal(s.client, "08006", fmt.Sprintf("pgoptimist: upstream %s unreachable: %v", s.cfg.Upstream.Address, err))
		return fmt.Errorf("upstream %s: %w", s.cfg.Upstream.Address, err)
	}
	s.server = server
	_ = s.server.SetDeadline(deadline)
	s.sw = bufio.NewWriterSize(s.server, writeBufSize)
	s.cw = bufio.NewWriterSize(s.client, writeBufSize)
	s.cr = &frameReader{r: bufio.NewReaderSize(s.client, readBufSize), flush: s.sw, maxSize: s.cfg.Limits.MaxMessageBytes}
	s.sr = &frameReader{r: bufio.NewReaderSize(s.server, readBufSize), flush: s.cw}

	if _, err := s.sw.Write(pkt); err != nil {
		return err
	}
	if err := s.sw.Flush(); err != nil {
		return err
	}
	ready, err := s.authenticate()
	if err != nil {
		var pe *protocolError
		if errors.As(err, &pe) {
			_ = writeFatal(s.client, "08P01", pe.Error())
		}
		return err
	}
	s.guard = s.srv.guards.forSession(s)
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
