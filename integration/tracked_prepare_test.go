package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgoptimist/pgoptimist/config"
)

// Tracked mode and SQL-level PREPARE: the write is prepared with the
// injected version parameter, and every EXECUTE of it carries the version
// the session read (or NULL).

const prepareCounter = "PREPARE u(int, int) AS UPDATE counter SET n = $2 WHERE id = $1"

// runSQL runs one statement text the way mode sends it: the simple
// protocol, or a Parse of the text itself (an EXECUTE cannot take a
// parameter of the extended protocol: its arguments are in the text).
func runSQL(ctx context.Context, c *pgx.Conn, mode pgx.QueryExecMode, sql string) (pgconn.CommandTag, error) {
	if mode == pgx.QueryExecModeSimpleProtocol {
		return c.Exec(ctx, sql, mode)
	}
	rows, err := c.Query(ctx, sql, mode) // Exec would use the simple protocol without arguments
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	rows.Close()
	return rows.CommandTag(), rows.Err()
}

// prepareIncrements is increments with the write an EXECUTE of a
// SQL-level prepared UPDATE, sent as mode sends it.
func prepareIncrements(t *testing.T, addr, db string, mode pgx.QueryExecMode, explicitTx bool) (int, int) {
	t.Helper()
	ctx := context.Background()
	conns := make([]*pgx.Conn, lostWorkers)
	for i := range conns {
		conns[i] = connect(t, addr, db)
		if _, err := conns[i].Exec(ctx, prepareCounter); err != nil {
			t.Fatal(err)
		}
	}
	once := func(c *pgx.Conn) error {
		q := pgx.Tx(nil)
		if explicitTx {
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx)
			q = tx
		}
		var n int
		var err error
		if q != nil {
			err = q.QueryRow(ctx, "SELECT n FROM counter WHERE id = 1").Scan(&n)
		} else {
			err = c.QueryRow(ctx, "SELECT n FROM counter WHERE id = 1").Scan(&n)
		}
		if err != nil {
			return err
		}
		if _, err := runSQL(ctx, c, mode, fmt.Sprintf("EXECUTE u(1, %d)", n+1)); err != nil {
			return err
		}
		if q != nil {
			return q.Commit(ctx)
		}
		return nil
	}
	retries := runIncrements(t, conns, once)
	var n int
	if err := direct(t, db).QueryRow(ctx, "SELECT n FROM counter WHERE id = 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n, retries
}

// TestTrackedPrepareLostUpdate: the lost-update workload with the write a
// SQL-level PREPAREd UPDATE, its EXECUTE sent as a simple query (psql and
// PgBouncer-era drivers) or in a Parse (pgx's exec mode), ends exactly at
// the number of increments through the proxy.
func TestTrackedPrepareLostUpdate(t *testing.T) {
	want := lostWorkers * lostRounds
	cases := []struct {
		name       string
		mode       pgx.QueryExecMode
		scope      string
		explicitTx bool
	}{
		{"simple session", pgx.QueryExecModeSimpleProtocol, "session", false},
		{"simple transaction", pgx.QueryExecModeSimpleProtocol, "transaction", true},
		{"parse session", pgx.QueryExecModeExec, "session", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := newDatabase(t, counterDDL)
			p := guardedProxy(t, config.Table{Name: "counter", Mode: "tracked", Scope: tc.scope})
			n, retries := prepareIncrements(t, p.Addr, db, tc.mode, tc.explicitTx)
			t.Logf("through the proxy n = %d after %d VL409 retries", n, retries)
			if n != want {
				t.Fatalf("through the proxy n = %d, want %d", n, want)
			}
		})
	}
}

// prepareDDL: a tracked counter, a required one (so that a reload can
// drop counter's policy and leave the database guarded), and a table of
// the same name in another schema.
const prepareDDL = counterDDL + `
CREATE TABLE rcounter (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int);
INSERT INTO rcounter (id, n) VALUES (1, 0), (2, 0);
INSERT INTO counter (id, n) VALUES (2, 0);
CREATE SCHEMA other;
CREATE TABLE other.counter (id int PRIMARY KEY, n int);`

func prepareTables() []config.Table {
	return []config.Table{
		{Name: "counter", Mode: "tracked", Scope: "session"},
		{Name: "rcounter", Mode: "required", Scope: "session"},
	}
}

