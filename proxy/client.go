package proxy

import (
	"encoding/binary"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Handlers of the client frames the guard needs to see: Query, Parse, Bind,
// Execute and Close. They run only while the session has guarded tables
// (Bind, Execute and Close only while it has guarded statements), write
// what the server should get into sout, and may hold the client's later
// frames until a checked statement's outcome is known.

// unsafeString views b as a string for a call that does not keep it.
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// send encodes messages of the proxy's own to the server.
func (s *session) send(msgs ...pgproto3.FrontendMessage) error {
	for _, m := range msgs {
		b, err := m.Encode(s.sout.b)
		if err != nil {
			return err
		}
		s.sout.b = b
	}
	return nil
}

// check queues a checked request and holds the client until its outcome.
// When the server will never answer (it is skipping to a Sync after an
// error), the outcome is known at once.
func (s *session) check(p pending) {
	if !s.queue.push(p) {
		s.resolve(p.check, outcomeSkipped)
		return
	}
	s.hold = p.check
}

// onQuery handles a simple Query.
func (s *session) onQuery(msg []byte) error {
	body := msg[5:]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return protoErrorf("Query message without a string terminator")
	}
	sql := body[:len(body)-1]
	g := s.guard
	if len(g.stmts) > 0 {
		delete(g.stmts, "") // a simple query replaces the unnamed statement
		if containsFold(sql, "discard") {
			clear(g.stmts) // DISCARD ALL/PLANS may drop every prepared statement
		}
	}
	if s.queue.skipping || !g.rw.NeedsPlan(unsafeString(sql)) {
		s.queue.push(pending{kind: pendQuery})
		s.sout.append(msg...)
		return nil
	}
	plan, reject := g.plan(unsafeString(sql)) // the rewriter copies what it keeps
	if plan == nil {
		if reject != "" {
			s.queue.push(pending{kind: pendQuery, flags: flagInternal | flagCleanErr})
			return s.send(&pgproto3.Query{String: reject})
		}
		s.queue.push(pending{kind: pendQuery})
		s.sout.append(msg...)
		return nil
	}
	g.trackPrepared(plan)

	// What each statement needs at run time: a check, a refusal, or nothing.
	acts := make([]action, len(plan.Statements))
	need := false
	for i := range plan.Statements {
		st := &plan.Statements[i]
		eff := st
		if st.Kind == rewrite.KindExecute {
			if p := g.stmts[st.ExecuteName]; p != nil {
				eff = p.plan
			}
		}
		acts[i] = action{stmt: eff, refuse: eff.Refuse}
		if eff.Checked {
			acts[i].source = st
			acts[i].check = true
		}
		need = need || eff.Refuse || eff.Checked
	}
	if !need {
		s.queue.push(pending{kind: pendQuery})
		if !plan.Changed {
			s.sout.append(msg...)
			return nil
		}
		return s.send(&pgproto3.Query{String: plan.SQL})
	}
	// A single statement goes as it is, unless its zero-row run could
	// write something that the implicit transaction would commit before the
	// stale error is raised: then it runs as a pipeline like several do.
	if len(plan.Statements) == 1 && s.emptyRunCommitsNothing(g.quietWhenEmpty(acts[0].stmt)) {
		a := acts[0]
		if a.refuse {
			s.srv.metrics.refused(a.stmt.Policy)
			s.queue.push(pending{kind: pendQuery, flags: flagInternal | flagCleanErr})
			return s.send(&pgproto3.Query{String: requiredSQL(a.stmt.Policy, g.requiredCode)})
		}
		c := s.newCheck(checkSimple, a.stmt)
		c.source = a.source
		if err := s.send(&pgproto3.Query{String: plan.SQL}); err != nil {
			return err
		}
		s.check(pending{kind: pendQuery, check: c})
		return nil
	}
	// Run the statements as an extended-protocol pipeline, which
	// shares the simple query's implicit transaction and skip-on-error
	// semantics, pausing after each checked statement. The unnamed
	// statement and portal are used, as the simple query itself would.
	delete(g.stmts, "")
	delete(g.portals, "")
	return s.continuePipeline(&translation{plan: plan, acts: acts})
}

// action is what one statement of a simple query needs at run time.
type action struct {
	stmt   *rewrite.Statement
	refuse bool
	check  bool
	source *rewrite.Statement // the statement as written (an EXECUTE carries the values)
}

