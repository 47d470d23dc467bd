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
		"UPDATE address SET x = -5, y = x-5, z = -5::int, w = CAST(-5 AS text) WHERE id = - 00012 AND version = 1.50",
		"UPDATE address SET x = 'O''Brien' WHERE id = 5000000000 AND version = '7'::int; SELECT 1 ORDER BY 1",
		"UPDATE doc SET b = 'x' WHERE id = 1 AND modified = timestamptz '2020-01-01' AND y = '1 day'::interval",
		"BEGIN; DELETE FROM address WHERE id = 1 AND version = 2; COMMIT",
		"EXECUTE p(1, 'a', -2.5)",
		"SELECT version FROM address WHERE id = 48213 FOR UPDATE",
	} {
		f.Add(s, "public")
	}
	for _, tc := range trackedCases {
		f.Add(tc.sql, "public")
	}
	// Two sets of policies: the general one, and one with a table in each
	// tracked mode.
	all := append(testPolicies(), trackedPolicies()...)
	r := New(all, Options{Tracking: true, MaxSQLBytes: 1 << 16, CacheSize: 64})
	direct := New(all, Options{Tracking: true, MaxSQLBytes: 1 << 16, CacheSize: -1})
	full := New(all, Options{Tracking: true, MaxSQLBytes: 1 << 16, CacheSize: -1})
	full.fullAnalysis = true
	var explicitOnly []Policy
	for _, p := range all {
		if p.Mode == ModeExplicit {
			explicitOnly = append(explicitOnly, p)
		}
	}
	explicit := New(explicitOnly, Options{MaxSQLBytes: 1 << 16, CacheSize: -1})
	untracking := New(all, Options{MaxSQLBytes: 1 << 16, CacheSize: -1})
	f.Fuzz(func(t *testing.T, sql, path string) {
		p, err := r.Plan(sql, path)
		// Planning through literal-normalized templates must give the
		// text's own plan: for the text, and for variants of it that
		// differ only in literals (the first builds the template, the
		// second is planned from it).
		pd, errd := direct.Plan(sql, path)
		if (err == nil) != (errd == nil) {
			t.Fatalf("error %v, direct error %v", err, errd)
		}
		if err == nil {
			if d := planDiff(p, pd, true); d != "" {
				t.Fatalf("plan differs from the direct plan: %s\n got  %+v\n want %+v", d, p, pd)
			}
		}
		rng := rand.New(rand.NewPCG(uint64(len(sql)), uint64(len(path))))
		if v := literalVariant(sql, rng); v != "" {
			r.Plan(v, path)
			v = literalVariant(sql, rng)
			pv, errv := r.Plan(v, path)
			pvd, errvd := direct.Plan(v, path)
			if (errv == nil) != (errvd == nil) {
				t.Fatalf("variant %q: error %v, direct error %v", v, errv, errvd)
			}
			if errv == nil {
				if d := planDiff(pv, pvd, true); d != "" {
					t.Fatalf("variant %q: plan differs from the direct plan: %s\n got  %+v\n want %+v", v, d, pv, pvd)
				}
			}
		}
		// NeedsPlan false: the plan leaves the text alone.
		if !explicit.NeedsPlan(sql) {
			if pe, err := explicit.Plan(sql, path); err == nil && (pe.Changed || pe.Guarded() || pe.SQL != sql) {
				t.Fatalf("NeedsPlan false, but the plan is %+v", pe)
			}
		}
		if !r.NeedsPlan(sql) && err == nil && (p.Changed || p.Guarded() || p.SQL != sql) {
			t.Fatalf("NeedsPlan false with tracked policies, but the plan is %+v", p)
		}
		// Without tracked policies, or with tracked mode off, nothing of
		// tracked mode appears, and NeedsPlan keeps its fast path.
		if !untracking.NeedsPlan(sql) {
			if pe, err := untracking.Plan(sql, path); err == nil && (pe.Changed || pe.Guarded() || pe.SQL != sql) {
				t.Fatalf("NeedsPlan false with tracked mode off, but the plan is %+v", pe)
			}
		}
		for _, u := range []*Rewriter{explicit, untracking} {
			pe, err := u.Plan(sql, path)
			if err != nil {
				continue
			}
			for i := range pe.Statements {
				for st := &pe.Statements[i]; st != nil; st = st.Inner {
					if len(st.Hidden) > 0 || len(st.Captures) > 0 || st.Untracked || st.Inject != nil || st.NewVersion != NewVersionNone || st.AddedReturning {
						t.Fatalf("tracked mode off, yet tracked-mode plan %+v", st)
					}
				}
			}
		}
		// The per-statement prefilter must not change any plan.
		pf, errf := full.Plan(sql, path)
		if (err == nil) != (errf == nil) {
			t.Fatalf("prefiltered error %v, full analysis error %v", err, errf)
		}
		if err == nil && planDiff(p, pf, false) != "" {
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
			for s := st; s != nil; s = s.Inner {
				checkTracked(t, s)
			}
		}
	})
}

// checkTracked checks the tracked-mode invariants of one statement.
func checkTracked(t *testing.T, st *Statement) {
	t.Helper()
	for i, h := range st.Hidden {
		if want := Field(i - len(st.Hidden)); h.Field != want {
			t.Fatalf("hidden column %d at %d, want %d (the last fields)", i, h.Field, want)
		}
	}
	for _, c := range st.Captures {
		if !c.Policy.Tracked() {
			t.Fatalf("capture of %s, mode %s", c.Policy.QualifiedName(), c.Policy.Mode)
		}
		if len(c.Keys) != len(c.Policy.Key) {
			t.Fatalf("capture with %d key fields for %d key columns", len(c.Keys), len(c.Policy.Key))
		}
		for _, f := range append(append([]Field(nil), c.Keys...), c.Version) {
			if f < 0 && int(-f) > len(st.Hidden) {
				t.Fatalf("capture field %d beyond the %d hidden columns", f, len(st.Hidden))
			}
			if f < 0 {
				h := st.Hidden[len(st.Hidden)+int(f)]
				if h.Schema != c.Policy.Schema || h.Table != c.Policy.Table {
					t.Fatalf("capture of %s at a hidden column of %s.%s", c.Policy.QualifiedName(), h.Schema, h.Table)
				}
			}
		}
	}
	if len(st.Hidden) > 0 && len(st.Captures) == 0 {
		t.Fatalf("hidden columns without a capture")
	}
	if st.AddedReturning && len(st.Hidden) == 0 {
		t.Fatalf("RETURNING added without hidden columns")
	}
	if st.Inject != nil {
		if st.Kind != KindPrepare && (st.Policy == nil || !st.Policy.Tracked() || st.Policy.Mode == ModeObserve || st.Checked) {
			t.Fatalf("injection on %+v", st)
		}
		for _, sql := range []string{st.Inject.SQL, st.WithExpected("1")} {
			tree, err := pg.Parse(sql)
			if err != nil || len(tree.Stmts) != 1 {
				t.Fatalf("injected %q does not parse to one statement: %v", sql, err)
			}
		}
	}
}

// naiveMayTouch is the specification of MayTouch.
func naiveMayTouch(tables []string, s string) bool {
	ls := foldASCII(s)
	for _, t := range append(append([]string(nil), tables...), "prepare", "execute", "deallocate", "discard", `u&"`) {
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
		`U&"x"`, "u&'", "EXECUTE", "DISCARD ALL", "discar", "PréFérence", "STRAßE", "exeCUTE p", "deallocat", "dealLocate", `"we""ird"`} {
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