func execTag(t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode, sql, want string) {
	t.Helper()
	tag, err := runSQL(context.Background(), c, mode, sql)
	if err != nil || tag.String() != want {
		t.Fatalf("%q: %q, %v; want %q", sql, tag, err, want)
	}
}

func execCode(t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode, sql, code string) *pgconn.PgError {
	t.Helper()
	_, err := runSQL(context.Background(), c, mode, sql)
	return wantCode(t, err, code)
}

func readN(t *testing.T, c *pgx.Conn, table string, id int) int {
	t.Helper()
	var n int
	if err := c.QueryRow(context.Background(), "SELECT n FROM "+table+" WHERE id = $1", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// wantN checks row id of table (read through c) holds n = want.
func wantN(t *testing.T, c *pgx.Conn, table string, id, want int) {
	t.Helper()
	if n := readN(t, c, table, id); n != want {
		t.Errorf("%s id %d: n = %d, want %d", table, id, n, want)
	}
}

var prepareModes = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"simple", pgx.QueryExecModeSimpleProtocol},
	{"parse", pgx.QueryExecModeExec},
	{"named", pgx.QueryExecModeCacheStatement},
}

// TestTrackedPrepareExecute: what an EXECUTE of an injected statement
// does, sent each way: checked against the version read (VL409 with the
// usual fields when it changed), moving on after the session's own write,
// unchecked for a row never read (tracked) or refused (required, unless
// the PREPARE carries its own version predicate).
func TestTrackedPrepareExecute(t *testing.T) {
	ctx := context.Background()
	for _, m := range prepareModes {
		t.Run(m.name, func(t *testing.T) {
			db := newDatabase(t, prepareDDL)
			p := guardedProxy(t, prepareTables()...)
			c := connect(t, p.Addr, db)
			execTag(t, c, m.mode, prepareCounter, "PREPARE")
			execTag(t, c, m.mode, "PREPARE r(int, int) AS UPDATE rcounter SET n = $2 WHERE id = $1", "PREPARE")
			execTag(t, c, m.mode, "PREPARE e(int, int, int) AS UPDATE rcounter SET n = $2 WHERE id = $1 AND version = $3", "PREPARE")

			// Never read: unchecked (tracked), refused (required).
			execTag(t, c, m.mode, "EXECUTE u(1, 10)", "UPDATE 1")
			pe := execCode(t, c, m.mode, "EXECUTE r(1, 10)", "VL428")
			if !strings.Contains(pe.Message, "public.rcounter") {
				t.Errorf("VL428 message %q does not name the table", pe.Message)
			}
			// Its own version predicate: runs as written.
			execTag(t, c, m.mode, "EXECUTE e(1, 11, 1)", "UPDATE 1")
			execCode(t, c, m.mode, "EXECUTE e(1, 12, 1)", "VL409")

			// Read, then written twice (the version moves on), then
			// changed by someone else: VL409.
			readN(t, c, "counter", 1)
			execTag(t, c, m.mode, "EXECUTE u(1, 20)", "UPDATE 1")
			execTag(t, c, m.mode, "EXECUTE u(1, 20)", "UPDATE 1")
			var v int
			if err := direct(t, db).QueryRow(ctx, "UPDATE counter SET n = 99, version = version + 1 WHERE id = 1 RETURNING version").Scan(&v); err != nil {
				t.Fatal(err)
			}
			pe = execCode(t, c, m.mode, "EXECUTE u(1, 20)", "VL409")
			if want := fmt.Sprintf("expected version %d, current version %d (id=1)", v-1, v); pe.Detail != want || pe.TableName != "counter" || pe.SchemaName != "public" || pe.ColumnName != "version" ||
				pe.Message != "stale record: public.counter was changed by another transaction" || pe.Hint != "re-read the row and retry" {
				t.Errorf("VL409: %q detail %q hint %q table %s.%s column %s; want %q", pe.Message, pe.Detail, pe.Hint, pe.SchemaName, pe.TableName, pe.ColumnName, want)
			}
			if n := readN(t, direct(t, db), "counter", 1); n != 99 {
				t.Errorf("n = %d after the stale EXECUTE, want 99", n)
			}
			// Read again: accepted.
			readN(t, c, "counter", 1)
			execTag(t, c, m.mode, "EXECUTE u(1, 21)", "UPDATE 1")
			// A rolled back write: the version it moved on to is undone.
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, "BEGIN", "BEGIN")
			execTag(t, c, m.mode, "EXECUTE u(1, 22)", "UPDATE 1")
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, "ROLLBACK", "ROLLBACK")
			execTag(t, c, m.mode, "EXECUTE u(1, 23)", "UPDATE 1")

			// Required: read first, then accepted and checked.
			readN(t, c, "rcounter", 2)
			execTag(t, c, m.mode, "EXECUTE r(2, 5)", "UPDATE 1")
			if _, err := direct(t, db).Exec(ctx, "UPDATE rcounter SET version = version + 1 WHERE id = 2"); err != nil {
				t.Fatal(err)
			}
			execCode(t, c, m.mode, "EXECUTE r(2, 6)", "VL409")
			// A key the proxy cannot read: NULL, unchecked; refused in required.
			execTag(t, c, m.mode, "EXECUTE u(0 + 1, 22)", "UPDATE 1")
			execCode(t, c, m.mode, "EXECUTE r(0 + 2, 6)", "VL428")
		})
	}
}

