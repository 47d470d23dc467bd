package rewrite

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	cases := []struct {
		sql  string
		key  string   // "" means: not normalized
		lits []string // the literals' values, when given
	}{
		{"UPDATE vt SET n = n + 1 WHERE id = 48213 AND version = 7", "UPDATE vt SET n = n + $1 WHERE id = $2 AND version = $3", []string{"1", "48213", "7"}},
		{"SELECT version FROM vt WHERE id = 48213", "SELECT version FROM vt WHERE id = $1", nil},
		{"select x from t where a = 'O''Brien' and b = ''", "select x from t where a = $1 and b = $2", []string{"O'Brien", ""}},
		{`SELECT 'back\slash', 'naïve ☃'`, "SELECT $1, $2", []string{`back\slash`, "naïve ☃"}},
		{"SELECT 'multi\nline'", "SELECT $1", []string{"multi\nline"}},
		// Numbers: as the parser makes constants of them.
		{"SELECT 5000000000, 2147483647, 2147483648, 00012, 0, 1.50, .5, 5., 1e5, 1.5E+10", "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10",
			[]string{"5000000000", "2147483647", "2147483648", "12", "0", "1.50", ".5", "5.", "1e5", "1.5E+10"}},
		// A unary minus is part of the constant; a binary one is not.
		{"SELECT -5, x = -5, x=-5, x * -5, x - 5, x-5, (-5), - 5, -0, -00012, -2147483648, -2147483649, -1.5", "SELECT $1, x = $2, x=$3, x * $4, x - $5, x-$6, ($7), $8, $9, $10, $11, $12, $13",
			[]string{"-5", "-5", "-5", "-5", "5", "5", "-5", "-5", "0", "-12", "-2147483648", "-2147483649", "-1.5"}},
		{"SELECT x - -5, - - 5", "SELECT x - $1, - $2", []string{"-5", "-5"}},
		{"UPDATE t SET a = -5::int, b = -5 ^ 2, c = CAST(-5 AS text)", "UPDATE t SET a = -$1::int, b = $2 ^ $3, c = CAST($4 AS text)", []string{"5", "-5", "2", "-5"}},
		{"SELECT 1 WHERE a = 1 AND -5 < b", "SELECT $1 WHERE a = $2 AND $3 < b", []string{"1", "1", "-5"}},
		// Typed literals stay; a cast literal is replaced.
		{"SELECT * FROM t WHERE d > date '2020-01-01' AND i < now() - interval '1 day' AND u = 'a0ee'::uuid AND ts = timestamp '2020-01-01 00:00'",
			"SELECT * FROM t WHERE d > date '2020-01-01' AND i < now() - interval '1 day' AND u = $1::uuid AND ts = timestamp '2020-01-01 00:00'", []string{"a0ee"}},
		{"SELECT ts AT TIME ZONE 'UTC', t.x FROM t WHERE s LIKE 'a%' ESCAPE '!'", "SELECT ts AT TIME ZONE 'UTC', t.x FROM t WHERE s LIKE $1 ESCAPE '!'", nil},
		{"SELECT x::numeric(10, 2), CAST(y AS varchar(80)), z::timestamp(3) with time zone, w::pg_catalog.numeric(6,1), v::character varying(9), u::int[3] FROM t WHERE a IN (1, 2)",
			"SELECT x::numeric(10, 2), CAST(y AS varchar(80)), z::timestamp(3) with time zone, w::pg_catalog.numeric(6,1), v::character varying(9), u::int[3] FROM t WHERE a IN ($1, $2)", nil},
		{"SELECT a AS b FROM t WHERE z IN (1, 2) GROUP BY 1 ORDER BY a DESC, 2 LIMIT 10 OFFSET 5", "SELECT a AS b FROM t WHERE z IN ($1, $2) GROUP BY 1 ORDER BY a DESC, 2 LIMIT $3 OFFSET $4", nil},
		{"SELECT rank() OVER (PARTITION BY a ORDER BY b) FROM t WHERE c = 3", "SELECT rank() OVER (PARTITION BY a ORDER BY b) FROM t WHERE c = $1", nil},
		{"SELECT x FROM t WHERE y = ARRAY[1, 2] AND z = ANY ('{1,2}') AND j->>'k' = 'v'", "SELECT x FROM t WHERE y = ARRAY[$1, $2] AND z = ANY ($3) AND j->>$4 = $5", nil},
		{"SELECT 1 -- 'not' 2\n/* 'a' 3 */", "SELECT $1 -- 'not' 2\n/* 'a' 3 */", []string{"1"}},
		{"BEGIN; UPDATE address SET x = 'a' WHERE version = 3; COMMIT;", "BEGIN; UPDATE address SET x = $1 WHERE version = $2; COMMIT;", nil},
		{"WITH u AS (UPDATE address SET x = 1 WHERE version = 2 RETURNING id) SELECT * FROM u", "WITH u AS (UPDATE address SET x = $1 WHERE version = $2 RETURNING id) SELECT * FROM u", nil},
		{"INSERT INTO address AS a (id, x) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET x = 'y' WHERE a.version = 3",
			"INSERT INTO address AS a (id, x) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET x = $3 WHERE a.version = $4", nil},
		{"EXECUTE p(1, 'a', -2)", "EXECUTE p($1, $2, $3)", []string{"1", "a", "-2"}},
		{"(SELECT 1) UNION SELECT 2", "(SELECT $1) UNION SELECT $2", nil},
		{"WITH s AS MATERIALIZED (SELECT 1 AS id), t AS NOT MATERIALIZED (SELECT 2) SELECT 3", "WITH s AS MATERIALIZED (SELECT $1 AS id), t AS NOT MATERIALIZED (SELECT $2) SELECT $3", nil},
		{"INSERT INTO t AS a (x) VALUES (1)", "INSERT INTO t AS a (x) VALUES ($1)", nil},
		{"SELECT a[1:2], a[-1] FROM t", "SELECT a[$1:$2], a[$3] FROM t", []string{"1", "2", "-1"}},
		{"MERGE INTO address a USING src s ON a.id = s.id WHEN MATCHED AND s.q = 0 THEN DELETE", "MERGE INTO address a USING src s ON a.id = s.id WHEN MATCHED AND s.q = $1 THEN DELETE", nil},

		// Not normalized.
		{"SELECT 1 FROM t WHERE a = b", "SELECT $1 FROM t WHERE a = b", nil},
		{"SELECT a FROM t", "", nil}, // no literal
		{"", "", nil},
		{"SELECT $1, 2", "", nil},
		{"SELECT $$x$$, 2", "", nil},
		{"SELECT $q$x$q$, 2", "", nil},
		{"SELECT a$b, 2 FROM t", "", nil},
		{`SELECT "a$b", 2 FROM t`, "", nil},
		{"SELECT E'x', 2", "", nil},
		{"SELECT e'x', 2", "", nil},
		{"SELECT U&'x', 2", "", nil},
		{"SELECT B'101', 2", "", nil},
		{"SELECT X'1F', 2", "", nil},
		{"SELECT N'x', 2", "", nil},
		{"SELECT 'a'\n'b'", "", nil},
		{"SELECT 'a' 'b'", "", nil},
		{"SELECT 'x'[1]", "", nil},
		{"SELECT ('x').f, 'y'.g", "", nil},
		{"SELECT 'a'b", "", nil},
		{"SELECT x FROM t WHERE a = 1 AND'x' = b", "", nil},
		{"SELECT 0x1F", "", nil},
		{"SELECT 1_000", "", nil},
		{"SELECT 1e", "", nil},
		{"SELECT 1..5", "", nil},
		{"SELECT 12abc", "", nil},
		{"SELECT 'unterminated", "", nil},
		{"SELECT 'it''s", "", nil},
		{"SELECT 1, '\x00'", "", nil},
		{"SELECT 1, '\xff'", "", nil},
		{"CREATE TABLE t (a int DEFAULT 5)", "", nil},
		{"SET statement_timeout = 5", "", nil},
		{"SHOW x", "", nil},
		{"EXPLAIN ANALYZE UPDATE address SET x = 1", "", nil},
		{"COPY (SELECT 1) TO STDOUT", "", nil},
		{"PREPARE p AS UPDATE address SET x = 1 WHERE version = 2", "", nil},
		{"DO 'BEGIN NULL; END'", "", nil},
		{"SELECT 1; CREATE TABLE t (a int DEFAULT 5)", "", nil},
		{"SELECT (1; 2)", "", nil},
		{"LISTEN ch; NOTIFY ch, 'payload'", "", nil},
	}
	for _, tc := range cases {
		nz := &normalizer{}
		ok := nz.normalize(tc.sql)
		if !ok {
			if tc.key != "" {
				t.Errorf("%q: not normalized, want %q", tc.sql, tc.key)
			}
			continue
		}
		if tc.key == "" {
			t.Errorf("%q: normalized to %q, want not normalized", tc.sql, nz.key)
			continue
		}
		if string(nz.key) != tc.key {
			t.Errorf("%q:\n got  %q\n want %q", tc.sql, nz.key, tc.key)
		}
		if tc.lits != nil {
			var got []string
			for _, l := range nz.lits {
				got = append(got, l.value(tc.sql))
			}
			if !reflect.DeepEqual(got, tc.lits) {
				t.Errorf("%q: literal values %q, want %q", tc.sql, got, tc.lits)
			}
		}
	}
}

