package proxy

import (
	"encoding/binary"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Handlers of the client frames the guard needs to see: Query, Parse, Bind,
// Execute and Close. They run only while the session has guarded tables
// (Bind, Execute and Close only while it has guarded statements), write
// what the server should get into sout, and may hold the client's later
// frames until a checked statement's outcome is known.

// nul terminates the strings of a message.
var nul = []byte{0}

// unsafeBytes views s as bytes for a call that only reads them.
func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

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
	s.checks.hold()
}

// onQuery handles a simple Query.
func (s *session) onQuery(msg []byte) error {
	body := frameBody(msg)
	if len(body) == 0 || body[len(body)-1] != 0 {
		return protoErrorf("Query message without a string terminator")
	}
	sql := body[:len(body)-1]
	if vs := s.guard.store; vs != nil {
		vs.noteCommand(unsafeString(sql))
	}
	changes := rewrite.MayChangeResolution(unsafeString(sql))
	err := s.guardQuery(msg, sql, changes)
	if changes {
		s.guard.res.changed()
	}
	return err
}

// guardQuery sends a simple Query on, planned when it may touch a guarded
// table, and checked or refused as its plan says.
// changes: the text may change name resolution (MayChangeResolution).
func (s *session) guardQuery(msg, sql []byte, changes bool) error {
	g := s.guard
	g.forgetStatement("") // a simple query replaces the unnamed statement
	// A query run alone in its own implicit transaction: what its reads
	// would capture is forgotten when it completes, before any write
	// could use it, when its tables are transaction-scoped.
	alone := g.store != nil && s.idle()
	var needsPlan bool
	if alone && !g.store.anySessionScope {
		needsPlan = g.rw.NeedsPlanUncaptured(unsafeString(sql))
	} else {
		needsPlan = g.rw.NeedsPlan(unsafeString(sql))
	}
	if s.queue.skipping || !needsPlan {
		return s.forwardQuery(msg)
	}
	plan, reject := g.plan(unsafeString(sql)) // the rewriter copies what it keeps
	if plan == nil {
		if reject != "" {
			s.queue.push(pending{kind: pendQuery, answer: answerRaise})
			return s.send(&pgproto3.Query{String: reject})
		}
		return s.forwardQuery(msg)
	}
	if alone && len(plan.Statements) == 1 && g.store.forgottenAtOnce(&plan.Statements[0]) {
		// Likewise for a read the text alone does not show to be one
		// (a WITH in front), or when some tracked tables are
		// session-scoped but this read captures none of them.
		return s.forwardQuery(msg)
	}
	if len(plan.Statements) > 1 && changes {
		// A statement of this query may change what the names of the
		// statements after it resolve to: each of those is planned when
		// its turn comes, after asking the server (continuePipeline).
		if base, err := g.rw.Plan(unsafeString(sql), rewrite.ExactPath(nil)); err == nil && laterNeedsPlan(g, base) {
			delete(g.stmts, "")
			delete(g.portals, "")
			t := &translation{plan: base, acts: make([]action, len(base.Statements)), dynamic: true}
			t.ov.g = g
			t.srcs = prepareSources(unsafeString(sql), base, true)
			first := prepOverlay{g: g} // each statement is planned again in its turn, under t.ov
			for i := range base.Statements {
				t.acts[i] = s.planStatement(&base.Statements[i], &first, sourceAt(t.srcs, i))
			}
			return s.continuePipeline(t)
		}
	}

	// What each statement needs at run time: a check, a refusal, or nothing.
	acts := make([]action, len(plan.Statements))
	need, rewritten := false, false
	ov := prepOverlay{g: g}
	srcs := prepareSources(unsafeString(sql), plan, false)
	for i := range plan.Statements {
		acts[i] = s.planStatement(&plan.Statements[i], &ov, sourceAt(srcs, i))
		need = need || acts[i].refuse || acts[i].check || acts[i].refresh != nil
		rewritten = rewritten || acts[i].sql != ""
	}
	if !need {
		s.pushPrep(pending{kind: pendQuery, track: querySet(acts), prep: queryPrep(acts)})
		if !plan.Changed && !rewritten {
			s.sout.append(msg...)
			return nil
		}
		return s.send(&pgproto3.Query{String: sqlOf(plan, acts)})
	}
	// A single statement goes as it is, unless its zero-row run could
	// write something that the implicit transaction would commit before the
	// stale error is raised: then it runs as a pipeline like several do.
	if len(plan.Statements) == 1 && acts[0].refresh == nil && s.emptyRunCommitsNothing(g.quietWhenEmpty(acts[0].stmt)) {
		a := acts[0]
		if a.refuse {
			s.srv.metrics.refused(a.stmt.Policy)
			s.queue.push(pending{kind: pendQuery, answer: answerRaise})
			return s.send(&pgproto3.Query{String: requiredSQL(a.stmt.Policy, g.requiredCode)})
		}
		c := s.checks.start(checkSimple, a.stmt)
		c.source = a.source
		if err := s.send(&pgproto3.Query{String: sqlOf(plan, acts)}); err != nil {
			return err
		}
		s.check(pending{kind: pendQuery, check: c, track: querySet(acts)}) // one statement, checked: no PREPARE
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
	sql    string             // the text to send, when not stmt's own: with the version read, or a PREPARE or EXECUTE with the injected parameter
	run    *trackRun          // tracked mode: its result and write, followed
	exec   *prepared          // an EXECUTE's (also wrapped) prepared statement, if guarded
	prep   prepEffect         // what it does to the prepared statements, once done
	// An EXECUTE's prepared statement to prepare again first, under the
	// current resolution (refreshPrepared): it runs as a pipeline.
	refresh *refresh
}

// actionFor is what a planned statement needs at run time: a check, a
// refusal, or nothing. An EXECUTE takes its prepared statement's plan, the
// prepared statements being as ov says.
func (g *sessionGuard) actionFor(st *rewrite.Statement, ov *prepOverlay) action {
	eff := st
	var exec *prepared
	if st.ExecuteName != "" {
		exec = ov.lookup(st.ExecuteName)
		if exec != nil && st.Kind == rewrite.KindExecute {
			eff = exec.plan
		}
	}
	a := action{stmt: eff, refuse: eff.Refuse, exec: exec}
	if eff.Checked {
		a.source, a.check = st, true
	}
	return a
}

// laterNeedsPlan reports whether a statement after the first of a plan
// made without resolving any name would be planned.
func laterNeedsPlan(g *sessionGuard, base *rewrite.Plan) bool {
	for i := 1; i < len(base.Statements); i++ {
		if base.Statements[i].Policy == nil && g.rw.NeedsPlan(base.Statements[i].SQL) {
			return true
		}
	}
	return false
}

// translation is a multi-statement simple query being run as a pipeline.
type translation struct {
	plan *rewrite.Plan
	acts []action
	next int
	// dynamic: plan holds the statements as written (planned without
	// resolving a name); each that names a guarded table unqualified is
	// planned when its turn comes, under the resolution in force then.
	dynamic bool
	ov      prepOverlay // dynamic: the prepared statements as the next statement sees them
	srcs    []string    // dynamic: the statements' texts as written, when one is a PREPARE
}

// forwardQuery sends a simple query on as the client wrote it, unguarded.
func (s *session) forwardQuery(msg []byte) error {
	s.queue.push(pending{kind: pendQuery})
	s.sout.append(msg...)
	return nil
}

// planInTurn plans statement i of a dynamic translation under the current
// resolution. It reports false when the server must be asked first (the
// pipeline then goes on when the answer is in), and the refusal statement
// of on_parse_error: reject, if any.
func (s *session) planInTurn(t *translation, i int) (bool, string) {
	g := s.guard
	src := t.plan.Statements[i].SQL
	if t.plan.Statements[i].Policy != nil || !g.rw.NeedsPlan(src) {
		return true, ""
	}
	if g.res.unsure && (g.db == nil || g.db.resolveSQL == "") {
		g.res.unsure = false // nothing to ask about (a session guard made by hand, in tests)
	}
	if g.res.unsure {
		if !g.res.pending {
			g.res.pending = true
			s.askOwn(&ownQuery{sql: g.db.resolveSQL, extended: true, onRow: s.onResolution, done: func(err error) {
				s.resolutionDone(err)
				if err := s.continuePipeline(t); err != nil {
					s.end(err)
				}
			}})
		}
		return false, ""
	}
	p, reject := g.plan(src)
	if p == nil {
		return true, reject
	}
	if len(p.Statements) == 1 {
		t.plan.Statements[i] = p.Statements[0]
		t.acts[i] = s.planStatement(&t.plan.Statements[i], &t.ov, sourceAt(t.srcs, i))
	}
	return true, ""
}

// continuePipeline sends the translated query's statements from t.next on,
// up to the next checked one, or to the end and the closing Sync.
func (s *session) continuePipeline(t *translation) error {
	g := s.guard
	for t.next < len(t.acts) {
		i := t.next
		if t.dynamic {
			ready, reject := s.planInTurn(t, i)
			if !ready {
				return nil
			}
			if reject != "" {
				t.next = len(t.acts)
				if err := s.raiseInPipeline("", reject); err != nil {
					return err
				}
				break
			}
		}
		t.next++
		a := t.acts[i]
		if a.refresh != nil {
			if err := s.sendRefresh(a.refresh, ""); err != nil {
				return err
			}
		}
		if a.refuse {
			s.srv.metrics.refused(a.stmt.Policy)
			if err := s.raiseInPipeline("", requiredSQL(a.stmt.Policy, g.requiredCode)); err != nil {
				return err
			}
			break
		}
		sql, ts := t.plan.Statements[i].SQL, oneSet(a.run, describePipeline)
		if a.sql != "" {
			sql = a.sql
		}
		s.queue.push(pending{kind: pendParse, answer: answerProxy})
		s.queue.push(pending{kind: pendBind, answer: answerProxy})
		s.queue.push(pending{kind: pendDescribe, answer: answerProxy, track: ts})
		if err := s.send(&pgproto3.Parse{Query: sql}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: targetPortal}, &pgproto3.Execute{}); err != nil {
			return err
		}
		if t.dynamic && rewrite.MayChangeResolution(t.plan.Statements[i].SQL) {
			g.res.changed()
		}
		if !a.check {
			s.pushPrep(pending{kind: pendExecute, track: ts, prep: onePrep(a.prep)})
			continue
		}
		c := s.checks.start(checkPipeline, a.stmt)
		c.source, c.pipeline = a.source, t
		if err := s.send(&pgproto3.Flush{}); err != nil {
			return err
		}
		s.check(pending{kind: pendExecute, check: c, track: ts})
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
		s.queue.push(pending{kind: pendClose, answer: answerProxy})
		s.queue.push(pending{kind: pendClose, answer: answerProxy})
		if err := s.send(&pgproto3.Close{ObjectType: targetStatement, Name: name}, &pgproto3.Close{ObjectType: targetPortal, Name: name}); err != nil {
			return err
		}
	}
	return s.runOwnStatement(name, sql, pending{kind: pendExecute, answer: answerRaise})
}

