package integration

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
)

// startupQuery runs SELECT 1 on a raw connection after its startup and
// checks the answer, to show the session works.
func startupQuery(t *testing.T, r *relayRaw) {
	t.Helper()
	r.fe.Send(&pgproto3.Query{String: "SELECT 41 + 1"})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	got := ""
	for {
		switch m := r.receive().(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("query failed: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			if got != "42" {
				t.Fatalf("SELECT 41 + 1 returned %q", got)
			}
			return
		}
	}
}

// TestStartupGSSENCRefused: a GSSENCRequest is answered 'N', after which
// the client goes on in plain text, as with a server without GSSAPI.
func TestStartupGSSENCRefused(t *testing.T) {
	for _, guarded := range []bool{false, true} {
		p := guardedProxy(t)
		if guarded { // discovery runs after authentication: still fine
			p = guardedProxy(t, config.Table{Name: "public.address"})
		}
		r := relayDial(t, p.Addr)
		r.writeRaw(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877104))
		var answer [1]byte
		if _, err := io.ReadFull(r.conn, answer[:]); err != nil || answer[0] != 'N' {
			t.Fatalf("GSSENCRequest answered %q, %v; want 'N'", answer[0], err)
		}
		r.startup("postgres", "postgres")
		r.untilReady()
		startupQuery(t, r)
	}
}

// TestStartupNegotiateProtocolVersion: a protocol option the server does not
// know makes it answer NegotiateProtocolVersion, which reaches the client,
// and the session goes on.
func TestStartupNegotiateProtocolVersion(t *testing.T) {
	p := guardedProxy(t)
	r := relayDial(t, p.Addr)
	var pkt []byte
	pkt = binary.BigEndian.AppendUint32(pkt, 0) // length, set below
	pkt = binary.BigEndian.AppendUint32(pkt, 3<<16)
	for _, s := range []string{"user", "postgres", "database", "postgres", "_pq_.pgoptimist_test", "on"} {
		pkt = append(append(pkt, s...), 0)
	}
	pkt = append(pkt, 0)
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)))
	r.writeRaw(pkt)
	negotiated := false
	for !negotiated {
		switch m := r.receive().(type) {
		case *pgproto3.NegotiateProtocolVersion:
			if len(m.UnrecognizedOptions) != 1 || m.UnrecognizedOptions[0] != "_pq_.pgoptimist_test" {
				t.Fatalf("NegotiateProtocolVersion lists %v", m.UnrecognizedOptions)
			}
			negotiated = true
		case *pgproto3.ErrorResponse:
			t.Fatalf("startup failed: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			t.Fatal("ReadyForQuery without NegotiateProtocolVersion")
		}
	}
	r.untilReady()
	startupQuery(t, r)
}
