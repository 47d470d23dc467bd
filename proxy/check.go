package proxy

import "github.com/pgoptimist/pgoptimist/rewrite"

// The check in flight: a guarded statement whose zero-row result is a
// conflict, sent by one of four paths (checkKind), with the outcome the
// server's answer gives it.

// checkKind says how a checked statement was sent, and so what its
// outcome calls for (session.afterCheck).
type checkKind uint8

const (
	checkSimple    checkKind = iota // a simple Query of one statement
	checkPipeline                   // one statement of a simple query run as a pipeline
	checkSyncAhead                  // an Execute sent together with its Sync
	checkHeld                       // an Execute followed by a Flush, the client held
)

// checkState is a checked statement in flight.
type checkState struct {
	kind     checkKind
	stmt     *rewrite.Statement
	source   *rewrite.Statement // simple query paths: the statement as written
	portal   *boundPortal       // extended protocol: values from the Bind
	pipeline *translation       // checkPipeline: the statements still to send
}

// staleDetail returns the values the stale error names.
func (c *checkState) staleDetail() staleDetail {
	if c.portal != nil {
		return c.portal.staleDetail()
	}
	return resolveDetail(c.stmt, executeArgs(c.source))
}

type checkOutcome uint8

const (
	outcomeOK      checkOutcome = iota // rows affected, or an error the client sees anyway
	outcomeStale                       // zero rows: raise the stale error
	outcomeSkipped                     // never ran: an earlier error made the server skip to Sync
)

// newCheck returns the session's check state, reset. One is enough: a
// check holds the client's later frames until it is resolved.
func (s *session) newCheck(kind checkKind, st *rewrite.Statement) *checkState {
	s.chk = checkState{kind: kind, stmt: st}
	return &s.chk
}
