package integration

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgoptimist/pgoptimist/config"
)

// TestReloadReachesOpenSessions: a reload under a running pgbench with
// guarded writes fails no transaction, and a session that was open before
// it is guarded by the new policies afterwards (at its next idle point),
// including one that had nothing guarded before.
func TestReloadReachesOpenSessions(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, `
CREATE TABLE ledger (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int NOT NULL DEFAULT 0);
INSERT INTO ledger (id) SELECT g FROM generate_series(1, 20) g;
CREATE TABLE other (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int NOT NULL DEFAULT 0);
INSERT INTO other (id) VALUES (1);`)
	cfg := newConfig(t, pg.Addr(), config.Table{Name: "public.ledger"})
	p := startProxy(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Open before the reload, idle across it.
	before := connect(t, p.Addr, db)
	if _, err := before.Exec(ctx, "UPDATE other SET n = n + 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if v := version(t, direct(t, db), "other", 1); v != 1 {
		t.Fatalf("other is not guarded yet, but its version is %d", v)
	}

	script := filepath.Join(t.TempDir(), "ledger.sql")
	if err := os.WriteFile(script, []byte("\\set id random(1, 20)\nUPDATE ledger SET n = n + 1 WHERE id = :id;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() {
		out <- pgbenchRun(t, p.Addr, db, "-n", "-c", "4", "-j", "2", "-T", "4", "-M", "prepared", "-f", script)
	}()
	time.Sleep(1500 * time.Millisecond)
	next := newConfig(t, pg.Addr(), config.Table{Name: "public.ledger"}, config.Table{Name: "public.other"})
	next.Guard.StaleSQLState = "VL499"
	if err := p.Srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	res := <-out

	m := pgbenchFailed.FindStringSubmatch(res)
	if m == nil || m[1] != "0" {
		t.Fatalf("pgbench across the reload: failed transactions %v\n%s", m, res)
	}
	m = pgbenchProcessed.FindStringSubmatch(res)
	if m == nil {
		t.Fatalf("no transaction count:\n%s", res)
	}
	processed, _ := strconv.Atoi(m[1])
	d := direct(t, db)
	var sumN, badVersions int
	if err := d.QueryRow(ctx, "SELECT sum(n), count(*) FILTER (WHERE version <> n + 1) FROM ledger").Scan(&sumN, &badVersions); err != nil {
		t.Fatal(err)
	}
	if sumN != processed || badVersions != 0 {
		t.Errorf("%d transactions, ledger sum %d, %d rows whose version missed an increment", processed, sumN, badVersions)
	}

	// The session opened before the reload now guards other, with the
	// new stale SQLSTATE.
	if _, err := before.Exec(ctx, "UPDATE other SET n = n + 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if v := version(t, d, "other", 1); v != 2 {
		t.Errorf("after the reload the open session's write left other at version %d, want 2", v)
	}
	_, err := before.Exec(ctx, "UPDATE other SET n = 0 WHERE id = 1 AND version = 99")
	wantCode(t, err, "VL499")

	// A session that had nothing guarded (no table configured) is guarded
	// after a reload that adds one.
	bare := startProxy(t, newConfig(t, pg.Addr()))
	c := connect(t, bare.Addr, db)
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := bare.Srv.Reload(newConfig(t, pg.Addr(), config.Table{Name: "public.other"})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil { // its idle point
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, "UPDATE other SET n = 0 WHERE id = 1 AND version = 99")
	wantCode(t, err, "VL409")
}

// TestPreparedStatementsFollowReload: statements a session prepared before
// a reload (pgx's statement cache: later executions send only Bind and
// Execute) are prepared again under the new policies at their next Bind.
func TestPreparedStatementsFollowReload(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, `
CREATE TABLE ledger (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int NOT NULL DEFAULT 0);
CREATE TABLE other (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int NOT NULL DEFAULT 0);
INSERT INTO other (id) VALUES (1);`)
	p := startProxy(t, newConfig(t, pg.Addr(), config.Table{Name: "public.ledger"}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connectMode(t, p.Addr, db, pgx.QueryExecModeCacheStatement)
	const bump = "UPDATE other SET n = n + 1 WHERE id = $1"
	const checked = "UPDATE other SET n = 0 WHERE id = $1 AND version = $2"
	if _, err := c.Exec(ctx, bump, 1); err != nil {
		t.Fatal(err)
	}
	if tag, err := c.Exec(ctx, checked, 1, 99); err != nil || tag.RowsAffected() != 0 {
		t.Fatalf("unguarded stale write: %v %v", tag, err)
	}
	d := direct(t, db)
	if v := version(t, d, "other", 1); v != 1 {
		t.Fatalf("other is not guarded yet, but its version is %d", v)
	}
	if err := p.Srv.Reload(newConfig(t, pg.Addr(), config.Table{Name: "public.ledger"}, config.Table{Name: "public.other"})); err != nil {
		t.Fatal(err)
	}
	// The same texts: pgx binds the statements it prepared before.
	if _, err := c.Exec(ctx, bump, 1); err != nil {
		t.Fatal(err)
	}
	if v := version(t, d, "other", 1); v != 2 {
		t.Errorf("a statement prepared before the reload left other at version %d, want 2", v)
	}
	_, err := c.Exec(ctx, checked, 1, 99)
	wantCode(t, err, "VL409")
}

// TestPreparedStatementsFollowSearchPath: a statement prepared while
// "address" meant the guarded public.address, bound again after SET
// search_path made it mean app.address: PostgreSQL re-plans it for
// app.address, and the proxy prepares it again unguarded (its guarded text
// would name a version column app.address does not have).
func TestPreparedStatementsFollowSearchPath(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, pathSetup)
	p := guardedProxy(t, config.Table{Name: "public.address"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connectMode(t, p.Addr, db, pgx.QueryExecModeCacheStatement)
	d := direct(t, db)
	const upd = "UPDATE address SET county = $1 WHERE id = $2"
	if _, err := c.Exec(ctx, upd, "p1", 1); err != nil {
		t.Fatal(err)
	}
	if v := version(t, d, "address", 1); v != 2 {
		t.Fatalf("public.address version %d after a guarded write, want 2", v)
	}
	if _, err := c.Exec(ctx, "SET search_path TO app, public"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, upd, "a1", 1); err != nil {
		t.Fatalf("the prepared statement after SET search_path: %v", err)
	}
	var county string
	if err := d.QueryRow(ctx, "SELECT county FROM app.address WHERE id = 1").Scan(&county); err != nil || county != "a1" {
		t.Errorf("app.address county %q (%v), want a1", county, err)
	}
	if _, err := c.Exec(ctx, "RESET search_path"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, upd, "p2", 1); err != nil {
		t.Fatal(err)
	}
	if v := version(t, d, "address", 1); v != 3 {
		t.Errorf("public.address version %d after the path was reset, want 3 (guarded again)", v)
	}
}
