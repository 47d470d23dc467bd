package proxy

// Tracked reads run alone.
//
// In tracked, required and observe modes a read of a tracked table is sent
// with the key and version columns its rows' versions are captured from,
// which the proxy strips again before the client sees them. Under scope
// transaction what a read captured is forgotten when its transaction ends,
// so a read that runs alone in its own implicit transaction is forgotten
// before any write could use it: it is sent as the client wrote it and
// costs the proxy no more than an unguarded statement (guardQuery does the
// same for a simple query).
//
// In the extended protocol the proxy sees that a read runs alone when the
// unnamed statement is prepared at an idle point, at the start of a batch,
// and the same input goes on with its Bind to the unnamed portal, an
// Execute of that portal and the Sync that ends the implicit transaction
// (libpq's PQexecParams, pgbench -M extended, pgx's exec and
// cache-describe modes, JDBC's and psycopg's unnamed statements):
// aloneAfterParse. Or with only a Describe and the Sync (pgx's
// describe-exec mode), leaving its Bind to decide. The unnamed statement
// lives on until the next Parse of it or simple Query, and a client may
// bind it again anywhere (in a transaction block, in a longer batch): each
// later Bind checks that its run too is alone (aloneAfterBind), or else has
// the statement prepared again, tracked, in front of it.

// aloneRead is the unnamed statement while it is a tracked read that the
// server holds as the client wrote it.
type aloneRead struct {
	set bool
	// bound: the Parse saw the Bind that runs it alone; that Bind, the
	// next one of the unnamed statement, needs no look of its own.
	bound bool
	// The client's text and parameter types, to prepare it again; the
	// buffers are reused from one statement to the next.
	query, tail []byte
}

// keep records the unnamed statement as sent untracked.
func (a *aloneRead) keep(query, tail []byte, bound bool) {
	a.set, a.bound = true, bound
	a.query = append(a.query[:0], query...)
	a.tail = append(a.tail[:0], tail...)
}

// aloneShape is what follows the Parse of an unnamed statement in the
// client's input.
type aloneShape uint8

const (
	notAlone       aloneShape = iota
	aloneBound                // Bind to the unnamed portal, Execute of it, Sync: run alone
	aloneDescribed            // at most a Describe, then Sync: not run yet, its Bind decides
)

// nextFrame splits the first whole frame off b.
func nextFrame(b []byte) (frame, rest []byte, ok bool) {
	_, total, ok, err := frameHeader(b, 0)
	if !ok || err != nil || len(b) < total {
		return nil, nil, false
	}
	return b[:total], b[total:], true
}

// nextPastDescribe splits the first whole frame off b, after one Describe
// if b starts with one (a Describe changes nothing about how a run ends).
func nextPastDescribe(b []byte) (frame, rest []byte, ok bool) {
	frame, rest, ok = nextFrame(b)
	if ok && clientMsg(frame[0]) == msgDescribe {
		frame, rest, ok = nextFrame(rest)
	}
	return frame, rest, ok
}

// aloneAfterParse is the shape of rest, the client's input after the Parse
// of the unnamed statement: [Describe] Bind(unnamed portal, unnamed
// statement) [Describe] Execute(unnamed portal) Sync, or [Describe] Sync.
func aloneAfterParse(rest []byte) aloneShape {
	f, rest, ok := nextPastDescribe(rest)
	switch {
	case !ok:
		return notAlone
	case isSyncFrame(f):
		return aloneDescribed
	case clientMsg(f[0]) == msgBind && len(f) >= headerLen+2 && f[headerLen] == 0 && f[headerLen+1] == 0 && aloneAfterBind(rest):
		return aloneBound
	}
	return notAlone
}

// aloneAfterBind reports whether rest, the client's input after a Bind to
// the unnamed portal, runs that portal and ends the batch: [Describe]
// Execute(unnamed portal) Sync.
func aloneAfterBind(rest []byte) bool {
	f, rest, ok := nextPastDescribe(rest)
	return ok && clientMsg(f[0]) == msgExecute && len(f) > headerLen && f[headerLen] == 0 && isSyncFrame(rest)
}

// batchOpensIdle reports whether the message being handled opened a batch
// at an idle point (idle, but for the batch it opened itself): its
// implicit transaction, if it runs one, holds nothing before it. It must
// be asked before the message's own answer is queued.
func (s *session) batchOpensIdle() bool {
	return s.batchFirst && s.settled()
}

// bindAloneRead is called at a Bind of the unnamed statement while it is a
// tracked read sent untracked: unless this run too is alone, the statement
// is prepared again, tracked, in front of the Bind (whose handling then
// finds its plan).
func (s *session) bindAloneRead(portal, rest []byte) {
	g := s.guard
	a := &g.alone
	if a.bound {
		a.bound = false // the Bind its Parse saw
		return
	}
	if g.store != nil && !g.store.anySessionScope && len(portal) == 0 && s.batchOpensIdle() && aloneAfterBind(rest) {
		return
	}
	if s.txStatus == txFailed {
		// The Bind fails whatever it binds (25P02), and a failed Parse
		// would not do; prepared again at a later Bind.
		return
	}
	a.set = false
	sql, tail, asIs := s.planParse(nil, a.query, a.tail, (len(a.tail)-2)/4, notAlone)
	if asIs {
		return // nothing tracked in it any more (a reload)
	}
	s.prepareAgain(nil, sql, tail)
}
