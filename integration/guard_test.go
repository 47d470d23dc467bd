package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgoptimist/pgoptimist/config"
)

const addressDDL = `CREATE TABLE address (
  id bigserial PRIMARY KEY,
  version integer NOT NULL DEFAULT 1,
  state text,
  county text
);
-- an unguarded table with a version column of its own: never touched
CREATE TABLE unguarded (id int PRIMARY KEY, version integer NOT NULL DEFAULT 1, v text);
INSERT INTO unguarded VALUES (1, 1, 'a');`

var execModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

// pgErr returns the PostgreSQL error in err, failing the test when there is none.
func pgErr(t testing.TB, err error) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want a PostgreSQL error, got %v", err)
	}
	return pe
}

func wantCode(t testing.TB, err error, code string) *pgconn.PgError {
	t.Helper()
	pe := pgErr(t, err)
	if pe.Code != code {
		t.Fatalf("want SQLSTATE %s, got %s: %s", code, pe.Code, pe.Message)
	}
	return pe
}

func version(t testing.TB, c *pgx.Conn, table string, id int64) int64 {
	t.Helper()
	var v int64
	if err := c.QueryRow(context.Background(), "SELECT version FROM "+table+" WHERE id = $1", id).Scan(&v); err != nil {
		t.Fatalf("reading version: %v", err)
	}
	return v
}

// TestGuardReferenceScenario is the README's reference scenario (the lost update it prevents), in every pgx mode.
func TestGuardReferenceScenario(t *testing.T) {
	db := newDatabase(t, addressDDL)
	p := guardedProxy(t, config.Table{Name: "public.address"})
	ctx := context.Background()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			var id, v int64
			if err := c.QueryRow(ctx, "INSERT INTO address (state, county) VALUES ('FL','Pinellas') RETURNING id, version").Scan(&id, &v); err != nil {
				t.Fatal(err)
			}
			if v != 1 {
				t.Fatalf("version after insert = %d, want 1", v)
			}
			tag, err := c.Exec(ctx, "UPDATE address SET state='NC', county='Guilford' WHERE id=$1 AND version=1", id)
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("first update: %v %v", tag, err)
			}
			_, err = c.Exec(ctx, "UPDATE address SET county='Miami-Dade' WHERE id=$1 AND version=1", id)
			pe := wantCode(t, err, "VL409")
			if pe.Message != "stale record: public.address was changed by another transaction" {
				t.Errorf("message = %q", pe.Message)
			}
			if want := fmt.Sprintf("expected version 1, current version 2 (id=%d)", id); pe.Detail != want {
				t.Errorf("detail = %q, want %q", pe.Detail, want)
			}
			if pe.Hint != "re-read the row and retry" || pe.SchemaName != "public" || pe.TableName != "address" || pe.ColumnName != "version" || pe.Severity != "ERROR" {
				t.Errorf("fields: hint %q schema %q table %q column %q severity %q", pe.Hint, pe.SchemaName, pe.TableName, pe.ColumnName, pe.Severity)
			}
			if pe.Where != "" {
				t.Errorf("the proxy's own PL/pgSQL context leaked: %q", pe.Where)
			}
			if got := version(t, c, "address", id); got != 2 {
				t.Fatalf("version after stale update = %d, want 2", got)
			}
			tag, err = c.Exec(ctx, "UPDATE address SET county='Miami-Dade' WHERE id=$1 AND version=2", id)
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("retried update: %v %v", tag, err)
			}
			var county string
			if err := c.QueryRow(ctx, "SELECT version, county FROM address WHERE id=$1", id).Scan(&v, &county); err != nil {
				t.Fatal(err)
			}
			if v != 3 || county != "Miami-Dade" {
				t.Fatalf("final row: version %d county %q, want 3 Miami-Dade", v, county)
			}
		})
	}
}

