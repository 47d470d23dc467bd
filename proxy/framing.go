package proxy

import (
	"bytes"
	"errors"
	"fmt"
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
		if s.checks.holding() || s.own != nil {
			return
		}
		d := s.cin.data()
		b, total, ok, err := frameHeader(d, s.cfg.Limits.MaxMessageBytes)
		if !ok {
			return
		}
		if err != nil {
			s.fatal(sqlstateProtocolViolation, err.Error(), errProtocol)
			return
		}
		typ := clientMsg(b)
		if (typ == msgQuery || typ == msgParse || typ == msgBind) && s.srv.guards.generation() != s.guardGen && s.idle() {
			// A reload came while the session was idle: its first
			// statement after it follows the new policies.
			if s.followReload(); s.own != nil {
				return // the catalog is asked first
			}
		}
		if g := s.guard; g != nil {
			if typ == msgQuery && total-headerLen-1 > s.cfg.Limits.MaxSQLBytes && g.onParseError == "forward" {
				// Longer than the parser takes (limits.max_sql_bytes), so
				// forwarded unguarded whatever it says: copied through
				// as it arrives rather than held whole.
				s.streamQuery()
				s.cPass = total
				continue
			}
			if typ == msgParse && total-headerLen > s.cfg.Limits.MaxSQLBytes && g.onParseError == "forward" {
				name, oversized, wait := oversizedParse(d, total, s.cfg.Limits.MaxSQLBytes)
				if wait {
					return // its name has not arrived
				}
				if oversized {
					// Likewise for a statement being prepared.
					s.noteBatch(typ)
					s.streamParse(name)
					s.cPass = total
					continue
				}
			}
			if g.res.unsure && (typ == msgQuery || typ == msgParse || typ == msgBind && (len(g.texts) > 0 || len(g.stmts) > 0 || g.alone.set)) {
				if len(d) < total || s.resolveFirst(typ, d[:total]) {
					return // the rest has not arrived, or the server is asked first
				}
			}
		}
		s.noteBatch(typ)
		if !s.wantWhole(typ) {
			if !s.passClient(typ) {
				return
			}
			s.cPass = total
			continue
		}
		if len(d) < total {
			if total > highWater && s.reserved == 0 && !s.reserve(total) {
				return
			}
			return // the rest has not arrived
		}
		extra, err := s.handleClient(d[:total], d[total:])
		s.cin.consume(total + extra)
		s.unreserve()
		if err != nil {
			var pe *protocolError
			if errors.As(err, &pe) {
				s.fatal(sqlstateProtocolViolation, pe.Error(), errProtocol)
			} else {
				s.end(err)
			}
			return
		}
	}
}

var errProtocol = errors.New("protocol violation by the client")

// reserve takes room for a frame of total bytes, which must be held whole,
// from the process-wide budget (limits.max_buffered_bytes); without room the
// session ends with 53200, and the process does not grow.
func (s *session) reserve(total int) bool {
	if s.srv.buffered.reserve(int64(total), int64(s.cfg.Limits.MaxBufferedBytes)) {
		s.reserved = int64(total)
		return true
	}
	s.srv.metrics.refusedBudget.Add(1)
	s.fatalDetail(sqlstateOutOfMemory, "out of memory",
		fmt.Sprintf("pgoptimist: no room to hold a message of %d bytes (limits.max_buffered_bytes)", total), errOverBudget)
	return false
}

// unreserve gives the frame's room back once it is handled.
func (s *session) unreserve() {
	if s.reserved > 0 {
		s.srv.buffered.give(s.reserved)
		s.reserved = 0
	}
}

var errOverBudget = errors.New("a message over the process-wide budget for buffered bytes")

// streamQuery records a simple Query copied through unread: what the proxy
// would have learnt from its text is assumed at its most cautious.
func (s *session) streamQuery() {
	g := s.guard
	s.queue.push(pending{kind: pendQuery})
	g.forgetStatement("") // a simple query replaces the unnamed statement
	g.res.changed()
	s.inBatch = false
}

// maxParams is the most parameters a Parse or Bind can carry (a 16-bit
// count, unsigned, as PostgreSQL reads it).
const maxParams = 1<<16 - 1

// oversizedParse looks at the start of a Parse frame of total bytes, d from
// its first byte on. oversized: its statement text is longer than maxSQL
// (the most the parser takes) whatever parameter types follow it; name is
// then the statement's name. wait: the name has not arrived yet. A name
// longer than the relay's own buffer is left to the whole-frame path,
// which the budget bounds.
func oversizedParse(d []byte, total, maxSQL int) (name []byte, oversized, wait bool) {
	body := d[headerLen:min(len(d), total)]
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return nil, false, len(d) < total && len(body) < highWater
	}
	// After the name: the text, its terminator, the count of parameter
	// types and at most maxParams of them.
	shortest := total - headerLen - (i + 1) - 1 - 2 - 4*maxParams
	return body[:i], shortest > maxSQL, false
}

// streamParse records a Parse copied through unread, as streamQuery does a
// simple query: the statement it prepares is not guarded (the parser would
// not take its text), and it is assumed to change name resolution each time
// it runs.
func (s *session) streamParse(name []byte) {
	g := s.guard
	s.queue.push(pending{kind: pendParse})
	g.forgetStatement(string(name))
	g.changers[string(name)] = struct{}{}
	g.res.changed()
}

// idle reports whether nothing is in flight and no transaction or batch is
// open: a point where the proxy may ask the server something of its own.
func (s *session) idle() bool {
	return s.settled() && !s.inBatch
}

