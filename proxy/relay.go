package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"time"
)

// The relay phase. The event loop feeds bytes in (clientData, serverData)
// and writes out what the session queued in cout and sout. Frames the proxy
// does not need to look at are copied through as they arrive, even in
// pieces; only the few it must decode are gathered whole.

var errClientTerminated = errors.New("client sent Terminate")

// highWater bounds what the relay buffers per direction before it stops
// reading the side that produces it.
const highWater = 256 << 10

// relay hands the session to an event loop and waits until it ends.
func (s *session) relay() error {
	s.relayDone = make(chan struct{})
	if err := s.srv.loops.next().adopt(s); err != nil {
		return err
	}
	<-s.relayDone
	// TLS bridges end when their peers close; one that stays silent is
	// closed after a moment, so its pumping goroutines cannot outlive the
	// session.
	stuck := time.AfterFunc(time.Second, func() {
		s.client.Close()
		s.server.Close()
	})
	s.pumps.Wait()
	stuck.Stop()
	if errors.Is(s.endErr, errClientTerminated) || errors.Is(s.endErr, io.EOF) || errors.Is(s.endErr, errShutdown) {
		return nil
	}
	return s.endErr
}

// fatal queues a FATAL error for the client and ends the session once it is
// written.
func (s *session) fatal(code, msg string, cause error) {
	s.cout.append(encodeError("FATAL", code, msg, "", "")...)
	s.end(cause)
}

func (s *session) end(err error) {
	if !s.ending {
		s.ending, s.endErr = true, err
	}
}

// wantWhole reports whether the proxy must see a client frame of type typ
// whole before forwarding it.
func (s *session) wantWhole(typ byte) bool {
	g := s.guard
	if g == nil {
		return false
	}
	switch typ {
	case 'Q', 'P':
		return true
	case 'B':
		return len(g.stmts) > 0
	case 'E':
		return len(g.portals) > 0
	case 'C':
		return len(g.stmts) > 0 || len(g.portals) > 0
	}
	return false
}

// processClient forwards or handles the client's buffered frames until it
// runs out of complete ones or a checked statement holds it.
func (s *session) processClient() {
	for !s.ending {
		if s.cPass > 0 {
			if !copyThrough(&s.cin, &s.sout, &s.cPass, false) {
				return
			}
			continue
		}
		d := s.cin.data()
		if s.hold != nil || len(d) < 5 {
			return
		}
		typ := d[0]
		n := int(int32(binary.BigEndian.Uint32(d[1:5])))
		if n < 4 {
			s.fatal("08P01", protoErrorf("message %q has invalid length %d", typ, n).Error(), errProtocol)
			return
		}
		if n > s.cfg.Limits.MaxMessageBytes {
			s.fatal("08P01", protoErrorf("message %q of %d bytes exceeds the limit of %d bytes (limits.max_message_bytes)", typ, n, s.cfg.Limits.MaxMessageBytes).Error(), errProtocol)
			return
		}
		if !s.wantWhole(typ) {
			if !s.passClient(typ) {
				return
			}
			s.cPass = n + 1
			continue
		}
		if len(d) < n+1 {
			return // the rest has not arrived
		}
		extra, err := s.handleClient(d[:n+1], d[n+1:])
		s.cin.consume(n + 1 + extra)
		if err != nil {
			var pe *protocolError
			if errors.As(err, &pe) {
				s.fatal("08P01", pe.Error(), errProtocol)
			} else {
				s.end(err)
			}
			return
		}
	}
}

var errProtocol = errors.New("protocol violation by the client")

// copyThrough moves up to *left bytes of a frame being copied through from
// in to out (or drops them), and reports whether there were any.
func copyThrough(in, out *buffer, left *int, drop bool) bool {
	d := in.data()
	k := min(*left, len(d))
	if k == 0 {
		return false
	}
	if !drop {
		out.append(d[:k]...)
	}
	in.consume(k)
	*left -= k
	return true
}

// passClient records what a frame copied through will be answered with.
func (s *session) passClient(typ byte) bool {
	switch typ {
	case 'Q', 'F':
		s.queue.push(pending{kind: pendQuery})
	case 'P':
		s.queue.push(pending{kind: pendParse})
	case 'B':
		s.queue.push(pending{kind: pendBind})
	case 'E':
		s.queue.push(pending{kind: pendExecute})
	case 'C':
		s.queue.push(pending{kind: pendClose})
	case 'D':
		s.queue.push(pending{kind: pendDescribePortal})
	case 'S':
		s.queue.push(pending{kind: pendSync})
	case 'H', 'd', 'c', 'f':
	case 'X':
		s.end(errClientTerminated)
	default:
		s.fatal("08P01", protoErrorf("unknown message type %q", typ).Error(), errProtocol)
		return false
	}
	return true
}