// literalVariant returns sql with every literal the normalizer replaces
// replaced by another of the same shape (a negative number by a negative
// number), so that it normalizes to the same key; "" when sql does not
// normalize.
func literalVariant(sql string, rng *rand.Rand) string {
	nz := &normalizer{}
	if !nz.normalize(sql) {
		return ""
	}
	var b strings.Builder
	last := 0
	for _, l := range nz.lits {
		b.WriteString(sql[last:l.start])
		b.WriteString(randomLiteral(rng, l.num < 0, l.num > l.start))
		last = l.end
	}
	b.WriteString(sql[last:])
	return b.String()
}

func randomLiteral(rng *rand.Rand, str, neg bool) string {
	if str {
		vals := []string{"''", "'x'", "'O''Brien'", "'42'", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
			"'2024-01-01 00:00:00+00'", `'back\slash'`, "'ünï ☃'", "'$1'", "'--'", "'/*'", "';'", "'multi\nline'"}
		return vals[rng.IntN(len(vals))]
	}
	nums := []string{"0", "7", "48213", "00012", "2147483647", "2147483648", "5000000000", "99999999999999999999999",
		"1.50", ".5", "5.", "1e5", "2.5E-3", strconv.Itoa(rng.IntN(1000000))}
	n := nums[rng.IntN(len(nums))]
	if neg {
		if rng.IntN(4) == 0 {
			return "- " + n
		}
		return "-" + n
	}
	return n
}

