package proxy

import (
	"io"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// clientLoop relays the client's messages to the server. Messages that
// cannot concern a guarded table are copied as raw frames; Query, Parse,
// Bind, Execute and Close are decoded only while the session has guarded
// tables (and Bind/Execute/Close only while it has guarded statements).
func (s *session) clientLoop() error {
	for {
		typ, n, err := s.cr.header()
		if err != nil {
			return err
		}
		switch typ {
		case 'Q':
			if s.guard != nil {
				err = s.onQuery()
				break
			}
			s.queue.push(pending{kind: pendQuery})
			err = s.cr.relayFrame(s.sw, n)
		case 'P':
			if s.guard != nil {
				err = s.onParse()
				break
			}
			s.queue.push(pending{kind: pendParse})
			err = s.cr.relayFrame(s.sw, n)
		case 'B':
			if s.guard != nil && len(s.guard.stmts) > 0 {
				err = s.onBind()
				break
			}
			s.queue.push(pending{kind: pendBind})
			err = s.cr.relayFrame(s.sw, n)
		case 'E':
			if s.guard != nil && len(s.guard.portals) > 0 {
				err = s.onExecute()
				break
			}
			s.queue.push(pending{kind: pendExecute})
			err = s.cr.relayFrame(s.sw, n)
		case 'C':
			if s.guard != nil && (len(s.guard.stmts) > 0 || len(s.guard.portals) > 0) {
				err = s.onClose()
				break
			}
			s.queue.push(pending{kind: pendClose})
			err = s.cr.relayFrame(s.sw, n)
		case 'D':
			s.queue.push(pending{kind: pendDescribePortal})
			err = s.cr.relayFrame(s.sw, n)
		case 'S':
			s.queue.push(pending{kind: pendSync})
			err = s.cr.relayFrame(s.sw, n)
		case 'F':
			s.queue.push(pending{kind: pendQuery})
			err = s.cr.relayFrame(s.sw, n)
		case 'H', 'd', 'c', 'f':
			err = s.cr.relayFrame(s.sw, n)
		case 'X':
			if err = s.cr.relayFrame(s.sw, n); err == nil {
				_ = s.sw.Flush()
				return errClientTerminated
			}
		default:
			return protoErrorf("unknown message type %q", typ)
		}
		if err != nil {
			return err
		}
	}
}

// unsafeString views b as a string for a call that does not keep it.
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func (s *session) write(msgs ...pgproto3.FrontendMessage) error {
	for _, m := range msgs {
		b, err := m.Encode(s.guard.enc[:0])
		if err != nil {
			return err
		}
		s.guard.enc = b
		if _, err := s.sw.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// wait blocks the client loop until the server loop has seen the outcome of
// a checked statement. Holding the client's later messages is what lets a
// zero-row result become an error before anything else runs.
func (s *session) wait(c *checkState) (checkOutcome, error) {
	if err := s.sw.Flush(); err != nil {
		return 0, err
	}
	select {
	case o := <-c.done:
		return o, nil
	case <-s.serverEOF:
		return 0, io.EOF
	}
}

func newCheck(st *rewrite.Statement, d staleDetail) *checkState {
	return &checkState{stmt: st, detail: d, done: make(chan checkOutcome, 1)}
}

// onQuery handles a simple Query while the session has guarded tables.
func (s *session) onQuery() error {
	msg, err := s.cr.next()
	if err != nil {
		return err
	}
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
	if !g.rw.MayTouch(unsafeString(sql)) {
		s.queue.push(pending{kind: pendQuery})
		_, err = s.sw.Write(msg)
		return err
	}
	plan, reject := g.plan(string(sql))
	if plan == nil {
		if reject != "" {
			s.queue.push(pending{kind: pendQuery, flags: flagInternal | flagCleanErr})
			return s.write(&pgproto3.Query{String: reject})
		}
		s.queue.push(pending{kind: pendQuery})
		_, err = s.sw.Write(msg)
		return err
	}
	g.trackPrepared(plan)

	// What each statement needs at run time: a check, a refusal, or nothing.
	type action struct {
		stmt   *rewrite.Statement
		refuse bool
		check  bool
	}
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
		acts[i] = action{stmt: eff, refuse: eff.Refuse, check: eff.Checked}
		need = need || eff.Refuse || eff.Checked
	}
	if !need {
		s.queue.push(pending{kind: pendQuery})
		if !plan.Changed {
			_, err = s.sw.Write(msg)
			return err
		}
		return s.write(&pgproto3.Query{String: plan.SQL})
	}
	execArgs := func(st *rewrite.Statement) func(int) (string, bool) {
		return func(n int) (string, bool) {
			if st.Kind != rewrite.KindExecute || n < 1 || n > len(st.ExecuteArgs) || st.ExecuteArgs[n-1].Kind != rewrite.ValueLiteral {
				return "", false
			}
			return st.ExecuteArgs[n-1].Literal, true
		}
	}

	if len(plan.Statements) == 1 {
		a := acts[0]
		if a.refuse {
			s.srv.metrics.refused(a.stmt.Policy)
			s.queue.push(pending{kind: pendQuery, flags: flagInternal | flagCleanErr})
			return s.write(&pgproto3.Query{String: requiredSQL(a.stmt.Policy, g.requiredCode)})
		}
		c := newCheck(a.stmt, resolveDetail(a.stmt, execArgs(&plan.Statements[0])))
		s.queue.push(pending{kind: pendQuery, check: c})
		if err := s.write(&pgproto3.Query{String: plan.SQL}); err != nil {
			return err
		}
		out, err := s.wait(c)
		if err != nil || out != outcomeStale {
			return err
		}
		s.srv.metrics.stale(a.stmt.Policy)
		s.queue.push(pending{kind: pendQuery, flags: flagInternal | flagCleanErr})
		return s.write(&pgproto3.Query{String: staleSQL(a.stmt.Policy, c.detail, g.staleCode)})
	}

	// Several statements: run them as an extended-protocol pipeline, which
	// shares the simple query's implicit transaction and skip-on-error
	// semantics, pausing after each checked statement. The unnamed
	// statement and portal are used, as the simple query itself would.
	delete(g.stmts, "")
	delete(g.portals, "")
	for i := range plan.Statements {
		a := acts[i]
		if a.refuse {
			s.srv.metrics.refused(a.stmt.Policy)
			if err := s.raiseInPipeline("", requiredSQL(a.stmt.Policy, g.requiredCode)); err != nil {
				return err
			}
			break
		}
		var c *checkState
		if a.check {
			c = newCheck(a.stmt, resolveDetail(a.stmt, execArgs(&plan.Statements[i])))
		}
		s.queue.push(pending{kind: pendParse, flags: flagInternal})
		s.queue.push(pending{kind: pendBind, flags: flagInternal})
		s.queue.push(pending{kind: pendDescribePortal, flags: flagInternal})
		s.queue.push(pending{kind: pendExecute, check: c})
		if err := s.write(&pgproto3.Parse{Query: plan.Statements[i].SQL}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}); err != nil {
			return err
		}
		if c == nil {
			continue
		}
		if err := s.write(&pgproto3.Flush{}); err != nil {
			return err
		}
		out, err := s.wait(c)
		if err != nil {
			return err
		}
		if out == outcomeStale {
			s.srv.metrics.stale(a.stmt.Policy)
			if err := s.raiseInPipeline("", staleSQL(a.stmt.Policy, c.detail, g.staleCode)); err != nil {
				return err
			}
		}
		if out != outcomeOK {
			break
		}
	}
	s.queue.push(pending{kind: pendSync})
	return s.write(&pgproto3.Sync{})
}

// raiseInPipeline makes the server raise an error of the proxy's inside the
// current extended-protocol sequence, through the named statement and portal
// name ("" for the unnamed ones, which only a translated simple query may
// use). The server then skips to the next Sync, as for any error.
func (s *session) raiseInPipeline(name, sql string) error {
	if name != "" {
		s.queue.push(pending{kind: pendClose, flags: flagInternal})
		s.queue.push(pending{kind: pendClose, flags: flagInternal})
		if err := s.write(&pgproto3.Close{ObjectType: 'S', Name: name}, &pgproto3.Close{ObjectType: 'P', Name: name}); err != nil {
			return err
		}
	}
	s.queue.push(pending{kind: pendParse, flags: flagInternal})
	s.queue.push(pending{kind: pendBind, flags: flagInternal})
	s.queue.push(pending{kind: pendExecute, flags: flagInternal | flagCleanErr})
	return s.write(&pgproto3.Parse{Name: name, Query: sql}, &pgproto3.Bind{DestinationPortal: name, PreparedStatement: name}, &pgproto3.Execute{Portal: name})
}

// onParse rewrites a guarded statement being prepared and remembers its plan
// under the statement's name.
func (s *session) onParse() error {
	msg, err := s.cr.next()
	if err != nil {
		return err
	}
	var p pgproto3.Parse
	if err := p.Decode(msg[5:]); err != nil {
		return protoErrorf("Parse: %v", err)
	}
	g := s.guard
	if len(g.stmts) > 0 {
		delete(g.stmts, p.Name)
	}
	s.queue.push(pending{kind: pendParse})
	if !g.rw.MayTouch(p.Query) {
		_, err = s.sw.Write(msg)
		return err
	}
	plan, reject := g.plan(p.Query)
	if plan == nil && reject != "" {
		// Prepare the refusal in its place: executing it raises the error.
		p.Query, p.ParameterOIDs = reject, nil
		return s.write(&p)
	}
	if plan == nil || len(plan.Statements) != 1 {
		_, err = s.sw.Write(msg)
		return err
	}
	st := &plan.Statements[0]
	if st.Policy != nil {
		g.stmts[p.Name] = &prepared{plan: st, oids: append([]uint32(nil), p.ParameterOIDs...)}
	}
	if !plan.Changed {
		_, err = s.sw.Write(msg)
		return err
	}
	s.srv.metrics.rewritten.Add(1)
	p.Query = plan.SQL
	return s.write(&p)
}

// onBind notes which portals run checked statements, with the bound values
// the stale error's detail needs.
func (s *session) onBind() error {
	msg, err := s.cr.next()
	if err != nil {
		return err
	}
	g := s.guard
	s.queue.push(pending{kind: pendBind})
	portal, rest, ok := cstringBytes(msg[5:])
	var stmtName []byte
	if ok {
		stmtName, _, ok = cstringBytes(rest)
	}
	if !ok {
		return protoErrorf("Bind: missing string terminator")
	}
	prep := g.stmts[unsafeString(stmtName)]
	if prep == nil {
		if len(g.portals) > 0 {
			delete(g.portals, unsafeString(portal))
		}
		_, err = s.sw.Write(msg)
		return err
	}
	var b pgproto3.Bind
	if err := b.Decode(msg[5:]); err != nil {
		return protoErrorf("Bind: %v", err)
	}
	arg := func(n int) (string, bool) {
		if n < 1 || n > len(b.Parameters) {
			return "", false
		}
		binaryFormat := false
		switch len(b.ParameterFormatCodes) {
		case 0:
		case 1:
			binaryFormat = b.ParameterFormatCodes[0] == 1
		default:
			if n <= len(b.ParameterFormatCodes) {
				binaryFormat = b.ParameterFormatCodes[n-1] == 1
			}
		}
		var oid uint32
		if n <= len(prep.oids) {
			oid = prep.oids[n-1]
		}
		return decodeParam(b.Parameters[n-1], binaryFormat, oid)
	}
	bp := &boundPortal{stmt: prep.plan}
	if prep.plan.Checked {
		bp.detail = resolveDetail(prep.plan, arg)
	}
	g.portals[b.DestinationPortal] = bp
	_, err = s.sw.Write(msg)
	return err
}

// onExecute runs a checked portal and holds the client until its outcome is
// known; a refused one is replaced by the refusal.
func (s *session) onExecute() error {
	msg, err := s.cr.next()
	if err != nil {
		return err
	}
	g := s.guard
	portal, _, ok := cstringBytes(msg[5:])
	if !ok {
		return protoErrorf("Execute: missing string terminator")
	}
	bp := g.portals[unsafeString(portal)]
	switch {
	case bp == nil || (!bp.stmt.Checked && !bp.stmt.Refuse):
		s.queue.push(pending{kind: pendExecute})
		_, err = s.sw.Write(msg)
		return err
	case bp.stmt.Refuse:
		s.srv.metrics.refused(bp.stmt.Policy)
		return s.raiseInPipeline("pgoptimist_raise", requiredSQL(bp.stmt.Policy, g.requiredCode))
	}
	c := newCheck(bp.stmt, bp.detail)
	s.queue.push(pending{kind: pendExecute, check: c})
	if _, err := s.sw.Write(msg); err != nil {
		return err
	}
	if err := s.write(&pgproto3.Flush{}); err != nil {
		return err
	}
	out, err := s.wait(c)
	if err != nil || out != outcomeStale {
		return err
	}
	s.srv.metrics.stale(bp.stmt.Policy)
	return s.raiseInPipeline("pgoptimist_raise", staleSQL(bp.stmt.Policy, c.detail, g.staleCode))
}

// onClose forgets closed guarded statements and portals.
func (s *session) onClose() error {
	msg, err := s.cr.next()
	if err != nil {
		return err
	}
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
	_, err = s.sw.Write(msg)
	return err
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