// runOwnStatement runs sql, a statement of the proxy's, through the
// statement and portal name ("": the unnamed ones): Parse, Bind and
// Execute, whose pending entry is ex. A named statement is closed again
// before its portal runs (the portal keeps what it needs), so that none of
// the proxy's stays in the session's pg_prepared_statements should it
// fail; the portal ends with the transaction.
func (s *session) runOwnStatement(name, sql string, ex pending) error {
	s.queue.push(pending{kind: pendParse, answer: answerProxy})
	s.queue.push(pending{kind: pendBind, answer: answerProxy})
	if err := s.send(&pgproto3.Parse{Name: name, Query: sql}, &pgproto3.Bind{DestinationPortal: name, PreparedStatement: name}); err != nil {
		return err
	}
	if name != "" {
		s.queue.push(pending{kind: pendClose, answer: answerProxy})
		if err := s.send(&pgproto3.Close{ObjectType: targetStatement, Name: name}); err != nil {
			return err
		}
	}
	s.pushPrep(ex)
	return s.send(&pgproto3.Execute{Portal: name})
}

// onParse rewrites a guarded statement being prepared and remembers its plan
// under the statement's name. after is the client's input after the Parse.
func (s *session) onParse(msg, after []byte) error {
	// Decoded in place: most Parse messages of a guarded session are not
	// guarded and go on as they came, without a copy.
	name, rest, ok := cstringBytes(frameBody(msg))
	var query, tail []byte
	if ok {
		query, tail, ok = cstringBytes(rest)
	}
	if !ok || len(tail) < 2 {
		return protoErrorf("Parse: malformed message")
	}
	nOids := int(binary.BigEndian.Uint16(tail)) // unsigned, as PostgreSQL reads it
	if len(tail) != 2+4*nOids {
		return protoErrorf("Parse: malformed parameter types")
	}
	g := s.guard
	alone := notAlone
	if len(name) == 0 {
		g.alone.set = false
		if g.store != nil && s.batchOpensIdle() {
			alone = aloneAfterParse(after)
		}
	}
	if rewrite.MayChangeResolution(unsafeString(query)) {
		// Noted when prepared, and again at each execution (onExecute).
		g.res.changed()
		g.changers[string(name)] = struct{}{}
	} else if len(g.changers) > 0 {
		delete(g.changers, unsafeString(name))
	}
	sql, sendTail, asIs := s.planParse(name, query, tail, nOids, alone)
	s.queue.push(pending{kind: pendParse, aloneRead: g.alone.set && len(name) == 0})
	if asIs {
		s.sout.append(msg...)
	} else {
		s.appendParse(name, sql, sendTail)
	}
	if len(name) > 0 {
		g.rememberText(name, query, tail, sql, asIs)
	}
	return nil
}

