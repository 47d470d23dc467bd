package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
)

// Tracked mode: the proxy remembers the versions a session read and checks
// its later writes of those rows, for applications that never mention the
// version column.

const counterDDL = `CREATE TABLE counter (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int);
INSERT INTO counter (id, n) VALUES (1, 0);
CREATE TABLE xcounter (id int PRIMARY KEY, n int);
INSERT INTO xcounter (id, n) VALUES (1, 0);`

const (
	lostWorkers = 8
	lostRounds  = 50
)

// increments runs lostWorkers connections each adding 1 to n lostRounds
// times by read-modify-write, retrying on VL409, and returns the final n
// and the number of VL409 retries.
func increments(t *testing.T, addr, db, table string, explicitTx bool) (int, int) {
	t.Helper()
	conns := make([]*pgx.Conn, lostWorkers)
	for i := range conns {
		conns[i] = connect(t, addr, db)
	}
	retries := runIncrements(t, conns, func(c *pgx.Conn) error {
		return increment(context.Background(), c, table, explicitTx)
	})
	var n int
	if err := direct(t, db).QueryRow(context.Background(), "SELECT n FROM "+table+" WHERE id = 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n, retries
}

// runIncrements runs once lostRounds times on each connection, all
// connections at once, retrying each round on VL409, and returns the
// number of retries. It fails the test if a round fails otherwise, or if
// VL409 never stops.
func runIncrements(t *testing.T, conns []*pgx.Conn, once func(*pgx.Conn) error) int {
	t.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		retries int
		errs    []error
	)
	for _, c := range conns {
		wg.Add(1)
		go func(c *pgx.Conn) {
			defer wg.Done()
			for r := 0; r < lostRounds; r++ {
				for {
					err := once(c)
					if err == nil {
						break
					}
					var pe *pgconn.PgError
					if errors.As(err, &pe) && pe.Code == "VL409" {
						mu.Lock()
						retries++
						tooMany := retries > 100*lostWorkers*lostRounds
						mu.Unlock()
						if !tooMany {
							continue
						}
					}
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		}(c)
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d workers failed; first: %v", len(errs), errs[0])
	}
	return retries
}

// increment is the application's read-modify-write, unaware of versions.
func increment(ctx context.Context, c *pgx.Conn, table string, explicitTx bool) error {
	if !explicitTx {
		var n int
		if err := c.QueryRow(ctx, "SELECT n FROM "+table+" WHERE id = 1").Scan(&n); err != nil {
			return err
		}
		_, err := c.Exec(ctx, "UPDATE "+table+" SET n = $1 WHERE id = 1", n+1)
		return err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var n int
	if err := tx.QueryRow(ctx, "SELECT n FROM "+table+" WHERE id = 1").Scan(&n); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "UPDATE "+table+" SET n = $1 WHERE id = 1", n+1); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// TestTrackedLostUpdate is the demonstration: the read-modify-write
// loses updates against PostgreSQL directly and none through the proxy in
// tracked mode, in scope transaction (explicit transactions), scope session
// (no explicit transaction), and with type xmin on a table without a
// version column.
func TestTrackedLostUpdate(t *testing.T) {
	want := lostWorkers * lostRounds
	cases := []struct {
		name       string
		table      config.Table
		explicitTx bool
	}{
		{"transaction", config.Table{Name: "counter", Mode: "tracked"}, true},
		{"session", config.Table{Name: "counter", Mode: "tracked", Scope: "session"}, false},
		{"xmin", config.Table{Name: "xcounter", Mode: "tracked", Type: "xmin"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := newDatabase(t, counterDDL)
			table := tc.table.Name
			directN, _ := increments(t, pg.Addr(), db, table, tc.explicitTx)
			if directN >= want {
				t.Logf("directly against PostgreSQL no update was lost this time (n = %d)", directN)
			}
			if _, err := direct(t, db).Exec(context.Background(), "UPDATE "+table+" SET n = 0"); err != nil {
				t.Fatal(err)
			}
			p := guardedProxy(t, tc.table)
			n, retries := increments(t, p.Addr, db, table, tc.explicitTx)
			t.Logf("%s: directly n = %d of %d; through the proxy n = %d after %d VL409 retries", tc.name, directN, want, n, retries)
			if n != want {
				t.Fatalf("through the proxy n = %d, want %d", n, want)
			}
			if directN >= want {
				t.Errorf("the direct run lost nothing (n = %d): the demonstration needs contention", directN)
			}
		})
	}
}

const shapesDDL = `CREATE TABLE addresses (id bigint PRIMARY KEY, version int NOT NULL DEFAULT 1, county text, state text);
INSERT INTO addresses (id, county, state) VALUES (1, 'Pinellas', 'FL'), (2, 'Guilford', 'NC');
CREATE TABLE notes (id int PRIMARY KEY, address_id bigint, body text);
INSERT INTO notes VALUES (10, 1, 'first'), (11, 2, 'second');`

// shapeQueries are reads (and a RETURNING write) on a tracked table in the
// shapes applications and ORMs send; each pins row id 1 so that a write
// of it after the read can be checked.
var shapeQueries = []struct {
	name string
	sql  string
	args []any
}{
	{"column", "SELECT county FROM addresses WHERE id = 1", nil},
	{"star", "SELECT * FROM addresses WHERE id = 1", nil},
	{"aliased", "SELECT a.county AS c, a.state FROM addresses AS a WHERE a.id = $1", []any{1}},
	{"joined", "SELECT n.body, a.county FROM notes n JOIN addresses a ON a.id = n.address_id WHERE a.id = $1", []any{1}},
	{"rails", `SELECT "addresses".* FROM "addresses" WHERE "addresses"."id" = $1 LIMIT $2`, []any{1, 1}},
	{"hibernate", `select a1_0.id,a1_0.county,a1_0.state from addresses a1_0 where a1_0.id=$1`, []any{1}},
	{"for update", "SELECT county FROM addresses WHERE id = $1 FOR UPDATE", []any{1}},
	{"cte", "WITH x AS (SELECT 1 AS one) SELECT a.state FROM addresses a, x WHERE a.id = x.one", nil},
	{"returning", "UPDATE addresses SET county = county WHERE id = $1 RETURNING county, state", []any{1}},
}

type resultShape struct {
	fields []string // name, type OID, table OID, attribute number, format
	rows   [][]string
}

func shapeOf(t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode, sql string, args []any) resultShape {
	t.Helper()
	rows, err := c.Query(context.Background(), sql, append([]any{mode}, args...)...)
	if err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	defer rows.Close()
	var sh resultShape
	for _, f := range rows.FieldDescriptions() {
		sh.fields = append(sh.fields, fmt.Sprintf("%s/%d/%d/%d/%d", f.Name, f.DataTypeOID, f.TableOID, f.TableAttributeNumber, f.Format))
	}
	for rows.Next() {
		var row []string
		for _, v := range rows.RawValues() {
			row = append(row, fmt.Sprintf("%x", v))
		}
		sh.rows = append(sh.rows, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	return sh
}

// TestTrackedResultShapes: the client never sees an added column (field
// count, names, types, table and attribute, format, values equal to the
// same query sent directly), in every pgx mode, and the read is tracked
// (a write of the row after another session changed it is refused).
func TestTrackedResultShapes(t *testing.T) {
	for _, m := range []string{"tracked", "observe"} {
		t.Run(m, func(t *testing.T) { testResultShapes(t, m) })
	}
}

func testResultShapes(t *testing.T, tableMode string) {
	db := newDatabase(t, shapesDDL)
	p := guardedProxy(t, config.Table{Name: "addresses", Mode: tableMode})
	ctx := context.Background()
	other := direct(t, db)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			d := connectMode(t, pg.Addr(), db, mode)
			for _, q := range shapeQueries {
				want := shapeOf(t, d, mode, q.sql, q.args)
				got := shapeOf(t, c, mode, q.sql, q.args)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s: through the proxy %v\n directly %v", q.name, got, want)
				}
				if q.name == "for update" || q.name == "returning" || tableMode == "observe" {
					continue // the row is locked: no other session can change it; observe refuses nothing
				}
				// Tracked: read in a transaction, changed by another
				// session, written back: refused.
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				shapeOf(t, c, mode, q.sql, q.args)
				if _, err := other.Exec(ctx, "UPDATE addresses SET version = version + 1 WHERE id = 1"); err != nil {
					t.Fatal(err)
				}
				_, err = tx.Exec(ctx, "UPDATE addresses SET county = 'X' WHERE id = $1", 1)
				if pe := pgErr(t, err); pe.Code != "VL409" {
					t.Errorf("%s: write after the row changed: %s %s, want VL409", q.name, pe.Code, pe.Message)
				}
				tx.Rollback(ctx)
			}
		})
	}
}

// TestTrackedDescribe: a prepared statement described before and after it
// runs shows the client's fields and parameters only.
func TestTrackedDescribe(t *testing.T) {
	db := newDatabase(t, shapesDDL)
	p := guardedProxy(t, config.Table{Name: "addresses", Mode: "tracked"})
	ctx := context.Background()
	c := connect(t, p.Addr, db)
	d := direct(t, db)
	for i, sql := range []string{
		"SELECT county FROM addresses WHERE id = $1",
		"SELECT * FROM addresses WHERE id = $1",
		"UPDATE addresses SET county = $2 WHERE id = $1",
		"UPDATE addresses SET county = $2 WHERE id = $1 RETURNING state",
		"DELETE FROM addresses WHERE id = $1 AND false",
	} {
		describe := func(conn *pgx.Conn) string {
			sd, err := conn.Prepare(ctx, fmt.Sprintf("s%d", i), sql)
			if err != nil {
				t.Fatalf("%q: %v", sql, err)
			}
			var fs []string
			for _, f := range sd.Fields {
				fs = append(fs, fmt.Sprintf("%s/%d/%d/%d", f.Name, f.DataTypeOID, f.TableOID, f.TableAttributeNumber))
			}
			return fmt.Sprint(sd.ParamOIDs, fs)
		}
		want := describe(d)
		if got := describe(c); got != want {
			t.Errorf("%q described: %s, directly %s", sql, got, want)
		}
		args := []any{1}
		if len(want) > 0 && sql[0] == 'U' {
			args = append(args, "Pinellas")
		}
		if _, err := c.Exec(ctx, fmt.Sprintf("s%d", i), args...); err != nil {
			t.Fatalf("%q: %v", sql, err)
		}
		if err := c.Deallocate(ctx, fmt.Sprintf("s%d", i)); err != nil {
			t.Fatal(err)
		}
		if got := describe(c); got != want {
			t.Errorf("%q described after a run: %s, directly %s", sql, got, want)
		}
	}
}

// TestTrackedPsql: psql's simple protocol, one statement or several in one
// string, shows the same as directly.
func TestTrackedPsql(t *testing.T) {
	db := newDatabase(t, shapesDDL)
	p := guardedProxy(t, config.Table{Name: "addresses", Mode: "tracked"})
	for _, sql := range []string{
		"SELECT * FROM addresses WHERE id = 1",
		"SELECT a.county AS c FROM addresses a ORDER BY a.id",
		"SELECT * FROM addresses WHERE id = 1; SELECT n.body, a.state FROM notes n JOIN addresses a ON a.id = n.address_id ORDER BY 1; UPDATE addresses SET county = county WHERE id = 2 RETURNING county, state",
		"BEGIN; SELECT county FROM addresses WHERE id = 1; UPDATE addresses SET county = county WHERE id = 1; SELECT state FROM addresses WHERE id = 2; COMMIT",
		"UPDATE addresses SET county = county WHERE id = 1; SELECT * FROM addresses WHERE id = 2",
	} {
		psqlSame(t, p.Addr, db, sql)
	}
}

// bump changes row id's version behind the session's back.
func bump(t *testing.T, db string, id int) {
	t.Helper()
	if _, err := direct(t, db).Exec(context.Background(), "UPDATE addresses SET version = version + 1 WHERE id = $1", id); err != nil {
		t.Fatal(err)
	}
}

func execOK(t *testing.T, c *pgx.Conn, what, sql string, args ...any) {
	t.Helper()
	tag, err := c.Exec(context.Background(), sql, args...)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("%s: %q: %v %v", what, sql, tag, err)
	}
}

