package proxy

// The response queue: what the server owes, in order, so the relay knows
// which request each answer belongs to and what to do with it.

// pendingKind is a request whose answer the server has yet to send.
type pendingKind uint8

const (
	pendParse    pendingKind = iota + 1 // → ParseComplete
	pendBind                            // → BindComplete
	pendClose                           // → CloseComplete
	pendDescribe                        // → [ParameterDescription], RowDescription | NoData
	pendExecute                         // → ... CommandComplete | EmptyQueryResponse | PortalSuspended
	pendSync                            // → ReadyForQuery
	pendQuery                           // → ... ReadyForQuery (simple query, FunctionCall)
)

// answerAction is what the relay does with the answer to a request: decided
// when the request is sent, never changed by what the answer says (that is
// an observation).
type answerAction uint8

const (
	// answerClient: the client's own request; its answer is the client's.
	answerClient answerAction = iota
	// answerProxy: a request of the proxy's (Parse, Bind, Close, Describe);
	// its completion messages are not the client's and are dropped.
	answerProxy
	// answerRaise: the proxy's statement that makes the server raise an
	// error for the client (stale, required, rejected). The error is relayed
	// without the DO block's PL/pgSQL context; a simple query's
	// ReadyForQuery is the client's.
	answerRaise
	// answerReplaced: a Sync whose ReadyForQuery is withheld, because a
	// stale error and its own ReadyForQuery take its place.
	answerReplaced
	// answerOwn: a question of the proxy's own (ownquery.go); the whole
	// answer is the proxy's.
	answerOwn
)

// observation is what the server's answers to a simple query have shown so
// far; the query's outcome is decided at its ReadyForQuery.
type observation uint8

const (
	sawZeroRows observation = 1 << iota // the checked statement matched no row
	sawError                            // the server reported an error
)

// pending is one entry of the response queue.
type pending struct {
	kind   pendingKind
	answer answerAction
	seen   observation
	// aloneRead: the Parse of the unnamed statement as a tracked read sent
	// untracked; if it fails there is no statement to prepare again.
	aloneRead bool
	// shift: the proxy's statement tries a client's PREPARE under a name of
	// its own (refreshPrepared): an error's position counts this many
	// characters fewer in the client's text.
	shift int32
	check *checkState  // a checked statement: zero rows affected is a conflict
	track *trackSet    // tracked mode: its result sets are stripped and captured (tracked_rows.go)
	prep  *prepEffects // SQL-level PREPARE, DEALLOCATE, DISCARD ALL: applied when done (sqlprepare.go)
}

// maxInFlight is the number of requests in flight at which the relay stops
// reading the client until the server has answered some: the queue is
// bounded even for a client that pipelines without reading.
const maxInFlight = 1 << 16

// responseQueue records, in order, what the server owes the client. It is a
// ring: entries are pushed at the tail and popped at the head, so a client
// that always keeps requests in flight reuses the same memory. Only the
// session's event loop touches it.
type responseQueue struct {
	ring []pending // len is the capacity: zero or a power of two
	head int       // index of the oldest entry
	n    int       // entries in the queue
	// skipping: an extended-protocol error was reported and no Sync was
	// queued yet, so the server ignores everything up to the next Sync.
	skipping bool
}

// shrinkAbove is the capacity an empty queue gives back after a burst.
const shrinkAbove = 1 << 10

func (q *responseQueue) at(i int) *pending { return &q.ring[(q.head+i)&(len(q.ring)-1)] }

// len is the number of requests in flight.
func (q *responseQueue) len() int { return q.n }

// push adds a request. It returns false when the server will ignore the
// request (it is skipping to a Sync); the request is then not queued.
func (q *responseQueue) push(p pending) bool {
	if q.skipping {
		if p.kind != pendSync {
			return false
		}
		q.skipping = false
	}
	if q.n == len(q.ring) {
		q.grow()
	}
	*q.at(q.n) = p
	q.n++
	return true
}

func (q *responseQueue) grow() {
	ring := make([]pending, max(16, 2*len(q.ring)))
	for i := 0; i < q.n; i++ {
		ring[i] = *q.at(i)
	}
	q.ring, q.head = ring, 0
}

// peek returns the oldest entry, or ok=false when nothing is pending.
func (q *responseQueue) peek() (pending, bool) {
	if q.n == 0 {
		return pending{}, false
	}
	return *q.at(0), true
}

// observe records what an answer to the oldest entry showed.
func (q *responseQueue) observe(o observation) {
	if q.n > 0 {
		q.at(0).seen |= o
	}
}

// replaceReady marks the oldest entry, a Sync, as answerReplaced.
func (q *responseQueue) replaceReady() {
	if q.n > 0 && q.at(0).kind == pendSync {
		q.at(0).answer = answerReplaced
	}
}

func (q *responseQueue) pop() (pending, bool) {
	if q.n == 0 {
		return pending{}, false
	}
	e := q.at(0)
	p := *e
	*e = pending{}
	if p.prep != nil {
		p.prep.done = true // applied, or never run
	}
	q.head = (q.head + 1) & (len(q.ring) - 1)
	q.n--
	if q.n == 0 {
		q.head = 0
		if len(q.ring) > shrinkAbove {
			q.ring = nil
		}
	}
	return p, true
}

// quiet reports whether nothing but Parse, Bind, Describe and Close is
// pending: every earlier cycle has been answered, so the last
// ReadyForQuery status is current, and no other statement is in the batch.
func (q *responseQueue) quiet() bool {
	for i := 0; i < q.n; i++ {
		switch q.at(i).kind {
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
	for q.n > 0 {
		p := q.at(0)
		if p.kind == pendSync {
			return released
		}
		if p.check != nil {
			released = append(released, p.check)
		}
		q.pop()
	}
	q.skipping = true
	return released
}