// planParse plans a statement being prepared under name and records what
// the guard must know of it. It says what the server must be sent: the
// text as the client wrote it (asIs), or sql with the parameter types
// sendTail. alone: how the unnamed statement is run, as far as the
// client's input shows (aloneread.go).
func (s *session) planParse(name, query, tail []byte, nOids int, alone aloneShape) (sql string, sendTail []byte, asIs bool) {
	g := s.guard
	prev := g.stmts[unsafeString(name)]
	if prev != nil {
		delete(g.stmts, unsafeString(name))
	}
	if !g.rw.NeedsPlan(unsafeString(query)) {
		return "", nil, true
	}
	if alone != notAlone && !g.store.anySessionScope && rewrite.ReadOnly(unsafeString(query)) {
		// A read run alone: what it would capture is forgotten at once.
		g.alone.keep(query, tail, alone == aloneBound)
		return "", nil, true
	}
	plan, reject := g.plan(unsafeString(query)) // the rewriter copies what it keeps
	if plan == nil && reject != "" {
		// Prepare the refusal in its place: executing it raises the error.
		return reject, []byte{0, 0}, false
	}
	if plan == nil || len(plan.Statements) != 1 {
		return "", nil, true
	}
	st := &plan.Statements[0]
	if alone != notAlone && g.store.forgottenAtOnce(st) {
		// Likewise for a read the text alone does not show to be one.
		g.alone.keep(query, tail, alone == aloneBound)
		return "", nil, true
	}
	if e := g.prepEffectOf(st, unsafeString(query)); e.op != prepNone {
		// PREPARE, DEALLOCATE, DISCARD ALL in a Parse: followed when an
		// Execute of it completes, as in a simple query.
		g.stmts[string(name)] = &prepared{plan: &rewrite.Statement{SQL: st.SQL, Kind: st.Kind, Command: st.Command}, effect: e}
		if e.prep != nil && e.prep.injected {
			s.srv.metrics.rewritten.Add(1)
			return e.prep.plan.Inject.SQL, tail, false
		}
		if !plan.Changed {
			return "", nil, true
		}
		s.srv.metrics.rewritten.Add(1)
		return plan.SQL, tail, false
	}
	if sql, rec, ok := s.planExecuteParse(st); ok {
		if rec != nil {
			g.stmts[string(name)] = rec
		}
		if sql == "" {
			return "", nil, true
		}
		return sql, []byte{0, 0}, false
	}
	if st.Policy != nil || g.store != nil && needsTracking(st) {
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
		e.injected = g.store != nil && injectParse(st, nOids)
		g.stmts[key] = e
		if e.injected {
			// Prepared with the injected parameter, typed by the server.
			s.srv.metrics.rewritten.Add(1)
			return st.Inject.SQL, injectTail(tail, st.Inject.Param), false
		}
	}
	if !plan.Changed {
		return "", nil, true
	}
	s.srv.metrics.rewritten.Add(1)
	return plan.SQL, tail, false
}