// translation is a multi-statement simple query being run as a pipeline.
type translation struct {
	plan *rewrite.Plan
	acts []action
	next int
}

// continuePipeline sends the translated query's statements from t.next on,
// up to the next checked one, or to the end and the closing Sync.
func (s *session) continuePipeline(t *translation) error {
	g := s.guard
	for t.next < len(t.acts) {
		i := t.next
		t.next++
		a := t.acts[i]
		if a.refuse {
			s.srv.metrics.refused(a.stmt.Policy)
			if err := s.raiseInPipeline("", requiredSQL(a.stmt.Policy, g.requiredCode)); err != nil {
				return err
			}
			break
		}
		s.queue.push(pending{kind: pendParse, flags: flagInternal})
		s.queue.push(pending{kind: pendBind, flags: flagInternal})
		s.queue.push(pending{kind: pendDescribePortal, flags: flagInternal})
		if err := s.send(&pgproto3.Parse{Query: t.plan.Statements[i].SQL}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}); err != nil {
			return err
		}
		if !a.check {
			s.queue.push(pending{kind: pendExecute})
			continue
		}
		c := s.newCheck(checkPipeline, a.stmt)
		c.source, c.pipeline = a.source, t
		if err := s.send(&pgproto3.Flush{}); err != nil {
			return err
		}
		s.check(pending{kind: pendExecute, check: c})
		return nil
	}
	s.queue.push(pending{kind: pendSync})
	return s.send(&pgproto3.Sync{})
}

// executeArgs gives a checked EXECUTE's literal arguments to resolveDetail.
func executeArgs(st *rewrite.Statement) func(int) (string, bool) {
	return func(n int) (string, bool) {
		if st == nil || st.Kind != rewrite.KindExecute || n < 1 || n > len(st.ExecuteArgs) || st.ExecuteArgs[n-1].Kind != rewrite.ValueLiteral {
			return "", false
		}
		return st.ExecuteArgs[n-1].Literal, true
	}
}

// raiseInPipeline makes the server raise an error of the proxy's inside the
// current extended-protocol sequence, through the named statement and
// portal ("" for the unnamed ones, which only a translated simple query may
// use). The server then skips to the next Sync, as for any error.
func (s *session) raiseInPipeline(name, sql string) error {
	if name != "" {
		s.queue.push(pending{kind: pendClose, flags: flagInternal})
		s.queue.push(pending{kind: pendClose, flags: flagInternal})
		if err := s.send(&pgproto3.Close{ObjectType: 'S', Name: name}, &pgproto3.Close{ObjectType: 'P', Name: name}); err != nil {
			return err
		}
	}
	s.queue.push(pending{kind: pendParse, flags: flagInternal})
	s.queue.push(pending{kind: pendBind, flags: flagInternal})
	s.queue.push(pending{kind: pendExecute, flags: flagInternal | flagCleanErr})
	return s.send(&pgproto3.Parse{Name: name, Query: sql}, &pgproto3.Bind{DestinationPortal: name, PreparedStatement: name}, &pgproto3.Execute{Portal: name})
}

// onParse rewrites a guarded statement being prepared and remembers its plan
// under the statement's name.
func (s *session) onParse(msg []byte) error {
	// Decoded in place: most Parse messages of a guarded session are not
	// guarded and go on as they came, without a copy.
	name, rest, ok := cstringBytes(msg[5:])
	var query, tail []byte
	if ok {
		query, tail, ok = cstringBytes(rest)
	}
	if !ok || len(tail) < 2 {
		return protoErrorf("Parse: malformed message")
	}
	nOids := int(int16(binary.BigEndian.Uint16(tail)))
	if nOids < 0 || len(tail) != 2+4*nOids {
		return protoErrorf("Parse: malformed parameter types")
	}
	g := s.guard
	prev := g.stmts[unsafeString(name)]
	if prev != nil {
		delete(g.stmts, unsafeString(name))
	}
	s.queue.push(pending{kind: pendParse})
	if !g.rw.NeedsPlan(unsafeString(query)) {
		s.sout.append(msg...)
		return nil
	}
	plan, reject := g.plan(unsafeString(query)) // the rewriter copies what it keeps
	if plan == nil && reject != "" {
		// Prepare the refusal in its place: executing it raises the error.
		s.appendParse(name, reject, []byte{0, 0})
		return nil
	}
	if plan == nil || len(plan.Statements) != 1 {
		s.sout.append(msg...)
		return nil
	}
	st := &plan.Statements[0]
	if st.Policy != nil {
		e, key := prev, ""
		if e == nil {
			e = &prepared{}
		}
		if len(name) > 0 {
			key = string(name)
		}
		e.plan, e.quietWhenEmpty, e.oids = st, g.quietWhenEmpty(st), e.oids[:0]
		for i := 0; i < nOids; i++ {
			e.oids = append(e.oids, binary.BigEndian.Uint32(tail[2+4*i:]))
		}
		g.stmts[key] = e
	}
	if !plan.Changed {
		s.sout.append(msg...)
		return nil
	}
	s.srv.metrics.rewritten.Add(1)
	s.appendParse(name, plan.SQL, tail)
	return nil
}

