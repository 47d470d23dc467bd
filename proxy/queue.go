package proxy

import (
	"sync"

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
	flagInternal = 1 << iota // sent by the proxy: its completion messages are not the client's
	flagChecked              // a guarded statement whose zero-row result is a conflict
	flagStale                // (simple query) the checked statement matched no row
	flagErrored              // (simple query) the server reported an error
	flagCleanErr             // an internal statement whose error is relayed without PL/pgSQL context
)

// pending is one entry of the response queue.
type pending struct {
	kind  pendingKind
	flags uint8
	check *checkState // for flagChecked entries
}

// checkState carries a checked statement from the client side of the relay
// to the server side and back: what to check, and the outcome.
type checkState struct {
	stmt   *rewrite.Statement
	detail staleDetail
	done   chan checkOutcome
}

type checkOutcome uint8

const (
	outcomeOK      checkOutcome = iota // rows affected, or an error the client sees anyway
	outcomeStale                       // zero rows: raise the stale error
	outcomeSkipped                     // never ran: an earlier error made the server skip to Sync
)

// responseQueue records, in order, what the server owes the client, so the
// server side of the relay knows which response answers which request. The
// client side pushes, the server side pops.
type responseQueue struct {
	mu    sync.Mutex
	items []pending
	head  int
	// skipping: an extended-protocol error was reported and no Sync was
	// queued yet, so the server ignores everything up to the next Sync.
	skipping bool
}

func (q *responseQueue) push(p pending) {
	q.mu.Lock()
	if q.skipping {
		if p.kind != pendSync {
			q.mu.Unlock()
			if p.check != nil {
				p.check.done <- outcomeSkipped
			}
			return
		}
		q.skipping = false
	}
	if q.head > 0 && q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
	q.items = append(q.items, p)
	q.mu.Unlock()
}

// peek returns the oldest entry, or ok=false when nothing is pending.
func (q *responseQueue) peek() (pending, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return pending{}, false
	}
	return q.items[q.head], true
}

// setFlags ORs flags into the oldest entry.
func (q *responseQueue) setFlags(f uint8) {
	q.mu.Lock()
	if q.head < len(q.items) {
		q.items[q.head].flags |= f
	}
	q.mu.Unlock()
}

func (q *responseQueue) pop() (pending, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return pending{}, false
	}
	p := q.items[q.head]
	q.items[q.head] = pending{}
	q.head++
	return p, true
}

// skipToSync drops the entries an extended-protocol error makes the server
// skip (everything before the next Sync) and returns the checked ones, whose
// waiters must be released.
func (q *responseQueue) skipToSync(released func(*checkState)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head < len(q.items) {
		p := q.items[q.head]
		if p.kind == pendSync || p.kind == pendQuery {
			return
		}
		if p.check != nil {
			released(p.check)
		}
		q.items[q.head] = pending{}
		q.head++
	}
	q.skipping = true
}
