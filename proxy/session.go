package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
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
	cfg *config.Config // as of the session's start

	client    net.Conn
	server    net.Conn
	clientTLS bool
	cancelKey string
	user      string
	database  string

	cr *frameReader  // from the client
	sw *bufio.Writer // to the server; owned by the client loop after startup
	sr *frameReader  // from the server
	cw *bufio.Writer // to the client; owned by the server loop after startup

	queue    responseQueue
	txStatus byte // last ReadyForQuery status; written by the server loop

	guard       *sessionGuard // nil when no table is guarded in this database
	releaseSlot func()        // gives back the max_connections slot

	closeOnce sync.Once
	fatal     atomic.Pointer[fatalError] // set by the client loop for the server loop to send
	serverEOF chan struct{}              // closed when the server loop ends
}

type fatalError struct {
	code, msg string
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
	if err := s.start(); err != nil {
		s.logEnd("session startup failed", err)
		return
	}
	s.srv.metrics.sessionsTotal.Add(1)
	s.srv.metrics.sessionsActive.Add(1)
	defer s.srv.metrics.sessionsActive.Add(-1)
	err := s.relay()
	s.logEnd("session ended", err)
}

func (s *session) logEnd(what string, err error) {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errServerRefused) {
		s.srv.log.Debug(what, "user", s.user, "database", s.database, "err", err)
		return
	}
	var pe *protocolError
	if errors.As(err, &pe) {
		s.srv.metrics.protocolErrors.Add(1)
	}
	s.srv.log.Info(what, "client", s.client.RemoteAddr().String(), "user", s.user, "database", s.database, "err", err)
}

func (s *session) closeConns() {
	s.closeOnce.Do(func() {
		s.client.Close()
		if s.server != nil {
			s.server.Close()
		}
	})
}

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

	server, err := s.srv.dialUpstream(s.cfg, time.Until(deadline))
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

// relay runs the two directions until either side ends. The server loop
// owns the client writer, the client loop the server writer; they meet only
// in the response queue and the check channels.
func (s *session) relay() error {
	s.serverEOF = make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				s.srv.metrics.panics.Add(1)
				s.srv.log.Error("session panic recovered", "panic", r, "stack", string(debug.Stack()))
				errc <- fmt.Errorf("panic: %v", r)
			}
		}()
		defer close(s.serverEOF)
		errc <- s.serverLoop()
	}()
	cerr := s.clientLoop()
	if cerr != nil {
		var pe *protocolError
		if errors.As(cerr, &pe) {
			s.fatal.Store(&fatalError{code: "08P01", msg: pe.Error()})
			_ = s.server.SetReadDeadline(time.Now()) // wake the server loop to send it
		} else if !errors.Is(cerr, errClientTerminated) {
			// The client went away: end the server connection politely.
			_, _ = s.sw.Write([]byte{'X', 0, 0, 0, 4})
			_ = s.sw.Flush()
			s.server.Close()
		}
	}
	serr := <-errc
	if cerr != nil && !errors.Is(cerr, errClientTerminated) {
		return cerr
	}
	if errors.Is(serr, io.EOF) || errors.Is(serr, net.ErrClosed) {
		return nil
	}
	return serr
}

var errClientTerminated = errors.New("client sent Terminate")