func readCounty(t *testing.T, c *pgx.Conn, id int) {
	t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), "SELECT county FROM addresses WHERE id = $1", id).Scan(&s); err != nil {
		t.Fatal(err)
	}
}

// TestTrackedWrites: own writes move the remembered version on; a row
// never read is written unchecked (refused in required mode); rollbacks
// undo the session's own steps; scopes and the cap, in every pgx mode.
func TestTrackedWrites(t *testing.T) {
	ctx := context.Background()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			db := newDatabase(t, shapesDDL+`INSERT INTO addresses (id, county) VALUES (3, 'c'), (4, 'd');`)
			session := guardedProxy(t, config.Table{Name: "addresses", Mode: "tracked", Scope: "session"})
			c := connectMode(t, session.Addr, db, mode)

			// Own write, then a second write: not refused by the first.
			readCounty(t, c, 1)
			execOK(t, c, "first write", "UPDATE addresses SET county = 'a' WHERE id = $1", 1)
			execOK(t, c, "second write", "UPDATE addresses SET county = 'b' WHERE id = $1", 1)
			// ... and still checked against someone else's write.
			bump(t, db, 1)
			_, err := c.Exec(ctx, "UPDATE addresses SET county = 'c' WHERE id = $1", 1)
			pe := wantCode(t, err, "VL409")
			if !strings.Contains(pe.Detail, "expected version 3, current version 4 (id=1)") {
				t.Errorf("stale detail %q", pe.Detail)
			}
			// A row never read: unchecked, still incremented.
			execOK(t, c, "never read", "UPDATE addresses SET county = 'x' WHERE id = $1", 2)
			if v := version(t, direct(t, db), "addresses", 2); v != 2 {
				t.Errorf("unchecked write: version %d, want 2", v)
			}
			// A write rolled back does not leave the session refused.
			readCounty(t, c, 2)
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			execOK(t, c, "write to roll back", "UPDATE addresses SET county = 'y' WHERE id = $1", 2)
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			execOK(t, c, "write after rollback", "UPDATE addresses SET county = 'z' WHERE id = $1", 2)
			// ROLLBACK TO SAVEPOINT.
			tx, err = c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			readCounty(t, c, 2)
			if _, err := c.Exec(ctx, "SAVEPOINT s1"); err != nil {
				t.Fatal(err)
			}
			execOK(t, c, "write to roll back to a savepoint", "UPDATE addresses SET county = 'y' WHERE id = $1", 2)
			if _, err := c.Exec(ctx, "ROLLBACK TO SAVEPOINT s1"); err != nil {
				t.Fatal(err)
			}
			execOK(t, c, "write after rollback to savepoint", "UPDATE addresses SET county = 'w' WHERE id = $1", 2)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			// ... exactly: the step before the savepoint stays, so the row
			// is still checked against the version it has now.
			tx, err = c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			execOK(t, c, "write before the savepoint", "UPDATE addresses SET county = 'v' WHERE id = $1", 2)
			if _, err := c.Exec(ctx, "SAVEPOINT s2"); err != nil {
				t.Fatal(err)
			}
			execOK(t, c, "write after the savepoint", "UPDATE addresses SET county = 'u' WHERE id = $1", 2)
			if _, err := c.Exec(ctx, "ROLLBACK TO SAVEPOINT s2"); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			bump(t, db, 2)
			_, err = c.Exec(ctx, "UPDATE addresses SET county = 't' WHERE id = $1", 2)
			wantCode(t, err, "VL409")
			// A failed implicit transaction undoes its write too.
			readCounty(t, c, 3)
			if _, err := c.Exec(ctx, "UPDATE addresses SET county = 'q' WHERE id = 3; SELECT 1/0", pgx.QueryExecModeSimpleProtocol); err == nil {
				t.Fatal("division by zero succeeded")
			}
			execOK(t, c, "write after a failed implicit transaction", "UPDATE addresses SET county = 'r' WHERE id = $1", 3)
			// Scope session: remembered across transactions.
			readCounty(t, c, 4)
			bump(t, db, 4)
			_, err = c.Exec(ctx, "UPDATE addresses SET county = 'e' WHERE id = $1", 4)
			wantCode(t, err, "VL409")
			// DELETE forgets the row.
			readCounty(t, c, 4)
			execOK(t, c, "delete", "DELETE FROM addresses WHERE id = $1", 4)

			// Own writes that do not pin the key: the session is not
			// refused afterwards for what they changed.
			for _, own := range []string{
				"UPDATE addresses SET state = 'GA' WHERE county IS NOT NULL AND id < $1",
				"MERGE INTO addresses a USING (SELECT 1 AS id WHERE $1::int > 0) s ON a.id = s.id WHEN MATCHED THEN UPDATE SET county = 'm'",
				"WITH w AS (UPDATE addresses SET state = 'SC' WHERE id = $1 RETURNING id) SELECT count(*) FROM w",
			} {
				readCounty(t, c, 1)
				if _, err := c.Exec(ctx, own, 2); err != nil {
					t.Fatalf("%q: %v", own, err)
				}
				execOK(t, c, "pinned write after "+own, "UPDATE addresses SET county = 'k' WHERE id = $1", 1)
			}

			// DISCARD ALL (a pooler's reset): nothing read before counts.
			readCounty(t, c, 1)
			bump(t, db, 1)
			if _, err := c.Exec(ctx, "DISCARD ALL"); err != nil {
				t.Fatal(err)
			}
			execOK(t, c, "after DISCARD ALL", "UPDATE addresses SET county = 'd' WHERE id = $1", 1)

			// Scope transaction: forgotten at commit.
			tr := guardedProxy(t, config.Table{Name: "addresses", Mode: "tracked"})
			ct := connectMode(t, tr.Addr, db, mode)
			readCounty(t, ct, 1)
			bump(t, db, 1)
			execOK(t, ct, "scope transaction, after the read's transaction", "UPDATE addresses SET county = 't' WHERE id = $1", 1)

			// Required mode: a row never read is refused, a row read is not.
			req := guardedProxy(t, config.Table{Name: "addresses", Mode: "required"})
			cr := connectMode(t, req.Addr, db, mode)
			_, err = cr.Exec(ctx, "UPDATE addresses SET county = 'u' WHERE id = $1", 1)
			wantCode(t, err, "VL428")
			tx, err = cr.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			readCounty(t, cr, 1)
			execOK(t, cr, "required, after a read", "UPDATE addresses SET county = 'u' WHERE id = $1", 1)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestTrackedEviction: the per-session cap forgets the least recently
// used row first, and counts it.
func TestTrackedEviction(t *testing.T) {
	db := newDatabase(t, shapesDDL+`INSERT INTO addresses (id, county) VALUES (3, 'c');`)
	cfg := newConfig(t, pg.Addr(), config.Table{Name: "addresses", Mode: "tracked", Scope: "session"})
	cfg.Guard.TrackedRowsPerSession = 2
	p := startProxy(t, cfg)
	c := connect(t, p.Addr, db)
	ctx := context.Background()
	readCounty(t, c, 1)
	readCounty(t, c, 2)
	readCounty(t, c, 3) // evicts 1
	bump(t, db, 1)
	bump(t, db, 3)
	execOK(t, c, "evicted row: unchecked", "UPDATE addresses SET county = 'e' WHERE id = $1", 1)
	_, err := c.Exec(ctx, "UPDATE addresses SET county = 'e' WHERE id = $1", 3)
	wantCode(t, err, "VL409")
	var b strings.Builder
	if _, err := p.Srv.Metrics().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `pgoptimist_tracked_evictions_total{table="public.addresses"} 1`) {
		t.Errorf("eviction not counted:\n%s", b.String())
	}
}

