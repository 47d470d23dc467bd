package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgoptimist/pgoptimist/config"
)

// The guard follows the session: for every statement, the table pgoptimist
// guards is the table PostgreSQL writes. public.address is guarded;
// app.address, alice.address and a temporary address are not (they have no
// version column at all, so a guard that mistook them for the guarded table
// would break the write: column "version" does not exist).

const pathSetup = `
CREATE TABLE public.address (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, state text, county text);
INSERT INTO public.address VALUES (1, 1, 'FL', 'x');
CREATE SCHEMA app;
CREATE TABLE app.address (id int PRIMARY KEY, state text, county text);
INSERT INTO app.address VALUES (1, 'FL', 'x');
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'path_alice') THEN CREATE ROLE path_alice LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'path_app') THEN CREATE ROLE path_app LOGIN; END IF;
END $$;
CREATE SCHEMA path_alice AUTHORIZATION path_alice;
CREATE TABLE path_alice.address (id int PRIMARY KEY, state text, county text);
INSERT INTO path_alice.address VALUES (1, 'FL', 'x');
ALTER TABLE path_alice.address OWNER TO path_alice;
GRANT ALL ON ALL TABLES IN SCHEMA public, app TO path_alice, path_app;
GRANT USAGE ON SCHEMA app TO path_alice, path_app;
CREATE FUNCTION public.in_app() RETURNS int LANGUAGE sql SET search_path = app AS 'SELECT 1';
`

// pathProbe finds out which table an unqualified "UPDATE address" in a
// session writes, and whether the proxy guarded it, from inside the session
// (so that uncommitted writes count): the write returns its tableoid, and
// public.address's version is read before and after it.
type pathProbe struct {
	t    *testing.T
	oids map[uint32]string // table OID → schema
	n    int
}

func newPathProbe(t *testing.T, d *pgx.Conn) *pathProbe {
	p := &pathProbe{t: t, oids: make(map[uint32]string)}
	rows, err := d.Query(context.Background(), "SELECT c.oid, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'address'")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var oid uint32
		var schema string
		if err := rows.Scan(&oid, &schema); err != nil {
			t.Fatal(err)
		}
		p.oids[oid] = schema
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	return p
}

