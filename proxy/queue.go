package proxy

import (
	"time"

	"github.com/pgoptimist/pgoptimist/rewrite"
)

// pendingKind is a request whose response the server has yet to send.
type pendingKind uint8

const (
	pendParse          pendingKind = iota + 1 // → ParseComplete
	pendBind                                  // → BindComplete
	pendClose                                 // → CloseComplete
	pendDescribeStmt                          // → ParameterDescription, RowDescription | NoData
	pendDescribePortal                        // → RowDescription | NoData
	pendExecute                               // → ... CommandComplete | EmptyQueryResponse | PortalSuspended
	pendSync                                  // → ReadyForQuery
	pendQuery                                 // → ... ReadyForQuery (simple query, FunctionCall)
)

// pending flags.
const (
	flagInternal  = 1 << iota // sent by the proxy: its completion messages are not the client's
	flagStale                 // (simple query) the checked statement matched no row
	flagErrored               // (simple query) the server reported an error
	flagCleanErr              // the proxy's own DO block: its error is relayed without PL/pgSQL context
	flagDropReady             // (Sync) a stale error replaces this ReadyForQuery
)

// pending is one entry of the response queue.
type pending struct {
	kind  pendingKind
	flags uint8
	check *checkState // a checked statement: zero rows affected is a conflict
}

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

// responseQueue records, in order, what the server owes the client, so the
// relay knows which response answers which request. Only the session's
// event loop touches it.
type responseQueue struct {
	items []pending
	head  int
	// skipping: an extended-protocol error was reported and no Sync was
	// queued yet, so the server ignores everything up to the next Sync.
	skipping bool
}

// push adds a request. It returns false when the server will ignore the
// request (it is skipping to a Sync); the request is then not queued.
func (q *responseQueue) push(p pending) bool {
	if q.skipping {
		if p.kind != pendSync {
			return false
		}
		q.skipping = false
	}
	if q.head > 0 && q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
	q.items = append(q.items, p)
	return true
}

// peek returns the oldest entry, or ok=false when nothing is pending.
func (q *responseQueue) peek() (pending, bool) {
	if q.head == len(q.items) {
		return pending{}, false
	}
	return q.items[q.head], true
}

// setFlags ORs flags into the oldest entry.
func (q *responseQueue) setFlags(f uint8) {
	if q.head < len(q.items) {
		q.items[q.head].flags |= f
	}
}

func (q *responseQueue) pop() (pending, bool) {
	if q.head == len(q.items) {
		return pending{}, false
	}
	p := q.items[q.head]
	q.items[q.head] = pending{}
	q.head++
	return p, true
}

// quiet reports whether nothing but Parse, Bind, Describe and Close is
// pending: every earlier cycle has been answered, so the last
// ReadyForQuery status is current, and no other statement is in the batch.
func (q *responseQueue) quiet() bool {
	for _, p := range q.items[q.head:] {
		switch p.kind {
		case pendExecute, pendSync, pendQuery:
			return false
		}
	}
	return true
}

// skipToSync drops the entries an extended-protocol error makes the server
// skip (everything before the next Sync, simple queries included) and
// returns the checked ones.
func (q *responseQueue) skipToSync() []*checkState {
	var released []*checkState
	for q.head < len(q.items) {
		p := q.items[q.head]
		if p.kind == pendSync {
			return released
		}
		if p.check != nil {
			released = append(released, p.check)
		}
		q.items[q.head] = pending{}
		q.head++
	}
	q.skipping = true
	return released
}
