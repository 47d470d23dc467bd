package proxy

import (
	"slices"
	"strconv"

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
// between (a reload that changed the policies, another search_path): the
// record keeps the plan the statement was prepared under.

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

// prepEffectOf is what st will do to the prepared statements.
func (g *sessionGuard) prepEffectOf(st *rewrite.Statement) prepEffect {
	switch st.Kind {
	case rewrite.KindPrepare:
		e := prepEffect{op: prepSet, name: st.PrepareName}
		in := st.Inner
		if in == nil || in.Policy == nil && (g.store == nil || !needsTracking(in)) {
			return e
		}
		e.prep = &prepared{plan: in, quietWhenEmpty: g.quietWhenEmpty(in)}
		if g.store != nil && st.Inject != nil && in.Inject != nil {
			// Sent in its Inject form: the plan's Inject.Param is the
			// parameter the server's statement has beyond the client's.
			cp := *in
			cp.Inject = &rewrite.Injection{Param: st.Inject.Param, Type: st.Inject.Type, SQL: st.Inject.SQL}
			e.prep.plan, e.prep.injected = &cp, true
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
		delete(g.stmts, e.name)
		delete(g.changers, e.name)
		g.forgetText(e.name)
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
// added to ov.
func (s *session) planStatement(st *rewrite.Statement, ov *prepOverlay) action {
	g := s.guard
	a := g.actionFor(st, ov)
	if g.store != nil {
		s.trackAction(&a, st)
	}
	s.injectExecute(&a, st)
	a.prep = g.prepEffectOf(st)
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
	if target == nil || !target.injected && (st.Kind != rewrite.KindExecute || target.plan.Policy == nil) {
		return "", nil, false
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
	return a.sql, &prepared{plan: &cp, quietWhenEmpty: g.quietWhenEmpty(target.plan), execute: st, sent: a.sql}, true
}

// rebakeExecute prepares an EXECUTE of an injected statement again before
// it is bound when the version it would carry now differs from the one it
// was prepared with (the session's own write moved it on, or it read the
// row again). The unnamed statement is simply parsed again; a named one is
// closed and parsed again only where nothing is in flight and the
// transaction is not failed (as replanAtBind), otherwise it runs with the
// version it has. It returns the statement's record from then on.
func (s *session) rebakeExecute(name []byte, prep *prepared) *prepared {
	g := s.guard
	if s.queue.skipping {
		return prep
	}
	sql, rec, ok := s.planExecuteParse(prep.execute)
	if !ok || sql == prep.sent {
		return prep
	}
	if len(name) > 0 && (s.queue.len() > 0 || s.txStatus == txFailed) {
		return prep
	}
	s.prepareAgain(name, sql, []byte{0, 0})
	if rec == nil {
		prep.sent = sql
		return prep
	}
	g.stmts[string(name)] = rec
	if t := g.texts[unsafeString(name)]; t != nil {
		t.sent = sql
	}
	return rec
}