// write runs the probe's UPDATE through query and returns the schema of
// the table it wrote ("temp" for one created since) and whether the write
// was guarded (public.address's version went up by one).
func (p *pathProbe) write(ctx context.Context, c *pgx.Conn, extended bool) (string, bool) {
	p.t.Helper()
	p.n++
	readVersion := func() int {
		var v int
		if err := c.QueryRow(ctx, "SELECT version FROM public.address WHERE id = 1", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil {
			p.t.Fatalf("reading the version: %v", err)
		}
		return v
	}
	v0 := readVersion()
	var oid uint32
	var err error
	sql := fmt.Sprintf("UPDATE address SET county = 'c%d' WHERE id = 1", p.n)
	if extended {
		err = c.QueryRow(ctx, sql+" AND $1::int = 1 RETURNING tableoid::oid", 1).Scan(&oid)
	} else {
		err = c.QueryRow(ctx, sql+" RETURNING tableoid::oid", pgx.QueryExecModeSimpleProtocol).Scan(&oid)
	}
	if err != nil {
		p.t.Fatalf("write through the session: %v", err)
	}
	schema, ok := p.oids[oid]
	if !ok {
		schema = "temp"
	}
	return schema, readVersion() == v0+1
}

func TestSearchPathFollowsSession(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, pathSetup)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := direct(t, db)
	if _, err := d.Exec(ctx, fmt.Sprintf("ALTER ROLE path_app IN DATABASE %s SET search_path = app, public", db)); err != nil {
		t.Fatal(err)
	}
	p := guardedProxy(t, config.Table{Name: "public.address"})
	probe := newPathProbe(t, d)
	exec := func(c *pgx.Conn, sql string, args ...any) {
		t.Helper()
		if _, err := c.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	expect := func(step string, c *pgx.Conn, wantTable string) {
		t.Helper()
		for name, ext := range map[string]bool{"simple": false, "extended": true} {
			got, guarded := probe.write(ctx, c, ext)
			if got != wantTable {
				t.Errorf("%s (%s protocol): the write reached %s, want %s", step, name, got, wantTable)
			}
			if wantGuarded := wantTable == "public"; guarded != wantGuarded {
				t.Errorf("%s (%s protocol): guarded = %v, want %v", step, name, guarded, wantGuarded)
			}
		}
	}
	connectAs := func(user string, params map[string]string) *pgx.Conn {
		return connectWith(t, p.Addr, db, func(cc *pgx.ConnConfig) {
			cc.User = user
			for k, v := range params {
				cc.RuntimeParams[k] = v
			}
		})
	}

	// At session start: startup parameters, options, ALTER ROLE ... SET.
	expect("default search_path", connectAs("postgres", nil), "public")
	expect("startup search_path", connectAs("postgres", map[string]string{"search_path": "app, public"}), "app")
	expect("startup options", connectAs("postgres", map[string]string{"options": "-c search_path=app,public"}), "app")
	expect("ALTER ROLE ... SET search_path", connectAs("path_app", nil), "app")

	c := connectAs("postgres", nil)
	// SET and RESET in one session: guarded where the server writes the
	// guarded table, untouched where it does not.
	exec(c, "SET search_path TO app, public")
	expect("SET", c, "app")
	exec(c, "RESET search_path")
	expect("RESET", c, "public")
	exec(c, "SET SCHEMA 'app'")
	expect("SET SCHEMA", c, "app")
	exec(c, "RESET ALL")
	expect("RESET ALL", c, "public")
	exec(c, "SELECT pg_catalog.set_config('search_path', 'app', false)")
	expect("set_config", c, "app")
	exec(c, "DISCARD ALL")
	expect("DISCARD ALL", c, "public")

	// Transactions: SET LOCAL ends with the transaction, a rolled-back SET
	// is undone, and so is one rolled back to a savepoint.
	exec(c, "BEGIN")
	exec(c, "SET LOCAL search_path TO app")
	expect("SET LOCAL", c, "app")
	exec(c, "COMMIT")
	expect("after SET LOCAL's transaction", c, "public")
	exec(c, "BEGIN")
	exec(c, "SET search_path TO app")
	expect("SET in a transaction", c, "app")
	exec(c, "ROLLBACK")
	expect("SET rolled back", c, "public")
	exec(c, "BEGIN")
	exec(c, "SAVEPOINT s")
	exec(c, "SET search_path TO app")
	exec(c, "ROLLBACK TO SAVEPOINT s")
	expect("SET rolled back to a savepoint", c, "public")
	exec(c, "COMMIT")

	// "$user": SET ROLE and SET SESSION AUTHORIZATION.
	exec(c, "SET ROLE path_alice")
	expect("SET ROLE", c, "path_alice")
	exec(c, "RESET ROLE")
	expect("RESET ROLE", c, "public")
	exec(c, "SET SESSION AUTHORIZATION path_alice")
	expect("SET SESSION AUTHORIZATION", c, "path_alice")
	exec(c, "RESET SESSION AUTHORIZATION")
	expect("RESET SESSION AUTHORIZATION", c, "public")

	// A function with its own SET search_path restores the caller's.
	exec(c, "SELECT in_app()")
	expect("function with SET search_path", c, "public")

	// A temporary table shadows the guarded one (pg_temp comes first).
	exec(c, "CREATE TEMP TABLE address (id int PRIMARY KEY, state text, county text)")
	exec(c, "INSERT INTO address VALUES (1, 'FL', 'x')")
	expect("temporary table", c, "temp")
	exec(c, "DROP TABLE pg_temp.address")
	expect("temporary table dropped", c, "public")

	// A prepared set_config executed again (extended protocol, statement
	// cache): each execution counts.
	for i, path := range []string{"app", "public", "app"} {
		if _, err := c.Exec(ctx, "SELECT pg_catalog.set_config('search_path', $1, false)", path); err != nil {
			t.Fatal(err)
		}
		expect(fmt.Sprintf("prepared set_config #%d", i+1), c, path)
	}
	exec(c, "RESET search_path")

	// Several statements in one simple query: the SET takes effect for the
	// statements after it in the same string.
	probe.n++
	if _, err := c.Exec(ctx, fmt.Sprintf("SET search_path TO app; UPDATE address SET county = 'm%d' WHERE id = 1", probe.n), pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("multi-statement SET then UPDATE: %v", err)
	}
	var appCounty string
	if err := d.QueryRow(ctx, "SELECT county FROM app.address WHERE id = 1").Scan(&appCounty); err != nil || appCounty != fmt.Sprintf("m%d", probe.n) {
		t.Errorf("multi-statement SET then UPDATE did not write app.address (app county %q, %v)", appCounty, err)
	}
	expect("after the multi-statement SET", c, "app")
}

// TestSearchPathIssueReproduction is the issue's own reproduction, through
// psql: an unguarded app.address reached by search_path is left alone.
func TestSearchPathIssueReproduction(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, `CREATE TABLE public.address (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, state text, county text);`)
	p := guardedProxy(t, config.Table{Name: "public.address"})
	out, err := psql(t, p.Addr, db,
		"-c", "CREATE SCHEMA app", "-c", "CREATE TABLE app.address(id int primary key, state text, county text)",
		"-c", "INSERT INTO app.address VALUES (1,'FL','x')",
		"-c", "SET search_path TO app",
		"-c", "UPDATE address SET county='y' WHERE id=1")
	if err != nil || strings.Contains(out, "ERROR") || !strings.Contains(out, "UPDATE 1") {
		t.Fatalf("psql: %v\n%s", err, out)
	}
}

