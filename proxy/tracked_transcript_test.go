package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Transcripts of tracked mode: hidden columns stripped from what the
// client gets, versions captured, and injected into later writes.

// trackedSession is testSession with public.address in tracked mode,
// scope session.
func trackedSession(t *testing.T) *session {
	s := testSession(t)
	pol := rewrite.Policy{Schema: "public", Table: "address", Column: "version", Type: rewrite.TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: rewrite.ModeTracked}
	s.guard.rw = rewrite.New([]rewrite.Policy{pol}, rewrite.Options{Tracking: true})
	s.guard.store = newVersionStore(10, s.srv.metrics, map[string]bool{"public.address": true})
	return s
}

func runTracked(t *testing.T, cases map[string]transcript) {
	for name, tr := range cases {
		t.Run(name, func(t *testing.T) {
			t.Run("whole", func(t *testing.T) { tr.play(t, trackedSession(t), feedWhole) })
			t.Run("bytewise", func(t *testing.T) { tr.play(t, trackedSession(t), feedBytewise) })
		})
	}
}

// planned is what the rewriter makes of sql in tracked mode.
func planned(t *testing.T, sql string) *rewrite.Statement {
	pol := rewrite.Policy{Schema: "public", Table: "address", Column: "version", Type: rewrite.TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: rewrite.ModeTracked}
	p, err := rewrite.New([]rewrite.Policy{pol}, rewrite.Options{Tracking: true}).Plan(sql, "public")
	if err != nil {
		t.Fatal(err)
	}
	return &p.Statements[0]
}

func field(name string, oid uint32, attnum uint16, format int16) pgproto3.FieldDescription {
	return pgproto3.FieldDescription{Name: []byte(name), TableOID: 16400, TableAttributeNumber: attnum, DataTypeOID: oid, DataTypeSize: 4, TypeModifier: -1, Format: format}
}

func rowDesc(fs ...pgproto3.FieldDescription) *pgproto3.RowDescription {
	return &pgproto3.RowDescription{Fields: fs}
}

func dataRow(vals ...[]byte) *pgproto3.DataRow { return &pgproto3.DataRow{Values: vals} }

