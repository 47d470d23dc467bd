package rewrite

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unsafe"

	pg "github.com/pganalyze/pg_query_go/v5"
)

func testPolicies() []Policy {
	return []Policy{
		{Schema: "public", Table: "address", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true},
		{Schema: "alice", Table: "address", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeRequired},
		{Schema: "public", Table: "doc", Column: "modified", Type: TypeTimestamp, Key: []string{"id"}, Update: true, Delete: false},
		{Schema: "public", Table: "item", Column: "etag", Type: TypeUUID, Key: []string{"a", "b"}, Update: true, Delete: true, Mode: ModeTracked},
		{Schema: "public", Table: "acct", Column: "xmin", Type: TypeXmin, Key: []string{"id"}, Update: true, Delete: true},
		{Schema: "public", Table: "odd", Column: "v", Type: TypeUnknown, Update: true, Delete: true},
		{Schema: "public", Table: "ro", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: false, Delete: true},
		{Schema: "Sales", Table: "Order", Column: "Version", Type: TypeInteger, Key: []string{"Id"}, Update: true, Delete: true},
	}
}

func lit(s string) Value             { return Value{Kind: ValueLiteral, Literal: s} }
func param(n int) Value              { return Value{Kind: ValueParam, Param: n} }
func expr(s string) Value            { return Value{Kind: ValueExpr, Expr: s} }
func key(c string, v Value) KeyValue { return KeyValue{Column: c, Value: v} }

// ws is the expected plan of one statement. Notes are checked by substring.
type ws struct {
	kind     Kind
	policy   string // schema.table or ""
	sql      string
	inc      bool
	checked  bool
	expected Value
	keys     []KeyValue
	refuse   bool
	notes    []string

	// Tracked mode.
	hidden         []HiddenColumn
	captures       []wc
	untracked      bool
	inject         *wi
	newVersion     NewVersion
	addedReturning bool
	writtenOver    WrittenOver
	writtenOverAt  Field // WrittenOverReturned

	prepare string
	inner   *ws
	execute string
	args    []Value
	dealloc string
	all     bool
}

// wc is an expected capture.
type wc struct {
	policy  string
	ref     string
	keys    []Field
	version Field
}

// wi is an expected injection: the parameter, the parameter form and
// WithExpected("7").
type wi struct {
	param int
	sql   string
	with  string
}

type planCase struct {
	name  string
	sql   string
	path  string
	out   string // expected Plan.SQL; "" means unchanged (the input itself)
	stmts []ws
}