// TestGuardVersionTypes covers each kind of version column.
func TestGuardVersionTypes(t *testing.T) {
	db := newDatabase(t, `
CREATE TABLE t_int (id int PRIMARY KEY, version bigint NOT NULL DEFAULT 1, v text);
CREATE TABLE t_small (id int PRIMARY KEY, version smallint NOT NULL DEFAULT 1, v text);
CREATE TABLE t_ts (id int PRIMARY KEY, version timestamptz NOT NULL DEFAULT clock_timestamp(), v text);
CREATE TABLE t_tsz (id int PRIMARY KEY, version timestamp NOT NULL DEFAULT clock_timestamp(), v text);
CREATE TABLE t_uuid (id int PRIMARY KEY, version uuid NOT NULL DEFAULT gen_random_uuid(), v text);
CREATE TABLE t_xmin (id int PRIMARY KEY, v text);
INSERT INTO t_int VALUES (1, 5000000000, 'a'); INSERT INTO t_small (id, v) VALUES (1, 'a');
INSERT INTO t_ts (id, v) VALUES (1, 'a'); INSERT INTO t_tsz (id, v) VALUES (1, 'a');
INSERT INTO t_uuid (id, v) VALUES (1, 'a'); INSERT INTO t_xmin VALUES (1, 'a');`)
	p := guardedProxy(t,
		config.Table{Name: "t_int"}, config.Table{Name: "t_small"}, config.Table{Name: "t_ts"},
		config.Table{Name: "t_tsz"}, config.Table{Name: "t_uuid"}, config.Table{Name: "t_xmin", Type: "xmin"})
	ctx := context.Background()
	for _, tc := range []struct{ table, col string }{
		{"t_int", "version"}, {"t_small", "version"}, {"t_ts", "version"}, {"t_tsz", "version"}, {"t_uuid", "version"}, {"t_xmin", "xmin"},
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			t.Run(tc.table+"/"+mode.String(), func(t *testing.T) {
				c := connectMode(t, p.Addr, db, mode)
				read := func() string {
					var s string
					if err := c.QueryRow(ctx, "SELECT "+tc.col+"::text FROM "+tc.table+" WHERE id = 1").Scan(&s); err != nil {
						t.Fatal(err)
					}
					return s
				}
				v1 := read()
				// The version is passed as text and cast by the server, as an
				// application holding it as a string would.
				tag, err := c.Exec(ctx, "UPDATE "+tc.table+" SET v = v || 'x' WHERE id = 1 AND "+tc.col+" = $1::text::"+map[bool]string{true: "xid", false: "text"}[tc.col == "xmin"]+"::"+colType(tc.table), v1)
				if err != nil || tag.RowsAffected() != 1 {
					t.Fatalf("update with current version %s: %v %v", v1, tag, err)
				}
				v2 := read()
				if v2 == v1 {
					t.Fatalf("version not changed by the update: %s", v2)
				}
				_, err = c.Exec(ctx, "UPDATE "+tc.table+" SET v = 'lost' WHERE id = 1 AND "+tc.col+" = $1::text::"+map[bool]string{true: "xid", false: "text"}[tc.col == "xmin"]+"::"+colType(tc.table), v1)
				pe := wantCode(t, err, "VL409")
				if !strings.Contains(pe.Detail, "current version "+v2) || !strings.Contains(pe.Detail, "(id=1)") {
					t.Errorf("detail %q does not name the current version %s and the key", pe.Detail, v2)
				}
				if pe.ColumnName != tc.col || pe.TableName != tc.table {
					t.Errorf("column/table fields = %q/%q", pe.ColumnName, pe.TableName)
				}
				if got := read(); got != v2 {
					t.Fatalf("stale update changed the version: %s → %s", v2, got)
				}
			})
		}
	}
	dc := direct(t, db)
	var big int64
	if err := dc.QueryRow(ctx, "SELECT version FROM t_int WHERE id = 1").Scan(&big); err != nil || big != 5000000002 {
		t.Fatalf("bigint version = %d (%v), want 5000000002", big, err)
	}
}

func colType(table string) string {
	switch table {
	case "t_int":
		return "bigint"
	case "t_small":
		return "smallint"
	case "t_ts":
		return "timestamptz"
	case "t_tsz":
		return "timestamp"
	case "t_uuid":
		return "uuid"
	}
	return "xid"
}