// TestTrackedVersionTypes: timestamp and uuid versions (the new version
// comes back through a hidden RETURNING), composite keys, binary and text
// formats, two rows read then both written, in every pgx mode.
func TestTrackedVersionTypes(t *testing.T) {
	ctx := context.Background()
	setup := `CREATE TABLE t_ts (id int PRIMARY KEY, version timestamptz NOT NULL DEFAULT clock_timestamp(), v text);
CREATE TABLE t_uuid (k1 int, k2 text, version uuid NOT NULL DEFAULT gen_random_uuid(), v text, PRIMARY KEY (k1, k2));
INSERT INTO t_ts (id, v) VALUES (1, 'a'), (2, 'b');
INSERT INTO t_uuid (k1, k2, v) VALUES (1, 'x', 'a'), (2, 'y', 'b');`
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			db := newDatabase(t, setup)
			p := guardedProxy(t, config.Table{Name: "t_ts", Mode: "tracked", Scope: "session"},
				config.Table{Name: "t_uuid", Mode: "tracked", Scope: "session"})
			c := connectMode(t, p.Addr, db, mode)
			d := direct(t, db)
			for _, tc := range []struct {
				read, write, other string
				args               [2][]any
			}{
				{"SELECT id, v FROM t_ts WHERE id IN (1, 2) ORDER BY id", "UPDATE t_ts SET v = v || '.' WHERE id = $1",
					"UPDATE t_ts SET version = clock_timestamp() WHERE id = 1", [2][]any{{1}, {2}}},
				{"SELECT v FROM t_uuid ORDER BY k1", "UPDATE t_uuid SET v = v || '.' WHERE k1 = $1 AND k2 = $2",
					"UPDATE t_uuid SET version = gen_random_uuid() WHERE k1 = 1", [2][]any{{1, "x"}, {2, "y"}}},
			} {
				rows, err := c.Query(ctx, tc.read)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for rows.Next() {
					n++
					if len(rows.RawValues()) != len(rows.FieldDescriptions()) || len(rows.FieldDescriptions()) > 2 {
						t.Errorf("%q: %d fields", tc.read, len(rows.FieldDescriptions()))
					}
				}
				if rows.Close(); rows.Err() != nil || n != 2 {
					t.Fatalf("%q: %d rows, %v", tc.read, n, rows.Err())
				}
				// Both rows written, each twice (own writes move on).
				for _, args := range tc.args {
					for i := 0; i < 2; i++ {
						// The RETURNING added for the new version is not the client's.
						rows, err := c.Query(ctx, tc.write, args...)
						if err != nil {
							t.Fatal(err)
						}
						got := 0
						for rows.Next() {
							got++
						}
						rows.Close()
						tag := rows.CommandTag()
						if rows.Err() != nil || got != 0 || len(rows.FieldDescriptions()) != 0 || tag.String() != "UPDATE 1" {
							t.Fatalf("%q %v: %d rows, %d fields, %v %v", tc.write, args, got, len(rows.FieldDescriptions()), tag, rows.Err())
						}
					}
				}
				if _, err := d.Exec(ctx, tc.other); err != nil {
					t.Fatal(err)
				}
				_, err = c.Exec(ctx, tc.write, tc.args[0]...)
				wantCode(t, err, "VL409")
				execOK(t, c, "the other row, not changed by anyone else", tc.write, tc.args[1]...)
			}
		})
	}
}