var planCases = []planCase{
	{
		name: "plain",
		sql:  "UPDATE address SET state='NC', county='Guilford' WHERE id=$1 AND version=1",
		out:  "UPDATE address SET state = 'NC', county = 'Guilford', version = version + 1 WHERE id = $1 AND version = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("1"),
			keys:  []KeyValue{key("id", param(1))},
			notes: []string{"guarded table public.address (mode explicit)", "added increment version = version + 1", "found version predicate version = 1"}}},
	},
	{
		name: "alias",
		sql:  "UPDATE address a SET state = 'x' WHERE a.id = 1 AND a.version = 7",
		out:  "UPDATE address a SET state = 'x', version = a.version + 1 WHERE a.id = 1 AND a.version = 7",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("7"),
			keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name: "alias with AS, predicate qualified by another name",
		sql:  "UPDATE address AS a SET state = 'x' WHERE other.version = 7",
		out:  "UPDATE address a SET state = 'x', version = a.version + 1 WHERE other.version = 7",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true,
			notes: []string{"no version predicate: written unchecked"}}},
	},
	{
		name: "schema-qualified name and column",
		sql:  "UPDATE public.address SET x = 1 WHERE public.address.version = 2 AND address.id = 3",
		out:  "UPDATE public.address SET x = 1, version = version + 1 WHERE public.address.version = 2 AND address.id = 3",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("2"),
			keys: []KeyValue{key("id", lit("3"))}}},
	},
	{
		name:  "quoted identifiers folded to lower case",
		sql:   `UPDATE "address" SET "x" = 1 WHERE "version" = 1`,
		out:   "UPDATE address SET x = 1, version = version + 1 WHERE version = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("1")}},
	},
	{
		name: "quoted mixed-case identifiers",
		sql:  `UPDATE "Sales"."Order" SET x = 1 WHERE "Id" = 7 AND "Version" = 2`,
		out:  `UPDATE "Sales"."Order" SET x = 1, "Version" = "Version" + 1 WHERE "Id" = 7 AND "Version" = 2`,
		stmts: []ws{{kind: KindUpdate, policy: "Sales.Order", inc: true, checked: true, expected: lit("2"),
			keys: []KeyValue{key("Id", lit("7"))}}},
	},
	{
		name:  "unquoted name does not match a mixed-case policy",
		sql:   `UPDATE sales.orders SET x = 1 WHERE "Version" = 2`,
		stmts: []ws{{kind: KindOther}},
	},
	{
		name: "search path: first schema with a policy wins",
		sql:  "UPDATE address SET x = 1 WHERE id = 1",
		path: "alice,public",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE id = 1",
		stmts: []ws{{kind: KindUpdate, policy: "alice.address", inc: true, refuse: true,
			keys:  []KeyValue{key("id", lit("1"))},
			notes: []string{"guarded table alice.address (mode required)", "mode required and no version predicate: refused"},
			inject: &wi{param: 1, sql: "UPDATE address SET x = 1, version = version + 1 WHERE id = 1 AND (address.version = $1 OR $1 IS NULL)",
				with: "UPDATE address SET x = 1, version = version + 1 WHERE id = 1 AND address.version = '7'"},
			newVersion: NewVersionIncrement}},
	},
	{
		name: "search path: public",
		sql:  "UPDATE address SET x = 1 WHERE id = 1",
		path: "public, alice",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE id = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true,
			keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name: "search path: empty means public",
		sql:  "UPDATE address SET x = 1 WHERE id = 1",
		path: "",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE id = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true,
			keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name: "search path: skips schemas without a policy",
		sql:  "UPDATE address SET x = 1 WHERE id = 1",
		path: `bob, "alice"`,
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE id = 1",
		stmts: []ws{{kind: KindUpdate, policy: "alice.address", inc: true, refuse: true,
			keys:       []KeyValue{key("id", lit("1"))},
			inject:     &wi{param: 1, sql: "UPDATE address SET x = 1, version = version + 1 WHERE id = 1 AND (address.version = $1 OR $1 IS NULL)"},
			newVersion: NewVersionIncrement}},
	},
	{
		name:  "search path: no schema with a policy",
		sql:   "UPDATE address SET x = 1 WHERE id = 1",
		path:  "bob",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name: "qualified name ignores the search path",
		sql:  "UPDATE alice.address SET x = 1 WHERE id = 1 AND version = 4",
		path: "public",
		out:  "UPDATE alice.address SET x = 1, version = version + 1 WHERE id = 1 AND version = 4",
		stmts: []ws{{kind: KindUpdate, policy: "alice.address", inc: true, checked: true, expected: lit("4"),
			keys: []KeyValue{key("id", lit("1"))}, newVersion: NewVersionIncrement}},
	},
	{
		name:  "qualified name in a schema without a policy",
		sql:   "UPDATE bob.address SET x = 1 WHERE version = 1",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name:  "ONLY",
		sql:   "UPDATE ONLY address SET x = 1 WHERE version = 3",
		out:   "UPDATE ONLY address SET x = 1, version = version + 1 WHERE version = 3",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("3")}},
	},
	{
		name:  "UPDATE FROM qualifies the increment",
		sql:   "update address set x = b.x from b where address.id = b.id and address.version = $2::int",
		out:   "UPDATE address SET x = b.x, version = address.version + 1 FROM b WHERE address.id = b.id AND address.version = $2::int",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: param(2)}},
	},
	{
		name:  "ONLY, alias, FROM, RETURNING, bigint literal",
		sql:   "UPDATE ONLY public.address AS a SET x = 1 FROM b WHERE a.version = 5000000000 AND a.id = b.id RETURNING a.*",
		out:   "UPDATE ONLY public.address a SET x = 1, version = a.version + 1 FROM b WHERE a.version = 5000000000 AND a.id = b.id RETURNING a.*",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("5000000000")}},
	},
	{
		name: "RETURNING",
		sql:  "UPDATE address SET x = 1 WHERE id = 1 AND version = 2 RETURNING id, version",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE id = 1 AND version = 2 RETURNING id, version",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("2"),
			keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name:  "CTE before the UPDATE",
		sql:   "WITH s AS (SELECT 1 AS id) UPDATE address SET x = 1 FROM s WHERE address.id = s.id AND address.version = 4",
		out:   "WITH s AS (SELECT 1 AS id) UPDATE address SET x = 1, version = address.version + 1 FROM s WHERE address.id = s.id AND address.version = 4",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("4")}},
	},
	{
		name: "data-modifying CTE",
		sql:  "WITH u AS (UPDATE address SET x=1 WHERE id = 1 AND version = 1 RETURNING *) SELECT * FROM u",
		out:  "WITH u AS (UPDATE address SET x = 1, version = version + 1 WHERE id = 1 AND version = 1 RETURNING *) SELECT * FROM u",
		stmts: []ws{{kind: KindOther, policy: "public.address", inc: true,
			notes: []string{"data-modifying CTE u: UPDATE on guarded table public.address (mode explicit): the command tag cannot be checked"}}},
	},
	{
		name: "data-modifying CTE feeding a guarded UPDATE",
		sql:  "WITH u AS (UPDATE doc SET body = 'b' WHERE id = 2 RETURNING id) UPDATE address SET x = 1 FROM u WHERE address.id = u.id AND address.version = 9",
		out:  "WITH u AS (UPDATE doc SET body = 'b', modified = clock_timestamp() WHERE id = 2 RETURNING id) UPDATE address SET x = 1, version = address.version + 1 FROM u WHERE address.id = u.id AND address.version = 9",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("9"),
			notes: []string{"data-modifying CTE u: UPDATE on guarded table public.doc"}}},
	},
	{
		name: "data-modifying DELETE CTE: nothing to rewrite",
		sql:  "WITH d AS (DELETE FROM address WHERE id = 1 RETURNING *) SELECT count(*) FROM d",
		stmts: []ws{{kind: KindOther, policy: "public.address",
			notes: []string{"data-modifying CTE d: DELETE on guarded table public.address"}}},
	},
	{
		name:  "data-modifying CTE on a required table is refused",
		sql:   "WITH u AS (UPDATE alice.address SET x = 1 WHERE version = 1 RETURNING 1) SELECT 1",
		out:   "WITH u AS (UPDATE alice.address SET x = 1, version = version + 1 WHERE version = 1 RETURNING 1) SELECT 1",
		stmts: []ws{{kind: KindOther, policy: "alice.address", inc: true, refuse: true, untracked: true}},
	},
	{
		name: "PREPARE, EXECUTE, DEALLOCATE",
		sql:  "PREPARE p (int) AS UPDATE address SET x=$2 WHERE id=$1 AND version = $3; EXECUTE p(1, 'a', 2); DEALLOCATE p; deallocate all",
		out:  "PREPARE p(int) AS UPDATE address SET x = $2, version = version + 1 WHERE id = $1 AND version = $3; EXECUTE p(1, 'a', 2); DEALLOCATE p; DEALLOCATE ALL",
		stmts: []ws{
			{kind: KindPrepare, sql: "PREPARE p(int) AS UPDATE address SET x = $2, version = version + 1 WHERE id = $1 AND version = $3", prepare: "p",
				inner: &ws{kind: KindUpdate, policy: "public.address", sql: "UPDATE address SET x = $2, version = version + 1 WHERE id = $1 AND version = $3",
					inc: true, checked: true, expected: param(3), keys: []KeyValue{key("id", param(1))}}},
			{kind: KindExecute, sql: "EXECUTE p(1, 'a', 2)", execute: "p", args: []Value{lit("1"), lit("a"), lit("2")}},
			{kind: KindDeallocate, sql: "DEALLOCATE p", dealloc: "p"},
			{kind: KindDeallocate, sql: "deallocate all", all: true},
		},
	},
	{
		name: "PREPARE of an unguarded statement",
		sql:  "prepare q as select * from address where id = $1",
		stmts: []ws{{kind: KindPrepare, prepare: "q",
			inner: &ws{kind: KindOther, sql: "select * from address where id = $1"}}},
	},
	{
		name: "PREPARE of a guarded statement needing no change",
		sql:  `PREPARE "Q" (bigint, int) AS DELETE FROM address WHERE id = $1 AND version = $2;`,
		stmts: []ws{{kind: KindPrepare, prepare: "Q", sql: `PREPARE "Q" (bigint, int) AS DELETE FROM address WHERE id = $1 AND version = $2`,
			inner: &ws{kind: KindDelete, policy: "public.address", sql: "DELETE FROM address WHERE id = $1 AND version = $2",
				checked: true, expected: param(2), keys: []KeyValue{key("id", param(1))}}}},
	},
	{
		name: "EXECUTE arguments",
		sql:  "EXECUTE Upd(1, 'a', $1, now(), '7'::int, $2::text, -3, 2.5)",
		stmts: []ws{{kind: KindExecute, execute: "upd",
			args: []Value{lit("1"), lit("a"), param(1), expr("now()"), lit("7"), param(2), lit("-3"), lit("2.5")}}},
	},
	{
		name:  "DEALLOCATE PREPARE",
		sql:   `DEALLOCATE PREPARE "P1"`,
		stmts: []ws{{kind: KindDeallocate, dealloc: "P1"}},
	},
	{
		name: "upsert with predicate",
		sql:  "INSERT INTO address AS a (id, x) VALUES (1,2) ON CONFLICT (id) DO UPDATE SET x = excluded.x WHERE a.version = 3",
		out:  "INSERT INTO address AS a (id, x) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET x = excluded.x, version = a.version + 1 WHERE a.version = 3",
		stmts: []ws{{kind: KindUpsert, policy: "public.address", inc: true, checked: true, expected: lit("3"),
			keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name: "upsert without predicate",
		sql:  "INSERT INTO address (id, x) VALUES ($1,2) ON CONFLICT (id) DO UPDATE SET x = excluded.x RETURNING version",
		out:  "INSERT INTO address (id, x) VALUES ($1, 2) ON CONFLICT (id) DO UPDATE SET x = excluded.x, version = address.version + 1 RETURNING version",
		stmts: []ws{{kind: KindUpsert, policy: "public.address", inc: true,
			keys:  []KeyValue{key("id", param(1))},
			notes: []string{"added increment version = address.version + 1", "no version predicate: written unchecked"}}},
	},
	{
		name:  "upsert predicate on EXCLUDED does not count",
		sql:   "INSERT INTO address (id, x) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET x = excluded.x WHERE excluded.version = 3",
		out:   "INSERT INTO address (id, x) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET x = excluded.x, version = address.version + 1 WHERE excluded.version = 3",
		stmts: []ws{{kind: KindUpsert, policy: "public.address", inc: true, keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name: "upsert on a required table without predicate is refused",
		sql:  "INSERT INTO alice.address (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1",
		out:  "INSERT INTO alice.address (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1, version = address.version + 1 RETURNING address.id AS pgoptimist_1, address.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpsert, policy: "alice.address", inc: true, refuse: true, keys: []KeyValue{key("id", lit("1"))},
			inject: &wi{param: 1, sql: "INSERT INTO alice.address (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1, version = address.version + 1 WHERE address.version = $1 OR $1 IS NULL RETURNING address.id AS pgoptimist_1, address.version AS pgoptimist_2",
				with: "INSERT INTO alice.address (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1, version = address.version + 1 WHERE address.version = '7' RETURNING address.id AS pgoptimist_1, address.version AS pgoptimist_2"},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:   []HiddenColumn{{-2, "alice", "address", "id"}, {-1, "alice", "address", "version"}},
			captures: []wc{{"alice.address", "address", []Field{-2}, -1}}}},
	},
	{
		name:  "upsert DO NOTHING is not guarded",
		sql:   "INSERT INTO address (id) VALUES (1) ON CONFLICT DO NOTHING",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name:  "plain INSERT is not guarded",
		sql:   "INSERT INTO address (id, version) VALUES (1, 1)",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name: "WHERE CURRENT OF",
		sql:  "UPDATE address SET x=1 WHERE CURRENT OF c",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE CURRENT OF c",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true,
			notes: []string{"WHERE CURRENT OF: increment only"}}},
	},
	{
		name: "DELETE WHERE CURRENT OF",
		sql:  "DELETE FROM address WHERE CURRENT OF c",
		stmts: []ws{{kind: KindDelete, policy: "public.address",
			notes: []string{"WHERE CURRENT OF"}}},
	},
	{
		name: "application assigns the version",
		sql:  "UPDATE address SET version = version + 5, x = 1 WHERE id = 1 AND version = 3",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", checked: true, expected: lit("3"),
			keys:  []KeyValue{key("id", lit("1"))},
			notes: []string{"application assigns version: increment left alone"}}},
	},
	{
		name: "application assigns the version in a multiple-column assignment",
		sql:  "UPDATE address SET (x, version) = (1, 2) WHERE id = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", keys: []KeyValue{key("id", lit("1"))},
			notes: []string{"application assigns version"}}},
	},
	{
		name: "predicate inside OR does not count",
		sql:  "UPDATE address SET x = 1 WHERE id = 1 AND (version = 1 OR version = 2)",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE id = 1 AND (version = 1 OR version = 2)",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, keys: []KeyValue{key("id", lit("1"))},
			notes: []string{"version appears in WHERE but not as a top-level AND conjunct", "no version predicate: written unchecked"}}},
	},
	{
		name:  "predicate under NOT does not count",
		sql:   "UPDATE address SET x = 1 WHERE NOT (version = 1)",
		out:   "UPDATE address SET x = 1, version = version + 1 WHERE NOT version = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true}},
	},
	{
		name: "nested AND conjuncts count",
		sql:  "UPDATE address SET x = 1 WHERE (id = 1 AND (true AND 4 = version))",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE id = 1 AND (true AND 4 = version)",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("4"),
			keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name:  "parameter predicate",
		sql:   "UPDATE address SET x = $1 WHERE version = $2",
		out:   "UPDATE address SET x = $1, version = version + 1 WHERE version = $2",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: param(2)}},
	},
	{
		name: "cast parameter predicate and key",
		sql:  "UPDATE address SET x = 0 WHERE id = $2::bigint AND version = $1::int",
		out:  "UPDATE address SET x = 0, version = version + 1 WHERE id = $2::bigint AND version = $1::int",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: param(1),
			keys: []KeyValue{key("id", param(2))}}},
	},
	{
		name:  "expression predicate",
		sql:   "UPDATE address SET x = 0 WHERE version = (SELECT max(v) FROM t) AND id = f(1)",
		out:   "UPDATE address SET x = 0, version = version + 1 WHERE version = (SELECT max(v) FROM t) AND id = f(1)",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: expr("(SELECT max(v) FROM t)")}},
	},
	{
		name: "bigint literal beyond 32 bits preserved",
		sql:  "UPDATE address SET x = 1 WHERE version = 5000000000 AND id = -9000000000",
		out:  "UPDATE address SET x = 1, version = version + 1 WHERE version = 5000000000 AND id = -9000000000",
		stmts: []ws{{kind: KindUpdate, policy: "public.address", inc: true, checked: true, expected: lit("5000000000"),
			keys: []KeyValue{key("id", lit("-9000000000"))}}},
	},
	{
		name: "timestamp version",
		sql:  "UPDATE doc SET body = 'x' WHERE id = 4 AND modified = '2024-01-01 00:00:00+00'::timestamptz",
		out:  "UPDATE doc SET body = 'x', modified = clock_timestamp() WHERE id = 4 AND modified = '2024-01-01 00:00:00+00'::timestamptz",
		stmts: []ws{{kind: KindUpdate, policy: "public.doc", inc: true, checked: true, expected: lit("2024-01-01 00:00:00+00"),
			keys:  []KeyValue{key("id", lit("4"))},
			notes: []string{"added increment modified = clock_timestamp()"}}},
	},
	{
		name: "uuid version, tracked mode, composite key",
		sql:  "UPDATE item SET x = 1 WHERE b = 'q' AND a = $1 AND etag = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
		out:  "UPDATE item SET x = 1, etag = gen_random_uuid() WHERE b = 'q' AND a = $1 AND etag = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid RETURNING item.a AS pgoptimist_1, item.b AS pgoptimist_2, item.etag AS pgoptimist_3",
		stmts: []ws{{kind: KindUpdate, policy: "public.item", inc: true, checked: true, expected: lit("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
			keys:       []KeyValue{key("a", param(1)), key("b", lit("q"))},
			notes:      []string{"(mode tracked)", "added increment etag = gen_random_uuid()", "the explicit version predicate wins"},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:   []HiddenColumn{{-3, "public", "item", "a"}, {-2, "public", "item", "b"}, {-1, "public", "item", "etag"}},
			captures: []wc{{"public.item", "item", []Field{-3, -2}, -1}}}},
	},
	{
		name: "xmin version: no increment",
		sql:  "UPDATE acct SET bal = bal - 1 WHERE id = 1 AND xmin = '123'",
		stmts: []ws{{kind: KindUpdate, policy: "public.acct", checked: true, expected: lit("123"),
			keys:  []KeyValue{key("id", lit("1"))},
			notes: []string{"xmin"}}},
	},
	{
		name: "unknown version type: no increment",
		sql:  "UPDATE odd SET x = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.odd",
			notes: []string{"version type of public.odd unknown: no increment added"}}},
	},
	{
		name: "DELETE",
		sql:  "DELETE FROM address WHERE id = $1 AND version = $2",
		stmts: []ws{{kind: KindDelete, policy: "public.address", checked: true, expected: param(2),
			keys: []KeyValue{key("id", param(1))}}},
	},
	{
		name:  "DELETE with alias and USING",
		sql:   "DELETE FROM ONLY address AS a USING b WHERE a.id = b.id AND a.version = 3 RETURNING a.id",
		stmts: []ws{{kind: KindDelete, policy: "public.address", checked: true, expected: lit("3")}},
	},
	{
		name: "DELETE on a required table without predicate",
		sql:  "DELETE FROM alice.address WHERE id = 1",
		stmts: []ws{{kind: KindDelete, policy: "alice.address", refuse: true, keys: []KeyValue{key("id", lit("1"))},
			inject: &wi{param: 1, sql: "DELETE FROM alice.address WHERE id = 1 AND (address.version = $1 OR $1 IS NULL)",
				with: "DELETE FROM alice.address WHERE id = 1 AND address.version = '7'"}}},
	},
	{
		name: "DELETE not guarded by the policy",
		sql:  "DELETE FROM doc WHERE id = 1",
		stmts: []ws{{kind: KindOther,
			notes: []string{"DELETE from public.doc is not guarded"}}},
	},
	{
		name: "UPDATE not guarded by the policy",
		sql:  "UPDATE ro SET x = 1 WHERE version = 1",
		stmts: []ws{{kind: KindOther,
			notes: []string{"UPDATE of public.ro is not guarded"}}},
	},
	{
		name: "multi-statement, mixed",
		sql:  "select 1; /* hi */ update address set x = 1 where version = 1 ; select 2 -- tail",
		out:  "SELECT 1; UPDATE address SET x = 1, version = version + 1 WHERE version = 1; SELECT 2",
		stmts: []ws{
			{kind: KindOther, sql: "select 1"},
			{kind: KindUpdate, policy: "public.address", sql: "UPDATE address SET x = 1, version = version + 1 WHERE version = 1", inc: true, checked: true, expected: lit("1")},
			{kind: KindOther, sql: "select 2 -- tail"},
		},
	},
	{
		name: "multi-statement, guarded but unchanged",
		sql:  "SELECT 1 ;\n\tUPDATE acct SET b = 1 WHERE xmin = '5';\n",
		stmts: []ws{
			{kind: KindOther, sql: "SELECT 1"},
			{kind: KindUpdate, policy: "public.acct", sql: "UPDATE acct SET b = 1 WHERE xmin = '5'", checked: true, expected: lit("5")},
		},
	},
	{
		name: "multi-statement, unguarded",
		sql:  "BEGIN; SELECT * FROM address;  COMMIT;",
		stmts: []ws{
			{kind: KindOther, sql: "BEGIN"},
			{kind: KindOther, sql: "SELECT * FROM address"},
			{kind: KindOther, sql: "COMMIT"},
		},
	},
	{
		name: "multi-statement with multibyte text",
		sql:  "SELECT 'ééé' AS \"ü\";\n  UPDATE address SET note = 'naïve ☃' WHERE version = 2;  SELECT '☃'  ",
		out:  "SELECT 'ééé' AS \"ü\"; UPDATE address SET note = 'naïve ☃', version = version + 1 WHERE version = 2; SELECT '☃'",
		stmts: []ws{
			{kind: KindOther, sql: "SELECT 'ééé' AS \"ü\""},
			{kind: KindUpdate, policy: "public.address", sql: "UPDATE address SET note = 'naïve ☃', version = version + 1 WHERE version = 2", inc: true, checked: true, expected: lit("2")},
			{kind: KindOther, sql: "SELECT '☃'"},
		},
	},
	{
		name:  "unguarded table with a version column",
		sql:   "UPDATE other SET x = 1 WHERE version = 1",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name:  "unguarded table aliased as a guarded name",
		sql:   "UPDATE other address SET x = 1 WHERE address.version = 1",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name: "MERGE increments the update arm",
		sql:  "MERGE INTO address a USING src s ON a.id = s.id WHEN MATCHED THEN UPDATE SET x = s.x WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
		out:  "MERGE INTO address a USING src s ON a.id = s.id WHEN MATCHED THEN UPDATE SET x = s.x, version = a.version + 1 WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
		stmts: []ws{{kind: KindOther, policy: "public.address", inc: true,
			notes: []string{"MERGE on guarded table public.address (mode explicit): the command tag cannot be checked"}}},
	},
	{
		name:  "EXPLAIN ANALYZE runs the update",
		sql:   "EXPLAIN ANALYZE UPDATE address SET x = 1 WHERE version = 1",
		out:   "EXPLAIN (ANALYZE) UPDATE address SET x = 1, version = version + 1 WHERE version = 1",
		stmts: []ws{{kind: KindOther, policy: "public.address", inc: true}},
	},
	{
		name:  "EXPLAIN without ANALYZE is left alone",
		sql:   "EXPLAIN (ANALYZE off, COSTS) UPDATE address SET x = 1",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name:  "COPY of an UPDATE",
		sql:   "COPY (UPDATE address SET x = 1 RETURNING *) TO STDOUT",
		out:   "COPY (UPDATE address SET x = 1, version = version + 1 RETURNING *) TO STDOUT",
		stmts: []ws{{kind: KindOther, policy: "public.address", inc: true}},
	},
	{
		name:  "SELECT on a guarded table",
		sql:   "SELECT id, version FROM address WHERE id = $1 FOR UPDATE",
		stmts: []ws{{kind: KindOther}},
	},
	{
		name: "empty text",
		sql:  "",
	},
	{
		name: "only comments",
		sql:  "  -- nothing\n /* at all */ ",
	},
}

