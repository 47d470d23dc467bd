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
	s := streamingSession(t)
	big := frames(&pgproto3.Query{String: "SELECT '" + string(bytes.Repeat([]byte{'x'}, 600<<10)) + "'"})
	feedStreamed(t, s, big, 1)
}

// streamingSession is a session whose parser takes 1 kB and whose budget
// holds no more: longer statements must be streamed.
func streamingSession(t *testing.T) *session {
	s := testSession(t)
	s.cfg.Limits.MaxMessageBytes = 4 << 20
	s.cfg.Limits.MaxSQLBytes = 1 << 10
	s.cfg.Limits.MaxBufferedBytes = 1 << 10
	return s
}

// feedStreamed feeds big in two pieces and checks that each is forwarded
// as it arrives, without budget, leaving queued requests in the queue.
func feedStreamed(t *testing.T, s *session, big []byte, queued int) {
	t.Helper()
	s.cin.append(big[:1000]...)
	s.processClient()
	if s.ending || s.sout.len() != 1000 || s.srv.buffered.Used() != 0 {
		t.Fatalf("first piece: ending %v, forwarded %d bytes, budget %d", s.ending, s.sout.len(), s.srv.buffered.Used())
	}
	s.cin.append(big[1000:]...)
	s.processClient()
	if !bytes.Equal(s.sout.data(), big) || s.queue.len() != queued {
		t.Fatalf("forwarded %d of %d bytes, %d requests queued", s.sout.len(), len(big), s.queue.len())
	}
}

// TestOversizedParseStreamed: under on_parse_error: forward, a Parse whose
// text is longer than the parser takes is copied through as it arrives
// (only its name is read), replaces a guarded statement of the same name,
// and is assumed to change name resolution.
func TestOversizedParseStreamed(t *testing.T) {
	s := streamingSession(t)
	guarded := frames(&pgproto3.Parse{Query: "UPDATE address SET state = 'x' WHERE id = 1 AND version = 1"})
	s.cin.append(guarded...)
	s.processClient()
	if s.guard.stmts[""] == nil {
		t.Fatal("the guarded statement was not recorded")
	}
	s.sout.consume(s.sout.len())
	big := frames(&pgproto3.Parse{Query: "UPDATE address SET state = '" + string(bytes.Repeat([]byte{'x'}, 600<<10)) + "' WHERE id = 1 AND version = 1"})
	feedStreamed(t, s, big, 2)
	if s.guard.stmts[""] != nil || !s.guard.res.unsure {
		t.Fatalf("after the streamed Parse: guarded statement %v, resolution unsure %v", s.guard.stmts[""] != nil, s.guard.res.unsure)
	}
	if _, ok := s.guard.changers[""]; !ok {
		t.Fatal("the streamed statement is not assumed to change name resolution")
	}
}

// TestOversizedParseNameFirst: the decision waits for the statement's name,
// and a Parse that may still fit the parser once its parameter types are
// counted is held whole as before.
func TestOversizedParseNameFirst(t *testing.T) {
	for _, tc := range []struct {
		name     string
		text     int
		streamed bool
	}{
		{"longer than the parser takes with any parameter types", 1<<10 + 4*maxParams + 1, true},
		{"may fit once its parameter types are counted", 8 << 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSession(t)
			s.cfg.Limits.MaxMessageBytes = 4 << 20
			s.cfg.Limits.MaxSQLBytes = 1 << 10
			s.cfg.Limits.MaxBufferedBytes = 4 << 20
			big := frames(&pgproto3.Parse{Name: "s1", Query: "SELECT '" + string(bytes.Repeat([]byte{'x'}, tc.text)) + "'"})
			s.cin.append(big[:headerLen+1]...) // the name is not whole yet
			s.processClient()
			if s.sout.len() != 0 || s.queue.len() != 0 {
				t.Fatalf("forwarded %d bytes before the name arrived", s.sout.len())
			}
			s.cin.append(big[headerLen+1 : 4096]...)
			s.processClient()
			if streamed := s.sout.len() > 0; streamed != tc.streamed {
				t.Fatalf("streamed %v (forwarded %d bytes), want %v", streamed, s.sout.len(), tc.streamed)
			}
			s.cin.append(big[4096:]...)
			s.processClient()
			if !bytes.Equal(s.sout.data(), big) || s.ending {
				t.Fatalf("forwarded %d of %d bytes, ending %v", s.sout.len(), len(big), s.ending)
			}
		})
	}
}

// TestParseManyParameterTypes: a guarded Parse may list up to 65535
// parameter types, as PostgreSQL reads the count unsigned.
func TestParseManyParameterTypes(t *testing.T) {
	s := testSession(t)
	s.cfg.Limits.MaxMessageBytes = 1 << 20
	msg := frames(&pgproto3.Parse{Name: "u", Query: "UPDATE address SET state = $3 WHERE id = $1 AND version = $2", ParameterOIDs: make([]uint32, 40000)})
	s.cin.append(msg...)
	s.processClient()
	if s.ending || s.guard.stmts["u"] == nil || len(s.guard.stmts["u"].oids) != 40000 {
		t.Fatalf("ending %v, cout %q", s.ending, s.cout.data())
	}
}