// TestTrackedSQLPrepare: a SQL-level PREPARE of a tracked read: its
// EXECUTE shows the client's columns only, and is tracked.
func TestTrackedSQLPrepare(t *testing.T) {
	db := newDatabase(t, shapesDDL)
	p := guardedProxy(t, config.Table{Name: "addresses", Mode: "tracked", Scope: "session"})
	want, err := psql(t, pg.Addr(), db, "-c", "PREPARE r(int) AS SELECT * FROM addresses WHERE id = $1; EXECUTE r(1)")
	if err != nil {
		t.Fatalf("%v\n%s", err, want)
	}
	got, err := psql(t, p.Addr, db, "-c", "PREPARE r(int) AS SELECT * FROM addresses WHERE id = $1; EXECUTE r(1)")
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	if got != want {
		t.Errorf("through the proxy:\n%s\ndirectly:\n%s", got, want)
	}
	c := connectMode(t, p.Addr, db, pgx.QueryExecModeSimpleProtocol)
	ctx := context.Background()
	if _, err := c.Exec(ctx, "PREPARE r(int) AS SELECT county FROM addresses WHERE id = $1"); err != nil {
		t.Fatal(err)
	}
	var county string
	if err := c.QueryRow(ctx, "EXECUTE r(1)").Scan(&county); err != nil {
		t.Fatal(err)
	}
	bump(t, db, 1)
	_, err = c.Exec(ctx, "UPDATE addresses SET county = 'p' WHERE id = 1")
	wantCode(t, err, "VL409")
}

