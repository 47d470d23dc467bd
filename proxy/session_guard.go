package proxy

import (
	"errors"
	"log/slog"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// A session's view of the guard: its database's rewriter and the guarded
// prepared statements and portals it has made.

// sessionGuard is one session's view of the guard: the rewriter for its
// database and the guarded prepared statements and portals it has made.
type sessionGuard struct {
	db           *dbGuard // the database's facts, of one configuration generation
	rw           *rewrite.Rewriter
	res          resolution // how the session's unqualified guarded names resolve
	staleCode    string
	requiredCode string
	onParseError string
	log          *slog.Logger
	metrics      *Metrics

	sideEffects map[string]bool // tables with statement-level triggers or rules
	stmts       map[string]*prepared
	portals     map[string]*boundPortal
	// Prepared statements and portals that may change the resolution when
	// executed (SET search_path, set_config ... prepared by the client).
	changers       map[string]struct{}
	changerPortals map[string]struct{}

	store *versionStore // tracked mode: the versions this session read; nil when no table is tracked
	alone aloneRead     // the unnamed statement, a tracked read sent untracked (aloneread.go)

	// SQL-level PREPARE, DEALLOCATE, DISCARD ALL in flight (sqlprepare.go).
	inflight []*prepEffects

	// The texts of the named statements the session prepared, so that one
	// prepared under plans that may be wrong now is prepared again when
	// it is next bound (replanAtBind). epoch counts the changes that may
	// make plans wrong (a reload, another resolution of the names);
	// staleTexts are the names prepared before the last one.
	texts      map[string]*preparedText
	textBytes  int
	epoch      int
	staleTexts map[string]struct{}
}

// preparedText is a named statement as the client prepared it and as the
// server holds it.
type preparedText struct {
	name  string
	query string // the client's text
	tail  []byte // the client's parameter types, as in its Parse
	sent  string // the text the server was given
	epoch int
}

// maxTextBytes bounds the statement texts one session keeps; statements
// past it keep the plan they were prepared under.
const maxTextBytes = 1 << 20

// rememberText keeps a named statement's text (asIs: the server got it as
// written; otherwise it got sql).
func (g *sessionGuard) rememberText(name, query, tail []byte, sql string, asIs bool) {
	g.forgetText(unsafeString(name))
	if g.texts == nil {
		g.texts = make(map[string]*preparedText)
	}
	if g.textBytes+len(query)+len(sql) > maxTextBytes {
		return
	}
	t := &preparedText{name: string(name), query: string(query), tail: append([]byte(nil), tail...), epoch: g.epoch}
	t.sent = t.query
	if !asIs {
		t.sent = sql
	}
	g.texts[t.name] = t
	g.textBytes += len(t.query) + len(t.sent)
}

// forgetTexts drops every statement text (DEALLOCATE ALL, DISCARD ALL).
func (g *sessionGuard) forgetTexts() {
	clear(g.texts)
	clear(g.staleTexts)
	g.textBytes = 0
}

// forgetText drops what is known of a named statement's text.
func (g *sessionGuard) forgetText(name string) {
	if t := g.texts[name]; t != nil {
		g.textBytes -= len(t.query) + len(t.sent)
		delete(g.texts, name)
	}
	delete(g.staleTexts, name)
}

// forgetStatement forgets what the guard knows of the prepared statement
// name once it is gone (closed, deallocated, or the unnamed one replaced by
// a simple query).
func (g *sessionGuard) forgetStatement(name string) {
	delete(g.stmts, name)
	delete(g.changers, name)
	g.forgetText(name)
	if name == "" {
		g.alone.set = false
	}
}

// plansMayBeWrong starts a new epoch: every named statement is prepared
// again at its next Bind if its plan changed.
func (g *sessionGuard) plansMayBeWrong() {
	g.epoch++
	if len(g.texts) == 0 {
		return
	}
	if g.staleTexts == nil {
		g.staleTexts = make(map[string]struct{}, len(g.texts))
	}
	for name := range g.texts {
		g.staleTexts[name] = struct{}{}
	}
}

// prepared is a guarded prepared statement (protocol or SQL level: they
// share one namespace in PostgreSQL).
type prepared struct {
	plan           *rewrite.Statement
	oids           []uint32 // parameter types given by the client, for decoding binary values
	quietWhenEmpty bool     // a run that affects no row writes nothing (see syncAhead)
	injected       bool     // tracked mode: prepared with the injected version parameter
	// A statement whose text is an EXECUTE of an injected one, prepared
	// with the version as a literal argument: the EXECUTE, the text the
	// server got, and the record of the statement it executes as it was
	// then (see planExecuteParse). For a statement prepared by SQL
	// PREPARE, sent is the PREPARE the server got.
	execute *rewrite.Statement
	sent    string
	target  *prepared
	// A guarded statement prepared by SQL PREPARE: the client's PREPARE
	// text and the resolution (rewrite.ExactPath) it was planned under.
	// PostgreSQL analyzes a prepared statement again when the search_path
	// changes; the proxy prepares it again from the client's text when the
	// names resolve otherwise (refreshPrepared).
	source string
	path   string
	// A PREPARE, DEALLOCATE or DISCARD ALL prepared by a Parse: what an
	// Execute of it does once complete.
	effect prepEffect
}

// boundPortal is a portal bound to a guarded statement.
type boundPortal struct {
	stmt           *rewrite.Statement
	oids           []uint32
	quietWhenEmpty bool
	bind           []byte     // the Bind message, for a checked statement
	run            *trackRun  // tracked mode: this binding's run
	described      bool       // its result formats are known (or need not be)
	effect         prepEffect // see prepared.effect
}

// staleDetail decodes the expected version and key values from the Bind.
func (bp *boundPortal) staleDetail() staleDetail {
	var b pgproto3.Bind
	if err := b.Decode(frameBody(bp.bind)); err != nil {
		return resolveDetail(bp.stmt, func(int) (string, bool) { return "", false })
	}
	return resolveDetail(bp.stmt, func(n int) (string, bool) {
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
		if n <= len(bp.oids) {
			oid = bp.oids[n-1]
		}
		return decodeParam(b.Parameters[n-1], binaryFormat, oid)
	})
}

// quietWhenEmpty reports whether a run of st that affects no row writes
// nothing at all: what the parser says of the statement (a plain UPDATE,
// DELETE or INSERT, no WITH clause that could hold a data-modifying CTE),
// on a table without statement-level triggers or rules.
func (g *sessionGuard) quietWhenEmpty(st *rewrite.Statement) bool {
	return st.Policy != nil && st.QuietWhenEmpty && !g.sideEffects[st.Policy.QualifiedName()]
}

// plan plans a statement that passed the prefilter. On a parse failure it
// returns a nil plan and, under on_parse_error: reject, the statement that
// raises the refusal (forward: "", and the caller forwards the text as is).
func (g *sessionGuard) plan(sql string) (*rewrite.Plan, string) {
	plan, err := g.rw.Plan(sql, g.res.path)
	if err == nil {
		g.metrics.planned.Add(1)
		return plan, ""
	}
	g.metrics.parseErrors.Add(1)
	if g.onParseError == "reject" {
		g.log.Warn("statement on a guarded table could not be parsed: refused", "err", err)
		return nil, rejectSQL(sqlstateProgramLimit, "pgoptimist: statement on a guarded table refused: "+err.Error())
	}
	g.log.Warn("statement on a guarded table could not be parsed: forwarded unguarded", "err", err)
	return nil, ""
}

// followReload moves an idle session to the current configuration
// generation: the database's facts are taken from the registry when some
// session has discovered them, or discovered now through this session's
// connection (it is idle: the question disturbs nothing), or, while
// another session is at it, at a later idle point. Statements prepared
// before keep the plan they were prepared under; every statement planned
// from now on follows the new policies.
func (s *session) followReload() {
	reg := s.srv.guards
	db, gen := reg.current(s.database)
	if db == nil {
		s.guard, s.guardGen = s.guard.bare(), gen
		return
	}
	switch db.status() {
	case dbReady:
		s.adoptGuard(db, gen)
	case dbUnknown:
		if !db.begin() {
			return
		}
		rows := make([]catalogRow, len(db.cfg.Tables))
		s.askOwn(&ownQuery{
			sql:   catalogSQL(db.cfg),
			onRow: func(v [][]byte) error { return parseCatalogRow(v, rows) },
			done: func(err error) {
				if errors.Is(err, errSessionEnded) {
					db.finish(nil, err) // the next session asks
					return
				}
				if err != nil {
					reg.metrics.discoveryErrors.Add(1)
					s.srv.log.Warn("catalog discovery after a reload failed; the session keeps its policies and tries again at its next idle point", "database", s.database, "err", err)
					db.finish(nil, err)
					return
				}
				db.finish(rows, nil)
				if s.txStatus == txIdle {
					s.adoptGuard(db, gen)
				}
			},
		})
	}
}

// adoptGuard makes a database's current facts the session's guard.
func (s *session) adoptGuard(db *dbGuard, gen int64) {
	sg := s.srv.guards.newSessionGuard(db)
	if sg != nil {
		if old := s.guard; old != nil {
			sg.stmts, sg.portals = old.stmts, old.portals
			sg.changers, sg.changerPortals = old.changers, old.changerPortals
			sg.texts, sg.textBytes, sg.epoch = old.texts, old.textBytes, old.epoch
			sg.inflight = old.inflight
			sg.alone = old.alone
			sg.plansMayBeWrong()
			switch {
			case old.store != nil && sg.store != nil:
				old.store.scopes = sg.store.scopes
				sg.store = old.store
			case old.store != nil:
				old.store.close() // no table is tracked any more
			}
		}
		sg.res.unsure = true // the new names are asked before the next planned statement
	} else {
		sg = s.guard.bare()
	}
	s.guard, s.guardGen, s.inBatch = sg, gen, false
}

// bareRewriter plans for a guard without policies: it only reads PREPARE,
// EXECUTE, DEALLOCATE and DISCARD.
var bareRewriter = rewrite.New(nil, rewrite.Options{})

// bare is what is left of a guard when no table of the database is guarded
// any more (a reload): nil, unless the session holds statements prepared
// with the injected version parameter, whose every EXECUTE and Bind must
// still supply it. Then it keeps those and follows only PREPARE, EXECUTE,
// DEALLOCATE and DISCARD (until the next reload).
func (g *sessionGuard) bare() *sessionGuard {
	if g == nil {
		return nil
	}
	injected := false
	for _, p := range g.stmts {
		injected = injected || p.injected
	}
	if !injected {
		if g.store != nil {
			g.store.close()
		}
		return nil
	}
	if g.store != nil {
		g.store.close()
	}
	return &sessionGuard{
		rw:             bareRewriter,
		staleCode:      g.staleCode,
		requiredCode:   g.requiredCode,
		onParseError:   "forward",
		log:            g.log,
		metrics:        g.metrics,
		stmts:          g.stmts,
		portals:        g.portals,
		changers:       g.changers,
		changerPortals: g.changerPortals,
		texts:          g.texts,
		textBytes:      g.textBytes,
		epoch:          g.epoch,
		inflight:       g.inflight,
	}
}