// TestTrackedPrepareFollowsOutcomes: the proxy believes what the server
// did with a PREPARE, DEALLOCATE or DISCARD ALL: a failed one changes
// nothing, and a statement later in the same query sees an earlier one.
func TestTrackedPrepareFollowsOutcomes(t *testing.T) {
	ctx := context.Background()
	db := newDatabase(t, prepareDDL)
	p := guardedProxy(t, prepareTables()...)
	c := connectMode(t, p.Addr, db, pgx.QueryExecModeSimpleProtocol)
	one := func(sql string) {
		t.Helper()
		var x int
		if err := c.QueryRow(ctx, sql).Scan(&x); err != nil || x != 1 {
			t.Fatalf("%q: %d, %v", sql, x, err)
		}
	}

	// The name is taken: the injected PREPARE fails, the old statement stays.
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "PREPARE u AS SELECT 1", "PREPARE")
	execCode(t, c, pgx.QueryExecModeSimpleProtocol, prepareCounter, "42P05")
	one("EXECUTE u")
	// In an aborted transaction: the same.
	if _, err := c.Exec(ctx, "DEALLOCATE u; PREPARE u AS SELECT 1"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Exec(ctx, "BEGIN; SELECT 1/0")
	wantCode(t, err, "22012")
	execCode(t, c, pgx.QueryExecModeSimpleProtocol, "DEALLOCATE u", "25P02")
	execCode(t, c, pgx.QueryExecModeSimpleProtocol, prepareCounter, "25P02")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "ROLLBACK", "ROLLBACK")
	one("EXECUTE u")

	// An injected statement survives a DEALLOCATE that fails.
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "DEALLOCATE u", "DEALLOCATE")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, prepareCounter, "PREPARE")
	_, err = c.Exec(ctx, "BEGIN; SELECT 1/0")
	wantCode(t, err, "22012")
	execCode(t, c, pgx.QueryExecModeSimpleProtocol, "DEALLOCATE u", "25P02")
	execCode(t, c, pgx.QueryExecModeSimpleProtocol, "DISCARD ALL", "25P02")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "ROLLBACK", "ROLLBACK")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "EXECUTE u(1, 1)", "UPDATE 1")

	// DEALLOCATE, DEALLOCATE ALL and DISCARD ALL forget it; in one query
	// with the statements after them.
	for _, drop := range []string{"DEALLOCATE u", "DEALLOCATE ALL", "DISCARD ALL"} {
		if _, err := c.Exec(ctx, drop+"; PREPARE u AS SELECT 1"); err != nil {
			t.Fatalf("%s: %v", drop, err)
		}
		one("EXECUTE u")
		if _, err := c.Exec(ctx, "DEALLOCATE u; "+prepareCounter); err != nil {
			t.Fatal(err)
		}
	}
	// Prepared and executed in one query, then dropped and prepared
	// unguarded in the next.
	readN(t, c, "counter", 1)
	if _, err := c.Exec(ctx, "DEALLOCATE u; "+prepareCounter+"; EXECUTE u(1, 2); SELECT 1"); err != nil {
		t.Fatal(err)
	}
	bumpCounter(t, db, 1)
	_, err = c.Exec(ctx, "SELECT 1; EXECUTE u(1, 3)")
	wantCode(t, err, "VL409")
	if _, err := c.Exec(ctx, "DEALLOCATE u; PREPARE u AS SELECT 1"); err != nil {
		t.Fatal(err)
	}
	one("EXECUTE u")

	// Another search_path: the EXECUTE still gets its argument while the
	// name reaches the same table. Once it reaches another table (which
	// has no version column), the statement runs there, as PostgreSQL,
	// which analyzes a prepared statement again under a new search_path,
	// would run it (TestTrackedPrepareSearchPath).
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "DEALLOCATE u", "DEALLOCATE")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, prepareCounter, "PREPARE")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "SET search_path TO public, other", "SET")
	readN(t, c, "counter", 1)
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "EXECUTE u(1, 4)", "UPDATE 1")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "SET search_path TO pg_temp, public; EXECUTE u(1, 5)", "UPDATE 1")
	if n := readN(t, direct(t, db), "public.counter", 1); n != 5 {
		t.Errorf("public.counter n = %d, want 5", n)
	}
	if _, err := direct(t, db).Exec(ctx, "INSERT INTO other.counter (id, n) VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "SET search_path TO other", "SET")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "EXECUTE u(1, 6)", "UPDATE 1")
	if n, m := readN(t, direct(t, db), "other.counter", 1), readN(t, direct(t, db), "public.counter", 1); n != 6 || m != 5 {
		t.Errorf("other.counter n = %d, public.counter n = %d; want 6 and 5", n, m)
	}
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "RESET search_path", "RESET")
	execTag(t, c, pgx.QueryExecModeSimpleProtocol, "EXECUTE u(1, 6)", "UPDATE 1") // in its Inject form again

	// Sent in a Parse: PREPARE and DEALLOCATE are followed too.
	x := connect(t, p.Addr, db)
	execTag(t, x, pgx.QueryExecModeExec, prepareCounter, "PREPARE")
	readN(t, x, "counter", 2)
	bumpCounter(t, db, 2)
	execCode(t, x, pgx.QueryExecModeExec, "EXECUTE u(2, 7)", "VL409")
	execTag(t, x, pgx.QueryExecModeExec, "DEALLOCATE u", "DEALLOCATE")
	execTag(t, x, pgx.QueryExecModeExec, "PREPARE u AS SELECT 1", "PREPARE")
	execTag(t, x, pgx.QueryExecModeExec, "EXECUTE u", "SELECT 1")

	// What a client can see: the statement as the server holds it.
	var stmt, types string
	if err := c.QueryRow(ctx, "SELECT statement, parameter_types::text FROM pg_catalog.pg_prepared_statements WHERE name = 'u'").Scan(&stmt, &types); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stmt, "$3 IS NULL") || types != "{integer,integer,integer}" {
		t.Errorf("pg_prepared_statements: %q %s", stmt, types)
	}
}