// TestTrackedORMShapes: the read and write statements ORMs send, read then
// written (accepted) and read, changed by another session, then written
// (refused), in every pgx mode.
func TestTrackedORMShapes(t *testing.T) {
	db := newDatabase(t, shapesDDL)
	p := guardedProxy(t, config.Table{Name: "addresses", Mode: "tracked"})
	ctx := context.Background()
	orms := []struct{ name, read, write string }{
		{"rails", `SELECT "addresses".* FROM "addresses" WHERE "addresses"."id" = $1 LIMIT $2`,
			`UPDATE "addresses" SET "county" = $1 WHERE "addresses"."id" = $2`},
		{"hibernate", `select a1_0.id,a1_0.county,a1_0.state from addresses a1_0 where a1_0.id=$2 and $1::text is not null`,
			`update addresses set county=$1 where id=$2`},
		{"django", `SELECT "addresses"."id", "addresses"."county" FROM "addresses" WHERE ("addresses"."id" = $2 AND $1::text IS NOT NULL) LIMIT 21`,
			`UPDATE "addresses" SET "county" = $1 WHERE "addresses"."id" = $2`},
		{"sqlalchemy", `SELECT addresses.id AS addresses_id, addresses.county AS addresses_county FROM addresses WHERE addresses.id = $2::BIGINT AND $1::text IS NOT NULL`,
			`UPDATE addresses SET county=$1::VARCHAR WHERE addresses.id = $2::BIGINT`},
		{"ecto", `SELECT a0."id", a0."county" FROM "addresses" AS a0 WHERE (a0."id" = $2) AND $1::text IS NOT NULL`,
			`UPDATE "addresses" AS a0 SET "county" = $1 WHERE (a0."id" = $2)`},
	}
	for _, mode := range execModes {
		c := connectMode(t, p.Addr, db, mode)
		for _, o := range orms {
			args := []any{"Durham", 1}
			run := func(stale bool) error {
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				readArgs := args
				if o.name == "rails" {
					readArgs = []any{1, 1}
				}
				rows, err := tx.Query(ctx, o.read, readArgs...)
				if err != nil {
					t.Fatalf("%s %s: %v", mode, o.name, err)
				}
				for rows.Next() {
				}
				if rows.Close(); rows.Err() != nil {
					t.Fatalf("%s %s: %v", mode, o.name, rows.Err())
				}
				if stale {
					bump(t, db, 1)
				}
				if _, err := tx.Exec(ctx, o.write, args...); err != nil {
					return err
				}
				return tx.Commit(ctx)
			}
			if err := run(false); err != nil {
				t.Errorf("%s %s: read then write: %v", mode, o.name, err)
			}
			if pe := pgErr(t, run(true)); pe.Code != "VL409" {
				t.Errorf("%s %s: read, changed, written: %s, want VL409", mode, o.name, pe.Code)
			}
		}
	}
}

