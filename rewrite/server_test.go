package rewrite

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

// The tracked-mode contract checked against PostgreSQL itself: the fields
// that Captures and Hidden name are, in the RowDescription, the columns
// they say (table OID and attribute number, which is how the proxy will
// know them); stripping the hidden fields gives exactly the original
// statement's result; the injected parameter's type is inferred as the
// version column's, and both forms of the injected predicate check the
// version.

const trackedSchema = `
CREATE TABLE addresses (id int PRIMARY KEY, county text, version int NOT NULL DEFAULT 1);
CREATE TABLE counter (id int PRIMARY KEY, n int, name text UNIQUE, version bigint NOT NULL DEFAULT 1);
CREATE TABLE ledger (id int PRIMARY KEY, amount int);
CREATE TABLE pair (k1 int, k2 text, v int, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (k1, k2));
CREATE TABLE other (id int, cid int, x int);
CREATE TABLE obs (id int PRIMARY KEY, n int, version int NOT NULL DEFAULT 1);
CREATE TABLE obsx (id int PRIMARY KEY, n int);
CREATE TABLE obst (id int PRIMARY KEY, n int, updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE obsu (k1 int, k2 text, n int, etag uuid NOT NULL DEFAULT gen_random_uuid(), PRIMARY KEY (k1, k2));
INSERT INTO obs SELECT g, g, 10 * g FROM generate_series(1, 3) g;
INSERT INTO obsx SELECT g, g FROM generate_series(1, 3) g;
INSERT INTO obst SELECT g, g FROM generate_series(1, 3) g;
INSERT INTO obsu SELECT g, 'k', g FROM generate_series(1, 3) g;
INSERT INTO addresses VALUES (1, 'Guilford', 3), (2, 'Wake', 1);
INSERT INTO counter VALUES (1, 10, 'a', 5), (2, 20, 'b', 1), (3, 30, 'c', 1);
INSERT INTO ledger VALUES (1, 100), (2, 200);
INSERT INTO pair VALUES (1, 'x', 0, '2024-01-01 00:00:00+00'), (1, 'y', 0, '2024-02-01 00:00:00+00');
INSERT INTO other VALUES (1, 1, 7), (2, 2, 8), (9, 9, 9);
`

type serverCase struct {
	sql  string
	args []any
}

var serverReads = []serverCase{
	{`SELECT "addresses".* FROM "addresses" WHERE "addresses"."id" = $1 LIMIT $2`, []any{1, 1}},
	{"select a1_0.id,a1_0.county,a1_0.version from addresses a1_0 where a1_0.id=$1", []any{1}},
	{"select a1_0.id,a1_0.county from addresses a1_0 where a1_0.id=$1 for update", []any{2}},
	{"SELECT n FROM counter WHERE id = $1", []any{1}},
	{"SELECT c.*, c.id FROM counter c ORDER BY c.id", nil},
	{"SELECT * FROM ledger ORDER BY id", nil},
	{"SELECT v FROM pair p WHERE p.k1 = 1 AND p.k2 = 'x'", nil},
	{"SELECT cid, c.version FROM counter c JOIN other o ON o.cid = c.id ORDER BY 1", nil},
	{"SELECT c.n, l.amount FROM counter c JOIN ledger l ON l.id = c.id ORDER BY c.n", nil},
	{"SELECT c.n, d.n FROM counter c, counter d WHERE d.id = c.id + 1 ORDER BY 1", nil},
	{"SELECT c.n, l.amount FROM counter c LEFT JOIN ledger l ON l.id = c.id ORDER BY c.n", nil},
	{"WITH x AS (SELECT 1 AS id) SELECT c.n FROM counter c JOIN x ON x.id = c.id", nil},
	{"SELECT c.n, (SELECT count(*) FROM other o WHERE o.cid = c.id) FROM counter c ORDER BY 1", nil},
	{"SELECT n AS id FROM counter ORDER BY id", nil},
	{"SELECT FROM counter", nil},
	{`SELECT "counter"."id", "counter"."n" FROM "counter" WHERE "counter"."id" = 1 LIMIT 21`, nil},
	{`SELECT c0."id", c0."n" FROM "counter" AS c0 WHERE (c0."id" = $1)`, []any{2}},
	{"SELECT * FROM counter WHERE id = 1 FOR NO KEY UPDATE", nil},
	{"SELECT p.v FROM pair p JOIN counter c ON c.id = p.k1 WHERE p.k2 = 'y'", nil},
	{`INSERT INTO counter (id, n, name) VALUES ($1, 1, 'z') RETURNING "id"`, []any{50}},
	{"UPDATE counter c SET n = $2 WHERE c.id = $1 RETURNING c.n", []any{1, 11}},
	{"DELETE FROM counter WHERE id = $1 RETURNING *", []any{3}},
	{"UPDATE counter SET n = 5 WHERE n > 15", nil},
	{"UPDATE ledger SET amount = 5 WHERE id = 1", nil},
	{"UPDATE pair SET v = 1 WHERE k1 = 1 AND k2 = 'x'", nil},
	{"INSERT INTO counter (id, n) VALUES ($1, 2) ON CONFLICT (id) DO UPDATE SET n = excluded.n", []any{2}},
}