// handleClient handles one whole client frame that needs a look; rest is
// the input after it. It returns how many bytes of rest it consumed too.
func (s *session) handleClient(msg, rest []byte) (int, error) {
	switch msg[0] {
	case 'Q':
		return 0, s.onQuery(msg)
	case 'P':
		return 0, s.onParse(msg)
	case 'B':
		return 0, s.onBind(msg)
	case 'E':
		return s.onExecute(msg, rest)
	case 'C':
		return 0, s.onClose(msg)
	}
	s.sout.append(msg...)
	return 0, nil
}

// processServer relays the server's buffered frames, keeping track of what
// each one answers.
func (s *session) processServer() {
	for !s.ending {
		if s.sPass > 0 {
			if !copyThrough(&s.sin, &s.cout, &s.sPass, s.sDrop) {
				return
			}
			continue
		}
		d := s.sin.data()
		if len(d) < 5 {
			return
		}
		typ := d[0]
		n := int(int32(binary.BigEndian.Uint32(d[1:5])))
		if n < 4 {
			s.end(errors.New("server sent a frame with an invalid length"))
			return
		}
		drop, whole := false, false
		switch typ {
		case 'T':
			s.popIf(pendDescribeStmt, pendDescribePortal)
		case '1', '2', '3', 'n':
			p, ok := s.queue.pop()
			drop = ok && p.flags&flagInternal != 0
		case 't':
			p, ok := s.queue.peek()
			drop = ok && p.flags&flagInternal != 0
		case 'C', 'I', 's':
			whole = s.wantComplete()
		case 'E':
			whole = true
		case 'Z':
			whole = true
		}
		if !whole {
			s.sPass, s.sDrop = n+1, drop
			continue
		}
		if len(d) < n+1 {
			return
		}
		msg := d[:n+1]
		switch typ {
		case 'C', 'I', 's':
			s.onCommandComplete(msg)
		case 'E':
			s.onError(msg)
		case 'Z':
			s.onReady(msg)
		}
		s.sin.consume(n + 1)
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

// wantComplete reports whether a CommandComplete, EmptyQueryResponse or
// PortalSuspended needs handling beyond copying: it ends an Execute (to be
// popped) or a checked statement.
func (s *session) wantComplete() bool {
	p, ok := s.queue.peek()
	return ok && (p.kind == pendExecute || p.check != nil)
}

// resolve delivers a checked statement's outcome and lets the client's held
// messages go on.
func (s *session) resolve(c *checkState, out checkOutcome) {
	s.srv.metrics.checked(c.stmt.Policy, out, c.sent)
	if s.hold == c {
		s.hold = nil
	}
	if err := s.afterCheck(c, out); err != nil {
		s.end(err)
	}
}

// onCommandComplete handles the end of one statement's execution. For a
// checked statement, zero rows affected is withheld from the client.
func (s *session) onCommandComplete(msg []byte) {
	p, _ := s.queue.peek()
	if p.kind == pendExecute {
		s.queue.pop()
	}
	if p.check == nil || (p.kind == pendQuery && msg[0] != 'C') {
		s.cout.append(msg...)
		return
	}
	if msg[0] != 'C' || rowsAffected(msg) != 0 {
		s.cout.append(msg...)
		if p.kind == pendExecute {
			s.resolve(p.check, outcomeOK)
		}
		return
	}
	if p.kind == pendExecute {
		s.resolve(p.check, outcomeStale)
	} else {
		s.queue.setFlags(flagStale) // a simple query: reported at ReadyForQuery
	}
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

// onError relays an ErrorResponse. After an extended-protocol error the
// server skips to the next Sync: the requests it will not answer leave the
// queue, and checked statements among them never ran.
func (s *session) onError(msg []byte) {
	p, ok := s.queue.peek()
	if ok && p.flags&flagCleanErr != 0 {
		msg = cleanError(msg)
	}
	s.cout.append(msg...)
	switch {
	case !ok:
	case p.kind == pendQuery:
		s.queue.setFlags(flagErrored)
	default:
		for _, c := range s.queue.skipToSync() {
			s.resolve(c, outcomeSkipped)
		}
	}
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
	binary.BigEndian.PutUint32(out[1:5], uint32(len(out)-1))
	return out
}

// onReady handles ReadyForQuery: the end of a simple query or a Sync.
func (s *session) onReady(msg []byte) {
	if len(msg) == 6 {
		s.txStatus = msg[5]
	}
	p, ok := s.queue.pop()
	if ok && p.flags&flagDropReady != 0 {
		return // the stale error and its own ReadyForQuery follow
	}
	if ok && p.check != nil && p.kind == pendQuery {
		if p.flags&flagStale != 0 && p.flags&flagErrored == 0 {
			// Withheld: the stale error and the server's own
			// ReadyForQuery follow.
			s.resolve(p.check, outcomeStale)
			return
		}
		s.cout.append(msg...)
		s.resolve(p.check, outcomeOK)
		return
	}
	s.cout.append(msg...)
}
