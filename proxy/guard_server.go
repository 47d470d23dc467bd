package proxy

import (
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Handlers of the server frames the guard needs to see: the end of a
// checked statement's execution (CommandComplete), errors, and
// ReadyForQuery. A checked statement's outcome (check.go) decides what the
// client gets and what the proxy sends next (afterCheck).

// onCommandComplete handles the end of one statement's execution. For a
// checked statement, zero rows affected is withheld from the client.
func (s *session) onCommandComplete(msg []byte) {
	p, _ := s.queue.peek()
	s.trackComplete(p.track, msg)
	if p.prep != nil {
		s.onPrepComplete(p, msg)
	}
	if p.kind == pendExecute {
		s.queue.pop()
	}
	if p.answer == answerProxy {
		return // a statement of the proxy's own (refreshPrepared)
	}
	if p.check == nil || (p.kind == pendQuery && serverMsg(msg[0]) != msgCommandComplete) {
		s.cout.append(msg...)
		return
	}
	if serverMsg(msg[0]) != msgCommandComplete || rowsAffected(msg) != 0 {
		s.cout.append(msg...)
		if p.kind == pendExecute {
			s.resolve(p.check, outcomeOK)
		}
		return
	}
	if p.kind == pendExecute {
		s.resolve(p.check, outcomeStale)
	} else {
		s.queue.observe(sawZeroRows) // a simple query: reported at ReadyForQuery
	}
}

// rowsAffected reads the row count at the end of a CommandComplete tag
// ("UPDATE 3", "DELETE 0", "INSERT 0 1"); -1 when there is none.
func rowsAffected(msg []byte) int64 {
	tag := frameBody(msg)
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
	if ok && p.answer == answerRaise {
		msg = cleanError(msg)
	}
	if ok && p.shift != 0 {
		msg = shiftPosition(msg, p.shift)
	}
	s.cout.append(msg...)
	s.trackError()
	if ok && p.aloneRead && s.guard != nil {
		s.guard.alone.set = false
	}
	switch {
	case !ok:
	case p.kind == pendQuery:
		s.queue.observe(sawError)
	default:
		for _, c := range s.queue.skipToSync() {
			s.resolve(c, outcomeSkipped)
		}
		s.ownSkipped()
	}
}

// cleanError drops the fields of an error raised by the proxy's own DO
// block that describe the block rather than the client's statement
// (PL/pgSQL context, source file, line and routine).
func cleanError(msg []byte) []byte {
	return editError(msg, func(f byte, v []byte) ([]byte, bool) {
		switch f {
		case fieldWhere, fieldFile, fieldLine, fieldRoutine:
			return nil, false
		}
		return v, true
	})
}

// shiftPosition moves an error's position (in characters) shift
// characters back: the error of a statement the proxy sent in place of
// the client's, whose text is that much longer before the position.
func shiftPosition(msg []byte, shift int32) []byte {
	return editError(msg, func(f byte, v []byte) ([]byte, bool) {
		if f == fieldPosition {
			if n, err := strconv.Atoi(string(v)); err == nil && n > int(shift) {
				return strconv.AppendInt(nil, int64(n)-int64(shift), 10), true
			}
		}
		return v, true
	})
}

// editError rebuilds an ErrorResponse field by field: edit returns each
// field's new value, or false to drop it. A malformed message is returned
// as it is.
func editError(msg []byte, edit func(field byte, value []byte) ([]byte, bool)) []byte {
	var body []byte
	b := frameBody(msg)
	for len(b) > 1 {
		f := b[0]
		v, rest, ok := cstringBytes(b[1:])
		if !ok {
			return msg
		}
		if v, keep := edit(f, v); keep {
			body = append(body, f)
			body = append(append(body, v...), 0)
		}
		b = rest
	}
	return appendFrame(nil, byte(msgErrorResponse), body, []byte{0})
}

// onReady handles ReadyForQuery: the end of a simple query or a Sync.
func (s *session) onReady(msg []byte) {
	s.txStatus = readyStatus(msg)
	s.relayReady(msg)
	s.trackReady()
	if s.txStatus == txIdle {
		s.atTxEnd()
	}
}

// relayReady relays or withholds a ReadyForQuery and resolves the check it
// ends, if any.
func (s *session) relayReady(msg []byte) {
	p, ok := s.queue.pop()
	if ok && p.answer == answerReplaced {
		return // the stale error and its own ReadyForQuery follow
	}
	if ok && p.check != nil && p.kind == pendQuery {
		if p.seen == sawZeroRows {
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

// resolve delivers a checked statement's outcome and lets the client's held
// messages go on.
func (s *session) resolve(c *checkState, out checkOutcome) {
	s.srv.metrics.checked(c.stmt.Policy, out, c.sent)
	s.checks.finish(c)
	if err := s.afterCheck(c, out); err != nil {
		s.end(err)
	}
}

// afterCheck does what a checked statement's outcome calls for.
func (s *session) afterCheck(c *checkState, out checkOutcome) error {
	g := s.guard
	if out == outcomeStale {
		s.srv.metrics.stale(c.stmt.Policy)
	}
	switch c.kind {
	case checkSimple:
		if out == outcomeStale {
			s.queue.push(pending{kind: pendQuery, answer: answerRaise})
			return s.send(&pgproto3.Query{String: staleSQL(c.stmt.Policy, c.staleDetail(), g.staleCode)})
		}
	case checkPipeline:
		switch out {
		case outcomeOK:
			return s.continuePipeline(c.pipeline)
		case outcomeStale:
			if err := s.raiseInPipeline("", staleSQL(c.stmt.Policy, c.staleDetail(), g.staleCode)); err != nil {
				return err
			}
		}
		s.queue.push(pending{kind: pendSync})
		return s.send(&pgproto3.Sync{})
	case checkSyncAhead:
		if out == outcomeStale {
			s.queue.replaceReady() // the Sync's entry is now the oldest
			s.queue.push(pending{kind: pendQuery, answer: answerRaise})
			return s.send(&pgproto3.Query{String: staleSQL(c.stmt.Policy, c.staleDetail(), g.staleCode)})
		}
	case checkHeld:
		if out == outcomeStale {
			return s.raiseInPipeline(raiseName, staleSQL(c.stmt.Policy, c.staleDetail(), g.staleCode))
		}
	}
	return nil
}

// atTxEnd runs at a ReadyForQuery outside a transaction block: what a
// statement of the transaction did to name resolution may be undone, and
// at an idle point (nothing in flight) the session follows a reload.
func (s *session) atTxEnd() {
	if s.guard != nil {
		s.guard.res.txEnded()
	}
	if s.idle() && s.srv.guards.generation() != s.guardGen {
		s.followReload()
	}
}
