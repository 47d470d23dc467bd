package proxy

import (
	"errors"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The proxy's own questions to the server during the relay phase: name
// resolution (resolution.go) and catalog discovery after a reload
// (session.followReload). Their answers never reach the client, which is
// held meanwhile; a session has at most one in flight.
//
// A question goes either as a simple Query at an idle point (nothing in
// flight, no open batch: it cannot touch the client's transaction state), or,
// inside the client's extended-protocol batch, as extended messages on a
// statement and portal of the reserved prefix, closed again right after, so
// the client's unnamed statement and portal are untouched.

// ownQuery is one question of the proxy's own.
type ownQuery struct {
	sql      string
	extended bool                        // in line with the client's batch, not at an idle point
	onRow    func(values [][]byte) error // each DataRow of the answer
	done     func(err error)             // the answer is complete, or will not come
	left     int                         // queue entries still to be answered
	err      error
}

// ownName names the proxy's own statement and portal in a batch.
const ownName = reservedPrefix + "ask"

var errOwnSkipped = errors.New("skipped: an earlier error in the batch")

// askOwn sends q and holds the client until its answer.
func (s *session) askOwn(q *ownQuery) {
	if s.queue.skipping {
		q.done(errOwnSkipped) // the server would ignore it
		return
	}
	s.own = q
	if !q.extended {
		q.left = 1
		s.queue.push(pending{kind: pendQuery, answer: answerOwn})
		_ = s.send(&pgproto3.Query{String: q.sql})
		return
	}
	q.left = 5
	for _, k := range []pendingKind{pendParse, pendBind, pendExecute, pendClose, pendClose} {
		s.queue.push(pending{kind: k, answer: answerOwn})
	}
	_ = s.send(
		&pgproto3.Parse{Name: ownName, Query: q.sql},
		&pgproto3.Bind{DestinationPortal: ownName, PreparedStatement: ownName},
		&pgproto3.Execute{Portal: ownName},
		&pgproto3.Close{ObjectType: targetStatement, Name: ownName},
		&pgproto3.Close{ObjectType: targetPortal, Name: ownName},
		&pgproto3.Flush{},
	)
}

// ownAnswers reports whether a server frame of type typ belongs to the
// question in flight: everything but asynchronous notices and
// notifications, while its entry is the oldest.
func (s *session) ownAnswers(typ serverMsg) bool {
	if typ == msgNoticeResponse || typ == msgNotificationResponse {
		return false
	}
	p, ok := s.queue.peek()
	return ok && p.answer == answerOwn
}

// onOwnAnswer takes one whole frame of the answer.
func (s *session) onOwnAnswer(typ serverMsg, msg []byte) {
	q := s.own
	switch typ {
	case msgDataRow:
		var dr pgproto3.DataRow
		if err := dr.Decode(frameBody(msg)); err != nil {
			q.fail(err)
		} else if err := q.onRow(dr.Values); err != nil {
			q.fail(err)
		}
	case msgErrorResponse:
		var er pgproto3.ErrorResponse
		_ = er.Decode(frameBody(msg))
		q.fail(errors.New(er.Message + " (SQLSTATE " + er.Code + ")"))
		if q.extended {
			// The server now skips the client's messages up to its
			// Sync: the client must see the error that made it skip
			// (the same its own message would have met, in practice:
			// a failed transaction).
			s.cout.append(msg...)
			for _, c := range s.queue.skipToSync() {
				s.resolve(c, outcomeSkipped)
			}
			s.finishOwn()
		}
	case msgParseComplete, msgBindComplete, msgCloseComplete, msgCommandComplete, msgEmptyQueryResponse:
		if q.extended {
			s.queue.pop()
			q.left--
		}
	case msgReadyForQuery:
		s.txStatus = readyStatus(msg)
		s.queue.pop()
		q.left--
	}
	if s.own == q && q.left == 0 {
		s.finishOwn()
	}
}

func (q *ownQuery) fail(err error) {
	if q.err == nil {
		q.err = err
	}
}

// finishOwn ends the question in flight and lets the client go on.
func (s *session) finishOwn() {
	q := s.own
	if q == nil {
		return
	}
	s.own = nil
	q.done(q.err)
}

// ownSkipped ends the question when an error of the client's batch made the
// server skip it.
func (s *session) ownSkipped() {
	if s.own == nil {
		return
	}
	for i := 0; i < s.queue.len(); i++ {
		if s.queue.at(i).answer == answerOwn {
			return
		}
	}
	s.own.fail(errOwnSkipped)
	s.finishOwn()
}