// instCase: after warm (which builds the template), sql is planned from the
// template; the plan must equal the direct plan of sql and these
// expectations.
type instCase struct {
	name     string
	warm     string
	sql      string
	path     string
	out      string // Plan.SQL; "" means unchanged (sql itself)
	expected []Value
	keys     [][]KeyValue
	stmtSQL  []string // Statement.SQL, when given
	args     []Value  // ExecuteArgs of the first statement
	notes    []string // notes of the first statement, by substring
}

var instCases = []instCase{
	{
		name:     "update",
		warm:     "UPDATE address SET x = 1 WHERE id = 48213 AND version = 7",
		sql:      "UPDATE address SET x = 2 WHERE id = 99 AND version = 8",
		out:      "UPDATE address SET x = 2, version = version + 1 WHERE id = 99 AND version = 8",
		expected: []Value{lit("8")},
		keys:     [][]KeyValue{{key("id", lit("99"))}},
		notes:    []string{"found version predicate version = 8", "key id = 99"},
	},
	{
		name:     "string escapes",
		warm:     "UPDATE address SET name = 'x' WHERE id = 'k' AND version = '3'",
		sql:      "UPDATE address SET name = 'O''Brien' WHERE id = 'it''s' AND version = ''''",
		out:      "UPDATE address SET name = 'O''Brien', version = version + 1 WHERE id = 'it''s' AND version = ''''",
		expected: []Value{lit("'")},
		keys:     [][]KeyValue{{key("id", lit("it's"))}},
		notes:    []string{"found version predicate version = '", "key id = it's"},
	},
	{
		name:     "negative numbers, changed",
		warm:     "UPDATE address SET x = -1 WHERE id = -2 AND version = -3",
		sql:      "UPDATE address SET x = -5 WHERE id = -9000000000 AND version = - 00012",
		out:      "UPDATE address SET x = -5, version = version + 1 WHERE id = -9000000000 AND version = -00012",
		expected: []Value{lit("-12")},
		keys:     [][]KeyValue{{key("id", lit("-9000000000"))}},
	},
	{
		name:     "negative numbers, unchanged",
		warm:     "DELETE FROM address WHERE id = -1 AND version = -2 /* c */",
		sql:      "DELETE FROM address WHERE id = -5 AND version = -2147483648 /* c */",
		expected: []Value{lit("-2147483648")},
		keys:     [][]KeyValue{{key("id", lit("-5"))}},
	},
	{
		name:     "negative number cast: bracketed",
		warm:     "UPDATE address SET x = CAST(1 AS text) WHERE version = 1",
		sql:      "UPDATE address SET x = CAST(-5 AS text) WHERE version = 2",
		out:      "UPDATE address SET x = (-5)::text, version = version + 1 WHERE version = 2",
		expected: []Value{lit("2")},
	},
	{
		name:     "decimals and big integers",
		warm:     "UPDATE address SET x = 1.5 WHERE id = 1 AND version = 2",
		sql:      "UPDATE address SET x = 1.50 WHERE id = 5000000000 AND version = 2.0",
		out:      "UPDATE address SET x = 1.50, version = version + 1 WHERE id = 5000000000 AND version = 2.0",
		expected: []Value{lit("2.0")},
		keys:     [][]KeyValue{{key("id", lit("5000000000"))}},
	},
	{
		name:     "uuid cast, composite key",
		warm:     "UPDATE item SET x = 1 WHERE a = 1 AND b = 'q' AND etag = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
		sql:      "UPDATE item SET x = 2 WHERE a = 3 AND b = 'r' AND etag = 'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'::uuid",
		out:      "UPDATE item SET x = 2, etag = gen_random_uuid() WHERE a = 3 AND b = 'r' AND etag = 'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'::uuid RETURNING item.a AS pgoptimist_1, item.b AS pgoptimist_2, item.etag AS pgoptimist_3",
		expected: []Value{lit("b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a12")},
		keys:     [][]KeyValue{{key("a", lit("3")), key("b", lit("r"))}},
	},
	{
		name:     "timestamp",
		warm:     "UPDATE doc SET body = 'x' WHERE id = 4 AND modified = '2024-01-01 00:00:00+00'::timestamptz",
		sql:      "UPDATE doc SET body = 'y' WHERE id = 5 AND modified = '2025-06-30 12:34:56.789+02'::timestamptz",
		out:      "UPDATE doc SET body = 'y', modified = clock_timestamp() WHERE id = 5 AND modified = '2025-06-30 12:34:56.789+02'::timestamptz",
		expected: []Value{lit("2025-06-30 12:34:56.789+02")},
		keys:     [][]KeyValue{{key("id", lit("5"))}},
	},
	{
		name: "multi-statement, guarded and unguarded",
		warm: "SELECT 1 FROM t WHERE y = 'a';\nUPDATE address SET x = 'a' WHERE version = 1 ; SELECT 2 -- tail",
		sql:  "SELECT 10 FROM t WHERE y = 'b''c';\nUPDATE address SET x = 'd' WHERE version = 4 ; SELECT 20 -- tail",
		out:  "SELECT 10 FROM t WHERE y = 'b''c'; UPDATE address SET x = 'd', version = version + 1 WHERE version = 4; SELECT 20",
		stmtSQL: []string{"SELECT 10 FROM t WHERE y = 'b''c'",
			"UPDATE address SET x = 'd', version = version + 1 WHERE version = 4", "SELECT 20 -- tail"},
		expected: []Value{{}, lit("4"), {}},
	},
	{
		name:     "multi-statement, guarded but unchanged: byte for byte",
		warm:     "SELECT 1 ;\n\tUPDATE acct SET b = 1 WHERE id = 2 AND xmin = '5';\n",
		sql:      "SELECT 7 ;\n\tUPDATE acct SET b = 9 WHERE id = 8 AND xmin = '6';\n",
		stmtSQL:  []string{"SELECT 7", "UPDATE acct SET b = 9 WHERE id = 8 AND xmin = '6'"},
		expected: []Value{{}, lit("6")},
		keys:     [][]KeyValue{nil, {key("id", lit("8"))}},
	},
	{
		name:     "application assigns the version: byte for byte",
		warm:     "update address set version = 5 where id = 1 /* c */ and version = 4",
		sql:      "update address set version = 6 where id = 2 /* c */ and version = 5",
		expected: []Value{lit("5")},
		keys:     [][]KeyValue{{key("id", lit("2"))}},
	},
	{
		name:    "unguarded",
		warm:    "BEGIN; SELECT * FROM address WHERE id = 1; COMMIT",
		sql:     "BEGIN; SELECT * FROM address WHERE id = 2; COMMIT",
		stmtSQL: []string{"BEGIN", "SELECT * FROM address WHERE id = 2", "COMMIT"},
	},
	{
		name:  "EXECUTE",
		warm:  "EXECUTE p(1, 'a', -2, now())",
		sql:   "EXECUTE p(3, 'b''', -4.5, now())",
		args:  []Value{lit("3"), lit("b'"), lit("-4.5"), expr("now()")},
		notes: []string{"executes prepared statement p with 4 argument(s)"},
	},
	{
		name:     "upsert key from VALUES",
		warm:     "INSERT INTO address (id, x) VALUES (7, 'a') ON CONFLICT (id) DO UPDATE SET x = excluded.x WHERE address.version = 3",
		sql:      "INSERT INTO address (id, x) VALUES (8, 'b') ON CONFLICT (id) DO UPDATE SET x = excluded.x WHERE address.version = 4",
		out:      "INSERT INTO address (id, x) VALUES (8, 'b') ON CONFLICT (id) DO UPDATE SET x = excluded.x, version = address.version + 1 WHERE address.version = 4",
		expected: []Value{lit("4")},
		keys:     [][]KeyValue{{key("id", lit("8"))}},
		notes:    []string{"key id = 8 (from VALUES)"},
	},
	{
		name:     "search path",
		warm:     "UPDATE address SET x = 1 WHERE id = 1",
		sql:      "UPDATE address SET x = 2 WHERE id = 3",
		path:     "alice",
		out:      "UPDATE address SET x = 2, version = version + 1 WHERE id = 3",
		expected: []Value{{}},
		keys:     [][]KeyValue{{key("id", lit("3"))}},
		notes:    []string{"guarded table alice.address (mode required)", "refused"},
	},
	{
		name:     "data-modifying CTE",
		warm:     "WITH u AS (UPDATE address SET x = 1 WHERE id = 1 AND version = 1 RETURNING *) SELECT * FROM u LIMIT 1",
		sql:      "WITH u AS (UPDATE address SET x = 2 WHERE id = 2 AND version = 2 RETURNING *) SELECT * FROM u LIMIT 5",
		out:      "WITH u AS (UPDATE address SET x = 2, version = version + 1 WHERE id = 2 AND version = 2 RETURNING *) SELECT * FROM u LIMIT 5",
		expected: []Value{{}},
	},
}

