package rewrite

import (
	"strings"
	"testing"
)

// TestExactPath: under an exact path an unqualified name reaches the
// guarded table the server said it reaches, and nothing when the server
// said another relation; qualified names are unaffected.
func TestExactPath(t *testing.T) {
	r := New(testPolicies(), Options{})
	cases := []struct {
		names map[string]string
		sql   string
		want  string // guarded table, or ""
	}{
		{map[string]string{"address": "public"}, "UPDATE address SET a = 1 WHERE id = 1", "public.address"},
		{map[string]string{"address": "alice"}, "UPDATE address SET a = 1 WHERE id = 1", "alice.address"},
		// app.address shadows public.address: not guarded.
		{map[string]string{"address": ""}, "UPDATE address SET a = 1 WHERE id = 1", ""},
		// A name the server was not asked about resolves to nothing.
		{map[string]string{}, "UPDATE address SET a = 1 WHERE id = 1", ""},
		// One name shadowed, the other reaching its guarded table.
		{map[string]string{"address": "", "doc": "public"}, "UPDATE doc SET a = 1 WHERE id = 1", "public.doc"},
		{map[string]string{"address": "", "doc": "public"}, "UPDATE address SET a = 1 WHERE id = 1", ""},
		// Qualified names do not depend on the path.
		{map[string]string{"address": ""}, "UPDATE public.address SET a = 1 WHERE id = 1", "public.address"},
	}
	for _, c := range cases {
		plan, err := r.Plan(c.sql, ExactPath(c.names))
		if err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		got := ""
		if p := plan.Statements[0].Policy; p != nil {
			got = p.QualifiedName()
		}
		if got != c.want {
			t.Errorf("%v %s: guarded %q, want %q", c.names, c.sql, got, c.want)
		}
	}
	if ExactPath(map[string]string{"b": "x", "a": ""}) != ExactPath(map[string]string{"a": "", "b": "x"}) {
		t.Error("ExactPath is not canonical")
	}
}

func TestMayChangeResolution(t *testing.T) {
	yes := []string{
		"SET search_path TO app", "set local search_path = app, public", "SET SCHEMA 'app'",
		"RESET search_path", "RESET ALL", "DISCARD ALL",
		"SELECT pg_catalog.set_config('search_path', 'app', false)", "select set_config($1, $2, false)",
		"SET ROLE alice", "SET SESSION AUTHORIZATION alice", "RESET ROLE",
		"ROLLBACK", "ROLLBACK TO SAVEPOINT s", "abort",
		"CREATE TEMP TABLE address (id int)", "DROP TABLE app.address", "ALTER TABLE x RENAME TO address",
		"IMPORT FOREIGN SCHEMA s FROM SERVER f INTO app", `SET "search_path" TO app`,
	}
	no := []string{
		"SELECT 1", "UPDATE address SET state = 'x' WHERE id = 1", "INSERT INTO address VALUES (1)",
		"BEGIN", "COMMIT", "SELECT * FROM information_schema.tables", "SELECT created_at, dropped FROM t",
		"SELECT my_role_name FROM t", "SELECT x AS resetting FROM t",
	}
	for _, s := range yes {
		if !MayChangeResolution(s) {
			t.Errorf("MayChangeResolution(%q) = false", s)
		}
	}
	for _, s := range no {
		if MayChangeResolution(s) {
			t.Errorf("MayChangeResolution(%q) = true", s)
		}
	}
}

func BenchmarkMayChangeResolution(b *testing.B) {
	q := "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	for i := 0; i < b.N; i++ {
		MayChangeResolution(q)
	}
}

// FuzzMayChangeResolution: any client text; the answer does not depend on
// ASCII case, and a text that starts with SET search_path is always seen.
func FuzzMayChangeResolution(f *testing.F) {
	for _, s := range []string{"SET search_path TO app", "select 1", "RESET ALL", "\x00\xff", "pg_catalog.set_config('search_path','x',false)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := MayChangeResolution(s)
		if got != MayChangeResolution(strings.ToUpper(s)) && isASCII(s) {
			t.Errorf("%q: case changes the answer", s)
		}
		if !MayChangeResolution("SET search_path TO x;" + s) {
			t.Errorf("a leading SET search_path not seen before %q", s)
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
