package rewrite

import (
	"errors"
	"strings"
	"testing"
)

// Constructs that must survive the rewrite: as a neighbour of a guarded
// statement (the whole text is deparsed) and inside one.
var roundTripStmts = []string{
	"SELECT count(n) FILTER (WHERE n IN (SELECT n FROM nums WHERE n < 10)) FROM nums",
	"SELECT DISTINCT ON (city) city, street FROM shop",
	"SELECT * INTO shop_copy FROM shop WHERE opened >= '2020-01-01'",
	"SELECT current_timestamp, current_time(2), localtimestamp, current_user, session_user",
	"SELECT * FROM shop ORDER BY name COLLATE \"de_DE\" DESC NULLS LAST",
	"WITH RECURSIVE walk(id, parent, depth) AS (SELECT n.id, n.parent, 1 FROM node n UNION ALL SELECT n.id, n.parent, w.depth + 1 FROM node n, walk w WHERE n.id = w.parent) SELECT * FROM walk",
	"SELECT overlay(s.code PLACING 'xx' FROM 2 FOR 2) FROM shop s",
	"SELECT ARRAY(SELECT id FROM shop)::int8[]",
	"SELECT s.name, t FROM shop s LEFT JOIN LATERAL tags_of(s.id) t ON true",
	"SELECT p, q FROM one NATURAL JOIN two FULL JOIN three USING (k)",
	"SELECT CASE 2 > 1 WHEN true THEN 'yes' ELSE NULL END",
	"SELECT (f(1)).g, arr[2][3], (h #= hstore('{k}'::text[], ARRAY[2::text])).* FROM rec h",
	"SELECT * FROM s WHERE v = ALL (SELECT v FROM w WHERE z = 3) AND u BETWEEN SYMMETRIC 9 AND 1",
	"SELECT * FROM s WHERE v IS NOT UNKNOWN AND w IS DISTINCT FROM 3 AND u IS NOT NULL",
	"SELECT * FROM pivot('SELECT 1', 'VALUES (''a''::text)') AS (k varchar, a int)",
	"SELECT n::varchar(80), m::numeric(6, 1), ts::timestamp(3) with time zone, d::interval hour to second(3) FROM shop",
	"SELECT 1::int8, CAST(2 + 2 AS int8), 'shop'::regclass, '1'::bit(3), B'101', X'1F'",
	"INSERT INTO bar (p, q) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET (p, q) = (excluded.p, CASE WHEN bar.q = excluded.q THEN excluded.q END)",
	"INSERT INTO shop VALUES (1, 'corner', DEFAULT, 'x', DEFAULT)",
	"SELECT * FROM shop FOR UPDATE OF shop NOWAIT",
	"CREATE TABLE IF NOT EXISTS shop2 (name varchar(40) DEFAULT 'none', span interval hour to second(3), made timestamp DEFAULT now() NOT NULL, CONSTRAINT pk PRIMARY KEY (name, span))",
	"CREATE TABLE flags (f bool DEFAULT (2 IN (1, 2)))",
	"ALTER TABLE shop ALTER COLUMN made TYPE timestamptz USING made AT TIME ZONE 'UTC'",
	"CREATE FUNCTION one_shop(int) RETURNS SETOF shop AS $$SELECT * FROM shop WHERE id = $1$$ LANGUAGE sql STABLE",
	"DO $$BEGIN RAISE NOTICE 'hi'; END$$",
	"SELECT rank() OVER (PARTITION BY a, b ORDER BY a DESC, b ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM t",
	"SELECT min(d::date) FILTER (WHERE c IS NULL) OVER (ORDER BY d DESC) FROM t",
	"SET LOCAL search_path TO app, public",
	"SET TIME ZONE 'UTC'",
	"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
	"SAVEPOINT \"s 1\"",
	"COPY shop FROM STDIN WITH (FORMAT csv, HEADER true)",
	"SELECT (1 + 2) OPERATOR(pg_catalog.*) 3, 1 + (2 * 3), - (1 + 2), 2 ^ 3 ^ 4, (2 ^ 3) ^ 4",
	"SELECT * FROM ROWS FROM (gen() AS (a text COLLATE \"C\", b text))",
	"SELECT 1 FROM db.sch.tab",
	"MERGE INTO stock s USING delivery d ON s.item = d.item WHEN MATCHED AND d.qty = 0 THEN DELETE WHEN MATCHED THEN UPDATE SET qty = s.qty + d.qty WHEN NOT MATCHED THEN INSERT (item, qty) VALUES (d.item, d.qty)",
	"CREATE PROCEDURE add_two(p int, q int) LANGUAGE sql BEGIN ATOMIC INSERT INTO log VALUES (p); INSERT INTO log VALUES (q); END",
	"SELECT (false OR true) IS TRUE, b = (true IS NOT FALSE)",
	"SELECT 'a' || 'b' || E'\\n' || U&'\\0041', $$dollar$$, 'it''s'",
	"SELECT ts AT TIME ZONE 'UTC', '{1,2}'::int[] && ARRAY[1], j->'a'->>'b', j #> '{a,b}', doc @@ query",
	"SELECT * FROM t WHERE a NOT LIKE 'x%' ESCAPE '!' AND b SIMILAR TO 'y' AND c ILIKE ANY (ARRAY['a'])",
	"SELECT EXISTS (SELECT 1), ROW(1, 2) = ROW(1, 2), (1, 2) < (3, 4), GREATEST(1, 2), NULLIF(1, 2), COALESCE(a, b)",
	"SELECT extract(year FROM now()), substring('abc' FROM 2 FOR 1), trim(BOTH 'x' FROM 'xax'), position('a' IN 'ba')",
	"SELECT xmlelement(name foo, xmlattributes('x' AS bar)), '1.5e10'::float8, 1.5e10, -0.0, 1e-5",
	"SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1)",
	"SELECT a, b FROM t GROUP BY GROUPING SETS ((a), (b), ()) HAVING count(*) > 1",
	"SELECT 1 UNION ALL (SELECT 2 INTERSECT SELECT 3) EXCEPT SELECT 4 ORDER BY 1 LIMIT 1 OFFSET 0",
	"SELECT * FROM t WHERE a = $1::text::int AND b = '5'::int8 AND c = interval '1 day'",
	"LISTEN ch; NOTIFY ch, 'payload'",
	"SELECT 9223372036854775807, 2147483648, -2147483648, 2147483647, 00012",
	"SELECT \"Weird \"\"Name\", \"select\", \"user\" FROM \"T\"",
	"VALUES (1, 'a'), (2, 'b') ORDER BY 1",
	"TABLE address",
	"SELECT * FROM t WHERE (a, b) IN (SELECT 1, 2) AND NOT (a = 1 OR b = 2)",
	"SELECT 1 -- trailing comment",
}