// replanAtBind prepares a named statement again before it is bound, when it
// was prepared under plans that may be wrong now (a reload changed the
// policies, or the session's names resolve elsewhere: PostgreSQL itself
// re-plans a prepared statement whose search_path changed). The proxy does
// it only when what the server must hold differs, and only where nothing
// is in flight and the transaction is not failed (a failed Parse after the
// Close would lose the client's statement); otherwise it tries again at
// the next Bind.
func (s *session) replanAtBind(name []byte) {
	g := s.guard
	t := g.texts[unsafeString(name)]
	if t == nil {
		delete(g.staleTexts, unsafeString(name))
		return
	}
	if s.queue.len() > 0 || s.txStatus == txFailed {
		return
	}
	delete(g.staleTexts, t.name)
	sql, sendTail, asIs := s.planParse(name, []byte(t.query), t.tail, (len(t.tail)-2)/4, notAlone)
	if asIs {
		sql, sendTail = t.query, t.tail
	}
	t.epoch = g.epoch
	if sql == t.sent {
		return
	}
	t.sent = sql
	s.prepareAgain(name, sql, sendTail)
}

// prepareAgain replaces the server's statement name with sql before the
// client's next message: the proxy's own Close (a Parse replaces the
// unnamed statement by itself) and Parse, whose answers the client does
// not see.
func (s *session) prepareAgain(name []byte, sql string, tail []byte) {
	if len(name) > 0 {
		s.queue.push(pending{kind: pendClose, answer: answerProxy})
		_ = s.send(&pgproto3.Close{ObjectType: targetStatement, Name: string(name)})
	}
	s.queue.push(pending{kind: pendParse, answer: answerProxy})
	s.appendParse(name, sql, tail)
}

