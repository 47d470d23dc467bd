package integration

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgoptimist/pgoptimist/config"
)

// Observe mode: versions are tracked as in tracked mode, nothing is
// refused, and a write over a version other than the one its session read
// is counted, for every version type.

// observeDDL adds counters with a timestamptz and a uuid version to
// counterDDL's integer one and xcounter (no version column: xmin).
const observeDDL = counterDDL + `
CREATE TABLE tcounter (id int PRIMARY KEY, version timestamptz NOT NULL DEFAULT clock_timestamp(), n int);
INSERT INTO tcounter (id, n) VALUES (1, 0);
CREATE TABLE ucounter (id int PRIMARY KEY, version uuid NOT NULL DEFAULT gen_random_uuid(), n int);
INSERT INTO ucounter (id, n) VALUES (1, 0);`

// observeTables are the observe-mode policies of observeDDL's tables (a
// new slice each time: a configuration normalizes its tables in place).
func observeTables() []config.Table {
	return []config.Table{
		{Name: "counter", Mode: "observe"},
		{Name: "xcounter", Mode: "observe", Type: "xmin"},
		{Name: "tcounter", Mode: "observe"},
		{Name: "ucounter", Mode: "observe"},
	}
}

// TestObserveLostUpdates: in observe mode the lost-update workload runs
// without an error and loses updates as it does directly, and the metric
// counts them; a serial run of the same workload counts none; results
// look as they do directly. For integer, xmin, timestamptz and uuid
// versions.
func TestObserveLostUpdates(t *testing.T) {
	for _, table := range observeTables() {
		t.Run(table.Name, func(t *testing.T) {
			db := newDatabase(t, observeDDL)
			p := guardedProxy(t, table)
			lost := func() int64 { return p.Srv.Metrics().LostUpdatesObserved("public." + table.Name) }
			// Serial: every read is current when its write runs.
			c := connect(t, p.Addr, db)
			for i := 0; i < 20; i++ {
				if err := increment(context.Background(), c, table.Name, true); err != nil {
					t.Fatal(err)
				}
			}
			if got := lost(); got != 0 {
				t.Fatalf("serial run: %d lost updates observed, want 0", got)
			}
			if _, err := direct(t, db).Exec(context.Background(), "UPDATE "+table.Name+" SET n = 0"); err != nil {
				t.Fatal(err)
			}
			n, retries := increments(t, p.Addr, db, table.Name, true)
			want := lostWorkers * lostRounds
			t.Logf("observe %s: n = %d of %d, %d lost updates observed", table.Name, n, want, lost())
			if retries != 0 {
				t.Errorf("%d writes refused in observe mode", retries)
			}
			if lost() == 0 {
				// Every lost increment is a write over another's (not every
				// such write loses an increment: its value may have been
				// current).
				t.Errorf("lost %d increments, observed none", want-n)
			}
			if n >= want {
				t.Errorf("no update was lost (n = %d): the demonstration needs contention", n)
			}
			for _, sql := range []string{
				"SELECT n FROM " + table.Name,
				"BEGIN; SELECT n FROM " + table.Name + " WHERE id = 1; UPDATE " + table.Name + " SET n = n WHERE id = 1; COMMIT",
			} {
				got, err := psql(t, p.Addr, db, "-c", sql)
				if err != nil {
					t.Fatalf("%v\n%s", err, got)
				}
				wantOut, err := psql(t, pg.Addr(), db, "-c", sql)
				if err != nil {
					t.Fatalf("%v\n%s", err, wantOut)
				}
				if got != wantOut {
					t.Errorf("%q through the proxy:\n%s\ndirectly:\n%s", sql, got, wantOut)
				}
			}
		})
	}
}

// observeWrites are writes of observe tables whose results (fields, rows,
// command tag) must be as they are directly: $1 is the table.
var observeWrites = []struct {
	name, sql string
	args      []any
}{
	{"pinned", "UPDATE %s SET n = n + 1 WHERE id = $1", []any{1}},
	{"returning", "UPDATE %s SET n = n + 1 WHERE id = $1 RETURNING n, id", []any{1}},
	{"every row", "UPDATE %s t SET n = t.n + 1 RETURNING t.n", nil},
	{"no row", "UPDATE %s SET n = 0 WHERE id = $1", []any{99}},
	{"upsert", "INSERT INTO %s AS t (id, n) VALUES ($1, 5), ($2, 6) ON CONFLICT (id) DO UPDATE SET n = t.n + excluded.n", []any{1, 2}},
	{"upsert returning", "INSERT INTO %s AS t (id, n) VALUES ($1, 5), ($2, 6) ON CONFLICT (id) DO UPDATE SET n = t.n + excluded.n RETURNING n", []any{1, 3}},
	{"delete", "DELETE FROM %s WHERE id = $1", []any{1}},
}

// resultOf runs sql in a transaction it rolls back and describes what the
// client sees: fields, rows and the command tag.
func resultOf(t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode, sql string, args []any) string {
	t.Helper()
	ctx := context.Background()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, sql, append([]any{mode}, args...)...)
	if err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	var b strings.Builder
	for _, f := range rows.FieldDescriptions() {
		fmt.Fprintf(&b, "%s/%d/%d/%d/%d ", f.Name, f.DataTypeOID, f.TableOID, f.TableAttributeNumber, f.Format)
	}
	for rows.Next() {
		fmt.Fprintf(&b, "%x ", rows.RawValues())
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	fmt.Fprintf(&b, "tag %q", rows.CommandTag().String())
	return b.String()
}