// TestTrackedPrepareSearchPath: PostgreSQL analyzes a prepared statement
// again when the session's search_path has changed since it was prepared.
// A statement the proxy prepared in its Inject form is prepared again from
// the client's text before an EXECUTE under another resolution: as written
// where the name reaches an unguarded table (other.counter, without a
// version column), in its Inject form again, checked, once it reaches the
// tracked table again. However the EXECUTE is sent: a simple query, alone
// or after the SET in one string; a Parse of the EXECUTE, unnamed (exec
// mode) or named and bound again (cache-statement mode); a Bind of the
// statement itself.
func TestTrackedPrepareSearchPath(t *testing.T) {
	ctx := context.Background()
	for _, m := range prepareModes {
		t.Run(m.name, func(t *testing.T) {
			db := newDatabase(t, prepareDDL+"\nINSERT INTO other.counter (id, n) VALUES (1, 0);")
			p := guardedProxy(t, prepareTables()...)
			c := connect(t, p.Addr, db)
			d := direct(t, db)
			want := func(table string, n int) {
				t.Helper()
				if got := readN(t, d, table, 1); got != n {
					t.Errorf("%s n = %d, want %d", table, got, n)
				}
			}
			execTag(t, c, m.mode, prepareCounter, "PREPARE")
			readN(t, c, "counter", 1)
			execTag(t, c, m.mode, "SET search_path TO other", "SET")
			execTag(t, c, m.mode, "EXECUTE u(1, 6)", "UPDATE 1")
			want("other.counter", 6)
			want("public.counter", 0)
			execTag(t, c, m.mode, "EXECUTE u(1, 7)", "UPDATE 1")
			want("other.counter", 7)

			// The tracked table again: checked.
			execTag(t, c, m.mode, "RESET search_path", "RESET")
			bumpCounter(t, db, 1)
			execCode(t, c, m.mode, "EXECUTE u(1, 8)", "VL409")
			want("public.counter", 0)
			readN(t, c, "counter", 1)
			execTag(t, c, m.mode, "EXECUTE u(1, 8)", "UPDATE 1")
			want("public.counter", 8)
			want("other.counter", 7)

			// Bound by the extended protocol: the client's two arguments
			// reach other.counter; back, the third is the version.
			bindU := func(n string) pgconn.CommandTag {
				t.Helper()
				res := c.PgConn().ExecPrepared(ctx, "u", [][]byte{[]byte("1"), []byte(n)}, nil, nil).Read()
				if res.Err != nil {
					t.Fatalf("Bind of u: %v", res.Err)
				}
				return res.CommandTag
			}
			execTag(t, c, m.mode, "SET search_path TO other", "SET")
			if tag := bindU("9"); tag.String() != "UPDATE 1" {
				t.Errorf("Bind of u under other: %q", tag)
			}
			want("other.counter", 9)
			execTag(t, c, m.mode, "RESET search_path", "RESET")
			bumpCounter(t, db, 1)
			res := c.PgConn().ExecPrepared(ctx, "u", [][]byte{[]byte("1"), []byte("10")}, nil, nil).Read()
			wantCode(t, res.Err, "VL409")
			readN(t, c, "counter", 1)
			if tag := bindU("10"); tag.String() != "UPDATE 1" {
				t.Errorf("Bind of u: %q", tag)
			}
			want("public.counter", 10)

			// Inside EXPLAIN ANALYZE, which runs it, and EXPLAIN.
			execTag(t, c, m.mode, "SET search_path TO other", "SET")
			execTag(t, c, m.mode, "EXPLAIN ANALYZE EXECUTE u(1, 11)", "EXPLAIN")
			want("other.counter", 11)
			execTag(t, c, m.mode, "RESET search_path", "RESET")
			execTag(t, c, m.mode, "EXPLAIN EXECUTE u(1, 11)", "EXPLAIN")

			// Nothing of the proxy's stays (neither the refresh nor the
			// statement that raised the stale errors); u is the client's,
			// in its Inject form.
			var names, stmt string
			if err := c.QueryRow(ctx, "SELECT pg_catalog.string_agg(name, ',' ORDER BY name), pg_catalog.max(statement) FILTER (WHERE name = 'u') FROM pg_catalog.pg_prepared_statements WHERE name NOT LIKE 'stmtcache%'").Scan(&names, &stmt); err != nil {
				t.Fatal(err)
			}
			if names != "u" || !strings.Contains(stmt, "$3 IS NULL") {
				t.Errorf("pg_prepared_statements: %q, u: %q", names, stmt)
			}
		})
	}
}