func TestPlanLiterals(t *testing.T) {
	for _, tc := range instCases {
		t.Run(tc.name, func(t *testing.T) {
			r := New(testPolicies(), Options{Tracking: true})
			direct := New(testPolicies(), Options{Tracking: true})
			direct.direct = true
			if _, err := r.Plan(tc.warm, tc.path); err != nil {
				t.Fatal(err)
			}
			p, err := r.Plan(tc.sql, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if r.tmplHits.Load() != 1 || r.tmplBad.Load() != 0 {
				t.Fatalf("not planned from the template: hits %d, bad %d", r.tmplHits.Load(), r.tmplBad.Load())
			}
			pd, err := direct.Plan(tc.sql, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if d := planDiff(p, pd, true); d != "" {
				t.Errorf("differs from the direct plan: %s\n got  %+v\n want %+v", d, p, pd)
			}
			if tc.out == "" {
				if p.Changed || p.SQL != tc.sql {
					t.Errorf("want the text unchanged, got Changed=%v %q", p.Changed, p.SQL)
				}
			} else if !p.Changed || p.SQL != tc.out {
				t.Errorf("SQL: Changed=%v\n got  %q\n want %q", p.Changed, p.SQL, tc.out)
			}
			mustParse(t, p.SQL, len(p.Statements))
			for i, w := range tc.stmtSQL {
				if got := p.Statements[i].SQL; got != w {
					t.Errorf("statement %d SQL %q, want %q", i, got, w)
				}
			}
			for i, w := range tc.expected {
				if got := p.Statements[i].Expected; got != w {
					t.Errorf("statement %d expected %+v, want %+v", i, got, w)
				}
			}
			for i, w := range tc.keys {
				if got := p.Statements[i].Keys; !reflect.DeepEqual(got, w) {
					t.Errorf("statement %d keys %+v, want %+v", i, got, w)
				}
			}
			if tc.args != nil && !reflect.DeepEqual(p.Statements[0].ExecuteArgs, tc.args) {
				t.Errorf("EXECUTE arguments %+v, want %+v", p.Statements[0].ExecuteArgs, tc.args)
			}
			for _, n := range tc.notes {
				found := false
				for _, got := range p.Statements[0].Notes {
					found = found || strings.Contains(got, n)
				}
				if !found {
					t.Errorf("no note containing %q in %q", n, p.Statements[0].Notes)
				}
			}
			for _, st := range p.Statements {
				for _, n := range st.Notes {
					if strings.ContainsAny(n, "\x00\x01") {
						t.Errorf("note with a placeholder: %q", n)
					}
				}
			}
		})
	}
}

// Texts a template must not be built for, or whose template is bad: they
// are planned one by one, as before.
func TestPlanLiteralsFallback(t *testing.T) {
	cases := []struct{ warm, sql string }{
		// Typed literals stay in the key: another timestamp is another key.
		{"UPDATE doc SET body = 'x' WHERE id = 4 AND modified = timestamptz '2024-01-01'",
			"UPDATE doc SET body = 'x' WHERE id = 4 AND modified = timestamptz '2025-01-01'"},
		// An expected version that is an expression over a literal.
		{"UPDATE address SET x = 1 WHERE version = 1 + 1", "UPDATE address SET x = 1 WHERE version = 2 + 2"},
		{"UPDATE address SET x = 1 WHERE version = -(1)", "UPDATE address SET x = 1 WHERE version = -(2)"},
		// The normalized text does not parse (the precision of TIMESTAMP(p)
		// is no expression).
		{"UPDATE address SET x = TIMESTAMP(3) '2020-01-01' WHERE version = 1", "UPDATE address SET x = TIMESTAMP(4) '2020-01-01' WHERE version = 1"},
		// The deparser cannot render the statement.
		{"UPDATE address SET x = 1 WHERE id IN (SELECT id FROM job WHERE k = 1 FOR UPDATE OF job SKIP LOCKED)",
			"UPDATE address SET x = 1 WHERE id IN (SELECT id FROM job WHERE k = 2 FOR UPDATE OF job SKIP LOCKED)"},
	}
	for _, tc := range cases {
		r := New(testPolicies(), Options{Tracking: true})
		direct := New(testPolicies(), Options{Tracking: true})
		direct.direct = true
		r.Plan(tc.warm, "public")
		p, err := r.Plan(tc.sql, "public")
		if r.tmplHits.Load() != 0 {
			t.Errorf("%q: planned from a template", tc.sql)
		}
		pd, errd := direct.Plan(tc.sql, "public")
		if (err == nil) != (errd == nil) || err == nil && planDiff(p, pd, true) != "" {
			t.Errorf("%q: got %+v, %v; direct %+v, %v", tc.sql, p, err, pd, errd)
		}
	}
}

// The cross-check: for many generated texts, the plan from a template equals
// the text's own plan.
func TestPlanLiteralsCrossCheck(t *testing.T) {
	var shapes []string
	for _, tc := range planCases {
		shapes = append(shapes, tc.sql)
	}
	for _, tc := range instCases {
		shapes = append(shapes, tc.warm)
	}
	shapes = append(shapes,
		"UPDATE address a SET x = 'a', y = -1, z = 1.5e3 FROM b WHERE a.id = b.id AND a.version = 7 AND b.k IN (1, 2, 3) RETURNING a.id, 'r'",
		"UPDATE address SET x = x || 'a', y = y - 1, z = -1 * z, w = ARRAY[1, -2] WHERE id = 1 AND version = 2",
		"UPDATE address SET x = CASE WHEN y > 1 THEN 'a' ELSE 'b' END WHERE version = 1 AND id = 2",
		"UPDATE address SET x = (SELECT max(v) FROM t WHERE t.k = 'q' LIMIT 1) WHERE 3 = version AND id = '4'",
		"UPDATE address SET x = 1 WHERE id = 1 AND version = 1 AND y BETWEEN 1 AND 10 AND z LIKE 'a%' AND w IS DISTINCT FROM 'x'",
		"UPDATE address SET x = substring('abc' FROM 2 FOR 1), y = trim(BOTH 'x' FROM 'xax') WHERE version = 1",
		"UPDATE address SET x = '{1,2}'::int[], y = ('{1,2}'::int[])[1], z = 5::numeric(10, 2) WHERE version = 1",
		"UPDATE address SET x = -5::int, y = - 5 ^ 2, z = CAST(-5 AS text) WHERE version = -1",
		"UPDATE address SET x = 1 WHERE version = 1; UPDATE address SET x = 2 WHERE version = 2; DELETE FROM address WHERE id = 3 AND version = 4",
		"SELECT 1; UPDATE address SET x = 1 WHERE version = 1; SELECT 'a' FROM t ORDER BY 1 LIMIT 1",
		"DELETE FROM address WHERE id = 1 AND version = 2 RETURNING id, 'gone'",
		"INSERT INTO address (id, x) VALUES (1, 'a'), (2, 'b') ON CONFLICT (id) DO UPDATE SET x = 'c' WHERE address.version = 1",
		"INSERT INTO address (id, version) SELECT 1, 1 ON CONFLICT (id) DO UPDATE SET version = excluded.version + 1",
		"MERGE INTO address a USING (VALUES (1, 'x')) s(id, x) ON a.id = s.id WHEN MATCHED AND a.version = 1 THEN UPDATE SET x = s.x WHEN NOT MATCHED THEN INSERT (id, x) VALUES (s.id, 'n')",
		"UPDATE \"Sales\".\"Order\" SET x = 'a' WHERE \"Id\" = 1 AND \"Version\" = 2",
		"UPDATE address SET x = 'a' WHERE id = 1 AND version = 2 AND y = date '2020-01-01'",
		"UPDATE address SET x = 1 WHERE version = 1 AND id IN (SELECT id FROM t ORDER BY 1, 2 LIMIT 1)",
		"UPDATE address SET t = now() - interval '1 day' WHERE version = '1'::int AND id = '2'::bigint",
		"EXECUTE p(1, -1, 'a', 1.5, '2024-01-01'::date)",
		"BEGIN; UPDATE address SET x = 1 WHERE id = 1 AND version = 1; COMMIT",
		"UPDATE address SET x = 1 WHERE version = 1 -- 'comment' 5\n",
	)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, path := range []string{"public", "alice,public"} {
		r := New(testPolicies(), Options{Tracking: true})
		direct := New(testPolicies(), Options{Tracking: true})
		direct.direct = true
		checked := 0
		for _, shape := range shapes {
			for n := 0; n < 12; n++ {
				sql := literalVariant(shape, rng)
				if sql == "" {
					break
				}
				p, err := r.Plan(sql, path)
				pd, errd := direct.Plan(sql, path)
				if (err == nil) != (errd == nil) {
					t.Fatalf("%q: error %v, direct %v", sql, err, errd)
				}
				if err != nil {
					continue
				}
				if d := planDiff(p, pd, true); d != "" {
					t.Fatalf("%q: %s\n got  %+v\n want %+v", sql, d, p, pd)
				}
				checked++
			}
		}
		if hits := r.tmplHits.Load(); hits < uint64(checked)/2 {
			t.Errorf("only %d of %d texts planned from templates (%d bad)", hits, checked, r.tmplBad.Load())
		}
		t.Logf("%s: %d texts, %d from templates, %d bad templates", path, checked, r.tmplHits.Load(), r.tmplBad.Load())
	}
}

// An instantiated plan is cached by its text from the second time.
func TestPlanLiteralsExactCache(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	r.Plan("UPDATE address SET x = 1 WHERE version = 1", "public")
	sql := "UPDATE address SET x = 2 WHERE version = 2"
	p1, _ := r.Plan(sql, "public")
	p2, _ := r.Plan(sql, "public")
	p3, _ := r.Plan(sql, "public")
	if p1 == p2 || p2 != p3 {
		t.Errorf("want the second instantiation cached: %p %p %p", p1, p2, p3)
	}
	if h := r.tmplHits.Load(); h != 2 {
		t.Errorf("template hits %d, want 2", h)
	}
	// Seen once each: not cached.
	for i := 0; i < 100; i++ {
		r.Plan(fmt.Sprintf("UPDATE address SET x = %d WHERE version = %d", i, i+10), "public")
	}
	r.mu.RLock()
	n := len(r.cache["public"])
	r.mu.RUnlock()
	if n > 3 {
		t.Errorf("%d plans cached by text", n)
	}
}

func TestPlanLiteralsCopiesInput(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	r.Plan("SELECT 1; UPDATE address SET x = 'a' WHERE id = 1 AND version = 2", "public")
	buf := []byte("SELECT 2; UPDATE address SET x = 'b' WHERE id = 3 AND version = 4")
	p, err := r.Plan(string(buf), "public") // Plan copies; check the plan keeps nothing of buf
	if err != nil {
		t.Fatal(err)
	}
	want := "SELECT 2; UPDATE address SET x = 'b', version = version + 1 WHERE id = 3 AND version = 4"
	for i := range buf {
		buf[i] = 'X'
	}
	if p.SQL != want || p.Statements[1].Expected != lit("4") || p.Statements[1].Keys[0].Value != lit("3") {
		t.Errorf("got %q %+v", p.SQL, p.Statements[1])
	}
}

func TestNeedsPlan(t *testing.T) {
	explicit := New(benchPolicies(), Options{})
	tracked := New(testPolicies(), Options{Tracking: true}) // has tracked and required policies
	cases := []struct {
		sql  string
		want bool
	}{
		{"SELECT version FROM address WHERE id = 1", false},
		{"  /* c */ -- d\n select * from ADDRESS", false},
		{"SELECT * FROM address WHERE id = 1;", false},
		{"SELECT * FROM address WHERE id = 1 ; ;  -- done", false},
		{"VALUES (1) UNION SELECT id FROM address", false},
		{"TABLE address", false},
		{"SHOW address", false},
		{"SELECT * FROM address FOR UPDATE", false},
		{"SELECT * FROM address FOR NO KEY UPDATE SKIP LOCKED", false},
		{"SELECT 'insert into', \"update\" FROM address WHERE x = 'delete; update'", false},
		{"SELECT 1", false},               // MayTouch false
		{"UPDATE other SET x = 1", false}, // MayTouch false

		{"UPDATE address SET x = 1", true},
		{"DELETE FROM address", true},
		{"SELECT * INTO copy FROM address", true},
		{"SELECT * FROM address; UPDATE address SET x = 1", true},
		{"SELECT * FROM address; SELECT 1", true},
		{"WITH u AS (UPDATE address SET x = 1 RETURNING *) SELECT * FROM u", true},
		{"WITH a AS (SELECT * FROM address) SELECT * FROM a", true},
		{"SELECT * FROM (WITH u AS (UPDATE address SET x = 1 RETURNING *) SELECT * FROM u) s", true},
		{"SELECT * FROM address UNION (WITH d AS (DELETE FROM address RETURNING *) SELECT * FROM d)", true},
		{"(SELECT * FROM address)", true},
		{"EXPLAIN ANALYZE UPDATE address SET x = 1", true},
		{"EXECUTE p(1)", true},
		{"select f() from address; execute p", true},
		{"-- only a comment naming address", true},
		{"INSERT INTO address VALUES (1)", true},
		{"MERGE INTO address a USING t ON true WHEN MATCHED THEN DELETE", true},
		{"SELECT update FROM address", true}, // a column named update: false positives are fine
	}
	for _, tc := range cases {
		if got := explicit.NeedsPlan(tc.sql); got != tc.want {
			t.Errorf("NeedsPlan(%q) = %v, want %v", tc.sql, got, tc.want)
		}
		if got, want := tracked.NeedsPlan(tc.sql), tracked.MayTouch(tc.sql); got != want {
			t.Errorf("tracked policies: NeedsPlan(%q) = %v, want MayTouch's %v", tc.sql, got, want)
		}
		if explicit.NeedsPlan(tc.sql) {
			continue
		}
		// The fast path's promise.
		p, err := explicit.Plan(tc.sql, "public")
		if err == nil && (p.Changed || p.Guarded() || p.SQL != tc.sql) {
			t.Errorf("%q: NeedsPlan false, but the plan is %+v", tc.sql, p)
		}
	}
}

func TestNeedsPlanAllocs(t *testing.T) {
	r := New(benchPolicies(), Options{})
	for _, sql := range []string{
		"SELECT a.id, a.version, a.state FROM address a WHERE a.id = $1 AND a.state = 'NC' ORDER BY a.id LIMIT 10",
		"UPDATE address SET x = 1 WHERE id = 1",
	} {
		if n := testing.AllocsPerRun(100, func() { r.NeedsPlan(sql) }); n != 0 {
			t.Errorf("NeedsPlan(%q) allocates %v times", sql, n)
		}
	}
}

// Random statements from fragments that stress the normalizer's decisions
// (minus signs, operators, casts, brackets, typed literals, ordinals): the
// plan of every text that parses, from a template or not, equals its own.
func TestPlanLiteralsRandom(t *testing.T) {
	n := 4000
	if testing.Short() {
		n = 500
	}
	frags := []string{
		"1", "5", "-", "- ", "+", "*", "^", "=", "=-", "<>", "::int", "::text", "::numeric(10, 2)", "(", ")", "[1]", ",",
		"'a'", "'O''Brien'", "x", "y", "AND", "OR", "NOT", "IN", "BETWEEN", "IS NULL", "CASE WHEN", "THEN", "ELSE", "END",
		"date '2020-01-01'", "interval '1 day'", "now()", "ARRAY[", "]", "1.5", ".5", "5000000000", "version", "id",
		"CAST(", "AS text)", "COLLATE \"C\"", "||", "/* c */", "--c\n", "\n", "LIMIT 1", "ORDER BY 1", "(SELECT 1)",
	}
	prefixes := []string{
		"UPDATE address SET x = %s WHERE id = 1 AND version = 2",
		"UPDATE address SET x = 1 WHERE id = %s AND version = 3",
		"UPDATE address SET x = 1 WHERE version = %s",
		"DELETE FROM address WHERE version = %s AND id = 4",
		"SELECT %s FROM address; UPDATE address SET x = 1 WHERE version = 5",
		"INSERT INTO address (id, x) VALUES (%s, 1) ON CONFLICT (id) DO UPDATE SET x = 2 WHERE address.version = 6",
		"EXECUTE p(%s)",
	}
	rng := rand.New(rand.NewPCG(5, 6))
	r := New(testPolicies(), Options{Tracking: true})
	direct := New(testPolicies(), Options{Tracking: true})
	direct.direct = true
	parsed := 0
	for i := 0; i < n; i++ {
		var b strings.Builder
		for k := 1 + rng.IntN(6); k > 0; k-- {
			b.WriteString(frags[rng.IntN(len(frags))])
			if rng.IntN(2) == 0 {
				b.WriteByte(' ')
			}
		}
		shape := fmt.Sprintf(prefixes[rng.IntN(len(prefixes))], b.String())
		for _, sql := range []string{shape, literalVariant(shape, rng), literalVariant(shape, rng)} {
			if sql == "" {
				continue
			}
			p, err := r.Plan(sql, "public")
			pd, errd := direct.Plan(sql, "public")
			if (err == nil) != (errd == nil) {
				t.Fatalf("%q: error %v, direct error %v", sql, err, errd)
			}
			if err != nil {
				continue
			}
			parsed++
			if d := planDiff(p, pd, true); d != "" {
				t.Fatalf("%q: %s\n got  %+v\n want %+v", sql, d, p, pd)
			}
		}
	}
	t.Logf("%d texts parsed, %d planned from templates, %d bad templates", parsed, r.tmplHits.Load(), r.tmplBad.Load())
}