func TestPlan(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	full := New(testPolicies(), Options{Tracking: true})
	full.fullAnalysis = true
	for _, tc := range planCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []*Rewriter{r, full} {
				p, err := r.Plan(tc.sql, tc.path)
				if err != nil {
					t.Fatalf("Plan: %v", err)
				}
				checkPlan(t, tc, p)
			}
		})
	}
}

func checkPlan(t *testing.T, tc planCase, p *Plan) {
	t.Helper()
	if tc.out == "" {
		if p.Changed || p.SQL != tc.sql {
			t.Errorf("plan changed: Changed=%v\n got  %q\n want %q", p.Changed, p.SQL, tc.sql)
		}
	} else {
		if !p.Changed || p.SQL != tc.out {
			t.Errorf("rewritten SQL: Changed=%v\n got  %q\n want %q", p.Changed, p.SQL, tc.out)
		}
	}
	mustParse(t, p.SQL, len(tc.stmts))
	if len(p.Statements) != len(tc.stmts) {
		t.Fatalf("got %d statements, want %d", len(p.Statements), len(tc.stmts))
	}
	for i := range tc.stmts {
		w := tc.stmts[i]
		if w.sql == "" && len(tc.stmts) == 1 {
			w.sql = trimStatement(p.SQL)
		}
		checkStmt(t, fmt.Sprintf("statement %d", i), &p.Statements[i], &w)
	}
}