// TestTrackedPrepareSearchPathInOneQuery: the EXECUTE right after the SET
// in one simple query runs under the new resolution, and so does the one
// after a RESET back.
func TestTrackedPrepareSearchPathInOneQuery(t *testing.T) {
	db := newDatabase(t, prepareDDL+"\nINSERT INTO other.counter (id, n) VALUES (1, 0);")
	p := guardedProxy(t, prepareTables()...)
	c := connectMode(t, p.Addr, db, pgx.QueryExecModeSimpleProtocol)
	d := direct(t, db)
	simple := pgx.QueryExecModeSimpleProtocol
	execTag(t, c, simple, prepareCounter, "PREPARE")
	readN(t, c, "counter", 1)
	execTag(t, c, simple, "SET search_path TO other; EXECUTE u(1, 6)", "UPDATE 1")
	wantN(t, d, "other.counter", 1, 6)
	bumpCounter(t, db, 1)
	execCode(t, c, simple, "SELECT 1; RESET search_path; EXECUTE u(1, 7)", "VL409")
	wantN(t, d, "public.counter", 1, 0)
	// The failed query's RESET was rolled back with it: under other still.
	wantN(t, c, "counter", 1, 6)
	execTag(t, c, simple, "RESET search_path", "RESET")
	readN(t, c, "counter", 1)
	execTag(t, c, simple, "SET search_path TO other; EXECUTE u(1, 8); RESET search_path; EXECUTE u(1, 9)", "UPDATE 1")
	wantN(t, d, "other.counter", 1, 8)
	wantN(t, d, "public.counter", 1, 9)
	// Under a search_path where the name reaches nothing, the client gets
	// PostgreSQL's own error, and the statement is kept for later.
	execCode(t, c, simple, "SET search_path TO pg_temp; EXECUTE u(1, 10)", "42P01")
	execTag(t, c, simple, "RESET search_path; EXECUTE u(1, 10)", "UPDATE 1")
	wantN(t, d, "public.counter", 1, 10)

	// Bound by the extended protocol, by a client that prepares nothing
	// else that way.
	execTag(t, c, simple, "SET search_path TO other", "SET")
	res := c.PgConn().ExecPrepared(context.Background(), "u", [][]byte{[]byte("1"), []byte("11")}, nil, nil).Read()
	if res.Err != nil || res.CommandTag.String() != "UPDATE 1" {
		t.Errorf("Bind of u under other: %q, %v", res.CommandTag, res.Err)
	}
	wantN(t, d, "other.counter", 1, 11)
	// Inside EXPLAIN too, either way.
	execTag(t, c, simple, "RESET search_path; EXPLAIN EXECUTE u(1, 12)", "EXPLAIN")
	execTag(t, c, simple, "SET search_path TO other; EXPLAIN ANALYZE EXECUTE u(1, 12)", "EXPLAIN")
	wantN(t, d, "other.counter", 1, 12)
	// Prepared right after the SET that makes its name the tracked table.
	execTag(t, c, simple, "DEALLOCATE u", "DEALLOCATE")
	execTag(t, c, simple, "RESET search_path; "+prepareCounter, "PREPARE")
	execTag(t, c, simple, "SET search_path TO other; EXECUTE u(1, 13)", "UPDATE 1")
	wantN(t, d, "other.counter", 1, 13)
}