// TestObserveResults: no hidden column reaches the client and command tags
// are unchanged for observe writes of every version type, in every pgx
// mode and psql, compared with the same statements sent directly.
func TestObserveResults(t *testing.T) {
	db := newDatabase(t, observeDDL)
	p := guardedProxy(t, observeTables()...)
	for _, table := range observeTables() {
		// A second row for the multi-row writes.
		if _, err := direct(t, db).Exec(context.Background(), "INSERT INTO "+table.Name+" (id, n) VALUES (2, 0)"); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connectMode(t, p.Addr, db, mode)
			d := connectMode(t, pg.Addr(), db, mode)
			for _, table := range observeTables() {
				for _, w := range observeWrites {
					sql := fmt.Sprintf(w.sql, table.Name)
					// Read first, so that the write is compared too.
					if _, err := c.Exec(context.Background(), "SELECT n FROM "+table.Name+" WHERE id = 1"); err != nil {
						t.Fatal(err)
					}
					want := resultOf(t, d, mode, sql, w.args)
					if got := resultOf(t, c, mode, sql, w.args); got != want {
						t.Errorf("%s %s: through the proxy\n %s\ndirectly\n %s", table.Name, w.name, got, want)
					}
				}
			}
		})
	}
	for _, table := range observeTables() {
		var stmts []string
		for _, w := range observeWrites {
			sql := w.sql
			for i := len(w.args); i >= 1; i-- {
				sql = strings.ReplaceAll(sql, fmt.Sprintf("$%d", i), fmt.Sprint(w.args[i-1]))
			}
			stmts = append(stmts, fmt.Sprintf(sql, table.Name))
		}
		sql := "BEGIN; SELECT n FROM " + table.Name + " ORDER BY id; " + strings.Join(stmts, "; ") + "; ROLLBACK"
		psqlSame(t, p.Addr, db, sql)
	}
}

// TestObserveWrittenOver: another session's write between this session's
// read and write is counted, and logged with the version read and the
// version the other session wrote (the one this write overwrote): when
// the other write committed before this one ran, and when this write had
// to wait for it (PostgreSQL then re-checks the WHERE on the row's newest
// version). xmin, timestamptz and uuid versions, in every pgx mode.
func TestObserveWrittenOver(t *testing.T) {
	ctx := context.Background()
	db := newDatabase(t, observeDDL)
	version := map[string]string{"xcounter": "xmin::text", "tcounter": "version::text", "ucounter": "version::text"}
	for _, mode := range execModes {
		for _, table := range observeTables()[1:] {
			for _, wait := range []bool{false, true} {
				what := fmt.Sprintf("%s %s wait=%v", mode, table.Name, wait)
				// A proxy of its own: the one lost update is its first log line.
				p, logs := startProxyCapture(t, newConfig(t, pg.Addr(), table))
				c := connectMode(t, p.Addr, db, mode)
				other := direct(t, db)
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var n int
				var read string
				if err := tx.QueryRow(ctx, "SELECT n FROM "+table.Name+" WHERE id = 1").Scan(&n); err != nil {
					t.Fatal(err)
				}
				if err := other.QueryRow(ctx, "SELECT "+version[table.Name]+" FROM "+table.Name+" WHERE id = 1").Scan(&read); err != nil {
					t.Fatal(err)
				}
				otx, err := other.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				// The other session's write: a version of its own.
				var written string
				if err := otx.QueryRow(ctx, "UPDATE "+table.Name+" SET n = n + 100"+
					map[string]string{"xcounter": "", "tcounter": ", version = clock_timestamp()", "ucounter": ", version = gen_random_uuid()"}[table.Name]+
					" WHERE id = 1 RETURNING "+version[table.Name]).Scan(&written); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				if !wait {
					if err := otx.Commit(ctx); err != nil {
						t.Fatal(err)
					}
				}
				go func() {
					_, err := tx.Exec(ctx, "UPDATE "+table.Name+" SET n = $1 WHERE id = 1", n+1)
					done <- err
				}()
				if wait {
					waitForLock(t, db, table.Name)
					if err := otx.Commit(ctx); err != nil {
						t.Fatal(err)
					}
				}
				if err := <-done; err != nil {
					t.Fatalf("%s: write: %v", what, err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				if got := p.Srv.Metrics().LostUpdatesObserved("public." + table.Name); got != 1 {
					t.Errorf("%s: %d lost updates observed, want 1", what, got)
				}
				// The version read is logged as captured: a binary
				// timestamp is rendered by the proxy, not by the server.
				readRE := `"?` + regexp.QuoteMeta(read) + `"?`
				if table.Name == "tcounter" {
					readRE = `"[^"]+"`
				}
				line := regexp.MustCompile(`lost update observed.*table=public\.` + table.Name + ` key=1 read_version=` +
					readRE + ` written_over="?` + regexp.QuoteMeta(written) + `"?`)
				if !line.MatchString(logs.String()) {
					t.Errorf("%s: no log line with read_version=%s written_over=%s:\n%s", what, read, written, logs.String())
				}
			}
		}
	}
}

// waitForLock waits until a session of db waits for a lock on its UPDATE
// of table.
func waitForLock(t *testing.T, db, table string) {
	t.Helper()
	d := direct(t, db)
	for {
		var waiting bool
		err := d.QueryRow(context.Background(), `SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE '||$1||' SET n = %')`, table).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		time.Sleep(10 * time.Millisecond) // poll gently
	}
}
