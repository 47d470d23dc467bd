package proxy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Name resolution follows the session. Which table an unqualified name
// means is the server's business: it depends on the session's search_path
// (set at connect time by options, ALTER ROLE or ALTER DATABASE, changed by
// SET, SET LOCAL, RESET, set_config, undone by a rollback), on the role
// behind "$user", on temporary tables and on which schemas hold a table of
// that name. So the proxy does not work it out: it asks the server
// (pg_catalog.to_regclass of each guarded name, under the session's own
// settings, which is exactly what the session's statements will get) at
// session start, and again before it plans a statement after anything that
// may have changed the answer (rewrite.MayChangeResolution, or the end of a
// transaction in which such a statement ran). The answer is the rewriter's
// exact path: plans are cached per answer.

// resolution is a session's knowledge of how its guarded names resolve.
type resolution struct {
	path    string // rewrite.ExactPath of the server's last answer
	unsure  bool   // something since may have changed it: ask before planning
	inTx    bool   // such a statement ran in the open transaction, whose end may undo it
	pending bool   // a question is on its way to the server
}

// changed notes a statement that may change the resolution.
func (r *resolution) changed() { r.unsure, r.inTx = true, true }

// txEnded notes a transaction's end: what a statement in it changed may be
// undone (ROLLBACK, SET LOCAL).
func (r *resolution) txEnded() {
	if r.inTx {
		r.unsure, r.inTx = true, false
	}
}

// resolveSQL asks what each name resolves to, one column per name: the OID
// of the relation the session reaches by that unqualified name, or NULL.
// pg_catalog-qualified, so a session's own functions cannot stand in.
func resolveSQL(relnames []string) string {
	if len(relnames) == 0 {
		return ""
	}
	cols := make([]string, len(relnames))
	for i, n := range relnames {
		cols[i] = "pg_catalog.to_regclass(" + quoteLiteral(quoteIdent(n)) + ")::pg_catalog.oid"
	}
	return "SELECT " + strings.Join(cols, ", ")
}

// resolvedNames turns the answer to resolveSQL into the rewriter's terms:
// each name to the schema of the guarded table it reaches, or "".
func (db *dbGuard) resolvedNames(values [][]byte) (map[string]string, error) {
	if len(values) != len(db.relnames) {
		return nil, errors.New("unexpected resolution row")
	}
	names := make(map[string]string, len(values))
	for i, v := range values {
		names[db.relnames[i]] = ""
		if v == nil {
			continue
		}
		oid, err := strconv.ParseUint(string(v), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("unexpected resolution value %q", v)
		}
		if p := db.facts.oids[uint32(oid)]; p != nil && p.Table == db.relnames[i] {
			names[db.relnames[i]] = p.Schema
		}
	}
	return names, nil
}

// resolveBlocking asks during startup, before the client's first
// ReadyForQuery: the session is idle, and the question runs in a read-only
// transaction of its own without statement_timeout (the session's
// search_path and role, which the answer is about, stay as they are).
func resolveBlocking(s *session, db *dbGuard) (map[string]string, error) {
	var names map[string]string
	err := queryBlocking(s, "BEGIN READ ONLY; SET LOCAL statement_timeout = 0; "+db.resolveSQL+"; COMMIT", func(values [][]byte) error {
		var err error
		names, err = db.resolvedNames(values)
		return err
	})
	if err == nil && names == nil {
		err = errors.New("no resolution row")
	}
	return names, err
}

// resolveFirst is called with a whole Query or Parse while the session's
// resolution is unsure. It reports whether the frame must wait: when the
// statement will be planned, the proxy first asks the server, at a point
// where the question disturbs nothing.
func (s *session) resolveFirst(typ clientMsg, msg []byte) bool {
	g := s.guard
	if g.db == nil || g.db.resolveSQL == "" {
		g.res.unsure = false // nothing to ask about (a session guard made by hand, in tests)
		return false
	}
	if g.res.pending {
		return true
	}
	var sql []byte
	ok := false
	if typ == msgBind {
		// A statement prepared earlier, bound again: it is prepared
		// anew if its names now resolve elsewhere (replanAtBind).
		if name, ok2 := boundStatement(msg); ok2 {
			if t := g.texts[unsafeString(name)]; t != nil {
				sql, ok = unsafeBytes(t.query), true
			} else if len(name) == 0 && g.alone.set && !g.alone.bound {
				sql, ok = g.alone.query, true // may be prepared again, tracked (bindAloneRead)
			} else if p := g.stmts[unsafeString(name)]; p != nil && p.execute != nil {
				sql, ok = unsafeBytes(p.execute.SQL), true // its statement may be prepared again (rebakeExecute)
			} else if p != nil && p.source != "" {
				sql, ok = unsafeBytes(p.source), true // prepared by SQL, may be prepared again (refreshPrepared)
			}
		}
	} else {
		sql, ok = statementText(typ, msg)
	}
	if !ok || !g.rw.NeedsPlan(unsafeString(sql)) {
		return false // not planned: nothing to resolve (a malformed frame fails later)
	}
	if s.inBatch {
		// Inside an extended-protocol batch the question goes in line,
		// as extended messages: a simple Query would end the batch's
		// implicit transaction.
		g.res.pending = true // before: askOwn may call done at once
		s.askOwn(&ownQuery{sql: g.db.resolveSQL, extended: true, onRow: s.onResolution, done: s.resolutionDone})
		return true
	}
	if s.queue.len() > 0 {
		return true // asked when the answers in flight are in (the status is then current)
	}
	if s.txStatus == txFailed {
		// Nothing can be asked in a failed transaction, and every
		// statement but a rollback fails there: plan as last known.
		g.res.unsure = false
		return false
	}
	g.res.pending = true
	s.askOwn(&ownQuery{sql: g.db.resolveSQL, onRow: s.onResolution, done: s.resolutionDone})
	return true
}

func (s *session) onResolution(values [][]byte) error {
	names, err := s.guard.db.resolvedNames(values)
	if err != nil {
		return err
	}
	if path := rewrite.ExactPath(names); path != s.guard.res.path {
		if s.guard.res.path != "" {
			// Statements prepared under the old answer may reach other
			// tables now, as PostgreSQL re-plans them.
			s.guard.plansMayBeWrong()
		}
		s.guard.res.path = path
	}
	s.guard.res.unsure = false
	return nil
}

func (s *session) resolutionDone(err error) {
	g := s.guard
	g.res.pending = false
	if err != nil {
		// Not answered (the batch failed before it, or the server
		// refused): the statement waiting for it will not run either, or
		// fails the same way; the next one asks again.
		s.srv.log.Debug("resolution of the guarded names failed", "user", s.user, "database", s.database, "err", err)
		if g.res.unsure {
			g.res.unsure = false // for the statement waiting now
			g.res.inTx = true    // asked again at the transaction's end
		}
	}
}

// statementText is the SQL text of a whole Query or Parse frame.
func statementText(typ clientMsg, msg []byte) ([]byte, bool) {
	body := frameBody(msg)
	if typ == msgParse {
		_, rest, ok := cstringBytes(body)
		if !ok {
			return nil, false
		}
		body = rest
	}
	sql, _, ok := cstringBytes(body)
	return sql, ok
}

// boundStatement is the statement name of a whole Bind frame.
func boundStatement(msg []byte) ([]byte, bool) {
	_, rest, ok := cstringBytes(frameBody(msg))
	if !ok {
		return nil, false
	}
	name, _, ok := cstringBytes(rest)
	return name, ok
}