// TestCatalogDiscoveryImmune: a session with a hostile search_path (a view
// named pg_attribute that lies about column types) opens the first
// connection of a database; the guard's facts must not change, for it or
// for anyone after it.
func TestCatalogDiscoveryImmune(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, `
CREATE TABLE public.counter (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int NOT NULL DEFAULT 0);
INSERT INTO public.counter VALUES (1, 1, 0);
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mallory') THEN CREATE ROLE mallory LOGIN; END IF; END $$;
GRANT ALL ON public.counter TO mallory;
CREATE SCHEMA evil AUTHORIZATION mallory;
SET ROLE mallory;
CREATE VIEW evil.pg_attribute AS SELECT attrelid, attname, attisdropped, 25::oid AS atttypid, -1::int4 AS atttypmod, attnum FROM pg_catalog.pg_attribute;
CREATE VIEW evil.pg_class AS SELECT * FROM pg_catalog.pg_class WHERE false;
CREATE FUNCTION evil.format_type(oid, int4) RETURNS text LANGUAGE sql AS 'SELECT ''text''';
RESET ROLE;
`)
	p := guardedProxy(t, config.Table{Name: "public.counter"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mallory := connectWith(t, p.Addr, db, func(cc *pgx.ConnConfig) {
		cc.User = "mallory"
		cc.RuntimeParams["search_path"] = "evil, pg_catalog, public"
	})
	if _, err := mallory.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// Everyone, mallory included, is guarded.
	for name, c := range map[string]*pgx.Conn{"mallory": mallory, "another user": connect(t, p.Addr, db)} {
		_, err := c.Exec(ctx, "UPDATE counter SET n = n + 1 WHERE id = 1 AND version = 12345")
		wantCode(t, err, "VL409")
		before := version(t, direct(t, db), "counter", 1)
		if _, err := c.Exec(ctx, "UPDATE counter SET n = n + 1 WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
		if after := version(t, direct(t, db), "counter", 1); after != before+1 {
			t.Errorf("%s: version %d -> %d, want incremented", name, before, after)
		}
	}
}

// TestCatalogDiscoveryStatementTimeout: a statement_timeout from the first
// session's startup options does not stop the discovery (it runs with its
// own), so the session is guarded.
func TestCatalogDiscoveryStatementTimeout(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, `CREATE TABLE public.counter (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int);
INSERT INTO public.counter VALUES (1, 1, 0);`)
	p := guardedProxy(t, config.Table{Name: "public.counter"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connectWith(t, p.Addr, db, func(cc *pgx.ConnConfig) { cc.RuntimeParams["options"] = "-c statement_timeout=1" })
	if _, err := c.Exec(ctx, "SET statement_timeout = 0"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Exec(ctx, "UPDATE counter SET n = 1 WHERE id = 1 AND version = 99")
	wantCode(t, err, "VL409")
}

// TestCatalogDiscoveryFailsClosed: a session whose discovery fails (here:
// its role may not read pg_trigger in this database) is refused with a
// FATAL, never relayed unguarded; a session that can read it is guarded.
func TestCatalogDiscoveryFailsClosed(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, `CREATE TABLE public.counter (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int);
INSERT INTO public.counter VALUES (1, 1, 0);
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'no_catalog') THEN CREATE ROLE no_catalog LOGIN; END IF; END $$;
GRANT ALL ON public.counter TO no_catalog;
REVOKE SELECT ON pg_catalog.pg_trigger FROM PUBLIC;`)
	p, logs := startProxyCapture(t, newConfig(t, pg.Addr(), config.Table{Name: "public.counter"}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := pgx.ParseConfig(dsn(p.Addr, "no_catalog", "", db))
	if err != nil {
		t.Fatal(err)
	}
	_, err = pgx.ConnectConfig(ctx, cc)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P03" || pe.Severity != "FATAL" {
		t.Fatalf("want FATAL 57P03, got %v", err)
	}
	if !strings.Contains(logs.String(), "permission denied") {
		t.Errorf("the log does not say why:\n%s", logs.String())
	}
	// The failure is not remembered: a session that can read the catalog
	// discovers it and is guarded.
	c := connect(t, p.Addr, db)
	_, err = c.Exec(ctx, "UPDATE counter SET n = 1 WHERE id = 1 AND version = 99")
	wantCode(t, err, "VL409")
}