// TestTrackedReadAlone: with scope transaction, a read run alone in its own
// implicit transaction is sent as written (what it would capture is
// forgotten when it completes): not even planned, in the simple protocol
// and for the unnamed statements of pgx's exec, cache-describe and
// describe-exec modes, with the same results as directly. Inside a
// transaction block the same reads are tracked, and the unnamed statement
// of a read sent as written, bound again inside a block, is prepared again
// and tracked.
func TestTrackedReadAlone(t *testing.T) {
	ctx := context.Background()
	db := newDatabase(t, shapesDDL)
	p := guardedProxy(t, config.Table{Name: "addresses", Mode: "tracked"})
	const read = "SELECT county, state FROM addresses WHERE id = $1"
	var want [2]string
	if err := direct(t, db).QueryRow(ctx, read, 1).Scan(&want[0], &want[1]); err != nil {
		t.Fatal(err)
	}
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			before := relayMetric(t, p, "pgoptimist_statements_planned_total")
			for i := 0; i < 3; i++ {
				var got [2]string
				if err := c.QueryRow(ctx, read, 1).Scan(&got[0], &got[1]); err != nil || got != want {
					t.Fatalf("read alone: %v %v, want %v", got, err, want)
				}
			}
			planned := relayMetric(t, p, "pgoptimist_statements_planned_total") - before
			if mode == pgx.QueryExecModeCacheStatement {
				// A named statement may be bound anywhere later: tracked.
				if planned == 0 {
					t.Errorf("the named statement was not planned")
				}
			} else if planned != 0 {
				t.Errorf("%d reads run alone were planned, want none", planned)
			}
			// In a block the read is tracked: a stale write is refused.
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			var county, state string
			if err := tx.QueryRow(ctx, read, 2).Scan(&county, &state); err != nil {
				t.Fatal(err)
			}
			bump(t, db, 2)
			_, err = tx.Exec(ctx, "UPDATE addresses SET county = 'x' WHERE id = $1", 2)
			wantCode(t, err, "VL409")
		})
	}

	// The unnamed statement of a read run alone, bound again in a block
	// (its Bind, Execute and Sync sent by hand: no driver does it on its
	// own) is prepared again with the hidden columns, so that the write
	// after it is checked.
	t.Run("bound again in a block", func(t *testing.T) {
		c := connect(t, p.Addr, db).PgConn()
		res := c.ExecParams(ctx, read, [][]byte{[]byte("1")}, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != want[0] {
			t.Fatalf("read alone: %v %q", res.Err, res.Rows)
		}
		if _, err := c.Prepare(ctx, "b", "BEGIN", nil); err != nil {
			t.Fatal(err)
		}
		if tag, err := c.ExecPrepared(ctx, "b", nil, nil, nil).Close(); err != nil || tag.String() != "BEGIN" {
			t.Fatalf("BEGIN: %v %v", tag, err)
		}
		f := c.Frontend()
		f.SendBind(&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}})
		f.SendExecute(&pgproto3.Execute{})
		f.SendSync(&pgproto3.Sync{})
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			m, err := c.ReceiveMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			switch m := m.(type) {
			case *pgproto3.DataRow:
				if len(m.Values) != 2 {
					t.Errorf("the client sees %d columns, want 2", len(m.Values))
				}
				for _, v := range m.Values {
					got = append(got, string(v))
				}
			case *pgproto3.ErrorResponse:
				t.Fatalf("bound again: %s %s", m.Code, m.Message)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("bound again: %q, want %q", got, want)
		}
		bump(t, db, 1)
		err := c.ExecParams(ctx, "UPDATE addresses SET county = 'x' WHERE id = $1", [][]byte{[]byte("1")}, nil, nil, nil).Read().Err
		wantCode(t, err, "VL409")
	})
}