func checkStmt(t *testing.T, where string, st *Statement, w *ws) {
	t.Helper()
	pol := ""
	if st.Policy != nil {
		pol = st.Policy.QualifiedName()
	}
	if st.Kind != w.kind || pol != w.policy || st.Incremented != w.inc || st.Checked != w.checked || st.Refuse != w.refuse {
		t.Errorf("%s: got kind=%s policy=%q inc=%v checked=%v refuse=%v, want kind=%s policy=%q inc=%v checked=%v refuse=%v\nnotes: %q",
			where, st.Kind, pol, st.Incremented, st.Checked, st.Refuse, w.kind, w.policy, w.inc, w.checked, w.refuse, st.Notes)
	}
	if w.sql != "" && st.SQL != w.sql {
		t.Errorf("%s: SQL\n got  %q\n want %q", where, st.SQL, w.sql)
	}
	if st.Expected != w.expected {
		t.Errorf("%s: expected value %+v, want %+v", where, st.Expected, w.expected)
	}
	if len(st.Keys) != 0 || len(w.keys) != 0 {
		if !reflect.DeepEqual(st.Keys, w.keys) {
			t.Errorf("%s: keys %+v, want %+v", where, st.Keys, w.keys)
		}
	}
	for _, n := range w.notes {
		found := false
		for _, got := range st.Notes {
			if strings.Contains(got, n) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no note containing %q in %q", where, n, st.Notes)
		}
	}
	if !reflect.DeepEqual(st.Hidden, w.hidden) && (len(st.Hidden) != 0 || len(w.hidden) != 0) {
		t.Errorf("%s: hidden %+v, want %+v", where, st.Hidden, w.hidden)
	}
	var caps []wc
	for _, c := range st.Captures {
		caps = append(caps, wc{c.Policy.QualifiedName(), c.Ref, c.Keys, c.Version})
	}
	if !reflect.DeepEqual(caps, w.captures) {
		t.Errorf("%s: captures %+v, want %+v", where, caps, w.captures)
	}
	if st.Untracked != w.untracked || st.NewVersion != w.newVersion || st.AddedReturning != w.addedReturning {
		t.Errorf("%s: untracked=%v newVersion=%d addedReturning=%v, want %v %d %v\nnotes: %q", where,
			st.Untracked, st.NewVersion, st.AddedReturning, w.untracked, w.newVersion, w.addedReturning, st.Notes)
	}
	if st.WrittenOver != w.writtenOver || st.WrittenOverField != w.writtenOverAt {
		t.Errorf("%s: written over %d at %d, want %d at %d\nnotes: %q", where, st.WrittenOver, st.WrittenOverField, w.writtenOver, w.writtenOverAt, st.Notes)
	}
	switch {
	case (st.Inject == nil) != (w.inject == nil):
		t.Errorf("%s: inject %+v, want %+v\nnotes: %q", where, st.Inject, w.inject, st.Notes)
	case st.Inject != nil:
		if st.Inject.Param != w.inject.param || st.Inject.SQL != w.inject.sql {
			t.Errorf("%s: inject $%d %q,\n want $%d %q", where, st.Inject.Param, st.Inject.SQL, w.inject.param, w.inject.sql)
		}
		if w.inject.with != "" {
			if got := st.WithExpected("7"); got != w.inject.with {
				t.Errorf("%s: WithExpected\n got  %q\n want %q", where, got, w.inject.with)
			}
			mustParse(t, st.WithExpected("7"), 1)
		}
		mustParse(t, st.Inject.SQL, 1)
	}
	if st.PrepareName != w.prepare || st.ExecuteName != w.execute || st.DeallocateName != w.dealloc || st.DeallocateAll != w.all {
		t.Errorf("%s: prepare=%q execute=%q deallocate=%q all=%v, want %q %q %q %v", where,
			st.PrepareName, st.ExecuteName, st.DeallocateName, st.DeallocateAll, w.prepare, w.execute, w.dealloc, w.all)
	}
	if len(st.ExecuteArgs) != 0 || len(w.args) != 0 {
		if !reflect.DeepEqual(st.ExecuteArgs, w.args) {
			t.Errorf("%s: execute args %+v, want %+v", where, st.ExecuteArgs, w.args)
		}
	}
	if (st.Inner == nil) != (w.inner == nil) {
		t.Fatalf("%s: inner %+v, want %+v", where, st.Inner, w.inner)
	}
	if st.Inner != nil {
		checkStmt(t, where+" inner", st.Inner, w.inner)
	}
	if st.SQL != "" {
		mustParse(t, st.SQL, 1)
	}
}

