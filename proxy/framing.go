package proxy

import (
	"encoding/binary"
	"errors"
)

// Framing: the relay moves the bytes of each direction frame by frame.
// Frames the proxy does not need to look at are copied through as they
// arrive, even in pieces (pass); frames that answer the proxy's own
// requests are dropped the same way (skip); only the few the guard must
// decode are gathered whole (fetch) and handed to the guard's handlers:
// client frames to guard_client.go, server frames to guard_server.go.

// highWater bounds what the relay buffers per direction before it stops
// reading the side that produces it.
const highWater = 256 << 10

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