// TestGuardDeleteAndOwnership: DELETE stale, an application that assigns the
// version itself, and an unguarded table with a version column.
func TestGuardDeleteAndOwnership(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (state) VALUES ('a'), ('b');`)
	p := guardedProxy(t, config.Table{Name: "address"})
	c := connect(t, p.Addr, db)
	ctx := context.Background()

	_, err := c.Exec(ctx, "DELETE FROM address WHERE id = 1 AND version = 7")
	pe := wantCode(t, err, "VL409")
	if pe.Detail != "expected version 7, current version 1 (id=1)" {
		t.Errorf("detail = %q", pe.Detail)
	}
	if tag, err := c.Exec(ctx, "DELETE FROM address WHERE id = 1 AND version = 1"); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("delete: %v %v", tag, err)
	}
	_, err = c.Exec(ctx, "UPDATE address SET state = 'z' WHERE id = $1 AND version = $2", 1, 1)
	pe = wantCode(t, err, "VL409")
	if pe.Detail != "expected version 1, row no longer exists (id=1)" {
		t.Errorf("detail for a deleted row = %q", pe.Detail)
	}
	// Unchecked statements are incremented and report zero rows as they are.
	if tag, err := c.Exec(ctx, "UPDATE address SET state = 'y' WHERE id = 2"); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("unchecked update: %v %v", tag, err)
	}
	if v := version(t, c, "address", 2); v != 2 {
		t.Fatalf("unchecked update did not increment: version %d", v)
	}
	if tag, err := c.Exec(ctx, "UPDATE address SET state = 'y' WHERE id = 99"); err != nil || tag.RowsAffected() != 0 {
		t.Fatalf("unchecked update of a missing row: %v %v", tag, err)
	}
	// The application manages the version: the proxy leaves it alone.
	if _, err := c.Exec(ctx, "UPDATE address SET version = 40, state = 'w' WHERE id = 2 AND version = 2"); err != nil {
		t.Fatal(err)
	}
	if v := version(t, c, "address", 2); v != 40 {
		t.Fatalf("application-assigned version = %d, want 40", v)
	}
	// An unguarded table with a version column is never touched.
	if tag, err := c.Exec(ctx, "UPDATE unguarded SET v = 'b' WHERE id = 1 AND version = 99"); err != nil || tag.RowsAffected() != 0 {
		t.Fatalf("unguarded update: %v %v", tag, err)
	}
	if _, err := c.Exec(ctx, "UPDATE unguarded SET v = 'c' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if v := version(t, c, "unguarded", 1); v != 1 {
		t.Fatalf("unguarded table's version changed to %d", v)
	}
}

// TestGuardTransactionSemantics: BEGIN → stale → 25P02 → COMMIT answers ROLLBACK.
func TestGuardTransactionSemantics(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (state) VALUES ('a');`)
	p := guardedProxy(t, config.Table{Name: "address"})
	ctx := context.Background()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "UPDATE unguarded SET v = 'in-tx' WHERE id = 1"); err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec(ctx, "UPDATE address SET state = 'b' WHERE id = 1 AND version = 999")
			wantCode(t, err, "VL409")
			if st := c.PgConn().TxStatus(); st != 'E' {
				t.Fatalf("transaction status after stale = %q, want 'E'", st)
			}
			_, err = tx.Exec(ctx, "SELECT 1")
			wantCode(t, err, "25P02")
			tag, err := c.PgConn().Exec(ctx, "COMMIT").ReadAll()
			if err != nil || len(tag) != 1 || tag[0].CommandTag.String() != "ROLLBACK" {
				t.Fatalf("COMMIT answered %v %v, want ROLLBACK", tag, err)
			}
			if st := c.PgConn().TxStatus(); st != 'I' {
				t.Fatalf("status after COMMIT = %q", st)
			}
			var v string
			if err := c.QueryRow(ctx, "SELECT v FROM unguarded WHERE id = 1").Scan(&v); err != nil || v == "in-tx" {
				t.Fatalf("earlier statement of the failed transaction was kept: %q %v", v, err)
			}
		})
	}
}

