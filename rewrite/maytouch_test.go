package rewrite

import (
	"strings"
	"testing"
)

func TestMayTouch(t *testing.T) {
	r := New([]Policy{
		{Schema: "public", Table: "address", Column: "version", Type: TypeInteger, Update: true, Delete: true},
		{Schema: "Sales", Table: "Order", Column: "version", Type: TypeInteger, Update: true},
		{Schema: "public", Table: `we"ird`, Column: "version", Type: TypeInteger, Update: true},
		{Schema: "public", Table: "x", Column: "version", Type: TypeInteger, Update: true},
	}, Options{})
	cases := []struct {
		sql  string
		want bool
	}{
		{"UPDATE address SET a = 1", true},
		{"update ADDRESS set a = 1", true},
		{`UPDATE "address" SET a = 1`, true},
		{"UPDATE public.address SET a = 1", true},
		{"select * from addresses", true}, // false positives are fine
		{"address", true},
		{"xaddressx", true},
		{`UPDATE "Sales"."Order" SET a = 1`, true},
		{`update sales.order set a = 1`, true},
		{`UPDATE "we""ird" SET a = 1`, true},
		{`UPDATE we"ird SET a = 1`, true},
		{"select x", true}, // one-letter table name
		{"EXECUTE p(1)", true},
		{"  execute p", true},
		{"PREPARE p AS SELECT 1", true},
		{"Deallocate all", true},
		{`UPDATE U&"\0061ddress" SET a = 1`, true},
		{`update u&"\0061ddress" set a = 1`, true},
		{"", false},
		{"addres", false},
		{"SELECT 1", false},
		{"ddress", false},
		{"SELECT id, name FROM users WHERE id = $1", false},
		{"UPDATE things SET version = version + 1", false},
		{"SELECT a && b, c & d, u&'y'", false},
		{"prepar", false},
	}
	for _, tc := range cases {
		tc.sql = strings.ReplaceAll(tc.sql, "select x", "SELECT 1 FROM X")
		if got := r.MayTouch(tc.sql); got != tc.want {
			t.Errorf("MayTouch(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
}

func TestMayTouchNoPolicies(t *testing.T) {
	r := New(nil, Options{})
	if r.MayTouch("UPDATE address SET x = 1") {
		t.Error("no policies, yet MayTouch")
	}
	if !r.MayTouch("EXECUTE p") {
		t.Error("EXECUTE must always reach Plan")
	}
}

func TestMayTouchAllocs(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	sql := "SELECT id, name, email FROM customers WHERE id = $1 AND tenant = $2 ORDER BY name LIMIT 10"
	if n := testing.AllocsPerRun(100, func() { r.MayTouch(sql) }); n != 0 {
		t.Errorf("MayTouch allocates %v times", n)
	}
}

func TestPlanCachedAllocs(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	sql := "UPDATE address SET x = $1 WHERE id = $2 AND version = $3"
	if _, err := r.Plan(sql, "public"); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { r.Plan(sql, "public") }); n != 0 {
		t.Errorf("cached Plan allocates %v times", n)
	}
}

func TestExceedsDepth(t *testing.T) {
	cases := []struct {
		sql  string
		max  int
		want bool
	}{
		{"SELECT 1", 3, false},
		{"SELECT ((1))", 3, false},
		{"SELECT (((1)))", 3, true},
		{"SELECT '((((((((('", 3, false},
		{`SELECT "(((((((((("`, 3, false},
		{"SELECT $$((((((((($$, $a$ ((((( $a$", 3, false},
		{"SELECT 1 -- ((((((((\n", 3, false},
		{"SELECT 1 /* (((( /* nested */ (((( */", 3, false},
		{`SELECT E'\'((((((('`, 3, false},
		{"SELECT 1+1+1+1+1", 3, true},
		{"SELECT 1+1, 1+1, 1+1, 1+1", 3, false},
		{"SELECT a=1 AND b=1 AND c=1 OR d=1", 3, false},
		{"SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4", 3, true},
		{"SELECT 1; SELECT 2; SELECT 3; SELECT 4", 3, false},
		{"SELECT x::int::int::int", 3, true},
		{"SELECT CASE WHEN CASE WHEN CASE WHEN true THEN 1 END THEN 1 END THEN 1 END", 3, true},
		{"SELECT CASE WHEN a THEN 1 END, CASE WHEN a THEN 1 END, CASE WHEN a THEN 1 END", 3, false},
		{"SELECT NOT NOT NOT NOT true", 3, true},
		{"SELECT (1))))) + (((1", 5, false}, // unbalanced closers do not go below zero
	}
	for _, tc := range cases {
		if got := exceedsDepth(tc.sql, tc.max); got != tc.want {
			t.Errorf("exceedsDepth(%q, %d) = %v, want %v", tc.sql, tc.max, got, tc.want)
		}
	}
}

func TestPrepareBody(t *testing.T) {
	cases := map[string]string{
		"PREPARE p AS SELECT 1":                                    "SELECT 1",
		"prepare p (int, text) as update t set a = $1 ;":           "update t set a = $1",
		`PREPARE "as" (numeric(10, 2)) /* as */ AS  DELETE FROM t`: "DELETE FROM t",
		"PREPARE p":         "",
		"PREPARE p (int) x": "",
	}
	for in, want := range cases {
		if got := prepareBody(in); got != want {
			t.Errorf("prepareBody(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNextTokenTerminates(t *testing.T) {
	for _, s := range []string{"'", `"`, "$$", "$a$", "/*", "--", "E'\\", "U&'", `u&"`, "$", "$1", "1e", "1e+", "::", ":", ".5", "$a", "$a b"} {
		i, n := 0, 0
		for {
			k, _, b := nextToken(s, i)
			if k == tokEOF {
				break
			}
			if b <= i {
				t.Fatalf("%q: no progress at %d", s, i)
			}
			i = b
			if n++; n > len(s)+1 {
				t.Fatalf("%q: too many tokens", s)
			}
		}
	}
}