// appendParse writes a Parse message for the server: the client's name and
// parameter types (tail) around another statement text.
func (s *session) appendParse(name []byte, sql string, tail []byte) {
	n := 4 + len(name) + 1 + len(sql) + 1 + len(tail)
	b := append(s.sout.b, 'P', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	b = append(append(b, name...), 0)
	b = append(append(b, sql...), 0)
	s.sout.b = append(b, tail...)
}

// onBind notes which portals run checked statements, with the bound values
// the stale error's detail needs.
func (s *session) onBind(msg []byte) error {
	g := s.guard
	s.queue.push(pending{kind: pendBind})
	portal, rest, ok := cstringBytes(msg[5:])
	var stmtName []byte
	if ok {
		stmtName, rest, ok = cstringBytes(rest)
	}
	if !ok {
		return protoErrorf("Bind: missing string terminator")
	}
	prep := g.stmts[unsafeString(stmtName)]
	if prep == nil {
		if len(g.portals) > 0 {
			delete(g.portals, unsafeString(portal))
		}
		s.sout.append(msg...)
		return nil
	}
	if !validBind(rest) {
		return protoErrorf("Bind: malformed parameters")
	}
	name := unsafeString(portal)
	bp := g.portals[name]
	if bp == nil {
		bp = &boundPortal{}
		g.portals[string(portal)] = bp
	}
	bp.stmt, bp.oids, bp.quietWhenEmpty = prep.plan, prep.oids, prep.quietWhenEmpty
	if prep.plan.Checked {
		// Kept to describe a stale result; decoded only then.
		bp.bind = append(bp.bind[:0], msg...)
	}
	s.sout.append(msg...)
	return nil
}

// validBind checks the structure of a Bind after its two names, without
// decoding it: format codes, parameter values (length -1 or within the
// message) and result formats must add up to the message exactly.
func validBind(b []byte) bool {
	n16 := func() (int, bool) {
		if len(b) < 2 {
			return 0, false
		}
		v := int(int16(binary.BigEndian.Uint16(b)))
		b = b[2:]
		return v, v >= 0
	}
	nf, ok := n16()
	if !ok || len(b) < 2*nf {
		return false
	}
	b = b[2*nf:]
	np, ok := n16()
	if !ok {
		return false
	}
	for i := 0; i < np; i++ {
		if len(b) < 4 {
			return false
		}
		l := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if l == -1 {
			continue
		}
		if l < 0 || l > len(b) {
			return false
		}
		b = b[l:]
	}
	nr, ok := n16()
	return ok && len(b) == 2*nr
}

// onExecute runs a checked portal and holds the client until its outcome is
// known; a refused one is replaced by the refusal. rest is the client's
// input after the Execute.
func (s *session) onExecute(msg, rest []byte) (int, error) {
	g := s.guard
	portal, _, ok := cstringBytes(msg[5:])
	if !ok {
		return 0, protoErrorf("Execute: missing string terminator")
	}
	bp := g.portals[unsafeString(portal)]
	switch {
	case bp == nil || (!bp.stmt.Checked && !bp.stmt.Refuse):
		s.queue.push(pending{kind: pendExecute})
		s.sout.append(msg...)
		return 0, nil
	case bp.stmt.Refuse:
		if s.queue.skipping {
			return 0, nil // the server would skip it
		}
		s.srv.metrics.refused(bp.stmt.Policy)
		return 0, s.raiseInPipeline("pgoptimist_raise", requiredSQL(bp.stmt.Policy, g.requiredCode))
	}
	if s.syncAhead(bp, rest) {
		// The common shape, Execute then Sync with nothing else in the
		// batch: both go at once, and a zero-row result becomes the error
		// right after the Sync, replacing its ReadyForQuery. That saves a
		// round trip to the server, and is exact because the Sync either
		// ends an explicit transaction's cycle without committing, or
		// commits an implicit transaction whose only statement changed
		// nothing (syncAhead checks which).
		c := s.newCheck(checkSyncAhead, bp.stmt)
		c.portal = bp
		s.sout.append(msg...)
		s.sout.append(rest[:5]...)
		s.check(pending{kind: pendExecute, check: c})
		s.queue.push(pending{kind: pendSync})
		return 5, nil
	}
	c := s.newCheck(checkHeld, bp.stmt)
	c.portal = bp
	s.sout.append(msg...)
	if err := s.send(&pgproto3.Flush{}); err != nil {
		return 0, err
	}
	s.check(pending{kind: pendExecute, check: c})
	return 0, nil
}

// newCheck returns the session's check state, reset. One is enough: a
// check holds the client's later frames until it is resolved.
func (s *session) newCheck(kind checkKind, st *rewrite.Statement) *checkState {
	s.chk = checkState{kind: kind, stmt: st, sent: time.Now()}
	return &s.chk
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
			s.queue.push(pending{kind: pendQuery, flags: flagInternal | flagCleanErr})
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
			s.queue.setFlags(flagDropReady) // the Sync's entry is now the oldest
			s.queue.push(pending{kind: pendQuery, flags: flagInternal | flagCleanErr})
			return s.send(&pgproto3.Query{String: staleSQL(c.stmt.Policy, c.staleDetail(), g.staleCode)})
		}
	case checkHeld:
		if out == outcomeStale {
			return s.raiseInPipeline("pgoptimist_raise", staleSQL(c.stmt.Policy, c.staleDetail(), g.staleCode))
		}
	}
	return nil
}