// TestGuardBatch: a pgx batch with a stale statement in the middle.
func TestGuardBatch(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (state) VALUES ('a'), ('b');`)
	p := guardedProxy(t, config.Table{Name: "address"})
	ctx := context.Background()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			v1 := version(t, c, "address", 1)
			v2 := version(t, c, "address", 2)
			b := &pgx.Batch{}
			b.Queue("UPDATE address SET state = 'batch' WHERE id = 1 AND version = $1", v1)
			b.Queue("UPDATE address SET state = 'stale' WHERE id = 2 AND version = $1", v2+100)
			b.Queue("UPDATE unguarded SET v = 'after' WHERE id = 1")
			br := c.SendBatch(ctx, b)
			if tag, err := br.Exec(); err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("first: %v %v", tag, err)
			}
			_, err := br.Exec()
			wantCode(t, err, "VL409")
			if _, err := br.Exec(); err == nil {
				t.Fatal("statement after the stale one ran")
			}
			_ = br.Close()
			// The batch is one implicit transaction: the first update is undone.
			if got := version(t, c, "address", 1); got != v1 {
				t.Fatalf("first statement of the failed batch kept: version %d → %d", v1, got)
			}
			var v string
			if err := c.QueryRow(ctx, "SELECT v FROM unguarded WHERE id = 1").Scan(&v); err != nil || v == "after" {
				t.Fatalf("statement after the stale one ran: %q %v", v, err)
			}
			if st := c.PgConn().TxStatus(); st != 'I' {
				t.Fatalf("status after batch = %q", st)
			}
		})
	}
}

// TestGuardMultiStatement: a multi-statement simple query with a stale
// statement in the middle, through pgx and psql.
func TestGuardMultiStatement(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (state) VALUES ('a');`)
	p := guardedProxy(t, config.Table{Name: "address"})
	ctx := context.Background()
	c := connect(t, p.Addr, db)
	rr := c.PgConn().Exec(ctx, "UPDATE unguarded SET v = 'first' WHERE id = 1; UPDATE address SET state = 'x' WHERE id = 1 AND version = 5; UPDATE unguarded SET v = 'third' WHERE id = 1")
	res, err := rr.ReadAll()
	wantCode(t, err, "VL409")
	if len(res) < 1 || res[0].CommandTag.String() != "UPDATE 1" {
		t.Fatalf("first statement's result missing: %+v", res)
	}
	var v string
	if err := c.QueryRow(ctx, "SELECT v FROM unguarded WHERE id = 1").Scan(&v); err != nil || v != "a" {
		t.Fatalf("unguarded.v = %q (%v): earlier statement not rolled back or later one ran", v, err)
	}
	// A successful multi-statement string returns every result.
	res, err = c.PgConn().Exec(ctx, "SELECT 1; UPDATE address SET state = 'y' WHERE id = 1 AND version = 1 RETURNING version; SELECT 'three'").ReadAll()
	if err != nil || len(res) != 3 || res[1].CommandTag.String() != "UPDATE 1" || string(res[1].Rows[0][0]) != "2" || string(res[2].Rows[0][0]) != "three" {
		t.Fatalf("multi-statement results: %+v %v", res, err)
	}

	out, err := psql(t, p.Addr, db, "-c", "BEGIN; UPDATE address SET state = 'p' WHERE id = 1 AND version = 1; SELECT 'not reached'; COMMIT;")
	if err == nil || !strings.Contains(out, "stale record: public.address") || strings.Contains(out, "not reached") {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	out, err = psql(t, p.Addr, db, "-c", "SELECT version FROM address WHERE id = 1")
	if err != nil || !strings.Contains(out, " 2\n") {
		t.Fatalf("version after psql: %v\n%s", err, out)
	}
}