// appendParse writes a Parse message for the server: the client's name and
// parameter types (tail) around another statement text.
func (s *session) appendParse(name []byte, sql string, tail []byte) {
	s.sout.b = appendFrame(s.sout.b, byte(msgParse), name, nul, unsafeBytes(sql), nul, tail)
}

// onBind notes which portals run checked statements, with the bound values
// the stale error's detail needs. rest is the client's input after the
// Bind.
func (s *session) onBind(msg, rest []byte) error {
	g := s.guard
	portal, body, ok := cstringBytes(frameBody(msg))
	var stmtName []byte
	if ok {
		stmtName, body, ok = cstringBytes(body)
	}
	var prep *prepared
	if ok {
		if len(stmtName) == 0 && g.alone.set {
			s.bindAloneRead(portal, rest)
		}
		if len(g.staleTexts) > 0 {
			if _, stale := g.staleTexts[unsafeString(stmtName)]; stale {
				s.replanAtBind(stmtName)
			}
		}
		prep = g.stmts[unsafeString(stmtName)]
		if prep != nil && prep.execute != nil {
			prep = s.rebakeExecute(stmtName, prep) // before the Bind, which it may prepare again
		} else if prep != nil && prep.source != "" {
			prep = s.refreshAtBind(stmtName, prep)
		}
	}
	s.queue.push(pending{kind: pendBind})
	if !ok {
		return protoErrorf("Bind: missing string terminator")
	}
	if len(g.changers) > 0 || len(g.changerPortals) > 0 {
		if _, ok := g.changers[unsafeString(stmtName)]; ok {
			g.changerPortals[string(portal)] = struct{}{}
		} else {
			delete(g.changerPortals, unsafeString(portal))
		}
	}
	if prep == nil {
		if len(g.portals) > 0 {
			delete(g.portals, unsafeString(portal))
		}
		s.sout.append(msg...)
		return nil
	}
	if !validBind(body) {
		return protoErrorf("Bind: malformed parameters")
	}
	name := unsafeString(portal)
	bp := g.portals[name]
	if bp == nil {
		bp = &boundPortal{}
		g.portals[string(portal)] = bp
	}
	bp.stmt, bp.oids, bp.quietWhenEmpty = prep.plan, prep.oids, prep.quietWhenEmpty
	bp.run, bp.described, bp.effect = nil, false, prep.effect
	if g.store != nil && needsTracking(prep.plan) {
		msg, bp.stmt, bp.run = s.trackBind(prep, msg)
		bp.described = bp.run == nil || textResults(body)
		msg = withHiddenFormats(msg, len(prep.plan.Hidden))
	} else if prep.injected {
		// Nothing is tracked any more (a reload): the server's statement
		// still has the injected parameter, which gets NULL.
		msg = bindNullInjected(prep, msg)
	}
	if bp.stmt.Checked {
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
		v := int(binary.BigEndian.Uint16(b)) // unsigned, as PostgreSQL reads it
		b = b[2:]
		return v, true
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
	portal, _, ok := cstringBytes(frameBody(msg))
	if !ok {
		return 0, protoErrorf("Execute: missing string terminator")
	}
	if _, ok := g.changerPortals[unsafeString(portal)]; ok {
		g.res.changed() // it may change the resolution: asked again before the next plan
	}
	bp := g.portals[unsafeString(portal)]
	var ts *trackSet
	if bp != nil && bp.run != nil && !bp.stmt.Refuse {
		if err := s.ownDescribe(bp, portal); err != nil {
			return 0, err
		}
		ts = oneSet(bp.run, describeClient)
	}
	switch {
	case bp == nil || (!bp.stmt.Checked && !bp.stmt.Refuse):
		var pe *prepEffects
		if bp != nil {
			pe = onePrep(bp.effect)
		}
		s.pushPrep(pending{kind: pendExecute, track: ts, prep: pe})
		s.sout.append(msg...)
		return 0, nil
	case bp.stmt.Refuse:
		if s.queue.skipping {
			return 0, nil // the server would skip it
		}
		s.srv.metrics.refused(bp.stmt.Policy)
		return 0, s.raiseInPipeline(raiseName, requiredSQL(bp.stmt.Policy, g.requiredCode))
	}
	if s.syncAhead(bp, rest) {
		// The common shape, Execute then Sync with nothing else in the
		// batch: both go at once, and a zero-row result becomes the error
		// right after the Sync, replacing its ReadyForQuery. That saves a
		// round trip to the server, and is exact because the Sync either
		// ends an explicit transaction's cycle without committing, or
		// commits an implicit transaction whose only statement changed
		// nothing (syncAhead checks which).
		c := s.checks.start(checkSyncAhead, bp.stmt)
		c.portal = bp
		s.sout.append(msg...)
		s.sout.append(syncFrame...)
		s.check(pending{kind: pendExecute, check: c, track: ts})
		s.queue.push(pending{kind: pendSync})
		return len(syncFrame), nil
	}
	c := s.checks.start(checkHeld, bp.stmt)
	c.portal = bp
	s.sout.append(msg...)
	if err := s.send(&pgproto3.Flush{}); err != nil {
		return 0, err
	}
	s.check(pending{kind: pendExecute, check: c, track: ts})
	return 0, nil
}

// syncAhead reports whether a checked Execute may go to the server together
// with the Sync that follows it: the Sync is already here, nothing else is
// in flight, and the Sync cannot commit anything the stale error should
// have rolled back. Inside a transaction block a Sync commits nothing; in
// an implicit transaction it commits only this statement, which is fine
// when a zero-row run of it writes nothing: no data-modifying CTE, no
// statement-level trigger or rule on the table.
func (s *session) syncAhead(bp *boundPortal, rest []byte) bool {
	if !isSyncFrame(rest) {
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
	return s.txStatus == txInBlock || s.txStatus == txIdle && quietWhenEmpty
}

// onClose forgets closed guarded statements and portals.
func (s *session) onClose(msg []byte) error {
	s.queue.push(pending{kind: pendClose})
	if len(msg) >= 7 {
		if name, _, ok := cstringBytes(msg[6:]); ok {
			switch frameBody(msg)[0] {
			case targetStatement:
				s.guard.forgetStatement(unsafeString(name))
			case targetPortal:
				delete(s.guard.portals, unsafeString(name))
				delete(s.guard.changerPortals, unsafeString(name))
			}
		}
	}
	s.sout.append(msg...)
	return nil
}