var roundTripExprs = []string{
	"x + 1", "'a' || 'b'", "CASE WHEN y THEN 1 ELSE 2 END", "(SELECT max(v) FROM t)", "ARRAY[1, 2]",
	"now() AT TIME ZONE 'UTC'", "$1::int[]", "DEFAULT", "ROW(1, 2)", "x COLLATE \"C\"", "-x", "x::numeric(10, 2)",
	"COALESCE(x, 1)", "jsonb_set(j, '{a}', '1')", "interval '1 day' * 2", "x[1:2]", "(x).f",
}

func TestRoundTrip(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true, CacheSize: -1})
	check := func(sql string) {
		t.Helper()
		p, err := r.Plan(sql, "public")
		if err != nil {
			t.Errorf("%q: %v", sql, err)
			return
		}
		if !p.Changed {
			t.Errorf("%q: not changed", sql)
		}
		mustParse(t, p.SQL, len(p.Statements))
	}
	for _, s := range roundTripStmts {
		check(s + "\n; UPDATE address SET x = 1 WHERE version = 1")
		check("UPDATE address SET x = 1 WHERE version = 1;\n" + s)
	}
	for _, e := range roundTripExprs {
		check("UPDATE address a SET x = " + e + " FROM t WHERE a.version = 1 AND a.id = t.id")
		if e != "DEFAULT" {
			check("UPDATE address SET x = 1 WHERE y = " + e + " RETURNING " + e)
		}
	}
}

// pg_query v5 deparses "FOR UPDATE OF t SKIP LOCKED" as "... OF tSKIP LOCKED"
// (no parse) and "FOR SHARE OF t NOWAIT" as "... OF tNOWAIT" (a different
// statement that parses). A neighbour of a rewritten statement keeps its
// original text then; a rewritten statement that cannot be deparsed faithfully
// is an error.
func TestDeparseFallback(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	p, err := r.Plan("SELECT * FROM job FOR UPDATE OF job SKIP LOCKED -- next\n; UPDATE address SET x = 1 WHERE version = 1", "public")
	if err != nil {
		t.Fatal(err)
	}
	want := "SELECT * FROM job FOR UPDATE OF job SKIP LOCKED -- next\n;\nUPDATE address SET x = 1, version = version + 1 WHERE version = 1"
	if p.SQL != want || !p.Changed {
		t.Errorf("got %q, want %q", p.SQL, want)
	}
	mustParse(t, p.SQL, 2)

	// When the rewritten statement itself cannot be deparsed, Plan says so.
	for _, sql := range []string{
		"UPDATE address SET x = 1 WHERE id IN (SELECT id FROM job FOR UPDATE OF job SKIP LOCKED)",
		"UPDATE address SET x = 1 WHERE id IN (SELECT id FROM job FOR SHARE OF job NOWAIT)",
	} {
		_, err = r.Plan(sql, "public")
		if !errors.Is(err, ErrDeparse) {
			t.Fatalf("%q: got %v, want ErrDeparse", sql, err)
		}
	}
	if strings.Contains(err.Error(), "job") {
		t.Errorf("error quotes SQL: %v", err)
	}
}