// TestTrackedPrepareSearchPathBatches: prepared again inside a transaction
// block (the statement stays prepared when the block rolls back, as
// PostgreSQL's does), inside a batch of the extended protocol after the SET
// that changes the names, and, where the client's text does not analyze
// under the new names, the client gets PostgreSQL's error and the
// statement works again once the names are back.
func TestTrackedPrepareSearchPathBatches(t *testing.T) {
	ctx := context.Background()
	db := newDatabase(t, prepareDDL+"\nINSERT INTO other.counter (id, n) VALUES (1, 0);")
	p := guardedProxy(t, prepareTables()...)
	d := direct(t, db)
	want := func(table string, n int) {
		t.Helper()
		if got := readN(t, d, table, 1); got != n {
			t.Errorf("%s n = %d, want %d", table, got, n)
		}
	}
	simple, exec := pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec

	c := connect(t, p.Addr, db)
	execTag(t, c, simple, prepareCounter, "PREPARE")
	readN(t, c, "counter", 1)
	execTag(t, c, simple, "BEGIN", "BEGIN")
	execTag(t, c, simple, "SET search_path TO other", "SET")
	execTag(t, c, simple, "EXECUTE u(1, 1)", "UPDATE 1")
	want("other.counter", 0) // not committed
	execTag(t, c, simple, "ROLLBACK", "ROLLBACK")
	want("other.counter", 0)
	bumpCounter(t, db, 1)
	execCode(t, c, simple, "EXECUTE u(1, 2)", "VL409")
	readN(t, c, "counter", 1)
	execTag(t, c, simple, "EXECUTE u(1, 2)", "UPDATE 1")
	want("public.counter", 2)

	// Not analyzable under the new names: the error at the EXECUTE's
	// Bind, then all is as it was.
	execTag(t, d, simple, prepareCounter, "PREPARE")
	execTag(t, d, simple, "SET search_path TO pg_temp", "SET")
	de := execCode(t, d, simple, "EXECUTE u(1, 3)", "42P01")
	execTag(t, d, simple, "RESET search_path", "RESET")
	execTag(t, c, exec, "SET search_path TO pg_temp", "SET")
	for _, mode := range []pgx.QueryExecMode{exec, simple} {
		pe := execCode(t, c, mode, "EXECUTE u(1, 3)", "42P01")
		if pe.Message != de.Message || pe.Position != de.Position {
			t.Errorf("%v: %q at %d; PostgreSQL: %q at %d", mode, pe.Message, pe.Position, de.Message, de.Position)
		}
	}
	execTag(t, c, exec, "RESET search_path", "RESET")
	execTag(t, c, exec, "EXECUTE u(1, 3)", "UPDATE 1")
	want("public.counter", 3)

	for _, mode := range []pgx.QueryExecMode{exec, pgx.QueryExecModeCacheStatement} {
		c := connectMode(t, p.Addr, db, mode)
		execTag(t, c, simple, prepareCounter, "PREPARE")
		b := &pgx.Batch{}
		b.Queue("SET search_path TO other")
		b.Queue("EXECUTE u(1, 4)")
		b.Queue("EXECUTE u(1, 14)") // its statement made before u was prepared again
		b.Queue("RESET search_path")
		b.Queue("EXECUTE u(1, 5)")
		br := c.SendBatch(ctx, b)
		for _, tag := range []string{"SET", "UPDATE 1", "UPDATE 1", "RESET", "UPDATE 1"} {
			got, err := br.Exec()
			if err != nil || got.String() != tag {
				t.Errorf("%v: batch: %q, %v; want %q", mode, got, err, tag)
			}
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
		want("other.counter", 14)
		want("public.counter", 5)
		execTag(t, c, simple, "UPDATE other.counter SET n = 0", "UPDATE 1")
		readN(t, c, "counter", 1)
		bumpCounter(t, db, 1)
		execCode(t, c, simple, "EXECUTE u(1, 6)", "VL409")
	}
	bumpCounter(t, db, 1)
	execCode(t, c, simple, "EXECUTE u(1, 6)", "VL409")
}

// TestPrepareSearchPathExplicit: in explicit mode the server holds a
// guarded PREPARE with the version increment the proxy added; under
// another search_path it is prepared again from the client's text, and
// back under the guarded table, with the increment again.
func TestPrepareSearchPathExplicit(t *testing.T) {
	db := newDatabase(t, prepareDDL+"\nINSERT INTO other.counter (id, n) VALUES (1, 0);")
	p := guardedProxy(t, config.Table{Name: "counter"})
	c := connectMode(t, p.Addr, db, pgx.QueryExecModeSimpleProtocol)
	d := direct(t, db)
	simple := pgx.QueryExecModeSimpleProtocol
	version := func() int {
		t.Helper()
		var v int
		if err := d.QueryRow(context.Background(), "SELECT version FROM public.counter WHERE id = 1").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	execTag(t, c, simple, prepareCounter, "PREPARE")
	execTag(t, c, simple, "SET search_path TO other", "SET")
	execTag(t, c, simple, "EXECUTE u(1, 6)", "UPDATE 1")
	wantN(t, d, "other.counter", 1, 6)
	v := version()
	execTag(t, c, simple, "RESET search_path", "RESET")
	execTag(t, c, simple, "EXECUTE u(1, 7)", "UPDATE 1")
	if n, w := readN(t, d, "public.counter", 1), version(); n != 7 || w != v+1 {
		t.Errorf("public.counter n = %d version %d, want 7 and %d", n, w, v+1)
	}
}

func bumpCounter(t *testing.T, db string, id int) {
	t.Helper()
	if _, err := direct(t, db).Exec(context.Background(), "UPDATE counter SET version = version + 1 WHERE id = $1", id); err != nil {
		t.Fatal(err)
	}
}

// TestTrackedPrepareWrapped: an EXECUTE inside EXPLAIN [ANALYZE] or
// CREATE TABLE AS gets the extra argument too: EXPLAIN ANALYZE runs the
// write unchecked (its command tag says nothing) and is refused in
// required mode; CREATE TABLE AS gets the server's own answer.
func TestTrackedPrepareWrapped(t *testing.T) {
	for _, m := range prepareModes[:2] {
		t.Run(m.name, func(t *testing.T) {
			db := newDatabase(t, prepareDDL)
			p := guardedProxy(t, prepareTables()...)
			c := connect(t, p.Addr, db)
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, prepareCounter, "PREPARE")
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, "PREPARE r(int, int) AS UPDATE rcounter SET n = $2 WHERE id = $1", "PREPARE")
			readN(t, c, "counter", 1)
			execTag(t, c, m.mode, "EXPLAIN (ANALYZE, COSTS off) EXECUTE u(1, 7)", "EXPLAIN")
			if n := readN(t, direct(t, db), "counter", 1); n != 7 {
				t.Errorf("n = %d after EXPLAIN ANALYZE EXECUTE, want 7", n)
			}
			// Its own write is not followed: the row is forgotten, the next
			// write unchecked rather than refused.
			execTag(t, c, m.mode, "EXECUTE u(1, 8)", "UPDATE 1")
			execTag(t, c, m.mode, "EXPLAIN EXECUTE u(1, 9)", "EXPLAIN")
			execCode(t, c, m.mode, "CREATE TABLE t AS EXECUTE u(1, 9)", "42809") // not a SELECT
			execCode(t, c, m.mode, "EXPLAIN ANALYZE EXECUTE r(1, 9)", "VL428")
			readN(t, c, "rcounter", 1)
			execCode(t, c, m.mode, "EXPLAIN ANALYZE EXECUTE r(1, 9)", "VL428")
			execTag(t, c, m.mode, "EXPLAIN EXECUTE r(1, 9)", "EXPLAIN")
			if n := readN(t, direct(t, db), "counter", 1); n != 8 {
				t.Errorf("n = %d, want 8", n)
			}
		})
	}
}

