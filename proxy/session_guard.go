package proxy

import (
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// A session's view of the guard: its database's rewriter and the guarded
// prepared statements and portals it has made.

// sessionGuard is one session's view of the guard: the rewriter for its
// database and the guarded prepared statements and portals it has made.
type sessionGuard struct {
	rw           *rewrite.Rewriter
	searchPath   string
	staleCode    string
	requiredCode string
	onParseError string
	log          *slog.Logger
	metrics      *Metrics

	sideEffects map[string]bool // tables with statement-level triggers or rules
	stmts       map[string]*prepared
	portals     map[string]*boundPortal
}

// prepared is a guarded prepared statement (protocol or SQL level: they
// share one namespace in PostgreSQL).
type prepared struct {
	plan           *rewrite.Statement
	oids           []uint32 // parameter types given by the client, for decoding binary values
	quietWhenEmpty bool     // a run that affects no row writes nothing (see syncAhead)
}

// boundPortal is a portal bound to a guarded statement.
type boundPortal struct {
	stmt           *rewrite.Statement
	oids           []uint32
	quietWhenEmpty bool
	bind           []byte // the Bind message, for a checked statement
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
// nothing at all: a plain UPDATE, DELETE or INSERT (no WITH clause that
// could hold a data-modifying CTE) on a table without statement-level
// triggers or rules.
func (g *sessionGuard) quietWhenEmpty(st *rewrite.Statement) bool {
	if st.Policy == nil || g.sideEffects[st.Policy.QualifiedName()] {
		return false
	}
	sql := strings.TrimLeft(st.SQL, " \t\r\n")
	for _, kw := range []string{"update", "delete", "insert"} {
		if len(sql) > len(kw) && strings.EqualFold(sql[:len(kw)], kw) {
			return true
		}
	}
	return false
}

// plan plans a statement that passed the prefilter. On a parse failure it
// returns a nil plan and, under on_parse_error: reject, the statement that
// raises the refusal (forward: "", and the caller forwards the text as is).
func (g *sessionGuard) plan(sql string) (*rewrite.Plan, string) {
	plan, err := g.rw.Plan(sql, g.searchPath)
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

// trackPrepared follows SQL-level PREPARE and DEALLOCATE.
func (g *sessionGuard) trackPrepared(plan *rewrite.Plan) {
	for i := range plan.Statements {
		st := &plan.Statements[i]
		switch st.Kind {
		case rewrite.KindPrepare:
			if st.Inner != nil && st.Inner.Policy != nil {
				g.stmts[st.PrepareName] = &prepared{plan: st.Inner}
			} else {
				delete(g.stmts, st.PrepareName)
			}
		case rewrite.KindDeallocate:
			if st.DeallocateAll {
				clear(g.stmts)
			} else {
				delete(g.stmts, st.DeallocateName)
			}
		}
	}
}