func mustParse(t *testing.T, sql string, n int) {
	t.Helper()
	tree, err := pg.Parse(sql)
	if err != nil {
		t.Errorf("%q does not parse: %v", sql, err)
		return
	}
	if len(tree.Stmts) != n {
		t.Errorf("%q parses to %d statements, want %d", sql, len(tree.Stmts), n)
	}
}

// The plan of a text the prefilter rejects is the text itself.
func TestPlanUntouched(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	for _, sql := range []string{
		"SELECT 1",
		"UPDATE other SET version = version + 1 WHERE version = 3",
		"select 1; select 2;; select 3",
		"INSERT INTO t VALUES (1); TRUNCATE t",
		"", "-- just a comment",
	} {
		if r.MayTouch(sql) {
			t.Fatalf("MayTouch(%q) = true", sql)
		}
		p, err := r.Plan(sql, "public")
		if err != nil {
			t.Fatal(err)
		}
		if p.Changed || p.SQL != sql || p.Guarded() {
			t.Errorf("%q: changed=%v guarded=%v sql=%q", sql, p.Changed, p.Guarded(), p.SQL)
		}
		for _, st := range p.Statements {
			if st.Kind != KindOther || st.Policy != nil {
				t.Errorf("%q: statement %+v", sql, st)
			}
		}
	}
}

