package proxy

import (
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// SQL-level prepared statements: PREPARE, EXECUTE, DEALLOCATE and DISCARD
// ALL sent as SQL. What a PREPARE, DEALLOCATE or DISCARD ALL does to the
// session's prepared statements is applied when the server reports it done
// (its CommandComplete): a PREPARE that fails (the name is taken, the
// transaction is aborted) leaves the server's statement of that name as it
// was, and so must it leave the proxy's record. Statements later in the
// same simple query see the effects of the earlier ones at once (an
// overlay): if an earlier one fails, the later ones do not run.
//
// In tracked and required modes a PREPARE of a write that can carry the
// version read is sent in its Inject form: the server's statement has one
// parameter more than the client gave it, and every way an EXECUTE of it
// reaches the server must supply it (injectExecute), whatever happened in
// between (a reload that changed the policies): the record keeps the plan
// the statement was prepared under. When the session's names come to
// resolve otherwise, the statement is prepared again before it next runs,
// as PostgreSQL analyzes it again (refreshPrepared).

// prepOp is what a statement does to the prepared statements.
type prepOp uint8

const (
	prepNone       prepOp = iota
	prepSet               // PREPARE name: the record is prep (nil: none needed)
	prepDrop              // DEALLOCATE name
	prepDropAll           // DEALLOCATE ALL
	prepDiscardAll        // DISCARD ALL: also what the session read
)

// prepEffect is what one statement does to the prepared statements once
// the server has run it.
type prepEffect struct {
	op   prepOp
	name string
	prep *prepared
}

// prepEffects are the effects of a request's statements: one per
// statement of a simple query, in order, or the one of a pipeline's
// Execute; i is the statement whose CommandComplete comes next.
type prepEffects struct {
	list []prepEffect
	i    int
	done bool // its request has left the response queue
}

// prepEffectOf is what st will do to the prepared statements; source is
// st's text as the client wrote it ("": not known), kept with a guarded
// PREPARE's record.
func (g *sessionGuard) prepEffectOf(st *rewrite.Statement, source string) prepEffect {
	switch st.Kind {
	case rewrite.KindPrepare:
		e := prepEffect{op: prepSet, name: st.PrepareName}
		in := st.Inner
		if in == nil || in.Policy == nil && (g.store == nil || !needsTracking(in)) {
			return e
		}
		e.prep = &prepared{plan: in, quietWhenEmpty: g.quietWhenEmpty(in), sent: st.SQL}
		if g.store != nil && st.Inject != nil && in.Inject != nil {
			// Sent in its Inject form: the plan's Inject.Param is the
			// parameter the server's statement has beyond the client's.
			cp := *in
			cp.Inject = &rewrite.Injection{Param: st.Inject.Param, Type: st.Inject.Type, SQL: st.Inject.SQL}
			e.prep.plan, e.prep.injected = &cp, true
			e.prep.sent = st.Inject.SQL
		}
		if source != "" {
			// The server holds the text as the proxy planned it, which
			// PostgreSQL would analyze again under another search_path.
			e.prep.source, e.prep.path = strings.Clone(source), g.res.path
		}
		return e
	case rewrite.KindDeallocate:
		if st.DeallocateAll {
			return prepEffect{op: prepDropAll}
		}
		return prepEffect{op: prepDrop, name: st.DeallocateName}
	case rewrite.KindDiscard:
		if st.Discard == rewrite.DiscardAll { // DISCARD PLANS keeps prepared statements
			return prepEffect{op: prepDiscardAll}
		}
	}
	return prepEffect{}
}

// applyPrep makes a completed statement's effect the session's.
func (g *sessionGuard) applyPrep(e prepEffect) {
	switch e.op {
	case prepSet:
		if e.prep != nil {
			g.stmts[e.name] = e.prep
		} else {
			delete(g.stmts, e.name)
		}
	case prepDrop:
		g.forgetStatement(e.name)
	case prepDropAll, prepDiscardAll:
		clear(g.stmts)
		clear(g.changers)
		g.forgetTexts()
		if e.op == prepDiscardAll && g.store != nil {
			// A pooler handing the connection to another client: what
			// this one read is not the next one's.
			g.store.forgetAll()
		}
	}
}

// onPrepComplete applies the effect of the statement a CommandComplete (or
// EmptyQueryResponse, PortalSuspended) ends.
func (s *session) onPrepComplete(p pending, msg []byte) {
	pe := p.prep
	if pe.i >= len(pe.list) {
		return
	}
	e := pe.list[pe.i]
	pe.i++ // a simple query's next completion ends its next statement
	if serverMsg(msg[0]) == msgCommandComplete && e.op != prepNone && s.guard != nil {
		s.guard.applyPrep(e)
	}
}

// prepOverlay is the prepared statements as the statements of one simple
// query see them: the session's, changed by the earlier statements.
type prepOverlay struct {
	g   *sessionGuard
	m   map[string]*prepared
	all bool // DEALLOCATE ALL or DISCARD ALL came earlier
}

func (ov *prepOverlay) lookup(name string) *prepared {
	if p, ok := ov.m[name]; ok {
		return p
	}
	if ov.all {
		return nil
	}
	return ov.g.prepared(name)
}

// prepared is the session's prepared statement name as the server will
// hold it once the requests in flight have run: their effects not yet
// applied count, the latest first (a client may send the next simple query
// before the answer to the one that prepares a statement).
func (g *sessionGuard) prepared(name string) *prepared {
	for i := len(g.inflight) - 1; i >= 0; i-- {
		pe := g.inflight[i]
		if pe.done {
			continue
		}
		for j := len(pe.list) - 1; j >= pe.i; j-- {
			switch e := pe.list[j]; e.op {
			case prepSet, prepDrop:
				if e.name == name {
					return e.prep
				}
			case prepDropAll, prepDiscardAll:
				return nil
			}
		}
	}
	return g.stmts[name]
}

// pushPrep queues a request whose statements may prepare or drop
// statements, and keeps their effects in flight until it is answered.
func (s *session) pushPrep(p pending) {
	if !s.queue.push(p) || p.prep == nil {
		return
	}
	g := s.guard
	g.inflight = slices.DeleteFunc(g.inflight, func(pe *prepEffects) bool { return pe.done })
	g.inflight = append(g.inflight, p.prep)
}

func (ov *prepOverlay) apply(e prepEffect) {
	switch e.op {
	case prepSet, prepDrop:
		if ov.m == nil {
			ov.m = make(map[string]*prepared)
		}
		ov.m[e.name] = e.prep
	case prepDropAll, prepDiscardAll:
		ov.all = true
		clear(ov.m)
	}
}

// queryPrep is the prepEffects of a simple query's statements, nil
// when none has one.
func queryPrep(acts []action) *prepEffects {
	for i := range acts {
		if acts[i].prep.op != prepNone {
			list := make([]prepEffect, len(acts))
			for j := range acts {
				list[j] = acts[j].prep
			}
			return &prepEffects{list: list}
		}
	}
	return nil
}

// onePrep is the prepEffects of one statement run in a pipeline.
func onePrep(e prepEffect) *prepEffects {
	if e.op == prepNone {
		return nil
	}
	return &prepEffects{list: []prepEffect{e}}
}

// planStatement is what one statement of a simple query needs at run time,
// the prepared statements being as ov says; its own effect on them is
// added to ov. src is the statement's text as the client wrote it ("":
// not known). An EXECUTE of a statement to prepare again first
// (refreshPrepared) runs it as it will be then.
func (s *session) planStatement(st *rewrite.Statement, ov *prepOverlay, src string) action {
	g := s.guard
	var refresh *refresh
	if st.ExecuteName != "" {
		if refresh = s.refreshPrepared(st.ExecuteName, ov.lookup(st.ExecuteName)); refresh != nil {
			ov.apply(prepEffect{op: prepSet, name: st.ExecuteName, prep: refresh.rec})
		}
	}
	a := g.actionFor(st, ov)
	a.refresh = refresh
	if g.store != nil {
		s.trackAction(&a, st)
	}
	s.injectExecute(&a, st)
	a.prep = g.prepEffectOf(st, src)
	if a.prep.prep != nil && a.prep.prep.injected {
		a.sql = a.prep.prep.plan.Inject.SQL
		s.srv.metrics.rewritten.Add(1)
	}
	ov.apply(a.prep)
	return a
}

// injectExecute completes the action of an EXECUTE (alone, or inside
// EXPLAIN or CREATE TABLE AS) of a statement prepared with the injected
// parameter: it is sent with one more argument, the version the session
// remembers for the key its arguments pin (then checked), or NULL
// (unchecked, and refused in required mode). EXPLAIN ANALYZE runs the
// statement but its command tag cannot be checked: NULL, refused in
// required mode, and the table's remembered rows forgotten when it wrote;
// EXPLAIN does not run it, and CREATE TABLE AS is refused by the server
// (not a SELECT): NULL, so that the client gets the server's own answer.
func (s *session) injectExecute(a *action, src *rewrite.Statement) {
	prep := a.exec
	if prep == nil || !prep.injected || src.ExecuteName == "" {
		return
	}
	g := s.guard
	st := prep.plan
	a.sql = src.ExecuteWithExpected("", true)
	s.srv.metrics.rewritten.Add(1)
	switch src.ExecuteWrapped {
	case rewrite.WrapNone:
	case rewrite.WrapExplainAnalyze:
		if st.Refuse {
			a.stmt, a.refuse = st, true
			return
		}
		if g.store != nil {
			cp := *st // its rows cannot be named: the table is forgotten
			cp.Keys, cp.Captures, cp.Hidden, cp.Inject, cp.NewVersion = nil, nil, nil, nil, rewrite.NewVersionNone
			a.stmt, a.run = &cp, &trackRun{st: &cp, store: g.store, write: true}
		}
		return
	default:
		return
	}
	if g.store == nil || a.check {
		return
	}
	key, ok := writeKey(st, executeArgs(src))
	if !ok {
		return
	}
	v, ok := g.store.lookup(unsafeString(g.store.rowKey(st.Policy.QualifiedName(), key)))
	if !ok {
		return
	}
	cp := *st
	cp.Checked, cp.Refuse = true, false
	cp.Expected = rewrite.Value{Kind: rewrite.ValueLiteral, Literal: v}
	a.stmt, a.source, a.check, a.refuse = &cp, src, true, false
	a.sql = src.ExecuteWithExpected(v, false)
	if a.run != nil {
		a.run.st, a.run.expected, a.run.hasExpected = &cp, v, true
	}
}

// planExecuteParse plans a Parse of an EXECUTE of a guarded statement,
// which runs as the simple query EXECUTE does: checked or refused as its
// prepared statement's plan says, with the values of its arguments. Of a
// statement prepared with the injected parameter, the EXECUTE (alone or
// wrapped) is prepared with the extra argument as a literal (an EXECUTE
// cannot take a parameter of the extended protocol): the version
// remembered when it is prepared; each Bind of it prepares it again when
// that version has changed (rebakeExecute). It returns the text to
// prepare ("": the client's), and the record to keep under the
// statement's name (nil: none needed), or ok false when st is no such
// EXECUTE.
func (s *session) planExecuteParse(st *rewrite.Statement) (sql string, rec *prepared, ok bool) {
	g := s.guard
	if st.ExecuteName == "" {
		return "", nil, false
	}
	target := g.prepared(st.ExecuteName)
	if target == nil {
		return "", nil, false
	}
	if !target.injected && (st.Kind != rewrite.KindExecute || target.plan.Policy == nil) {
		if target.source == "" {
			return "", nil, false
		}
		// Not guarded under the names as they resolve now, but prepared
		// again when they resolve otherwise: each Bind looks again.
		return "", &prepared{plan: st, execute: st, sent: st.SQL, target: target}, true
	}
	a := action{exec: target, stmt: st}
	if st.Kind == rewrite.KindExecute {
		a.stmt, a.refuse = target.plan, target.plan.Refuse
		if g.store != nil {
			a.run = g.newRun(a.stmt)
		}
	}
	s.injectExecute(&a, st)
	if st.Kind != rewrite.KindExecute && a.run == nil && !a.refuse {
		if target.source != "" {
			return a.sql, &prepared{plan: st, execute: st, sent: a.sql, target: target}, true
		}
		return a.sql, nil, true
	}
	// The statement run, its key values taken from the EXECUTE's arguments
	// (a Bind gives none of its own).
	cp := *a.stmt
	cp.Refuse = a.refuse
	if st.Kind == rewrite.KindExecute {
		arg := executeArgs(st)
		value := func(v rewrite.Value) rewrite.Value {
			if v.Kind != rewrite.ValueParam {
				return v
			}
			if lit, ok := arg(v.Param); ok {
				return rewrite.Value{Kind: rewrite.ValueLiteral, Literal: lit}
			}
			return rewrite.Value{Kind: rewrite.ValueExpr, Expr: "$" + strconv.Itoa(v.Param)}
		}
		cp.Expected = value(cp.Expected)
		cp.Keys = make([]rewrite.KeyValue, len(a.stmt.Keys))
		for i, kv := range a.stmt.Keys {
			cp.Keys[i] = rewrite.KeyValue{Column: kv.Column, Value: value(kv.Value)}
		}
	}
	return a.sql, &prepared{plan: &cp, quietWhenEmpty: g.quietWhenEmpty(target.plan), execute: st, sent: a.sql, target: target}, true
}

// rebakeExecute prepares an EXECUTE of an injected statement again before
// it is bound when the version it would carry now differs from the one it
// was prepared with (the session's own write moved it on, or it read the
// row again), or when the statement it executes is not the one it was
// prepared for: prepared again under another resolution (refreshPrepared,
// done here first when it is due), or by the client. Those may take
// another number of arguments: its text is then the one planned now, the
// client's own when the statement is not guarded any more. The unnamed
// statement is simply parsed again. A named one is closed and parsed again
// where nothing is in flight and the transaction is not failed (as
// replanAtBind); else, where only the version differs, it runs with the
// version it has; where the arguments may differ and answers are in
// flight, the proxy's PREPARE (or a Parse of its own) goes first, which
// fails in a failed transaction, and the server then skips the Close and
// Parse with the client's Bind, whose error the client gets, as it would
// from PostgreSQL (25P02). It returns the statement's record from then on.
func (s *session) rebakeExecute(name []byte, prep *prepared) *prepared {
	g := s.guard
	if s.queue.skipping {
		return prep
	}
	target := g.prepared(prep.execute.ExecuteName)
	refreshed := false
	if r := s.refreshPrepared(prep.execute.ExecuteName, target); r != nil {
		if err := s.sendRefresh(r, refreshName); err != nil {
			return prep
		}
		target, refreshed = r.rec, true
	}
	sql, rec, ok := s.planExecuteParse(prep.execute)
	if ok && sql == "" {
		sql = prep.execute.SQL // the client's text
	}
	if !ok {
		// Its statement is no longer one the proxy supplies an argument
		// to: the client's text, kept with a record to follow it still.
		sql = prep.execute.SQL
		rec = &prepared{plan: prep.execute, execute: prep.execute, sent: sql, target: target}
	}
	if sql == prep.sent && target == prep.target {
		return prep
	}
	if len(name) > 0 && !refreshed && (s.queue.len() > 0 || s.txStatus == txFailed) {
		if s.queue.len() == 0 || target == prep.target {
			return prep // 25P02 whatever it binds; or only the version differs
		}
		s.queue.push(pending{kind: pendClose, answer: answerProxy})
		s.queue.push(pending{kind: pendParse, answer: answerProxy})
		_ = s.send(&pgproto3.Close{ObjectType: targetStatement, Name: refreshName}, &pgproto3.Parse{Name: refreshName, Query: "SELECT"})
		s.queue.push(pending{kind: pendClose, answer: answerProxy})
		_ = s.send(&pgproto3.Close{ObjectType: targetStatement, Name: refreshName})
	}
	if sql != prep.sent {
		s.prepareAgain(name, sql, []byte{0, 0})
	}
	if rec == nil {
		prep.sent, prep.target = sql, target
		return prep
	}
	g.stmts[string(name)] = rec
	if t := g.texts[unsafeString(name)]; t != nil {
		t.sent = sql
	}
	return rec
}

// Prepared again under another resolution. PostgreSQL analyzes a prepared
// statement again, from the client's text, when the session's search_path
// has changed since it was prepared. The server's copy of a guarded
// statement the proxy prepared is not the client's text: analyzed again,
// its injected predicate (or the version increment the proxy added) would
// name the version column of whatever table the name reaches now (42703
// where it has none), and whether an EXECUTE must carry the version at all
// depends on that table. So before an EXECUTE (or a Bind) of such a
// statement under another resolution, the proxy prepares the client's
// PREPARE again, planned now: in its Inject form if the table it reaches
// is tracked, as planned otherwise (the client's text when it reaches no
// guarded table). Its own statements go first, their answers hidden from
// the client:
//
//	PREPARE pgoptimist_check ...   the new text under a name of the proxy's
//	DEALLOCATE pgoptimist_check
//	DEALLOCATE name
//	PREPARE name ...               the new text
//
// The first fails where PostgreSQL's analysis would have failed the
// EXECUTE (the text does not analyze under the new names) or where any
// statement fails (an aborted transaction): the client gets that error in
// place of its statement's answer, the server skips the rest, and the
// client's statement stays as it was, to be prepared again at its next use.

// checkName is the SQL-level statement under which the proxy tries the
// text it prepares again; refreshName the protocol-level statement and
// portal its statements run through in a client's extended-protocol batch.
const (
	checkName   = reservedPrefix + "check"
	refreshName = reservedPrefix + "refresh"
)

// refresh is a statement to prepare again: its name, its record from then
// on, and the text that tries it under checkName.
type refresh struct {
	name  string
	rec   *prepared
	check string
}

// refreshPrepared decides whether the SQL-level statement name (its record
// p, as the statement running it sees it) must be prepared again before it
// runs under the session's current resolution: nil when not. A statement
// whose text stays the same takes its new plan at once. In a transaction
// known to be failed nothing is done: the server refuses the statement
// running it (25P02) whatever it holds.
func (s *session) refreshPrepared(name string, p *prepared) *refresh {
	g := s.guard
	if p == nil || p.source == "" || g.db == nil || g.res.path == "" || p.path == g.res.path {
		return nil
	}
	if s.queue.skipping || s.queue.len() == 0 && s.txStatus == txFailed {
		return nil
	}
	plan, _ := g.plan(p.source)
	if plan == nil || len(plan.Statements) != 1 || plan.Statements[0].Kind != rewrite.KindPrepare || plan.Statements[0].PrepareName != name {
		return nil // not planned now as it was then: kept as it is
	}
	st := &plan.Statements[0]
	rec := g.prepEffectOf(st, p.source).prep
	if rec == nil {
		// It reaches no guarded table now: as the client wrote it, with a
		// record that keeps its text for the next resolution.
		in := st.Inner
		if in == nil {
			in = &rewrite.Statement{SQL: st.SQL, Kind: rewrite.KindOther}
		}
		rec = &prepared{plan: in, sent: st.SQL}
	}
	rec.source, rec.path = p.source, g.res.path
	if rec.sent == p.sent {
		*p = *rec // the server's statement stays: only the plan changes
		return nil
	}
	check, ok := rewrite.PrepareRenamed(rec.sent, checkName)
	if !ok {
		return nil
	}
	return &refresh{name: name, rec: rec, check: check}
}

// sendRefresh sends the statements that prepare r's statement again,
// through the protocol-level statement and portal own ("": the unnamed
// ones, which only a translated simple query may use). What they do to the
// prepared statements counts once the server has done it.
func (s *session) sendRefresh(r *refresh, own string) error {
	steps := [...]struct {
		sql string
		e   prepEffect
	}{
		{r.check, prepEffect{}},
		{"DEALLOCATE " + quoteIdent(checkName), prepEffect{}},
		{"DEALLOCATE " + quoteIdent(r.name), prepEffect{op: prepDrop, name: r.name}},
		{r.rec.sent, prepEffect{op: prepSet, name: r.name, prep: r.rec}},
	}
	if own != "" {
		// In case a failed Bind left one (a Close of none is no error).
		s.queue.push(pending{kind: pendClose, answer: answerProxy})
		if err := s.send(&pgproto3.Close{ObjectType: targetStatement, Name: own}); err != nil {
			return err
		}
	}
	// The check's errors are the EXECUTE's, their positions counted in the
	// client's text, as PostgreSQL counts them in the statement's.
	shift := int32(utf8.RuneCountInString(r.check) - utf8.RuneCountInString(r.rec.sent))
	for i, st := range steps {
		ex := pending{kind: pendExecute, answer: answerProxy, prep: onePrep(st.e)}
		if i == 0 {
			ex.shift = shift
		}
		if err := s.runOwnStatement(own, st.sql, ex); err != nil {
			return err
		}
		if own != "" {
			s.queue.push(pending{kind: pendClose, answer: answerProxy})
			if err := s.send(&pgproto3.Close{ObjectType: targetPortal, Name: own}); err != nil {
				return err
			}
		}
	}
	return nil
}

// prepareSources is the client's own text of each statement of a simple
// query whose plan holds a PREPARE of a guarded statement (nil otherwise),
// in a copy of its own. unresolved: the plan was made without resolving
// any name (a dynamic translation), so any PREPARE may be one.
func prepareSources(sql string, plan *rewrite.Plan, unresolved bool) []string {
	for i := range plan.Statements {
		st := &plan.Statements[i]
		if st.Kind != rewrite.KindPrepare || st.Inner == nil || !unresolved && st.Inner.Policy == nil && !needsTracking(st.Inner) {
			continue
		}
		if len(plan.Statements) == 1 {
			return []string{strings.Clone(sql)}
		}
		texts, err := rewrite.StatementTexts(strings.Clone(sql))
		if err != nil || len(texts) != len(plan.Statements) {
			return nil
		}
		return texts
	}
	return nil
}

// sourceAt is the text of statement i, "" when not known.
func sourceAt(srcs []string, i int) string {
	if i < len(srcs) {
		return srcs[i]
	}
	return ""
}

// refreshAtBind prepares a statement prepared by SQL and bound by the
// extended protocol again first when it is due (refreshPrepared). It
// returns the statement's record from then on.
func (s *session) refreshAtBind(name []byte, prep *prepared) *prepared {
	r := s.refreshPrepared(string(name), prep)
	if r == nil {
		return prep
	}
	if err := s.sendRefresh(r, refreshName); err != nil {
		return prep
	}
	return r.rec
}