// TestGuardPrepareExecute: SQL-level PREPARE/EXECUTE.
func TestGuardPrepareExecute(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (state) VALUES ('a');`)
	p := guardedProxy(t, config.Table{Name: "address"})
	ctx := context.Background()
	c := connectMode(t, p.Addr, db, pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx, "PREPARE upd (bigint, int, text) AS UPDATE address SET state = $3 WHERE id = $1 AND version = $2"); err != nil {
		t.Fatal(err)
	}
	if tag, err := c.Exec(ctx, "EXECUTE upd(1, 1, 'b')"); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("execute: %v %v", tag, err)
	}
	if v := version(t, c, "address", 1); v != 2 {
		t.Fatalf("PREPAREd update did not increment: %d", v)
	}
	_, err := c.Exec(ctx, "EXECUTE upd(1, 1, 'c')")
	pe := wantCode(t, err, "VL409")
	if pe.Detail != "expected version 1, current version 2 (id=1)" {
		t.Errorf("detail = %q", pe.Detail)
	}
	if _, err := c.Exec(ctx, "DEALLOCATE upd"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "EXECUTE upd(1, 2, 'd')"); err == nil || pgErr(t, err).Code != "26000" {
		t.Fatalf("EXECUTE after DEALLOCATE: %v", err)
	}
}

// TestGuardUpsert: INSERT ... ON CONFLICT DO UPDATE increments in the update
// arm and is checked when the arm carries a version predicate.
func TestGuardUpsert(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (id, state) VALUES (1, 'a');`)
	p := guardedProxy(t, config.Table{Name: "address"})
	ctx := context.Background()
	c := connect(t, p.Addr, db)
	q := "INSERT INTO address (id, state) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET state = excluded.state"
	if _, err := c.Exec(ctx, q, 1, "b"); err != nil {
		t.Fatal(err)
	}
	if v := version(t, c, "address", 1); v != 2 {
		t.Fatalf("upsert did not increment: %d", v)
	}
	if tag, err := c.Exec(ctx, q+" WHERE address.version = $3", 1, "c", 2); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("checked upsert: %v %v", tag, err)
	}
	_, err := c.Exec(ctx, q+" WHERE address.version = $3", 1, "d", 2)
	wantCode(t, err, "VL409")
	if v := version(t, c, "address", 1); v != 3 {
		t.Fatalf("version = %d, want 3", v)
	}
}