func TestPlanErrors(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true, MaxSQLBytes: 100000, MaxDepth: 50})
	cases := []struct {
		name string
		sql  string
		is   error
	}{
		{"syntax", "UPDATE address SET WHERE", nil},
		{"too long", "SELECT '" + strings.Repeat("x", 100000) + "'", ErrTooLong},
		{"too deep: parentheses", "SELECT " + strings.Repeat("(", 60) + "1" + strings.Repeat(")", 60), ErrTooDeep},
		{"too deep: operator chain", "UPDATE address SET x = 1" + strings.Repeat(" + 1", 60), ErrTooDeep},
		{"too deep: casts", "SELECT 1" + strings.Repeat("::int", 60), ErrTooDeep},
		{"too deep: joins", "SELECT * FROM a" + strings.Repeat(" JOIN a ON true AND true", 60), ErrTooDeep},
		{"too deep: unions", "SELECT 1, 2" + strings.Repeat(" UNION SELECT 1, 2", 60), ErrTooDeep},
		{"too deep: case", "SELECT " + strings.Repeat("CASE WHEN true THEN ", 60) + "1" + strings.Repeat(" END", 60), ErrTooDeep},
		{"too deep: OPERATOR()", "SELECT 1" + strings.Repeat(" OPERATOR(pg_catalog.+) 1", 60), ErrTooDeep},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 2; i++ { // the second time from the cache, where cached
				p, err := r.Plan(tc.sql, "public")
				var pe *ParseError
				if !errors.As(err, &pe) || p != nil {
					t.Fatalf("got %v, %v; want a *ParseError", p, err)
				}
				if pe.SQL != tc.sql {
					t.Errorf("ParseError.SQL differs")
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("%v is not %v", err, tc.is)
				}
			}
		})
	}
}