// syncAhead reports whether a checked Execute may go to the server together
// with the Sync that follows it: the Sync is already here, nothing else is
// in flight, and the Sync cannot commit anything the stale error should
// have rolled back. Inside a transaction block a Sync commits nothing; in
// an implicit transaction it commits only this statement, which is fine
// when a zero-row run of it writes nothing: no data-modifying CTE, no
// statement-level trigger or rule on the table.
func (s *session) syncAhead(bp *boundPortal, rest []byte) bool {
	if len(rest) < 5 || rest[0] != 'S' || rest[1] != 0 || rest[2] != 0 || rest[3] != 0 || rest[4] != 4 {
		return false
	}
	return s.emptyRunCommitsNothing(bp.quietWhenEmpty)
}

// emptyRunCommitsNothing reports whether the end of the current cycle (the
// simple query's own end, or a Sync) would commit nothing that a stale error
// raised after it should have rolled back: nothing else is in flight (so
// the last ReadyForQuery status is current), and either a transaction block
// is open (the cycle's end commits nothing) or the implicit transaction
// holds only a statement whose zero-row run writes nothing (quietWhenEmpty).
func (s *session) emptyRunCommitsNothing(quietWhenEmpty bool) bool {
	if !s.queue.quiet() {
		return false
	}
	return s.txStatus == 'T' || s.txStatus == 'I' && quietWhenEmpty
}

// onClose forgets closed guarded statements and portals.
func (s *session) onClose(msg []byte) error {
	s.queue.push(pending{kind: pendClose})
	if len(msg) >= 7 {
		if name, _, ok := cstringBytes(msg[6:]); ok {
			switch msg[5] {
			case 'S':
				delete(s.guard.stmts, unsafeString(name))
			case 'P':
				delete(s.guard.portals, unsafeString(name))
			}
		}
	}
	s.sout.append(msg...)
	return nil
}

// containsFold reports whether b contains the lower-case ASCII word w,
// ignoring case.
func containsFold(b []byte, w string) bool {
	for i := 0; i+len(w) <= len(b); i++ {
		j := 0
		for ; j < len(w); j++ {
			c := b[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != w[j] {
				break
			}
		}
		if j == len(w) {
			return true
		}
	}
	return false
}
