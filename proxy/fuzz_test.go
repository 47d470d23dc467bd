package proxy

import (
	"encoding/binary"
	"io"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
	pg_query "github.com/pganalyze/pg_query_go/v5"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// testServer is a server without listener or loops, with no table
// configured (sessions' guards are set by the tests).
func testServer() *Server {
	cfg := config.Defaults()
	srv := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newMetrics()}
	srv.guards = newGuardRegistry(srv.log, srv.metrics)
	srv.guards.setConfig(&cfg)
	return srv
}

// testSession is a session with a guard and no connections: the relay's
// state machine alone, fed bytes by the test.
func testSession(t testing.TB) *session {
	cfg := config.Defaults()
	cfg.Limits.MaxMessageBytes = 1 << 16
	srv := testServer()
	pol := rewrite.Policy{Schema: "public", Table: "address", Column: "version", Type: rewrite.TypeInteger, Key: []string{"id"}, Update: true, Delete: true}
	req := pol
	req.Table, req.Mode = "strict", rewrite.ModeRequired
	return &session{
		srv: srv, cfg: &cfg, txStatus: txIdle, guardGen: srv.guards.generation(),
		guard: &sessionGuard{
			rw:             rewrite.New([]rewrite.Policy{pol, req}, rewrite.Options{}),
			res:            resolution{path: "public"},
			staleCode:      "VL409",
			requiredCode:   "VL428",
			onParseError:   "forward",
			log:            srv.log,
			metrics:        srv.metrics,
			stmts:          make(map[string]*prepared),
			portals:        make(map[string]*boundPortal),
			changers:       make(map[string]struct{}),
			changerPortals: make(map[string]struct{}),
		},
	}
}

func frames(msgs ...pgproto3.Message) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