// Deep input that would overflow pg_query's C stack is refused, not parsed.
func TestPlanDeepInputDoesNotCrash(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true, MaxSQLBytes: 10 << 20})
	for _, sql := range []string{
		"UPDATE address SET x = 1" + strings.Repeat("+1", 300000),
		"SELECT 1" + strings.Repeat("::int", 300000),
		"SELECT * FROM address" + strings.Repeat(" JOIN a ON true", 200000),
		"SELECT " + strings.Repeat("NOT ", 200000) + "true",
	} {
		_, err := r.Plan(sql, "")
		if !errors.Is(err, ErrTooDeep) {
			t.Errorf("%.40q...: %v", sql, err)
		}
	}
}

func TestPlanCache(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true, CacheSize: 8})
	sql := "UPDATE address SET x = 1 WHERE version = 1"
	p1, _ := r.Plan(sql, "public")
	p2, _ := r.Plan(sql, "public")
	if p1 != p2 {
		t.Error("second Plan was not served from the cache")
	}
	p3, _ := r.Plan(sql, "alice,public")
	if p3 == p1 || p3.Statements[0].Policy.Schema != "alice" {
		t.Error("search path is not part of the cache key")
	}
	if h, m := r.CacheStats(); h != 1 || m != 2 {
		t.Errorf("hits=%d misses=%d", h, m)
	}
	for i := 0; i < 100; i++ {
		if _, err := r.Plan(fmt.Sprintf("UPDATE address SET x = %d", i), "public"); err != nil {
			t.Fatal(err)
		}
	}
	r.mu.RLock()
	n := 0
	for _, m := range r.cache {
		n += len(m)
	}
	for _, m := range r.tmpls {
		n += len(m)
	}
	r.mu.RUnlock()
	if n > 8 || n != r.n {
		t.Errorf("cache holds %d plans (counted %d), bound 8", n, r.n)
	}

	// No cache.
	r = New(testPolicies(), Options{Tracking: true, CacheSize: -1})
	p1, _ = r.Plan(sql, "public")
	p2, _ = r.Plan(sql, "public")
	if p1 == p2 || p1.SQL != p2.SQL {
		t.Error("CacheSize -1 still caches")
	}
}