// serverLoop relays the server's messages to the client, keeping track of
// what each one answers.
func (s *session) serverLoop() error {
	for {
		typ, n, err := s.sr.header()
		if err != nil {
			if f := s.fatal.Load(); f != nil {
				_, _ = s.cw.Write(encodeError("FATAL", f.code, f.msg, "", ""))
				_ = s.cw.Flush()
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			_ = s.cw.Flush()
			return err
		}
		switch typ {
		case 'D', 'd', 'N', 'A', 'S', 'G', 'H', 'W', 'c', 'V', 'T':
			if typ == 'T' {
				s.popIf(pendDescribeStmt, pendDescribePortal)
			}
			err = s.sr.relayFrame(s.cw, n)
		case '1', '2', '3', 't', 'n':
			err = s.onCompletion(typ, n)
		case 'C', 'I', 's':
			err = s.onCommandComplete(typ, n)
		case 'E':
			err = s.onError(n)
		case 'Z':
			err = s.onReady(n)
		default: // K, v, R and anything newer: the server knows what it sends
			err = s.sr.relayFrame(s.cw, n)
		}
		if err != nil {
			return err
		}
	}
}

// popIf pops the oldest pending request when it is of one of the kinds.
func (s *session) popIf(kinds ...pendingKind) {
	p, ok := s.queue.peek()
	if !ok {
		return
	}
	for _, k := range kinds {
		if p.kind == k {
			s.queue.pop()
			return
		}
	}
}

// onCompletion handles ParseComplete, BindComplete, CloseComplete,
// ParameterDescription and NoData; those answering the proxy's own requests
// are dropped.
func (s *session) onCompletion(typ byte, n int) error {
	p, ok := s.queue.peek()
	if ok && typ != 't' {
		s.queue.pop()
	}
	if ok && p.flags&flagInternal != 0 && (typ != 't' || p.kind == pendDescribeStmt) {
		return s.sr.discard(n)
	}
	return s.sr.relayFrame(s.cw, n)
}

func (fr *frameReader) discard(n int) error {
	_, err := fr.r.Discard(n + 1)
	return err
}

// onCommandComplete handles the end of one statement's execution. For a
// checked statement, zero rows affected is withheld from the client and
// reported to the client loop as stale.
func (s *session) onCommandComplete(typ byte, n int) error {
	p, ok := s.queue.peek()
	if !ok || (p.kind != pendExecute && p.kind != pendQuery) {
		return s.sr.relayFrame(s.cw, n)
	}
	if p.kind == pendExecute {
		s.queue.pop()
		if p.check == nil {
			return s.sr.relayFrame(s.cw, n)
		}
	} else if p.check == nil || typ != 'C' {
		return s.sr.relayFrame(s.cw, n)
	}
	if typ != 'C' {
		p.check.done <- outcomeOK
		return s.sr.relayFrame(s.cw, n)
	}
	msg, err := s.sr.next()
	if err != nil {
		return err
	}
	if rowsAffected(msg) != 0 {
		if p.kind == pendExecute {
			p.check.done <- outcomeOK
		}
		_, err = s.cw.Write(msg)
		return err
	}
	if p.kind == pendExecute {
		p.check.done <- outcomeStale
	} else {
		s.queue.setFlags(flagStale) // reported at ReadyForQuery
	}
	return nil
}

// rowsAffected reads the row count at the end of a CommandComplete tag
// ("UPDATE 3", "DELETE 0", "INSERT 0 1"); -1 when there is none.
func rowsAffected(msg []byte) int64 {
	tag := msg[5:]
	if len(tag) > 0 && tag[len(tag)-1] == 0 {
		tag = tag[:len(tag)-1]
	}
	i := len(tag)
	for i > 0 && tag[i-1] >= '0' && tag[i-1] <= '9' {
		i--
	}
	if i == len(tag) || i == 0 || tag[i-1] != ' ' {
		return -1
	}
	var v int64
	for _, c := range tag[i:] {
		v = v*10 + int64(c-'0')
	}
	return v
}

// onError relays an ErrorResponse. In the extended protocol the server now
// skips to the next Sync: the requests it will not answer leave the queue.
func (s *session) onError(n int) error {
	p, ok := s.queue.peek()
	if ok && p.kind == pendQuery {
		s.queue.setFlags(flagErrored)
	} else if ok {
		s.queue.skipToSync(func(c *checkState) { c.done <- outcomeSkipped })
	}
	if ok && p.flags&flagCleanErr != 0 {
		msg, err := s.sr.next()
		if err != nil {
			return err
		}
		_, err = s.cw.Write(cleanError(msg))
		return err
	}
	return s.sr.relayFrame(s.cw, n)
}

// cleanError drops the fields of an error raised by the proxy's own DO
// block that describe the block rather than the client's statement
// (PL/pgSQL context, source file, line and routine).
func cleanError(msg []byte) []byte {
	out := []byte{'E', 0, 0, 0, 0}
	b := msg[5:]
	for len(b) > 1 {
		f := b[0]
		v, rest, ok := cstringBytes(b[1:])
		if !ok {
			return msg
		}
		if f != 'W' && f != 'F' && f != 'L' && f != 'R' {
			out = append(out, f)
			out = append(append(out, v...), 0)
		}
		b = rest
	}
	out = append(out, 0)
	n := len(out) - 1
	out[1], out[2], out[3], out[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return out
}

// onReady handles ReadyForQuery: the end of a simple query or a Sync.
func (s *session) onReady(n int) error {
	msg, err := s.sr.next()
	if err != nil {
		return err
	}
	if len(msg) == 6 {
		s.txStatus = msg[5]
	}
	p, ok := s.queue.pop()
	if ok && p.check != nil && p.kind == pendQuery {
		if p.flags&flagStale != 0 && p.flags&flagErrored == 0 {
			p.check.done <- outcomeStale // the client loop raises the error; its ReadyForQuery follows
			return nil
		}
		p.check.done <- outcomeOK
	}
	_, err = s.cw.Write(msg)
	return err
}