// TestTrackedPrepareReload: a reload between PREPARE and EXECUTE that
// changes the table's mode or removes its policy: the statement the server
// holds still has the extra parameter, and every EXECUTE supplies it.
func TestTrackedPrepareReload(t *testing.T) {
	ctx := context.Background()
	for _, next := range []struct {
		name   string
		tables []config.Table
	}{
		{"policy removed", []config.Table{{Name: "rcounter"}}},
		{"every policy removed", []config.Table{{Name: "nosuchtable"}}},
		{"explicit mode", []config.Table{{Name: "counter"}, {Name: "rcounter"}}},
		{"observe mode", []config.Table{{Name: "counter", Mode: "observe"}}},
	} {
		t.Run(next.name, func(t *testing.T) {
			db := newDatabase(t, prepareDDL)
			p := guardedProxy(t, prepareTables()...)
			c := connectMode(t, p.Addr, db, pgx.QueryExecModeSimpleProtocol)
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, prepareCounter, "PREPARE")
			readN(t, c, "counter", 1)
			// Bound by the extended protocol: the injected parameter too.
			bindU := func(n string) {
				t.Helper()
				res := c.PgConn().ExecPrepared(ctx, "u", [][]byte{[]byte("1"), []byte(n)}, nil, nil).Read()
				if res.Err != nil || res.CommandTag.String() != "UPDATE 1" {
					t.Fatalf("Bind of u: %q %v", res.CommandTag, res.Err)
				}
			}
			bindU("2")
			if err := p.Srv.Reload(newConfig(t, pg.Addr(), next.tables...)); err != nil {
				t.Fatal(err)
			}
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, "EXECUTE u(1, 3)", "UPDATE 1")
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, "SELECT 1; EXECUTE u(1, 4)", "UPDATE 1")
			execTag(t, c, pgx.QueryExecModeExec, "EXECUTE u(1, 5)", "UPDATE 1")
			bindU("6")
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, "DEALLOCATE u", "DEALLOCATE")
			execTag(t, c, pgx.QueryExecModeSimpleProtocol, "PREPARE u AS SELECT 1", "PREPARE")
			var x int
			if err := c.QueryRow(ctx, "EXECUTE u").Scan(&x); err != nil || x != 1 {
				t.Fatalf("EXECUTE u: %d, %v", x, err)
			}
		})
	}
}