func TestPlanCacheBytes(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true, CacheBytes: 64 << 10})
	for i := 0; i < 200; i++ {
		sql := fmt.Sprintf("UPDATE address SET x = '%s' WHERE id = %d", strings.Repeat("y", 2000), i)
		if _, err := r.Plan(sql, "public"); err != nil {
			t.Fatal(err)
		}
	}
	if r.bytes > 64<<10 {
		t.Errorf("cache holds %d bytes, bound %d", r.bytes, 64<<10)
	}
}

// The plan does not keep the caller's memory: the proxy may plan text that
// lives in a reused read buffer.
func TestPlanCopiesInput(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true})
	buf := []byte("SELECT 1; SELECT 2")
	s := unsafe.String(&buf[0], len(buf))
	p, err := r.Plan(s, "public")
	if err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXXXXXXXXXXXXXXX")
	if p.SQL != "SELECT 1; SELECT 2" || p.Statements[1].SQL != "SELECT 2" {
		t.Errorf("plan follows the caller's buffer: %q", p.SQL)
	}
	if p2, _ := r.Plan("SELECT 1; SELECT 2", "public"); p2 != p {
		t.Error("cache key follows the caller's buffer")
	}
}

func TestPlanConcurrent(t *testing.T) {
	r := New(testPolicies(), Options{Tracking: true, CacheSize: 16})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				tc := planCases[(g+i)%len(planCases)]
				p, err := r.Plan(tc.sql, tc.path)
				if err != nil {
					t.Error(err)
					return
				}
				if want := tc.out; want != "" && p.SQL != want {
					t.Errorf("%s: got %q", tc.name, p.SQL)
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestPolicies(t *testing.T) {
	in := testPolicies()
	r := New(in, Options{})
	in[0].Table = "changed"
	in[0].Key[0] = "changed"
	got := r.Policies()
	if got[0].Table != "address" || got[0].Key[0] != "id" {
		t.Error("New does not copy the policies")
	}
	got[0].Key[0] = "again"
	if r.Policies()[0].Key[0] != "id" {
		t.Error("Policies does not copy")
	}
	if !reflect.DeepEqual(r.Policies(), testPolicies()) {
		t.Error("Policies differ from New's argument")
	}
}

func TestStringers(t *testing.T) {
	if ModeRequired.String() != "required" || TypeUUID.String() != "uuid" || KindUpsert.String() != "upsert" {
		t.Error("String methods")
	}
	if param(3).String() != "$3" || lit("x").String() != "x" || expr("now()").String() != "now()" {
		t.Error("Value.String")
	}
}
