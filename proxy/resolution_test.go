package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Transcripts of name resolution: a session whose resolution is unsure
// asks the server before it plans, where the question disturbs nothing, and
// plans under the answer; the client never sees the question or its answer.

// unsureSession is testSession whose guard must ask what "address" and
// "strict" resolve to (public.address is OID 1001, public.strict 1002).
func unsureSession(t *testing.T) *session {
	s := testSession(t)
	pols := s.guard.rw.Policies()
	db := &dbGuard{relnames: []string{"address", "strict"}, facts: catalogFacts{oids: map[uint32]*rewrite.Policy{}}}
	for i := range pols {
		db.facts.oids[uint32(1001+i)] = &pols[i]
	}
	db.resolveSQL = resolveSQL(db.relnames)
	s.guard.db = db
	s.guard.res = resolution{path: rewrite.ExactPath(nil), unsure: true}
	return s
}

func resolutionRows(address, strict string) []any {
	val := func(s string) []byte {
		if s == "" {
			return nil
		}
		return []byte(s)
	}
	return []any{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte("to_regclass"), DataTypeOID: 26, DataTypeSize: 4, TypeModifier: -1},
			{Name: []byte("to_regclass"), DataTypeOID: 26, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{val(address), val(strict)}},
		cc("SELECT 1"),
	}
}

func TestTranscriptResolution(t *testing.T) {
	resolve := resolveSQL([]string{"address", "strict"})
	asked := []step{
		client(query(updSQL)),
		serverGets(query(resolve)),
	}
	cases := map[string]transcript{
		// The guarded table is what "address" reaches: planned, checked.
		"reaches the guarded table": join(asked, []step{
			server(append(resolutionRows("1001", "1002"), ready('I'))...),
			clientGets(),
			serverGets(query(updSent)),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		// Another table (app.address, a temporary one) is what it
		// reaches: forwarded as the client wrote it.
		"reaches another table": join(asked, []step{
			server(append(resolutionRows("4242", "1002"), ready('I'))...),
			clientGets(),
			serverGets(query(updSQL)),
			server(cc("UPDATE 0"), ready('I')),
			clientGets(cc("UPDATE 0"), ready('I')),
		}),
		// Inside an open extended-protocol batch the question goes in
		// line as the proxy's own statement and portal, closed again.
		"inside a batch": {
			client(parse("s1", "SELECT 1"), parse("", updParam)),
			serverGets(parse("s1", "SELECT 1"),
				parse(ownName, resolve), &pgproto3.Bind{DestinationPortal: ownName, PreparedStatement: ownName}, execute(ownName),
				&pgproto3.Close{ObjectType: 'S', Name: ownName}, &pgproto3.Close{ObjectType: 'P', Name: ownName}, &pgproto3.Flush{}),
			server(parseComplete, parseComplete, bindComplete, &pgproto3.DataRow{Values: [][]byte{[]byte("1001"), []byte("1002")}}, cc("SELECT 1"), closeComplete, closeComplete),
			clientGets(parseComplete),
			serverGets(parse("", updParamSent)),
			server(parseComplete),
			clientGets(parseComplete),
		},
	}
	for name, tr := range cases {
		t.Run(name, func(t *testing.T) {
			for _, f := range []feed{feedWhole, feedBytewise} {
				tr.play(t, unsureSession(t), f)
			}
		})
	}
}

// TestResolutionChangedBy: statements that may change the resolution make
// the next planned statement ask again; others do not.
func TestResolutionChangedBy(t *testing.T) {
	for sql, want := range map[string]bool{
		"SET search_path TO app": true,
		"SELECT 1":               false,
		"RESET ALL":              true,
	} {
		s := testSession(t)
		s.cin.append(frames(&pgproto3.Query{String: sql})...)
		s.processClient()
		if s.guard.res.unsure != want {
			t.Errorf("%q: unsure = %v, want %v", sql, s.guard.res.unsure, want)
		}
	}
	// The end of a transaction in which such a statement ran, too (SET
	// LOCAL ends, a rolled-back SET is undone).
	s := testSession(t)
	s.guard.res.changed()
	s.guard.res.unsure = false // asked since
	s.sin.append(frames(&pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	s.queue.push(pending{kind: pendQuery})
	s.processServer()
	if !s.guard.res.unsure {
		t.Error("the transaction's end did not make the resolution unsure")
	}
}
