package proxy

import (
	"time"

	"github.com/pgoptimist/pgoptimist/rewrite"
)

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
	sent     time.Time          // when the statement went to the server (metrics)
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

// checkSlot holds the one checked statement in flight. The rule that keeps
// the guard exact: from the moment a checked statement is sent until its
// outcome is known, the client's later frames are held (not read further,
// not forwarded), so the outcome decides what reaches the server next. One
// check at a time is therefore all there can be, and start enforces it.
type checkSlot struct {
	cur    checkState
	active bool // started and not finished
	held   bool // the client's later frames wait for the outcome
}

// errSecondCheck is a broken invariant of the relay, not a client's fault:
// the panic ends the session (the loop recovers it) rather than let two
// checks share one slot.
const errSecondCheck = "pgoptimist: a second checked statement while one is in flight"

// start returns the slot's check state, reset for a new check.
func (sl *checkSlot) start(kind checkKind, st *rewrite.Statement) *checkState {
	if sl.active {
		panic(errSecondCheck)
	}
	sl.cur = checkState{kind: kind, stmt: st, sent: time.Now()}
	sl.active = true
	return &sl.cur
}

// hold makes the client wait for the check in flight.
func (sl *checkSlot) hold() { sl.held = sl.active }

// holding reports whether the client waits for a check's outcome.
func (sl *checkSlot) holding() bool { return sl.held }

// current is the check in flight, or nil.
func (sl *checkSlot) current() *checkState {
	if !sl.active {
		return nil
	}
	return &sl.cur
}

// finish ends the check c, which must be the one in flight; the client goes
// on. The state stays readable until the next start.
func (sl *checkSlot) finish(c *checkState) {
	if !sl.active || c != &sl.cur {
		panic("pgoptimist: finishing a check that is not in flight")
	}
	sl.active, sl.held = false, false
}
