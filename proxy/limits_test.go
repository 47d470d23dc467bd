package proxy

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestQueueRingBounded: a client that always keeps a request in flight
// reuses the same memory; the queue used to grow by one entry per request.
func TestQueueRingBounded(t *testing.T) {
	var q responseQueue
	q.push(pending{kind: pendSync})
	for i := 0; i < 1_000_000; i++ {
		q.push(pending{kind: pendQuery})
		if _, ok := q.pop(); !ok {
			t.Fatal("empty queue")
		}
	}
	if q.len() != 1 || len(q.ring) > 16 {
		t.Fatalf("after 1M push/pop with one in flight: %d entries, ring of %d", q.len(), len(q.ring))
	}
	// Order is kept across wrap-arounds and growth.
	for i := 0; i < 100; i++ {
		q.push(pending{kind: pendingKind(i%7 + 1)})
	}
	if p, _ := q.pop(); p.kind != pendQuery { // the last one pushed in the loop
		t.Fatalf("oldest is %v", p.kind)
	}
	for i := 0; i < 100; i++ {
		if p, _ := q.pop(); p.kind != pendingKind(i%7+1) {
			t.Fatalf("entry %d is %v", i, p.kind)
		}
	}
	// A burst's large ring is given back once the queue is empty.
	for i := 0; i < 5000; i++ {
		q.push(pending{kind: pendQuery})
	}
	for q.len() > 0 {
		q.pop()
	}
	if len(q.ring) > shrinkAbove {
		t.Fatalf("empty queue keeps a ring of %d", len(q.ring))
	}
}

// TestBufferedBudget: a session gathering a message larger than its own
// buffers reserves it from the process-wide budget; a second one that does
// not fit ends with FATAL 53200 and the budget is not exceeded; the first
// gives its reservation back once the message is handled.
func TestBufferedBudget(t *testing.T) {
	a, b := testSession(t), testSession(t)
	b.srv = a.srv
	for _, s := range []*session{a, b} {
		s.cfg.Limits.MaxMessageBytes = 4 << 20
		s.cfg.Limits.MaxBufferedBytes = 1 << 20
	}
	big := frames(&pgproto3.Query{String: "UPDATE address SET state = '" + string(bytes.Repeat([]byte{'x'}, 600<<10)) + "' WHERE id = 1 AND version = 1"})
	half := len(big) / 2
	a.cin.append(big[:half]...)
	a.processClient()
	if got := a.srv.buffered.Used(); got != int64(len(big)) {
		t.Fatalf("budget used %d after the first half, want %d", got, len(big))
	}
	b.cin.append(big[:half]...)
	b.processClient()
	if !b.ending || !bytes.Contains(b.cout.data(), []byte("53200")) {
		t.Fatalf("second session over the budget: ending %v, sent %q", b.ending, b.cout.data())
	}
	if got := a.srv.buffered.Used(); got != int64(len(big)) {
		t.Fatalf("budget used %d after the refusal, want %d", got, len(big))
	}
	a.cin.append(big[half:]...)
	a.processClient()
	if !bytes.Contains(a.sout.data(), []byte("version = version + 1")) {
		t.Fatal("the first session's statement did not go on")
	}
	if got := a.srv.buffered.Used(); got != 0 {
		t.Fatalf("budget used %d after the message was handled", got)
	}
}

// TestOversizedQueryStreamed: under on_parse_error: forward, a simple query
// longer than the parser takes is copied through as it arrives, without
// being held whole or reserving budget.
func TestOversizedQueryStreamed(t *testing.T) {
	s := testSession(t)
	s.cfg.Limits.MaxMessageBytes = 4 << 20
	s.cfg.Limits.MaxSQLBytes = 1 << 10
	s.cfg.Limits.MaxBufferedBytes = 1 << 10
	big := frames(&pgproto3.Query{String: "SELECT '" + string(bytes.Repeat([]byte{'x'}, 600<<10)) + "'"})
	s.cin.append(big[:1000]...)
	s.processClient()
	if s.ending || s.sout.len() != 1000 || s.srv.buffered.Used() != 0 {
		t.Fatalf("first piece: ending %v, forwarded %d bytes, budget %d", s.ending, s.sout.len(), s.srv.buffered.Used())
	}
	s.cin.append(big[1000:]...)
	s.processClient()
	if !bytes.Equal(s.sout.data(), big) || s.queue.len() != 1 {
		t.Fatalf("forwarded %d of %d bytes, %d requests queued", s.sout.len(), len(big), s.queue.len())
	}
}
