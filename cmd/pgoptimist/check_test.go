package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

// checkSchema has a ready table, half-ready ones, and traps: a table in
// another schema with a guarded table's name, and a role whose search_path puts
// look-alike catalog views before pg_catalog.
const checkSchema = `
CREATE TABLE public.ready_t (id int PRIMARY KEY, version integer NOT NULL DEFAULT 1, v text);
CREATE TABLE public.noversion (id int PRIMARY KEY, v text);
CREATE TABLE public.half (id int PRIMARY KEY, version integer, v text);
CREATE TABLE public.nokey (a int, version bigint NOT NULL DEFAULT 1);
CREATE TABLE public.textver (id int PRIMARY KEY, version text NOT NULL DEFAULT '1');
CREATE TABLE public.trig (id int PRIMARY KEY, version int NOT NULL DEFAULT 1);
CREATE FUNCTION public.skip_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER skipper BEFORE UPDATE ON public.trig FOR EACH ROW EXECUTE FUNCTION public.skip_row();
CREATE ROLE app LOGIN;
CREATE SCHEMA app AUTHORIZATION app;
CREATE TABLE app.ready_t (id int PRIMARY KEY);
CREATE ROLE checker LOGIN;
CREATE SCHEMA evil AUTHORIZATION checker;
CREATE VIEW evil.pg_class AS SELECT * FROM pg_catalog.pg_class WHERE false;
CREATE VIEW evil.pg_attribute AS SELECT attrelid, attname, atttypid FROM pg_catalog.pg_attribute WHERE false;
ALTER ROLE checker SET search_path = evil, pg_catalog, public;
`

const checkConfig = `
tables:
  - name: public.ready_t
  - name: public.nope
  - name: public.noversion
  - name: public.half
  - name: public.nokey
    key: [a]
    mode: tracked
  - name: public.textver
  - name: public.trig
`

