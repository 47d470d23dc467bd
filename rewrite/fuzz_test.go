package rewrite

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

func FuzzPlan(f *testing.F) {
	for _, tc := range planCases {
		f.Add(tc.sql, tc.path)
	}
	for _, s := range []string{
		"SELECT 1", "UPDATE address SET x = 1 WHERE version = $1", "DELETE FROM address",
		"UPDATE address a SET x = (SELECT 1 FROM address) WHERE a.version IN (1, 2)",
		"WITH a AS (WITH b AS (UPDATE address SET x = 1 RETURNING 1) SELECT 1) SELECT 1",
		"PREPARE p AS WITH u AS (UPDATE address SET x = 1 RETURNING 1) SELECT 1",
		"CREATE RULE r AS ON UPDATE TO t DO ALSO UPDATE address SET x = 1",
		"CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC UPDATE address SET x = 1; END",
		"UPDATE address SET x = 1 WHERE version = 1 OR version = 2; EXECUTE p; DEALLOCATE ALL",
		"INSERT INTO address SELECT * FROM address ON CONFLICT (id) DO UPDATE SET version = excluded.version",
		"UPDATE address SET x = 1 WHERE id = 1 AND version = 99999999999999999999999",
		"UPDATE address SET x = 1 WHERE version = NULL AND id = true",
		"UPDATE ADDRESS SET X=1 WHERE VERSION=B'101'",
		"update address set x = 'it''s' where version = E'\\x'",
	} {
		f.Add(s, "public")
	}
	r := New(testPolicies(), Options{MaxSQLBytes: 1 << 16, CacheSize: 64})
	full := New(testPolicies(), Options{MaxSQLBytes: 1 << 16, CacheSize: -1})
	full.fullAnalysis = true
	f.Fuzz(func(t *testing.T, sql, path string) {
		p, err := r.Plan(sql, path)
		// The per-statement prefilter must not change any plan.
		pf, errf := full.Plan(sql, path)
		if (err == nil) != (errf == nil) {
			t.Fatalf("prefiltered error %v, full analysis error %v", err, errf)
		}
		if err == nil && !samePlan(p, pf) {
			t.Fatalf("prefiltered plan %+v differs from full analysis %+v", p, pf)
		}
		if !r.MayTouch(sql) && errf == nil && (pf.Changed || pf.Guarded()) {
			t.Fatalf("MayTouch false but the full analysis guards: %+v", pf)
		}
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) && !errors.Is(err, ErrDeparse) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}
		if p.Changed {
			if p.SQL == sql {
				t.Errorf("Changed but SQL equals the input")
			}
			tree, err := pg.Parse(p.SQL)
			if err != nil {
				t.Fatalf("rewritten %q does not parse: %v", p.SQL, err)
			}
			if len(tree.Stmts) != len(p.Statements) {
				t.Fatalf("rewritten %q has %d statements, plan %d", p.SQL, len(tree.Stmts), len(p.Statements))
			}
		} else if p.SQL != sql {
			t.Fatalf("unchanged plan with different SQL %q", p.SQL)
		}
		if !r.MayTouch(sql) {
			if p.Changed || p.SQL != sql {
				t.Fatalf("MayTouch false but plan changed: %q", p.SQL)
			}
			for _, st := range p.Statements {
				if st.Kind != KindOther || st.Policy != nil {
					t.Fatalf("MayTouch false but statement %+v", st)
				}
			}
		}
		for i := range p.Statements {
			st := &p.Statements[i]
			if st.Refuse && st.Policy == nil && st.Kind != KindPrepare {
				t.Errorf("Refuse without a policy")
			}
			if st.Checked && st.Expected.Kind == ValueNone {
				t.Errorf("Checked without an expected value")
			}
		}
	})
}

func samePlan(a, b *Plan) bool {
	if a.SQL != b.SQL || a.Changed != b.Changed || len(a.Statements) != len(b.Statements) {
		return false
	}
	for i := range a.Statements {
		x, y := a.Statements[i], b.Statements[i]
		if (x.Policy == nil) != (y.Policy == nil) || x.Policy != nil && x.Policy.QualifiedName() != y.Policy.QualifiedName() {
			return false
		}
		if x.SQL != y.SQL || x.Kind != y.Kind || x.Checked != y.Checked ||
			x.Incremented != y.Incremented || x.Refuse != y.Refuse || x.Expected != y.Expected {
			return false
		}
	}
	return true
}

// naiveMayTouch is the specification of MayTouch.
func naiveMayTouch(tables []string, s string) bool {
	ls := foldASCII(s)
	for _, t := range append(append([]string(nil), tables...), "prepare", "execute", "deallocate", `u&"`) {
		if t != "" && strings.Contains(ls, foldASCII(t)) {
			return true
		}
		if strings.Contains(t, `"`) && strings.Contains(ls, foldASCII(strings.ReplaceAll(t, `"`, `""`))) {
			return true
		}
	}
	return false
}

var matcherTableSets = [][]string{
	{"address", "invoice", "account"},
	{"address", "Order", `we"ird`},
	{"ab", "address"},
	{"x"},
	{"abc", "bcd", "cde"},
	{"aaaa", "aaab"},
	{"préférence", "straße"},
}

func FuzzMayTouch(f *testing.F) {
	for _, s := range []string{"", "a", "SELECT 1", "UPDATE ADDRESS SET x", "aaab", "aaaab", "xx", "bc", "abcd",
		`U&"x"`, "u&'", "EXECUTE", "PréFérence", "STRAßE", "exeCUTE p", "deallocat", "dealLocate", `"we""ird"`} {
		f.Add(s)
	}
	var rs []*Rewriter
	for _, ts := range matcherTableSets {
		var ps []Policy
		for _, t := range ts {
			ps = append(ps, Policy{Schema: "public", Table: t, Column: "v"})
		}
		rs = append(rs, New(ps, Options{}))
	}
	f.Fuzz(func(t *testing.T, s string) {
		for i, r := range rs {
			if got, want := r.MayTouch(s), naiveMayTouch(matcherTableSets[i], s); got != want {
				t.Fatalf("tables %q: MayTouch(%q) = %v, want %v", matcherTableSets[i], s, got, want)
			}
		}
	})
}

func TestMayTouchMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := "abcdexADRESSpruto& \"'u"
	for i, ts := range matcherTableSets {
		var ps []Policy
		for _, tb := range ts {
			ps = append(ps, Policy{Schema: "public", Table: tb, Column: "v"})
		}
		r := New(ps, Options{})
		for n := 0; n < 20000; n++ {
			b := make([]byte, rng.IntN(40))
			for j := range b {
				b[j] = alphabet[rng.IntN(len(alphabet))]
			}
			// plant a needle now and then
			if rng.IntN(4) == 0 && len(b) > 0 {
				nd := ts[rng.IntN(len(ts))]
				p := rng.IntN(len(b))
				b = append(b[:p], append([]byte(strings.ToUpper(nd)), b[p:]...)...)
			}
			s := string(b)
			if got, want := r.MayTouch(s), naiveMayTouch(matcherTableSets[i], s); got != want {
				t.Fatalf("tables %q: MayTouch(%q) = %v, want %v", ts, s, got, want)
			}
		}
	}
}