// TestGuardRequiredMode refuses guarded writes without a version predicate.
func TestGuardRequiredMode(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (state) VALUES ('a');`)
	p := guardedProxy(t, config.Table{Name: "address", Mode: "required"})
	ctx := context.Background()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			_, err := c.Exec(ctx, "UPDATE address SET state = 'x' WHERE id = 1")
			pe := wantCode(t, err, "VL428")
			if !strings.Contains(pe.Message, "public.address") {
				t.Errorf("message does not name the table: %q", pe.Message)
			}
			v := version(t, c, "address", 1)
			if tag, err := c.Exec(ctx, "UPDATE address SET state = 'y' WHERE id = 1 AND version = $1", v); err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("update with a predicate: %v %v", tag, err)
			}
		})
	}
}

// TestGuardConcurrentReadModifyWrite: several connections increment one
// counter with an explicit version predicate, retrying on VL409; no
// increment may be lost.
func TestGuardConcurrentReadModifyWrite(t *testing.T) {
	db := newDatabase(t, `CREATE TABLE counter (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int NOT NULL);
INSERT INTO counter (id, n) VALUES (1, 0);`)
	p := guardedProxy(t, config.Table{Name: "counter"})
	const workers, each = 6, 25
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	conflicts := 0
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		mode := execModes[w%len(execModes)]
		c := connectMode(t, p.Addr, db, mode)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; {
				var v, n int
				if err := c.QueryRow(ctx, "SELECT version, n FROM counter WHERE id = 1").Scan(&v, &n); err != nil {
					errs <- err
					return
				}
				_, err := c.Exec(ctx, "UPDATE counter SET n = $1 WHERE id = 1 AND version = $2", n+1, v)
				var pe *pgconn.PgError
				if errors.As(err, &pe) && pe.Code == "VL409" {
					mu.Lock()
					conflicts++
					mu.Unlock()
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				i++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var n, v int
	if err := direct(t, db).QueryRow(ctx, "SELECT n, version FROM counter WHERE id = 1").Scan(&n, &v); err != nil {
		t.Fatal(err)
	}
	if n != workers*each || v != workers*each+1 {
		t.Fatalf("n = %d, version = %d; want %d and %d (lost updates)", n, v, workers*each, workers*each+1)
	}
	t.Logf("%d increments, %d conflicts retried", n, conflicts)
	// The extended-protocol workers repeat one text: their plans come from the cache.
	if hits := relayMetric(t, p, "pgoptimist_plan_cache_hits_total"); hits < each {
		t.Errorf("plan cache hits = %d for %d writes repeating one statement text", hits, workers*each)
	}
	if got := p.Srv.Metrics().StaleCount("public.counter"); got != int64(conflicts) {
		t.Errorf("stale metric = %d, conflicts seen = %d", got, conflicts)
	}
}

// TestGuardMissingTable: a configured table that does not exist is logged
// and its statements forwarded unguarded; the session is undisturbed.
func TestGuardMissingTable(t *testing.T) {
	db := newDatabase(t, addressDDL+`INSERT INTO address (state) VALUES ('a');`)
	p := guardedProxy(t, config.Table{Name: "address"}, config.Table{Name: "nosuch"}, config.Table{Name: "unguarded", Column: "nosuchcol"})
	c := connect(t, p.Addr, db)
	ctx := context.Background()
	if tag, err := c.Exec(ctx, "UPDATE unguarded SET v = 'z' WHERE id = 1 AND nosuchcol IS NULL"); err == nil || tag.RowsAffected() != 0 {
		t.Fatalf("statement on a table whose version column is missing: %v %v (want the server's own error)", tag, err)
	}
	if _, err := c.Exec(ctx, "UPDATE address SET state = 'z' WHERE id = 1 AND version = 3"); pgErr(t, err).Code != "VL409" {
		t.Fatal("existing table not guarded")
	}
}

// TestGuardZeroRowSideEffects: a stale statement whose zero-row run still
// writes (a statement-level trigger, a data-modifying CTE) must leave
// nothing behind, exactly as if PostgreSQL had raised the error itself. The
// proxy may not send the Sync along with such a statement.
func TestGuardZeroRowSideEffects(t *testing.T) {
	db := newDatabase(t, addressDDL+`
INSERT INTO address (state) VALUES ('a');
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
CREATE TABLE noisy (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, v text);
INSERT INTO noisy VALUES (1, 1, 'a');
CREATE FUNCTION note_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES (TG_TABLE_NAME); RETURN NULL; END $$;
CREATE TRIGGER noisy_audit AFTER UPDATE ON noisy FOR EACH STATEMENT EXECUTE FUNCTION note_update();`)
	p := guardedProxy(t, config.Table{Name: "address"}, config.Table{Name: "noisy"})
	ctx := context.Background()
	audit := func(c *pgx.Conn) int {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM audit").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			before := audit(c)
			_, err := c.Exec(ctx, "UPDATE noisy SET v = 'x' WHERE id = $1 AND version = $2", 1, 99)
			wantCode(t, err, "VL409")
			_, err = c.Exec(ctx, "WITH a AS (INSERT INTO audit (what) VALUES ('cte') RETURNING 1) UPDATE address SET state = 'x' WHERE id = $1 AND version = $2", 1, 99)
			wantCode(t, err, "VL409")
			if got := audit(c); got != before {
				t.Fatalf("a stale statement's side effects were committed: audit rows %d → %d", before, got)
			}
			// A successful update still fires the trigger.
			v := version(t, c, "noisy", 1)
			if _, err := c.Exec(ctx, "UPDATE noisy SET v = 'y' WHERE id = $1 AND version = $2", 1, v); err != nil {
				t.Fatal(err)
			}
			if got := audit(c); got != before+1 {
				t.Fatalf("audit rows after a successful update = %d, want %d", got, before+1)
			}
		})
	}
}