func startCheckDB(t *testing.T) *pgtemp.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Stop() })
	if err := pg.Exec(ctx, checkSchema); err != nil {
		t.Fatal(err)
	}
	return pg
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestCheckCommand runs check against a real PostgreSQL with ready,
// missing and half-ready tables, in text and JSON, through the
// configuration's upstream and through --dsn as a role whose search_path
// would mislead unqualified catalog queries.
func TestCheckCommand(t *testing.T) {
	pg := startCheckDB(t)
	cfg := writeFile(t, "c.yaml", fmt.Sprintf("upstream:\n  address: %s\n  tls: disable\n%s", pg.Addr(), checkConfig))

	t.Run("text", func(t *testing.T) {
		t.Setenv("PGUSER", pg.Superuser)
		t.Setenv("PGDATABASE", "postgres")
		out, err := run(t, "check", "--config", cfg)
		if code := exitCode(err); code != 1 {
			t.Fatalf("exit status %d (%v), want 1:\n%s", code, err, out)
		}
		for _, want := range []string{
			"public.nope ", "table public.nope does not exist",
			"ALTER TABLE public.noversion ADD COLUMN version integer NOT NULL DEFAULT 1;",
			"UPDATE public.half SET version = 1 WHERE version IS NULL; ALTER TABLE public.half ALTER COLUMN version SET NOT NULL;",
			"ALTER TABLE public.half ALTER COLUMN version SET DEFAULT 1;",
			"CREATE UNIQUE INDEX CONCURRENTLY ON public.nokey (a);",
			"version column version has type text",
			"BEFORE ROW trigger(s) skipper",
			"other tables named ready_t exist in schema(s) app",
			"search_path set by ALTER ROLE/DATABASE: checker: search_path=evil, pg_catalog, public",
			"mode tracked",
			"2 of 7 tables ready.",
			"-- DDL that would fix what is missing",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "\x1b[") {
			t.Errorf("colour codes in output that is not a terminal:\n%s", out)
		}
	})

	t.Run("json as a role with a misleading search_path", func(t *testing.T) {
		out, err := run(t, "check", "--config", cfg, "--dsn", pg.DSN("checker", "", "postgres"), "--format", "json")
		if code := exitCode(err); code != 1 {
			t.Fatalf("exit status %d (%v), want 1:\n%s", code, err, out)
		}
		var rep checkReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if rep.Ready || len(rep.Tables) != 7 {
			t.Fatalf("ready %v, %d tables; want not ready, 7", rep.Ready, len(rep.Tables))
		}
		want := map[string]struct {
			ready bool
			mode  string
		}{
			"public.ready_t": {true, "explicit"}, "public.nope": {false, "explicit"}, "public.noversion": {false, "explicit"},
			"public.half": {false, "explicit"}, "public.nokey": {false, "tracked"}, "public.textver": {false, "explicit"},
			"public.trig": {true, "explicit"},
		}
		for i, tr := range rep.Tables {
			w, ok := want[tr.Table]
			if !ok || tr.Ready != w.ready || tr.Mode != w.mode {
				t.Errorf("%s: ready %v mode %s; want %+v", tr.Table, tr.Ready, tr.Mode, w)
			}
			if tr.Key != fmt.Sprintf("tables[%d]", i) {
				t.Errorf("%s: config_key %q", tr.Table, tr.Key)
			}
		}
		// Through evil.pg_class an unqualified query would find no table.
		if f := rep.Tables[0].Findings[0]; f.Check != "table" || f.Status != statusOK {
			t.Errorf("public.ready_t: first finding %+v, want the table found", f)
		}
	})

	t.Run("all ready", func(t *testing.T) {
		ready := writeFile(t, "r.yaml", "tables:\n  - name: public.ready_t\n  - name: public.trig\n")
		out, err := run(t, "check", "--config", ready, "--dsn", pg.DSN(pg.Superuser, "", "postgres"))
		if err != nil {
			t.Fatalf("exit status %d (%v), want 0:\n%s", exitCode(err), err, out)
		}
		if !strings.Contains(out, "2 of 2 tables ready.") || strings.Contains(out, "DDL") {
			t.Errorf("unexpected output:\n%s", out)
		}
	})

	t.Run("fixes make it ready", func(t *testing.T) {
		// Run the DDL check printed for the half-ready tables, then check again.
		half := writeFile(t, "h.yaml", "tables:\n  - name: public.noversion\n  - name: public.half\n")
		out, err := run(t, "check", "--config", half, "--dsn", pg.DSN(pg.Superuser, "", "postgres"), "--format", "json")
		if exitCode(err) != 1 {
			t.Fatalf("exit status %d, want 1:\n%s", exitCode(err), out)
		}
		var rep checkReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		for _, tr := range rep.Tables {
			for _, f := range tr.Findings {
				if f.Fix != "" {
					if err := pg.Exec(ctx, f.Fix); err != nil {
						t.Fatalf("fix %q: %v", f.Fix, err)
					}
				}
			}
		}
		out, err = run(t, "check", "--config", half, "--dsn", pg.DSN(pg.Superuser, "", "postgres"))
		if err != nil {
			t.Fatalf("after the fixes: exit status %d (%v):\n%s", exitCode(err), err, out)
		}
	})
}

// TestCheckExitStatus2: a bad configuration or an unreachable database is
// status 2, not "not ready".
func TestCheckExitStatus2(t *testing.T) {
	bad := writeFile(t, "bad.yaml", "tables:\n  - name: public.address\n    mode: trackd\n")
	if out, err := run(t, "check", "--config", bad); exitCode(err) != 2 {
		t.Errorf("bad configuration: status %d (%v), want 2:\n%s", exitCode(err), err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	cfg := writeFile(t, "c.yaml", "upstream:\n  address: "+addr+"\n  tls: disable\ntables:\n  - name: public.address\n")
	out, err := run(t, "check", "--config", cfg, "--timeout", "5s")
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "connecting to") {
		t.Errorf("unreachable database: status %d (%v), want 2:\n%s", exitCode(err), err, out)
	}
	if out, err := run(t, "check", "--config", cfg, "--format", "yaml"); exitCode(err) != 2 {
		t.Errorf("bad --format: status %d (%v), want 2:\n%s", exitCode(err), err, out)
	}
}