// FuzzClientBytes feeds arbitrary client bytes, in arbitrary pieces, to the
// relay's client side: it must never panic, and what it forwards must be
// whole frames or a FATAL for the client.
func FuzzClientBytes(f *testing.F) {
	f.Add(frames(&pgproto3.Query{String: "UPDATE address SET state = 'x' WHERE id = 1 AND version = 2"}), uint8(3))
	f.Add(frames(&pgproto3.Query{String: "SELECT 1; UPDATE address SET a = 1 WHERE id = 1 AND version = 1; DELETE FROM strict WHERE id = 2"}), uint8(7))
	f.Add(frames(
		&pgproto3.Parse{Name: "s", Query: "UPDATE address SET state = $1 WHERE id = $2 AND version = $3"},
		&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s", Parameters: [][]byte{[]byte("x"), []byte("1"), []byte("1")}},
		&pgproto3.Describe{ObjectType: 'P', Name: "p"},
		&pgproto3.Execute{Portal: "p"},
		&pgproto3.Sync{},
	), uint8(11))
	f.Add(frames(&pgproto3.Parse{Query: "DELETE FROM strict WHERE id = $1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), uint8(0))
	f.Add([]byte{'Q', 0, 0, 0, 4}, uint8(1))
	f.Add([]byte{'B', 0, 0, 0, 8, 0, 0, 0, 0}, uint8(2))
	f.Add([]byte{'z', 0xff, 0xff, 0xff, 0xff}, uint8(5))
	// Tracked reads run alone (aloneread.go), and their statement bound
	// again: odd splits play them on a tracked session.
	f.Add(frames(&pgproto3.Parse{Query: "SELECT state FROM address WHERE id = $1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("7")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("7")}}, &pgproto3.Execute{}, &pgproto3.Flush{}), uint8(9))
	f.Add(frames(&pgproto3.Parse{Query: "SELECT state FROM address WHERE id = 7"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{},
		&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), uint8(255))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		s := testSession(t)
		if split%2 == 1 {
			s = trackedSession(t)
			s.guard.store = newVersionStore(10, s.srv.metrics, map[string]bool{"public.address": false})
		}
		cut := 0
		if len(data) > 0 {
			cut = int(split) % (len(data) + 1)
		}
		for _, part := range [][]byte{data[:cut], data[cut:]} {
			s.cin.append(part...)
			s.processClient()
			// Pretend the server answered every checked statement with
			// zero rows, to run the stale paths too.
			if s.checks.holding() {
				s.resolve(s.checks.current(), outcomeStale)
				s.processClient()
			}
		}
		checkFrames(t, "to server", s.sout.data(), !s.ending && s.cPass == 0)
		if s.cout.len() > 0 {
			if s.cout.data()[0] != 'E' || !s.ending {
				t.Fatalf("client got %q without the session ending", s.cout.data())
			}
		}
	})
}

// FuzzServerBytes feeds arbitrary server bytes to the relay's server side
// after a guarded statement was sent.
func FuzzServerBytes(f *testing.F) {
	f.Add(frames(&pgproto3.CommandComplete{CommandTag: []byte("UPDATE 0")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	f.Add(frames(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.NoData{}, &pgproto3.CommandComplete{CommandTag: []byte("UPDATE 1")}, &pgproto3.ReadyForQuery{TxStatus: 'T'}))
	f.Add(frames(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "40001", Message: "x"}, &pgproto3.ReadyForQuery{TxStatus: 'E'}))
	f.Add([]byte{'C', 0, 0, 0, 5, 0, 'Z', 0, 0, 0, 5})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, sql := range []string{
			"UPDATE address SET state = 'x' WHERE id = 1 AND version = 2",
			"SELECT 1; UPDATE address SET state = 'x' WHERE id = 1 AND version = 2; SELECT 2",
		} {
			s := testSession(t)
			s.cin.append(frames(&pgproto3.Query{String: sql}, &pgproto3.Parse{Name: "a", Query: "DELETE FROM address WHERE id = $1 AND version = $2"},
				&pgproto3.Bind{PreparedStatement: "a", Parameters: [][]byte{[]byte("1"), []byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})...)
			s.processClient()
			s.sin.append(data...)
			s.processServer()
			if !s.checks.holding() {
				s.processClient()
			}
			checkFrames(t, "to client", s.cout.data(), !s.ending && s.sPass == 0)
		}
	})
}

// checkFrames asserts b is a sequence of whole frames (when whole is set:
// no frame is being copied through in pieces and the session goes on).
func checkFrames(t *testing.T, what string, b []byte, whole bool) {
	t.Helper()
	for len(b) > 0 {
		if len(b) < 5 {
			if whole {
				t.Fatalf("%s: partial frame header %q", what, b)
			}
			return
		}
		n := int(int32(binary.BigEndian.Uint32(b[1:5])))
		if n < 4 || n+1 > len(b) {
			if whole {
				t.Fatalf("%s: frame %q of length %d, %d bytes left", what, b[0], n, len(b))
			}
			return
		}
		b = b[n+1:]
	}
}

// FuzzStaleSQL checks that the statements the proxy builds from values a
// client controls (expected versions, key values) stay one DO statement,
// whatever the values contain.
func FuzzStaleSQL(f *testing.F) {
	f.Add("1", "42", "version")
	f.Add("'; DROP TABLE x; --", "$pgoptimist$", `we"ird`)
	f.Add(`\'`, "E'\\x'", "xmin")
	f.Fuzz(func(t *testing.T, expected, key, column string) {
		if column == "" || strings.ContainsRune(expected+key+column, 0) || !utf8.ValidString(column) {
			return // not representable in the protocol / the server's encoding
		}
		p := &rewrite.Policy{Schema: "public", Table: "address", Column: column}
		for _, sql := range []string{
			staleSQL(p, staleDetail{expected: expected, expectedKnown: true, keys: []keyLiteral{{column: "id", value: key}}}, "VL409"),
			staleSQL(p, staleDetail{expected: expected}, "VL409"),
			requiredSQL(p, "VL428"),
		} {
			tree, err := pg_query.Parse(sql)
			if err != nil {
				t.Fatalf("%v: %s", err, sql)
			}
			if len(tree.Stmts) != 1 || tree.Stmts[0].Stmt.GetDoStmt() == nil {
				t.Fatalf("not a single DO statement: %s", sql)
			}
			if _, err := pg_query.ParsePlPgSqlToJSON("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS " + quoteLiteral(doBody(t, tree)) + ";"); err != nil {
				t.Fatalf("PL/pgSQL body does not parse: %v\n%s", err, sql)
			}
		}
	})
}

func doBody(t *testing.T, tree *pg_query.ParseResult) string {
	for _, a := range tree.Stmts[0].Stmt.GetDoStmt().Args {
		if d := a.GetDefElem(); d != nil && d.Defname == "as" {
			return d.Arg.GetString_().Sval
		}
	}
	t.Fatal("DO without a body")
	return ""
}