// settled reports whether nothing is in flight, the proxy is neither
// checking nor asking anything, and no transaction block is open.
func (s *session) settled() bool {
	return s.queue.len() == 0 && s.txStatus == txIdle && !s.checks.active && s.own == nil
}

// noteBatch follows whether an extended-protocol batch is open: the proxy's
// own questions must not end it (see resolveFirst).
func (s *session) noteBatch(typ clientMsg) {
	s.batchFirst = !s.inBatch
	switch typ {
	case msgParse, msgBind, msgExecute, msgDescribe, msgClose:
		s.inBatch = true
	case msgSync, msgQuery, msgFunctionCall:
		s.inBatch = false
	}
}

// wantWhole reports whether the proxy must see a client frame of type typ
// whole before forwarding it.
func (s *session) wantWhole(typ clientMsg) bool {
	g := s.guard
	if g == nil {
		return false
	}
	switch typ {
	case msgQuery, msgParse:
		return true
	case msgBind:
		// Also while guarded portals exist: a Bind of an unguarded
		// statement to such a portal's name must clear its entry, or its
		// next Execute would be checked (a false stale error).
		return len(g.stmts) > 0 || len(g.portals) > 0 || len(g.changers) > 0 || len(g.changerPortals) > 0 || len(g.staleTexts) > 0 || g.alone.set
	case msgExecute:
		return len(g.portals) > 0 || len(g.changerPortals) > 0
	case msgClose:
		return len(g.stmts) > 0 || len(g.portals) > 0 || len(g.changers) > 0 || len(g.changerPortals) > 0 || len(g.texts) > 0 || g.alone.set
	case msgDescribe:
		return g.store != nil && (len(g.stmts) > 0 || len(g.portals) > 0)
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

// clientRequest is a request of the client's own, answered to the client.
func clientRequest(k pendingKind) pending { return pending{kind: k, answer: answerClient} }

// passClient records what a frame copied through will be answered with.
func (s *session) passClient(typ clientMsg) bool {
	switch typ {
	case msgQuery, msgFunctionCall:
		s.queue.push(clientRequest(pendQuery))
	case msgParse:
		s.queue.push(clientRequest(pendParse))
	case msgBind:
		s.queue.push(clientRequest(pendBind))
	case msgExecute:
		s.queue.push(clientRequest(pendExecute))
	case msgClose:
		s.queue.push(clientRequest(pendClose))
	case msgDescribe:
		s.queue.push(clientRequest(pendDescribe))
	case msgSync:
		s.queue.push(clientRequest(pendSync))
	case msgFlush, msgCopyData, msgCopyDone, msgCopyFail:
	case msgTerminate:
		s.end(errClientTerminated)
	default:
		s.fatal(sqlstateProtocolViolation, protoErrorf("unknown message type %q", byte(typ)).Error(), errProtocol)
		return false
	}
	return true
}

// handleClient handles one whole client frame that needs a look; rest is
// the input after it. It returns how many bytes of rest it consumed too.
func (s *session) handleClient(msg, rest []byte) (int, error) {
	switch clientMsg(msg[0]) {
	case msgQuery:
		return 0, s.onQuery(msg)
	case msgParse:
		return 0, s.onParse(msg, rest)
	case msgBind:
		return 0, s.onBind(msg, rest)
	case msgExecute:
		return s.onExecute(msg, rest)
	case msgClose:
		return 0, s.onClose(msg)
	case msgDescribe:
		return 0, s.onDescribe(msg)
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
		b, total, ok, err := frameHeader(d, 0)
		if !ok {
			return
		}
		if err != nil {
			s.end(fmt.Errorf("server sent a malformed frame: %w", err))
			return
		}
		typ := serverMsg(b)
		if s.own != nil && s.ownAnswers(typ) {
			if len(d) < total {
				return
			}
			s.onOwnAnswer(typ, d[:total])
			s.sin.consume(total)
			continue
		}
		drop, whole := false, false
		switch typ {
		case msgRowDescription:
			if whole = s.trackHead() != nil; !whole {
				s.popIf(pendDescribe)
			}
		case msgDataRow:
			whole = s.trackHead() != nil
		case msgParseComplete, msgBindComplete, msgCloseComplete, msgNoData:
			p, ok := s.queue.pop()
			drop = ok && p.answer == answerProxy
		case msgParameterDescription:
			p, ok := s.queue.peek()
			drop = ok && p.answer == answerProxy
			whole = ok && p.track != nil
		case msgCommandComplete, msgEmptyQueryResponse, msgPortalSuspended:
			whole = s.wantComplete()
		case msgErrorResponse, msgReadyForQuery:
			whole = true
		}
		if !whole {
			s.sPass, s.sDrop = total, drop
			continue
		}
		if len(d) < total {
			return
		}
		msg := d[:total]
		switch typ {
		case msgRowDescription:
			s.onTrackedRowDescription(msg)
		case msgDataRow:
			s.onTrackedDataRow(msg)
		case msgParameterDescription:
			s.onTrackedParameterDescription(msg)
		case msgCommandComplete, msgEmptyQueryResponse, msgPortalSuspended:
			s.onCommandComplete(msg)
		case msgErrorResponse:
			s.onError(msg)
		case msgReadyForQuery:
			s.onReady(msg)
		}
		s.sin.consume(total)
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
	return ok && (p.kind == pendExecute || p.check != nil || p.track != nil || p.prep != nil) || s.watchingTags()
}