func TestTranscriptTracked(t *testing.T) {
	const read = "SELECT state FROM address WHERE id = 7"
	readSent := planned(t, read).SQL
	const write = "UPDATE address SET state = 'y' WHERE id = 7"
	writeSent := planned(t, write).WithExpected("2")
	state := field("state", 25, 3, 0)
	hidden := []pgproto3.FieldDescription{field("pgoptimist_1", 23, 1, 0), field("pgoptimist_2", 23, 2, 0)}
	readSimple := []step{
		client(query(read)),
		serverGets(query(readSent)),
		server(rowDesc(state, hidden[0], hidden[1]), dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1"), ready('I')),
		clientGets(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
	}
	// Binary results: the proxy asks for the formats with a Describe of
	// its own before the first Execute, and decodes the binary version.
	bin := func(f pgproto3.FieldDescription) pgproto3.FieldDescription { f.Format = 1; return f }
	readBinary := []step{
		client(parse("r", read), &pgproto3.Bind{PreparedStatement: "r", ResultFormatCodes: []int16{1}}, execute(""), syncMsg),
		serverGets(parse("r", readSent), &pgproto3.Bind{PreparedStatement: "r", ResultFormatCodes: []int16{1}}, &pgproto3.Describe{ObjectType: 'P'}, execute(""), syncMsg),
		server(parseComplete, bindComplete, rowDesc(bin(state), bin(hidden[0]), bin(hidden[1])),
			dataRow([]byte("x"), []byte{0, 0, 0, 7}, []byte{0, 0, 0, 2}), cc("SELECT 1"), ready('I')),
		clientGets(parseComplete, bindComplete, dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
	}
	writeStale := []step{
		client(query(write)),
		serverGets(query(writeSent)),
		server(cc("UPDATE 0"), ready('I')),
		clientGets(),
		serverGets(staleQuery("2", "7")),
		server(raised(staleError("expected version 2, current version 3 (id=7)")), ready('I')),
		clientGets(relayed(staleError("expected version 2, current version 3 (id=7)")), ready('I')),
	}
	upd := planned(t, "UPDATE address SET state = $1 WHERE id = $2")
	multi := "SELECT state FROM address WHERE id = 7; SELECT 1; SELECT state FROM address WHERE id = 8"
	pol := rewrite.Policy{Schema: "public", Table: "address", Column: "version", Type: rewrite.TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: rewrite.ModeTracked}
	multiPlan, err := rewrite.New([]rewrite.Policy{pol}, rewrite.Options{Tracking: true}).Plan(multi, "public")
	if err != nil {
		t.Fatal(err)
	}
	one := field("?column?", 23, 0, 0)
	runTracked(t, map[string]transcript{
		// Each result set belongs to one statement, in order.
		"multi-statement": {
			client(query(multi)),
			serverGets(query(multiPlan.SQL)),
			server(rowDesc(state, hidden[0], hidden[1]), dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1"),
				rowDesc(one), dataRow([]byte("1")), cc("SELECT 1"),
				rowDesc(state, hidden[0], hidden[1]), dataRow([]byte("z"), []byte("8"), []byte("5")), cc("SELECT 1"), ready('I')),
			clientGets(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), rowDesc(one), dataRow([]byte("1")), cc("SELECT 1"),
				rowDesc(state), dataRow([]byte("z")), cc("SELECT 1"), ready('I')),
			client(query("UPDATE address SET state = 'y' WHERE id = 8")),
			serverGets(query(planned(t, "UPDATE address SET state = 'y' WHERE id = 8").WithExpected("5"))),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		},
		// A write rolled back (here its implicit transaction fails at
		// commit, a deferred constraint): the version it moved on to is
		// undone, and the next write is checked against the one read.
		"rollback undoes the own write": join(readSimple, []step{
			client(query(write)),
			serverGets(query(writeSent)),
			server(cc("UPDATE 1"), checkViolation, ready('I')),
			clientGets(cc("UPDATE 1"), checkViolation, ready('I')),
		}, writeStale),
		"simple read, then write checked": join(readSimple, writeStale),
		"binary read, then write checked": join(readBinary, writeStale),
		"never read: unchecked":           join(writeUnchecked(write, planned(t, write).SQL)),
		"own write moves on": join(readSimple, []step{
			client(query(write)),
			serverGets(query(writeSent)),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
			client(query(write)),
			serverGets(query(planned(t, write).WithExpected("3"))),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		// Extended protocol: the statement is prepared with one more
		// parameter, typed by the server; a Bind gets the version read.
		"extended write injected": together(readSimple, []step{
			client(parse("u", "UPDATE address SET state = $1 WHERE id = $2"),
				&pgproto3.Describe{ObjectType: 'S', Name: "u"}, syncMsg),
			serverGets(&pgproto3.Parse{Name: "u", Query: upd.Inject.SQL, ParameterOIDs: []uint32{0, 0, 0}},
				&pgproto3.Describe{ObjectType: 'S', Name: "u"}, syncMsg),
			server(parseComplete, &pgproto3.ParameterDescription{ParameterOIDs: []uint32{25, 23, 23}}, noData, ready('I')),
			clientGets(parseComplete, &pgproto3.ParameterDescription{ParameterOIDs: []uint32{25, 23}}, noData, ready('I')),
			client(&pgproto3.Bind{PreparedStatement: "u", ParameterFormatCodes: []int16{0, 1}, Parameters: [][]byte{[]byte("y"), {0, 0, 0, 7}}}, execute(""), syncMsg),
			serverGets(&pgproto3.Bind{PreparedStatement: "u", ParameterFormatCodes: []int16{0, 1, 0}, Parameters: [][]byte{[]byte("y"), {0, 0, 0, 7}, []byte("2")}}, execute(""), syncMsg),
			server(bindComplete, cc("UPDATE 1"), ready('I')),
			clientGets(bindComplete, cc("UPDATE 1"), ready('I')),
			// Moved on to 3; all-binary formats are extended per parameter.
			client(&pgproto3.Bind{PreparedStatement: "u", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{[]byte("y"), {0, 0, 0, 7}}}, execute(""), syncMsg),
			serverGets(&pgproto3.Bind{PreparedStatement: "u", ParameterFormatCodes: []int16{1, 1, 0}, Parameters: [][]byte{[]byte("y"), {0, 0, 0, 7}, []byte("3")}}, execute(""), syncMsg),
			server(bindComplete, cc("UPDATE 1"), ready('I')),
			clientGets(bindComplete, cc("UPDATE 1"), ready('I')),
		}),
	})
}

// writeUnchecked: a write of a row the session never read goes as planned
// (incremented), with no version.
func writeUnchecked(write, sent string) []step {
	return []step{
		client(query(write)),
		serverGets(query(sent)),
		server(cc("UPDATE 0"), ready('I')),
		clientGets(cc("UPDATE 0"), ready('I')),
	}
}

// TestTrackedDataRowAllocs: a DataRow of a tracked result is captured and
// stripped without allocating once its row is remembered.
func TestTrackedDataRowAllocs(t *testing.T) {
	s := trackedSession(t)
	run := &trackRun{st: planned(t, "SELECT state FROM address WHERE id = 7"), store: s.guard.store}
	s.queue.push(pending{kind: pendQuery, track: &trackSet{runs: []*trackRun{run}}})
	msg, _ := dataRow([]byte("x"), []byte("7"), []byte("2")).Encode(nil)
	s.onTrackedDataRow(msg)
	want, _ := dataRow([]byte("x")).Encode(nil)
	if string(s.cout.data()) != string(want) {
		t.Fatalf("stripped row %q, want %q", s.cout.data(), want)
	}
	if v, ok := s.guard.store.lookup("public.address\x007"); !ok || v != "2" {
		t.Fatalf("remembered %q %v", v, ok)
	}
	allocs := testing.AllocsPerRun(100, func() {
		s.cout.consume(s.cout.len())
		s.onTrackedDataRow(msg)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per row", allocs)
	}
}

// TestTrackedCaptureChecksTable: a field the plan says is the tracked
// table's key or version, but that the RowDescription says comes from
// another table, is not captured: the next write goes unchecked rather
// than against a guessed version.
func TestTrackedCaptureChecksTable(t *testing.T) {
	const read = "SELECT state FROM address WHERE id = 7"
	const write = "UPDATE address SET state = 'y' WHERE id = 7"
	state := field("state", 25, 3, 0)
	hidden := []pgproto3.FieldDescription{field("pgoptimist_1", 23, 1, 0), field("pgoptimist_2", 23, 2, 0)}
	tr := transcript{
		client(query(read)),
		serverGets(query(planned(t, read).SQL)),
		server(rowDesc(state, hidden[0], hidden[1]), dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1"), ready('I')),
		clientGets(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
		client(query(write)),
		serverGets(query(planned(t, write).SQL)),
		server(cc("UPDATE 1"), ready('I')),
		clientGets(cc("UPDATE 1"), ready('I')),
	}
	for name, oid := range map[string]uint32{"another table": 99999} {
		t.Run(name, func(t *testing.T) {
			s := trackedSession(t)
			pol := rewrite.Policy{Schema: "public", Table: "address"}
			s.guard.db = &dbGuard{facts: catalogFacts{oids: map[uint32]*rewrite.Policy{oid: &pol}}}
			tr.play(t, s, feedWhole)
		})
	}
}

// TestTranscriptTrackedSQLPrepare: a SQL-level PREPARE of a tracked write
// goes in its Inject form once the server has completed it, and each
// EXECUTE of it carries the version read (checked) or NULL, however it is
// sent.
func TestTranscriptTrackedSQLPrepare(t *testing.T) {
	const prep = "PREPARE u(int) AS UPDATE address SET state = 'y' WHERE id = $1"
	p := planned(t, prep)
	if p.Inject == nil {
		t.Fatal("no injection for the PREPARE")
	}
	const read = "SELECT state FROM address WHERE id = 7"
	state := field("state", 25, 3, 0)
	hidden := []pgproto3.FieldDescription{field("pgoptimist_1", 23, 1, 0), field("pgoptimist_2", 23, 2, 0)}
	readSimple := []step{
		client(query(read)),
		serverGets(query(planned(t, read).SQL)),
		server(rowDesc(state, hidden[0], hidden[1]), dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1"), ready('I')),
		clientGets(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
	}
	prepared := []step{
		client(query(prep)),
		serverGets(query(p.Inject.SQL)),
		server(cc("PREPARE"), ready('I')),
		clientGets(cc("PREPARE"), ready('I')),
	}
	detail := "expected version 2, current version 3 (id=7)"
	nameTaken := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42P05", Message: `prepared statement "u" already exists`}
	runTracked(t, map[string]transcript{
		"read, then EXECUTE checked and stale": join(readSimple, prepared, []step{
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7, '2')")),
			server(cc("UPDATE 0"), ready('I')),
			clientGets(),
			serverGets(staleQuery("2", "7")),
			server(raised(staleError(detail)), ready('I')),
			clientGets(relayed(staleError(detail)), ready('I')),
		}),
		"own write moves on": join(readSimple, prepared, []step{
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7, '2')")),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7, '3')")),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		"never read: NULL": join(prepared, []step{
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7, NULL)")),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		// The server refused the PREPARE: the EXECUTE reaches the
		// statement the name had, as written.
		"failed PREPARE": join(readSimple, []step{
			client(query(prep)),
			serverGets(query(p.Inject.SQL)),
			server(nameTaken, ready('I')),
			clientGets(nameTaken, ready('I')),
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7)")),
			server(cc("SELECT 1"), ready('I')),
			clientGets(cc("SELECT 1"), ready('I')),
		}),
		// In one query: the EXECUTE sees the PREPARE before it.
		"PREPARE and EXECUTE in one query": {
			client(query(prep + "; EXECUTE u(7)")),
			serverGets(query(p.Inject.SQL + ";\nEXECUTE u(7, NULL)")),
			server(cc("PREPARE"), cc("UPDATE 1"), ready('I')),
			clientGets(cc("PREPARE"), cc("UPDATE 1"), ready('I')),
			client(query("DEALLOCATE u")),
			serverGets(query("DEALLOCATE u")),
			server(cc("DEALLOCATE"), ready('I')),
			clientGets(cc("DEALLOCATE"), ready('I')),
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7)")),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		},
		// The EXECUTE sent before the PREPARE's answer has come back:
		// the PREPARE in flight counts.
		"PREPARE in flight": together([]step{
			client(query(prep), query("EXECUTE u(7)")),
			serverGets(query(p.Inject.SQL), query("EXECUTE u(7, NULL)")),
			server(cc("PREPARE"), ready('I'), cc("UPDATE 1"), ready('I')),
			clientGets(cc("PREPARE"), ready('I'), cc("UPDATE 1"), ready('I')),
			client(query("DEALLOCATE u"), query("EXECUTE u(7)")),
			serverGets(query("DEALLOCATE u"), query("EXECUTE u(7)")),
			server(cc("DEALLOCATE"), ready('I'), cc("SELECT 1"), ready('I')),
			clientGets(cc("DEALLOCATE"), ready('I'), cc("SELECT 1"), ready('I')),
		}),
		// A DEALLOCATE the server refused (aborted transaction) forgets
		// nothing.
		"failed DEALLOCATE": join(prepared, []step{
			client(query("DEALLOCATE u")),
			serverGets(query("DEALLOCATE u")),
			server(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "25P02", Message: "current transaction is aborted"}, ready('E')),
			clientGets(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "25P02", Message: "current transaction is aborted"}, ready('E')),
			client(query("ROLLBACK")),
			serverGets(query("ROLLBACK")),
			server(cc("ROLLBACK"), ready('I')),
			clientGets(cc("ROLLBACK"), ready('I')),
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7, NULL)")),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		// In a Parse: the version as a literal argument, checked; sent
		// with its Sync.
		"EXECUTE in a Parse": together(readSimple, prepared, []step{
			client(parse("", "EXECUTE u(7)"), bind("", ""), execute(""), syncMsg),
			serverGets(parse("", "EXECUTE u(7, '2')"), bind("", ""), execute(""), syncMsg),
			server(parseComplete, bindComplete, cc("UPDATE 0"), ready('I')),
			clientGets(parseComplete, bindComplete),
			serverGets(staleQuery("2", "7")),
			server(raised(staleError(detail)), ready('I')),
			clientGets(relayed(staleError(detail)), ready('I')),
		}),
		"EXPLAIN ANALYZE and CREATE TABLE AS": join(readSimple, prepared, []step{
			client(query("EXPLAIN ANALYZE EXECUTE u(7)")),
			serverGets(query("EXPLAIN ANALYZE EXECUTE u(7, NULL)")),
			server(cc("EXPLAIN"), ready('I')),
			clientGets(cc("EXPLAIN"), ready('I')),
			// Its write is not followed: the row is forgotten.
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7, NULL)")),
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
			client(query("CREATE TABLE t AS EXECUTE u(7) WITH NO DATA")),
			serverGets(query("CREATE TABLE t AS EXECUTE u(7, NULL) WITH NO DATA")),
			server(cc("CREATE TABLE AS"), ready('I')),
			clientGets(cc("CREATE TABLE AS"), ready('I')),
		}),
	})
}

// TestTranscriptAutocommitRead: with scope transaction, a read sent alone
// outside a transaction block is sent as written: its captures would be
// forgotten when its own implicit transaction ends. Inside a transaction
// block, in a multi-statement string, or with scope session, it is
// tracked.
func TestTranscriptAutocommitRead(t *testing.T) {
	const read = "SELECT state FROM address WHERE id = 7"
	readSent := planned(t, read).SQL
	if readSent == read {
		t.Fatal("the read is not rewritten in tracked mode")
	}
	state := field("state", 25, 3, 0)
	hidden := []pgproto3.FieldDescription{field("pgoptimist_1", 23, 1, 0), field("pgoptimist_2", 23, 2, 0)}
	untracked := transcript{
		client(query(read)),
		serverGets(query(read)),
		server(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
		clientGets(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
	}
	tracked := transcript{
		client(query("BEGIN")),
		serverGets(query("BEGIN")),
		server(cc("BEGIN"), ready('T')),
		clientGets(cc("BEGIN"), ready('T')),
		client(query(read)),
		serverGets(query(readSent)),
		server(rowDesc(state, hidden[0], hidden[1]), dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1"), ready('T')),
		clientGets(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('T')),
	}
	withScopes := func(scopes map[string]bool) func(t *testing.T) *session {
		return func(t *testing.T) *session {
			s := trackedSession(t)
			s.guard.store = newVersionStore(10, s.srv.metrics, scopes)
			return s
		}
	}
	// Every tracked table transaction-scoped: not even planned.
	transactionScope := withScopes(map[string]bool{"public.address": false})
	// Another table session-scoped: planned, and the plan shows the read
	// captures only transaction-scoped rows.
	mixedScopes := withScopes(map[string]bool{"public.address": false, "public.other": true})
	for name, tc := range map[string]struct {
		tr      transcript
		session func(*testing.T) *session
	}{
		"autocommit, scope transaction": {untracked, transactionScope},
		"in a block, scope transaction": {tracked, transactionScope},
		"autocommit, mixed scopes":      {untracked, mixedScopes},
		"in a block, mixed scopes":      {tracked, mixedScopes},
		"autocommit, scope session": {transcript{
			client(query(read)),
			serverGets(query(readSent)),
			server(rowDesc(state, hidden[0], hidden[1]), dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1"), ready('I')),
			clientGets(rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
		}, trackedSession},
	} {
		t.Run(name, func(t *testing.T) {
			t.Run("whole", func(t *testing.T) { tc.tr.play(t, tc.session(t), feedWhole) })
			t.Run("bytewise", func(t *testing.T) { tc.tr.play(t, tc.session(t), feedBytewise) })
		})
	}
}

// TestAutocommitReadNotPlanned: when every tracked table is
// transaction-scoped, an autocommit read is not even planned; with a
// session-scoped table configured it is (the plan tells which tables it
// captures).
func TestAutocommitReadNotPlanned(t *testing.T) {
	for _, tc := range []struct {
		scopes  map[string]bool
		planned int64
	}{
		{map[string]bool{"public.address": false}, 0},
		{map[string]bool{"public.address": false, "public.other": true}, 1},
	} {
		s := trackedSession(t)
		s.guard.store = newVersionStore(10, s.srv.metrics, tc.scopes)
		s.cin.append(frames(query("SELECT state FROM address WHERE id = 7"))...)
		s.processClient()
		if got := s.srv.metrics.planned.Load(); got != tc.planned {
			t.Errorf("scopes %v: %d statements planned, want %d", tc.scopes, got, tc.planned)
		}
	}
}

// TestTranscriptAutocommitReadExtended: with scope transaction, the unnamed
// statement of a read prepared at an idle point and run alone in the same
// input (Bind, Execute, Sync) is sent as written, like a simple query run
// alone. Bound again anywhere else it is prepared again, tracked, in front
// of the Bind; bound again alone it stays as written.
func TestTranscriptAutocommitReadExtended(t *testing.T) {
	const read = "SELECT state FROM address WHERE id = 7"
	readSent := planned(t, read).SQL
	const write = "UPDATE address SET state = 'y' WHERE id = 7"
	state := field("state", 25, 3, 0)
	describePortal := &pgproto3.Describe{ObjectType: 'P'}
	describeStmt := &pgproto3.Describe{ObjectType: 'S'}
	alone := []step{
		client(parse("", read), bind("", ""), describePortal, execute(""), syncMsg),
		serverGets(parse("", read), bind("", ""), describePortal, execute(""), syncMsg),
		server(parseComplete, bindComplete, rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
		clientGets(parseComplete, bindComplete, rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')),
	}
	begin := []step{
		client(parse("b", "BEGIN"), bind("", "b"), execute(""), syncMsg),
		serverGets(parse("b", "BEGIN"), bind("", "b"), execute(""), syncMsg),
		server(parseComplete, bindComplete, cc("BEGIN"), ready('T')),
		clientGets(parseComplete, bindComplete, cc("BEGIN"), ready('T')),
	}
	// In the block: prepared again with the hidden columns; the version
	// read is what the write is then checked against.
	reboundTracked := []step{
		client(bind("", ""), execute(""), syncMsg),
		serverGets(parse("", readSent), bind("", ""), execute(""), syncMsg),
		server(parseComplete, bindComplete, dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1"), ready('T')),
		clientGets(bindComplete, dataRow([]byte("x")), cc("SELECT 1"), ready('T')),
		client(query(write)),
		serverGets(query(planned(t, write).WithExpected("2"))),
		server(cc("UPDATE 1"), ready('T')),
		clientGets(cc("UPDATE 1"), ready('T')),
	}
	transactionScope := func(t *testing.T) *session {
		s := trackedSession(t)
		s.guard.store = newVersionStore(10, s.srv.metrics, map[string]bool{"public.address": false})
		return s
	}
	// The unnamed statement bound again, sent as the client sent it.
	reboundAsIs := func(describe bool) []step {
		msgs := []any{bind("", ""), execute(""), syncMsg}
		rows := []any{bindComplete, dataRow([]byte("x")), cc("SELECT 1"), ready('I')}
		if describe {
			msgs = []any{bind("", ""), describePortal, execute(""), syncMsg}
			rows = []any{bindComplete, rowDesc(state), dataRow([]byte("x")), cc("SELECT 1"), ready('I')}
		}
		return []step{client(msgs...), serverGets(msgs...), server(rows...), clientGets(rows...)}
	}
	described := []step{
		client(parse("", read), describeStmt, syncMsg),
		serverGets(parse("", read), describeStmt, syncMsg),
		server(parseComplete, &pgproto3.ParameterDescription{}, rowDesc(state), ready('I')),
		clientGets(parseComplete, &pgproto3.ParameterDescription{}, rowDesc(state), ready('I')),
	}
	noStatement := &pgproto3.ErrorResponse{Severity: "ERROR", Code: "26000", Message: "unnamed prepared statement does not exist"}
	selectOne := []step{client(query("SELECT 1")), serverGets(query("SELECT 1")), server(selectRows("1"), ready('I')), clientGets(selectRows("1"), ready('I'))}
	closeIt := []step{
		client(&pgproto3.Close{ObjectType: 'S'}, syncMsg),
		serverGets(&pgproto3.Close{ObjectType: 'S'}, syncMsg),
		server(&pgproto3.CloseComplete{}, ready('I')),
		clientGets(&pgproto3.CloseComplete{}, ready('I')),
	}
	boundMissing := []step{
		client(bind("", ""), execute(""), syncMsg),
		serverGets(bind("", ""), execute(""), syncMsg),
		server(noStatement, ready('I')),
		clientGets(noStatement, ready('I')),
	}
	oneTracked := []any{parseComplete, bindComplete, dataRow([]byte("x"), []byte("7"), []byte("2")), cc("SELECT 1")}
	oneSeen := []any{parseComplete, bindComplete, dataRow([]byte("x")), cc("SELECT 1")}
	for name, tr := range map[string]transcript{
		"alone":                  join(alone),
		"alone twice":            join(alone, alone),
		"bound again alone":      join(alone, reboundAsIs(true), reboundAsIs(false)),
		"bound again in a block": join(alone, begin, reboundTracked),
		// A simple query or a Close of it ends the unnamed statement:
		// the Bind gets the server's own error.
		"simple query replaces it": join(alone, selectOne, boundMissing),
		"closed, then bound":       join(alone, closeIt, boundMissing),
		// Bound in a block, not alone: still not prepared by the proxy.
		"its Parse failed, then bound": join([]step{
			client(parse("", read), bind("", ""), execute(""), syncMsg),
			serverGets(parse("", read), bind("", ""), execute(""), syncMsg),
			server(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42P01", Message: "relation \"address\" does not exist"}, ready('I')),
			clientGets(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42P01", Message: "relation \"address\" does not exist"}, ready('I')),
		}, begin, []step{
			client(bind("", ""), execute(""), syncMsg),
			serverGets(bind("", ""), execute(""), syncMsg),
			server(noStatement, ready('E')),
			clientGets(noStatement, ready('E')),
		}),
		// pgx's describe-exec: the Parse is described first, and its Bind,
		// at the next idle point, decides.
		"described, then bound alone":      join(described, reboundAsIs(false)),
		"described, then bound in a block": join(described, begin, reboundTracked),
		// Not alone: the Execute is followed by more than its Sync (a
		// pipeline), or the Parse comes inside a transaction block.
		"pipelined": {
			client(parse("", read), bind("", ""), execute(""), parse("b", "SELECT 1"), syncMsg),
			serverGets(parse("", readSent), bind("", ""), execute(""), parse("b", "SELECT 1"), syncMsg),
			server(oneTracked, parseComplete, ready('I')),
			clientGets(oneSeen, parseComplete, ready('I')),
		},
		"in a block": join(begin, []step{
			client(parse("", read), bind("", ""), execute(""), syncMsg),
			serverGets(parse("", readSent), bind("", ""), execute(""), syncMsg),
			server(oneTracked, ready('T')),
			clientGets(oneSeen, ready('T')),
		}),
	} {
		t.Run(name, func(t *testing.T) { tr.play(t, transactionScope(t), feedWhole) })
	}
	// Scope session: the read is tracked, alone or not.
	t.Run("scope session", func(t *testing.T) {
		transcript{
			client(parse("", read), bind("", ""), execute(""), syncMsg),
			serverGets(parse("", readSent), bind("", ""), execute(""), syncMsg),
			server(oneTracked, ready('I')),
			clientGets(oneSeen, ready('I')),
		}.play(t, trackedSession(t), feedWhole)
	})
}

// TestTranscriptPrepareRefreshed: a statement PREPAREd in its Inject form,
// executed after the session's names came to resolve elsewhere, is
// prepared again from the client's text first, by statements of the
// proxy's whose answers the client does not see; a text that no longer
// analyzes fails the EXECUTE with the server's error and leaves the
// statement as it was.
func TestTranscriptPrepareRefreshed(t *testing.T) {
	const prep = "PREPARE u(int) AS UPDATE address SET state = 'y' WHERE id = $1"
	pol := rewrite.Policy{Schema: "public", Table: "address", Column: "version", Type: rewrite.TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: rewrite.ModeTracked}
	p, err := rewrite.New([]rewrite.Policy{pol}, rewrite.Options{Tracking: true}).Plan(prep, rewrite.ExactPath(map[string]string{"address": "public"}))
	if err != nil {
		t.Fatal(err)
	}
	injected := p.Statements[0].Inject.SQL
	resolve := resolveSQL([]string{"address"})
	answer := func(oid string) []any {
		return []any{
			&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("to_regclass"), DataTypeOID: 26, DataTypeSize: 4, TypeModifier: -1}}},
			&pgproto3.DataRow{Values: [][]byte{[]byte(oid)}}, cc("SELECT 1"), ready('I'),
		}
	}
	// The proxy's statements that prepare u again as sent, and their tags.
	steps := func(sent string) []string {
		check, ok := rewrite.PrepareRenamed(sent, checkName)
		if !ok {
			t.Fatalf("PrepareRenamed(%q)", sent)
		}
		return []string{check, "DEALLOCATE pgoptimist_check", "DEALLOCATE u", sent}
	}
	tags := []string{"PREPARE", "DEALLOCATE", "DEALLOCATE", "PREPARE"}
	refresh := func(sent string) []any {
		var out []any
		for _, sql := range steps(sent) {
			out = append(out, parse("", sql), bind("", ""), execute(""))
		}
		return out
	}
	var refreshed []any
	for _, tag := range tags {
		refreshed = append(refreshed, parseComplete, bindComplete, cc(tag))
	}
	pipeline := func(sql string) []any {
		return []any{parse("", sql), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""), syncMsg}
	}
	asked := func(oid string) []step {
		return []step{serverGets(query(resolve)), server(answer(oid)...), clientGets()}
	}
	set := func(sql, tag string) []step {
		return []step{client(query(sql)), serverGets(query(sql)), server(cc(tag), ready('I')), clientGets(cc(tag), ready('I'))}
	}
	setAway := join([]step{client(query(prep))}, asked("1001"), []step{
		serverGets(query(injected)),
		server(cc("PREPARE"), ready('I')),
		clientGets(cc("PREPARE"), ready('I')),
	}, set("SET search_path TO app", "SET"))
	prepared := join(setAway, []step{client(query("EXECUTE u(7)"))}, asked("4242"))
	divisionByZero := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "22012", Message: "division by zero"}
	inFailedTx := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "25P02",
		Message: "current transaction is aborted, commands ignored until end of transaction block"}
	// At the check's "address" (41); the client's text has it at 26.
	undefinedTable := func(pos int32) *pgproto3.ErrorResponse {
		return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42P01",
			Message: `relation "address" does not exist`, Position: pos, File: "parse_relation.c", Line: 1449, Routine: "parserOpenTable"}
	}
	cases := map[string]transcript{
		// app.address is no guarded table: the client's own text, and
		// the EXECUTE with the client's arguments. Back under the
		// guarded table: the Inject form again, and its argument.
		"another table, and back": join(prepared, []step{
			serverGets(refresh(prep), pipeline("EXECUTE u(7)")),
			server(refreshed, parseComplete, bindComplete, noData, cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}, set("RESET search_path", "RESET"), []step{client(query("EXECUTE u(7)"))}, asked("1001"), []step{
			serverGets(refresh(injected), pipeline("EXECUTE u(7, NULL)")),
			server(refreshed, parseComplete, bindComplete, noData, cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		// The client's text does not analyze under the new names: the
		// server's error is the EXECUTE's, the rest is skipped, and the
		// next EXECUTE tries again.
		"the text fails": join(prepared, []step{
			serverGets(refresh(prep), pipeline("EXECUTE u(7)")),
			server(parseComplete, bindComplete, undefinedTable(41), ready('I')),
			clientGets(undefinedTable(26), ready('I')),
			client(query("EXECUTE u(7)")),
			serverGets(refresh(prep), pipeline("EXECUTE u(7)")),
			server(refreshed, parseComplete, bindComplete, noData, cc("UPDATE 0"), ready('I')),
			clientGets(cc("UPDATE 0"), ready('I')),
		}),
		// In a failed transaction nothing is asked or prepared again:
		// the server refuses any EXECUTE (25P02), which goes as the
		// statement the server holds takes it.
		"failed transaction": join(setAway, []step{
			client(query("BEGIN; SELECT 1/0")),
			serverGets(query("BEGIN; SELECT 1/0")),
			server(cc("BEGIN"), divisionByZero, ready('E')),
			clientGets(cc("BEGIN"), divisionByZero, ready('E')),
			client(query("EXECUTE u(7)")),
			serverGets(query("EXECUTE u(7, NULL)")),
			server(inFailedTx, ready('E')),
			clientGets(inFailedTx, ready('E')),
		}),
	}
	// Bound by the extended protocol: the proxy's statements run through
	// a statement and portal of its own, each closed again, before the
	// client's Bind, which then goes with the client's parameters.
	own := []any{&pgproto3.Close{ObjectType: 'S', Name: refreshName}}
	ownDone := []any{closeComplete}
	for i, sql := range steps(prep) {
		own = append(own, parse(refreshName, sql), bind(refreshName, refreshName),
			&pgproto3.Close{ObjectType: 'S', Name: refreshName}, execute(refreshName), &pgproto3.Close{ObjectType: 'P', Name: refreshName})
		ownDone = append(ownDone, parseComplete, bindComplete, closeComplete, cc(tags[i]), closeComplete)
	}
	cases["bound"] = join(setAway, []step{
		client(bind("", "u", "7"), execute(""), syncMsg),
	}, asked("4242"), []step{
		serverGets(own, bind("", "u", "7"), execute(""), syncMsg),
		server(ownDone, bindComplete, cc("UPDATE 1"), ready('I')),
		clientGets(bindComplete, cc("UPDATE 1"), ready('I')),
	})
	for name, tr := range cases {
		t.Run(name, func(t *testing.T) {
			for _, f := range []feed{feedWhole, feedBytewise} {
				tr.play(t, refreshSession(t), f)
			}
		})
	}
}

// refreshSession is trackedSession whose guard asks what "address"
// resolves to (public.address is OID 1001).
func refreshSession(t *testing.T) *session {
	s := trackedSession(t)
	pols := s.guard.rw.Policies()
	db := &dbGuard{relnames: []string{"address"}, facts: catalogFacts{oids: map[uint32]*rewrite.Policy{1001: &pols[0]}}}
	db.resolveSQL = resolveSQL(db.relnames)
	s.guard.db = db
	s.guard.res = resolution{path: rewrite.ExactPath(nil), unsure: true}
	return s
}