func startServer(t *testing.T) *pgx.Conn {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatalf("cannot start PostgreSQL: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	conn, err := pgx.Connect(ctx, srv.DSN(srv.Superuser, "", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, trackedSchema, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	return conn
}

// attrs maps "table.column" (system columns too) to table OID and attribute
// number.
func attrs(t *testing.T, conn *pgx.Conn) map[string][2]int64 {
	rows, err := conn.Query(context.Background(), `SELECT c.relname || '.' || a.attname, c.oid::int8, a.attnum::int8
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind = 'r'`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]int64{}
	for rows.Next() {
		var name string
		var oid, num int64
		if err := rows.Scan(&name, &oid, &num); err != nil {
			t.Fatal(err)
		}
		out[name] = [2]int64{oid, num}
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	return out
}

// run runs sql in a transaction that it rolls back, and returns the fields
// and the rows as text.
func run(t *testing.T, conn *pgx.Conn, sql string, args []any) ([]pgconn.FieldDescription, [][]string) {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, sql, append([]any{pgx.QueryExecModeDescribeExec}, args...)...)
	if err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	fields := slices.Clone(rows.FieldDescriptions())
	var out [][]string
	for rows.Next() {
		var row []string
		for _, v := range rows.RawValues() {
			row = append(row, string(v))
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	return fields, out
}

// One server for both checks (starting one takes seconds).
func TestTrackedOnServer(t *testing.T) {
	conn := startServer(t)
	t.Run("captures and hidden columns", func(t *testing.T) { testTrackedPlans(t, conn) })
	t.Run("injection", func(t *testing.T) { testTrackedInjection(t, conn) })
	t.Run("observe: the version written over", func(t *testing.T) { testWrittenOver(t, conn) })
}

func testTrackedPlans(t *testing.T, conn *pgx.Conn) {
	at := attrs(t, conn)
	r := New(trackedPolicies(), Options{Tracking: true})
	for _, tc := range serverReads {
		p, err := r.Plan(tc.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		st := &p.Statements[0]
		if len(st.Captures) == 0 {
			t.Errorf("%q: nothing captured: %q", tc.sql, st.Notes)
			continue
		}
		fields, rows := run(t, conn, p.SQL, tc.args)
		_, orig := run(t, conn, tc.sql, tc.args)
		n := len(fields)
		for _, h := range st.Hidden {
			if h.Table == "" {
				continue // computed
			}
			f := fields[h.Field.Index(n)]
			if want := at[h.Table+"."+h.Column]; [2]int64{int64(f.TableOID), int64(int16(f.TableAttributeNumber))} != want {
				t.Errorf("%q: hidden %s.%s is field %d (table %d, attribute %d), want %v", tc.sql, h.Table, h.Column,
					h.Field.Index(n), f.TableOID, f.TableAttributeNumber, want)
			}
		}
		for _, c := range st.Captures {
			cols := append(append([]string(nil), c.Policy.Key...), c.Policy.Column)
			fs := append(append([]Field(nil), c.Keys...), c.Version)
			for i, col := range cols {
				f := fields[fs[i].Index(n)]
				if want := at[c.Policy.Table+"."+col]; [2]int64{int64(f.TableOID), int64(int16(f.TableAttributeNumber))} != want {
					t.Errorf("%q: %s.%s is said to be field %d, which is table %d attribute %d, want %v", tc.sql, c.Ref, col,
						fs[i].Index(n), f.TableOID, f.TableAttributeNumber, want)
				}
			}
		}
		// Strip the hidden fields: the original result. (Writes: the
		// version moved on in the rewritten statement only, so compare
		// the shape.)
		if st.AddedReturning {
			// The client's statement returns no rows; every field is hidden.
			if len(orig) != 0 || len(fields) != len(st.Hidden) || len(rows) == 0 {
				t.Errorf("%q: RETURNING added: %d fields, %d hidden, %d rows (original %d)", tc.sql, len(fields), len(st.Hidden), len(rows), len(orig))
			}
			continue
		}
		if len(rows) != len(orig) {
			t.Fatalf("%q: %d rows, original %d", tc.sql, len(rows), len(orig))
		}
		for i := range rows {
			got := rows[i][:len(rows[i])-len(st.Hidden)]
			if len(got) != len(orig[i]) || st.Command == CommandSelect && !slices.Equal(got, orig[i]) {
				t.Errorf("%q row %d: stripped %q, original %q", tc.sql, i, got, orig[i])
			}
		}
	}
}

// versionOf reads a row's version as text.
func versionOf(t *testing.T, tx interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string) string {
	var v string
	if err := tx.QueryRow(context.Background(), sql).Scan(&v); err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	return v
}

func testTrackedInjection(t *testing.T, conn *pgx.Conn) {
	r := New(trackedPolicies(), Options{Tracking: true})
	cases := []struct {
		sql      string
		args     []any
		read     string // the row's version as text
		wrong    string // a version the row does not have
		typeName string // the inferred type of the injected parameter
	}{
		{`UPDATE "addresses" SET "county" = $1 WHERE "addresses"."id" = $2`, []any{"Durham", 1},
			"SELECT version::text FROM addresses WHERE id = 1", "99", "int4"},
		{"UPDATE counter c SET n = $2 WHERE c.id = $1 RETURNING c.n", []any{1, 11},
			"SELECT version::text FROM counter WHERE id = 1", "99", "int8"},
		{"UPDATE ledger SET amount = 5 WHERE id = 2", nil,
			"SELECT xmin::text FROM ledger WHERE id = 2", "1", "xid"},
		{"UPDATE pair SET v = 1 WHERE k1 = $1 AND k2 = $2", []any{1, "y"},
			"SELECT updated_at::text FROM pair WHERE k1 = 1 AND k2 = 'y'", "2020-01-01 00:00:00+00", "timestamptz"},
		{"DELETE FROM counter WHERE id = $1", []any{2},
			"SELECT version::text FROM counter WHERE id = 2", "99", "int8"},
		{"INSERT INTO counter (id, n) VALUES ($1, 2) ON CONFLICT (id) DO UPDATE SET n = excluded.n", []any{3},
			"SELECT version::text FROM counter WHERE id = 3", "99", "int8"},
		{"INSERT INTO counter AS c (id, n, name) VALUES (9, 2, 'a') ON CONFLICT (name) DO UPDATE SET n = 3 WHERE c.id = $1", []any{1},
			"SELECT version::text FROM counter WHERE id = 1", "99", "int8"},
		{"UPDATE counter SET n = o.x FROM other o WHERE o.cid = counter.id AND counter.id = $1", []any{2},
			"SELECT version::text FROM counter WHERE id = 2", "99", "int8"},
		{`UPDATE "counter" AS c0 SET "n" = $1 WHERE (c0."id" = $2)`, []any{5, 1},
			"SELECT version::text FROM counter WHERE id = 1", "99", "int8"},
	}
	ctx := context.Background()
	for _, tc := range cases {
		p, err := r.Plan(tc.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		st := &p.Statements[0]
		if st.Inject == nil {
			t.Fatalf("%q: no injection: %q", tc.sql, st.Notes)
		}
		sd, err := conn.Prepare(ctx, "", st.Inject.SQL)
		if err != nil {
			t.Fatalf("%q: %v", st.Inject.SQL, err)
		}
		if len(sd.ParamOIDs) != st.Inject.Param {
			t.Fatalf("%q: %d parameters, want %d", st.Inject.SQL, len(sd.ParamOIDs), st.Inject.Param)
		}
		var typ string
		if err := conn.QueryRow(ctx, "SELECT typname::text FROM pg_type WHERE oid = $1", sd.ParamOIDs[st.Inject.Param-1]).Scan(&typ); err != nil || typ != tc.typeName {
			t.Errorf("%q: injected parameter typed %q (%v), want %s", tc.sql, typ, err, tc.typeName)
		}
		// affected runs the statement in a transaction rolled back, with the
		// version read in it first.
		affected := func(version func(read string) any, simple bool) int64 {
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			read := versionOf(t, tx, tc.read)
			var tag pgconn.CommandTag
			if simple {
				sql := st.SQL
				if v := version(read); v != nil {
					sql = st.WithExpected(v.(string))
				}
				args := []any{pgx.QueryExecModeSimpleProtocol}
				tag, err = tx.Exec(ctx, sql, append(args, tc.args...)...)
			} else {
				args := append([]any{pgx.QueryExecModeDescribeExec}, tc.args...)
				tag, err = tx.Exec(ctx, st.Inject.SQL, append(args, version(read))...)
			}
			if err != nil {
				t.Fatalf("%q: %v", tc.sql, err)
			}
			return tag.RowsAffected()
		}
		same := func(read string) any { return read }
		wrong := func(string) any { return tc.wrong }
		none := func(string) any { return nil }
		for _, simple := range []bool{false, true} {
			what := fmt.Sprintf("%q (simple %v)", tc.sql, simple)
			if n := affected(same, simple); n != 1 {
				t.Errorf("%s with the version read: %d rows, want 1", what, n)
			}
			if n := affected(wrong, simple); n != 0 {
				t.Errorf("%s with a stale version: %d rows, want 0", what, n)
			}
			if n := affected(none, simple); n != 1 {
				t.Errorf("%s without a version: %d rows, want 1 (unchecked)", what, n)
			}
		}
	}
	// SQL-level PREPARE in its Inject form, EXECUTE with the extra argument.
	p, err := r.Plan("PREPARE p(int) AS UPDATE counter SET n = n + 1 WHERE id = $1", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, p.Statements[0].Inject.SQL, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	e, err := r.Plan("EXECUTE p(1)", "")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	v := versionOf(t, tx, "SELECT version::text FROM counter WHERE id = 1")
	for _, c := range []struct {
		sql  string
		want int64
	}{
		{e.Statements[0].ExecuteWithExpected("99", false), 0},
		{e.Statements[0].ExecuteWithExpected(v, false), 1},
		{e.Statements[0].ExecuteWithExpected("", true), 1},
	} {
		tag, err := tx.Exec(ctx, c.sql, pgx.QueryExecModeSimpleProtocol)
		if err != nil || tag.RowsAffected() != c.want {
			t.Errorf("%q: %v rows, %v; want %d", c.sql, tag.RowsAffected(), err, c.want)
		}
	}
	var pe *pgconn.PgError
	if _, err := tx.Exec(ctx, "EXECUTE p(1)", pgx.QueryExecModeSimpleProtocol); !errors.As(err, &pe) || pe.Code != "42601" {
		t.Errorf("EXECUTE without the extra argument: %v, want a wrong-number-of-parameters error", err)
	}
	tx.Rollback(ctx)

	// A PREPARE typing more parameters than its body uses, and the
	// EXECUTE inside EXPLAIN ANALYZE and CREATE TABLE AS.
	p, err = r.Plan("PREPARE q(int, int, text) AS UPDATE counter SET n = $2 WHERE id = $1", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, p.Statements[0].Inject.SQL, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("%q: %v", p.Statements[0].Inject.SQL, err)
	}
	v = versionOf(t, conn, "SELECT version::text FROM counter WHERE id = 1")
	for _, c := range []struct {
		sql, version string
		null         bool
		tag, code    string
	}{
		{"EXECUTE q(1, 7, 'x')", "99", false, "UPDATE 0", ""},
		{"EXECUTE q(1, 7, 'x')", v, false, "UPDATE 1", ""},
		{"EXECUTE q(1, 8, 'x')", "", true, "UPDATE 1", ""},
		{"EXPLAIN (ANALYZE, COSTS off) EXECUTE q(1, 9, 'x')", "", true, "EXPLAIN", ""},
		{"EXPLAIN EXECUTE q(1, 9, 'x')", "", true, "EXPLAIN", ""},
		{"CREATE TABLE t AS EXECUTE q(1, 9, 'x')", "", true, "", "42809"}, // prepared statement is not a SELECT
	} {
		e, err := r.Plan(c.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		sql := e.Statements[0].ExecuteWithExpected(c.version, c.null)
		tag, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		switch {
		case c.code != "":
			if !errors.As(err, &pe) || pe.Code != c.code {
				t.Errorf("%q: %v, want SQLSTATE %s", sql, err, c.code)
			}
		case err != nil || tag.String() != c.tag:
			t.Errorf("%q: %q, %v; want %q", sql, tag, err, c.tag)
		}
	}
}

// testWrittenOver runs observe mode's writes on the server: every row a
// multi-row UPDATE returns carries its own version from before the write,
// an upsert's updated rows theirs and its inserted rows "nothing", for
// every version type; the client's own result and tag are unchanged.
func testWrittenOver(t *testing.T, conn *pgx.Conn) {
	r := New(trackedPolicies(), Options{Tracking: true})
	ctx := context.Background()
	cases := []struct {
		sql      string
		before   string // key, version as text of the rows before the write
		inserted int    // rows the upsert inserts (their key is not in before)
	}{
		{"UPDATE obsx SET n = n + 1 WHERE id >= $1", "SELECT id::text, xmin::text FROM obsx", 0},
		{"UPDATE obst o SET n = n + 1 WHERE o.id >= $1 RETURNING o.n", "SELECT id::text, updated_at::text FROM obst", 0},
		{"UPDATE obsu SET n = n + 1 WHERE k1 >= $1", "SELECT k1::text || ',' || k2, etag::text FROM obsu", 0},
		{"UPDATE obs SET version = version * 2 WHERE id >= $1", "SELECT id::text, version::text FROM obs", 0},
		{"INSERT INTO obsx AS x (id, n) SELECT g, 0 FROM generate_series($1::int, 5) g ON CONFLICT (id) DO UPDATE SET n = x.n + 1",
			"SELECT id::text, xmin::text FROM obsx", 2},
		{"INSERT INTO obs (id, n) SELECT g, 0 FROM generate_series($1::int, 5) g ON CONFLICT (id) DO UPDATE SET n = excluded.n",
			"SELECT id::text, version::text FROM obs", 2},
	}
	for _, tc := range cases {
		p, err := r.Plan(tc.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		st := &p.Statements[0]
		if st.WrittenOver != WrittenOverReturned {
			t.Fatalf("%q: written over %d, want returned: %q", tc.sql, st.WrittenOver, st.Notes)
		}
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeDescribeExec} {
			func() {
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				// An earlier write in the transaction leaves the setting
				// behind: an inserted row must not read it.
				if _, err := tx.Exec(ctx, "SELECT pg_catalog.set_config('pgoptimist.written_over', 'v-stale', true)"); err != nil {
					t.Fatal(err)
				}
				before := map[string]string{}
				rows, _ := tx.Query(ctx, tc.before, pgx.QueryExecModeSimpleProtocol)
				for rows.Next() {
					var k, v string
					if err := rows.Scan(&k, &v); err != nil {
						t.Fatal(err)
					}
					before[k] = v
				}
				if rows.Err() != nil {
					t.Fatal(rows.Err())
				}
				rows, err = tx.Query(ctx, p.SQL, mode, 2)
				if err != nil {
					t.Fatalf("%q: %v", p.SQL, err)
				}
				seen, inserted := 0, 0
				for rows.Next() {
					vals, err := rows.Values() // text and binary alike
					if err != nil {
						t.Fatal(err)
					}
					n := len(vals)
					c := st.Captures[0]
					var key []string
					for _, f := range c.Keys {
						key = append(key, fmt.Sprint(vals[f.Index(n)]))
					}
					k := strings.Join(key, ",")
					over := fmt.Sprint(vals[st.WrittenOverField.Index(n)])
					seen++
					if over == "c" {
						inserted++
						if _, had := before[k]; had {
							t.Errorf("%q %v: row %s had version %s, read back as inserted", tc.sql, mode, k, before[k])
						}
						continue
					}
					if want := "cv" + before[k]; over != want {
						t.Errorf("%q %v: row %s written over %q, want %q", tc.sql, mode, k, over, want)
					}
				}
				if rows.Err() != nil {
					t.Fatalf("%q: %v", p.SQL, rows.Err())
				}
				if seen != 2+tc.inserted || inserted != tc.inserted {
					t.Errorf("%q %v: %d rows, %d inserted; want %d, %d", tc.sql, mode, seen, inserted, 2+tc.inserted, tc.inserted)
				}
				if tag := rows.CommandTag(); tag.RowsAffected() != int64(2+tc.inserted) {
					t.Errorf("%q %v: tag %s", tc.sql, mode, tag)
				}
			}()
		}
	}
}
