package rewrite

import (
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

func trackedPolicies() []Policy {
	return []Policy{
		{Schema: "public", Table: "addresses", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeTracked},
		{Schema: "public", Table: "counter", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeTracked},
		{Schema: "public", Table: "ledger", Column: "xmin", Type: TypeXmin, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeTracked},
		{Schema: "public", Table: "pair", Column: "updated_at", Type: TypeTimestamp, Key: []string{"k1", "k2"}, Update: true, Delete: true, Mode: ModeTracked},
		{Schema: "public", Table: "obs", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeObserve},
		{Schema: "public", Table: "obsx", Column: "xmin", Type: TypeXmin, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeObserve},
		{Schema: "public", Table: "obst", Column: "updated_at", Type: TypeTimestamp, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeObserve},
		{Schema: "public", Table: "obsu", Column: "etag", Type: TypeUUID, Key: []string{"k1", "k2"}, Update: true, Delete: true, Mode: ModeObserve},
		{Schema: "public", Table: "req", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true, Mode: ModeRequired},
		{Schema: "public", Table: "plain", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true},
	}
}

// readBack is the hidden RETURNING expression of observe mode.
const readBack = "pg_catalog.set_config('pgoptimist.written_over', CASE WHEN pg_catalog.starts_with(pg_catalog.current_setting('pgoptimist.written_over', true), 'v') THEN pg_catalog.concat('c', pg_catalog.current_setting('pgoptimist.written_over', true)) ELSE 'c' END, true)"

var writtenOverCol = HiddenColumn{Field: -1, Column: "pgoptimist.written_over"}

// hid builds the expected hidden columns of one table: the last fields.
func hid(from int, table string, cols ...string) []HiddenColumn {
	var out []HiddenColumn
	for i, c := range cols {
		out = append(out, HiddenColumn{Field: Field(from + i), Schema: "public", Table: table, Column: c})
	}
	return out
}

var trackedCases = []planCase{
	// Reads: the ORM shapes.
	{
		name: "Rails find: star, key and version hidden",
		sql:  `SELECT "addresses".* FROM "addresses" WHERE "addresses"."id" = $1 LIMIT $2`,
		out:  "SELECT addresses.*, addresses.id AS pgoptimist_1, addresses.version AS pgoptimist_2 FROM addresses WHERE addresses.id = $1 LIMIT $2",
		stmts: []ws{{hidden: hid(-2, "addresses", "id", "version"),
			captures: []wc{{"public.addresses", "addresses", []Field{-2}, -1}}}},
	},
	{
		name: "Hibernate: explicit list with alias, key at 0, version at 2",
		sql:  "select a1_0.id,a1_0.county,a1_0.version from addresses a1_0 where a1_0.id=$1",
		stmts: []ws{{captures: []wc{{"public.addresses", "a1_0", []Field{0}, 2}},
			notes: []string{"id at 0, version at 2"}}},
	},
	{
		name: "Hibernate FOR UPDATE: version added",
		sql:  "select a1_0.id,a1_0.county from addresses a1_0 where a1_0.id=$1 for update",
		out:  "SELECT a1_0.id, a1_0.county, a1_0.version AS pgoptimist_1 FROM addresses a1_0 WHERE a1_0.id = $1 FOR UPDATE",
		stmts: []ws{{hidden: hid(-1, "addresses", "version"),
			captures: []wc{{"public.addresses", "a1_0", []Field{0}, -1}}}},
	},
	{
		name: "Django: qualified by the table name",
		sql:  `SELECT "counter"."id", "counter"."n" FROM "counter" WHERE "counter"."id" = 1 LIMIT 21`,
		out:  "SELECT counter.id, counter.n, counter.version AS pgoptimist_1 FROM counter WHERE counter.id = 1 LIMIT 21",
		stmts: []ws{{hidden: hid(-1, "counter", "version"),
			captures: []wc{{"public.counter", "counter", []Field{0}, -1}}}},
	},
	{
		name:  "SQLAlchemy: labels",
		sql:   "SELECT counter.id AS counter_id, counter.n AS counter_n, counter.version AS counter_version FROM counter WHERE counter.id = $1",
		stmts: []ws{{captures: []wc{{"public.counter", "counter", []Field{0}, 2}}}},
	},
	{
		name: "Ecto: AS alias, bracketed WHERE",
		sql:  `SELECT c0."id", c0."n" FROM "counter" AS c0 WHERE (c0."id" = $1)`,
		out:  "SELECT c0.id, c0.n, c0.version AS pgoptimist_1 FROM counter c0 WHERE c0.id = $1",
		stmts: []ws{{hidden: hid(-1, "counter", "version"),
			captures: []wc{{"public.counter", "c0", []Field{0}, -1}}}},
	},
	{
		name: "Ecto update: bracketed WHERE pins the key",
		sql:  `UPDATE "counter" AS c0 SET "n" = $1 WHERE (c0."id" = $2)`,
		out:  "UPDATE counter c0 SET n = $1, version = c0.version + 1 WHERE c0.id = $2",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, keys: []KeyValue{key("id", param(2))},
			newVersion: NewVersionIncrement,
			inject:     &wi{param: 3, sql: "UPDATE counter c0 SET n = $1, version = c0.version + 1 WHERE c0.id = $2 AND (c0.version = $3 OR $3 IS NULL)"}}},
	},
	{
		name:  "unqualified columns of a single table count",
		sql:   "SELECT id, n, version FROM counter WHERE id = 1",
		stmts: []ws{{captures: []wc{{"public.counter", "counter", []Field{0}, 2}}}},
	},
	{
		name: "plain read of one column",
		sql:  "SELECT n FROM counter WHERE id = 1",
		out:  "SELECT n, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2 FROM counter WHERE id = 1",
		stmts: []ws{{hidden: hid(-2, "counter", "id", "version"),
			captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}},
	},
	{
		name: "a column after a star is not relied on",
		sql:  "SELECT c.*, c.id FROM counter c",
		out:  "SELECT c.*, c.id, c.id AS pgoptimist_1, c.version AS pgoptimist_2 FROM counter c",
		stmts: []ws{{hidden: hid(-2, "counter", "id", "version"),
			captures: []wc{{"public.counter", "c", []Field{-2}, -1}}}},
	},
	{
		name: "xmin version, SELECT *",
		sql:  "SELECT * FROM ledger WHERE id = 3",
		out:  "SELECT *, ledger.id AS pgoptimist_1, ledger.xmin AS pgoptimist_2 FROM ledger WHERE id = 3",
		stmts: []ws{{hidden: hid(-2, "ledger", "id", "xmin"),
			captures: []wc{{"public.ledger", "ledger", []Field{-2}, -1}}}},
	},
	{
		name: "composite key",
		sql:  "SELECT v FROM pair p WHERE p.k1 = 1 AND p.k2 = 'x'",
		out:  "SELECT v, p.k1 AS pgoptimist_1, p.k2 AS pgoptimist_2, p.updated_at AS pgoptimist_3 FROM pair p WHERE p.k1 = 1 AND p.k2 = 'x'",
		stmts: []ws{{hidden: hid(-3, "pair", "k1", "k2", "updated_at"),
			captures: []wc{{"public.pair", "p", []Field{-3, -2}, -1}}}},
	},
	{
		name: "an unqualified column of a join is not relied on",
		sql:  "SELECT id, c.version FROM counter c JOIN other o ON o.cid = c.id",
		out:  "SELECT id, c.version, c.id AS pgoptimist_1 FROM counter c JOIN other o ON o.cid = c.id",
		stmts: []ws{{hidden: hid(-1, "counter", "id"),
			captures: []wc{{"public.counter", "c", []Field{-1}, 1}}}},
	},
	{
		name: "join of two tracked tables",
		sql:  "SELECT c.n, l.amount FROM counter c JOIN ledger l ON l.id = c.id",
		out:  "SELECT c.n, l.amount, c.id AS pgoptimist_1, c.version AS pgoptimist_2, l.id AS pgoptimist_3, l.xmin AS pgoptimist_4 FROM counter c JOIN ledger l ON l.id = c.id",
		stmts: []ws{{hidden: append(hid(-4, "counter", "id", "version"), hid(-2, "ledger", "id", "xmin")...),
			captures: []wc{{"public.counter", "c", []Field{-4}, -3}, {"public.ledger", "l", []Field{-2}, -1}}}},
	},
	{
		name: "the same table twice, told apart by alias",
		sql:  "SELECT c.n, d.n FROM counter c, counter d WHERE d.id = c.id + 1",
		out:  "SELECT c.n, d.n, c.id AS pgoptimist_1, c.version AS pgoptimist_2, d.id AS pgoptimist_3, d.version AS pgoptimist_4 FROM counter c, counter d WHERE d.id = (c.id + 1)",
		stmts: []ws{{hidden: append(hid(-4, "counter", "id", "version"), hid(-2, "counter", "id", "version")...),
			captures: []wc{{"public.counter", "c", []Field{-4}, -3}, {"public.counter", "d", []Field{-2}, -1}}}},
	},
	{
		name: "inner side of an outer join is captured, the nullable side is not",
		sql:  "SELECT c.n, l.amount FROM counter c LEFT JOIN ledger l ON l.id = c.id",
		out:  "SELECT c.n, l.amount, c.id AS pgoptimist_1, c.version AS pgoptimist_2 FROM counter c LEFT JOIN ledger l ON l.id = c.id",
		stmts: []ws{{hidden: hid(-2, "counter", "id", "version"),
			captures: []wc{{"public.counter", "c", []Field{-2}, -1}},
			notes:    []string{"public.ledger as l: not captured (on the nullable side of an outer join)"}}},
	},
	{
		name: "only on the nullable side: not tracked",
		sql:  "SELECT c.n FROM other o LEFT JOIN counter c ON c.id = o.id",
		stmts: []ws{{untracked: true,
			notes: []string{"on the nullable side of an outer join", "no table reference in its FROM list can be captured"}}},
	},
	{
		name:  "full join",
		sql:   "SELECT * FROM counter c FULL JOIN other o ON c.id = o.id",
		stmts: []ws{{untracked: true}},
	},
	{
		name: "CTE beside the table",
		sql:  "WITH x AS (SELECT 1 AS id) SELECT c.n FROM counter c JOIN x ON x.id = c.id",
		out:  "WITH x AS (SELECT 1 AS id) SELECT c.n, c.id AS pgoptimist_1, c.version AS pgoptimist_2 FROM counter c JOIN x ON x.id = c.id",
		stmts: []ws{{hidden: hid(-2, "counter", "id", "version"),
			captures: []wc{{"public.counter", "c", []Field{-2}, -1}}}},
	},
	{
		name:  "a CTE named like the table is not the table",
		sql:   "WITH counter AS (SELECT 1 AS n) SELECT n FROM counter",
		stmts: []ws{{untracked: true}},
	},
	{
		name:  "the table inside a subquery in FROM",
		sql:   "SELECT s.n FROM (SELECT * FROM counter LIMIT 1) s",
		stmts: []ws{{untracked: true}},
	},
	{
		name:  "the table in an aliased join",
		sql:   "SELECT j.n FROM (counter JOIN other USING (id)) AS j",
		stmts: []ws{{untracked: true, notes: []string{"inside an aliased join"}}},
	},
	{
		name:  "renamed columns",
		sql:   "SELECT x FROM counter AS c(x, y)",
		stmts: []ws{{untracked: true, notes: []string{"its columns are renamed"}}},
	},
	{
		name: "a subquery in WHERE does not stop the capture",
		sql:  "SELECT n FROM counter WHERE id IN (SELECT max(id) FROM counter)",
		out:  "SELECT n, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2 FROM counter WHERE id IN (SELECT max(id) FROM counter)",
		stmts: []ws{{hidden: hid(-2, "counter", "id", "version"),
			captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}},
	},
	{
		name: "a scalar subquery with its own FROM in the target list",
		sql:  "SELECT c.n, (SELECT count(*) FROM other o WHERE o.cid = c.id) FROM counter c",
		out:  "SELECT c.n, (SELECT count(*) FROM other o WHERE o.cid = c.id), c.id AS pgoptimist_1, c.version AS pgoptimist_2 FROM counter c",
		stmts: []ws{{hidden: hid(-2, "counter", "id", "version"),
			captures: []wc{{"public.counter", "c", []Field{-2}, -1}}}},
	},
	{
		name: "a plain function call is not an aggregate",
		sql:  "SELECT lower(name) FROM counter",
		out:  "SELECT lower(name), counter.id AS pgoptimist_1, counter.version AS pgoptimist_2 FROM counter",
		stmts: []ws{{hidden: hid(-2, "counter", "id", "version"),
			captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}},
	},
	// Reads whose meaning extra columns would change.
	{name: "aggregate", sql: "SELECT count(*) FROM counter", stmts: []ws{{untracked: true, notes: []string{"not tracked: aggregate count"}}}},
	{name: "aggregate by name", sql: "SELECT max(n) FROM counter", stmts: []ws{{untracked: true}}},
	{name: "aggregate with FILTER", sql: "SELECT myagg(n) FILTER (WHERE n > 1) FROM counter", stmts: []ws{{untracked: true}}},
	{name: "configured aggregate", sql: "SELECT my_sum(n) FROM counter", stmts: []ws{{untracked: true}}},
	{name: "aggregate in ORDER BY", sql: "SELECT 1 FROM counter ORDER BY sum(n)", stmts: []ws{{untracked: true}}},
	{name: "outer aggregate in a FROM-less subquery", sql: "SELECT (SELECT sum(c.n)) FROM counter c", stmts: []ws{{untracked: true}}},
	{name: "DISTINCT", sql: "SELECT DISTINCT n FROM counter", stmts: []ws{{untracked: true, notes: []string{"DISTINCT"}}}},
	{name: "DISTINCT ON", sql: "SELECT DISTINCT ON (n) n FROM counter ORDER BY n, id", stmts: []ws{{untracked: true}}},
	{name: "GROUP BY", sql: "SELECT n FROM counter GROUP BY n", stmts: []ws{{untracked: true, notes: []string{"GROUP BY"}}}},
	{name: "HAVING", sql: "SELECT 1 FROM counter HAVING true", stmts: []ws{{untracked: true}}},
	{name: "UNION", sql: "SELECT n FROM counter UNION SELECT n FROM counter", stmts: []ws{{untracked: true, notes: []string{"set operation"}}}},
	{name: "UNION ALL with another table", sql: "SELECT n FROM counter UNION ALL SELECT n FROM other", stmts: []ws{{untracked: true}}},
	{name: "EXCEPT", sql: "SELECT id FROM counter EXCEPT SELECT id FROM other", stmts: []ws{{untracked: true}}},
	{name: "window function", sql: "SELECT n, rank() OVER (ORDER BY n) FROM counter", stmts: []ws{{untracked: true, notes: []string{"window function"}}}},
	{name: "WINDOW clause", sql: "SELECT n FROM counter WINDOW w AS (ORDER BY n)", stmts: []ws{{untracked: true}}},
	{name: "SELECT INTO", sql: "SELECT n INTO t2 FROM counter", stmts: []ws{{untracked: true, notes: []string{"SELECT INTO"}}}},
	{
		name:  "data-modifying CTE",
		sql:   "WITH u AS (UPDATE counter SET n = 1 WHERE id = 1 RETURNING id) SELECT c.n FROM counter c JOIN u USING (id)",
		out:   "WITH u AS (UPDATE counter SET n = 1, version = version + 1 WHERE id = 1 RETURNING id) SELECT c.n FROM counter c JOIN u USING (id)",
		stmts: []ws{{policy: "public.counter", inc: true, untracked: true, notes: []string{"data-modifying CTE"}}},
	},
	{
		name:  "a read the deparser cannot write back goes untracked, unchanged",
		sql:   "SELECT * FROM counter WHERE n > 0 FOR UPDATE OF counter SKIP LOCKED",
		stmts: []ws{{untracked: true, notes: []string{"cannot be deparsed"}}},
	},
	{
		name: "... and its neighbours are still rewritten",
		sql:  "SELECT * FROM counter FOR UPDATE OF counter SKIP LOCKED; UPDATE counter SET n = 1 WHERE id = 1",
		out:  "SELECT * FROM counter FOR UPDATE OF counter SKIP LOCKED;\nUPDATE counter SET n = 1, version = version + 1 WHERE id = 1",
		stmts: []ws{{sql: "SELECT * FROM counter FOR UPDATE OF counter SKIP LOCKED", untracked: true},
			{kind: KindUpdate, policy: "public.counter", sql: "UPDATE counter SET n = 1, version = version + 1 WHERE id = 1", inc: true,
				keys: []KeyValue{key("id", lit("1"))}, newVersion: NewVersionIncrement,
				inject: &wi{param: 1, sql: "UPDATE counter SET n = 1, version = version + 1 WHERE id = 1 AND (counter.version = $1 OR $1 IS NULL)"}}},
	},
	// Reads that are not tracked at all.
	{name: "explicit-mode table: nothing added", sql: "SELECT n FROM plain WHERE id = 1", stmts: []ws{{}}},
	{name: "untracked table", sql: "SELECT n FROM other WHERE id = 1", stmts: []ws{{}}},
	{
		name: "observe mode reads are tracked",
		sql:  "SELECT n FROM obs WHERE id = 1",
		out:  "SELECT n, obs.id AS pgoptimist_1, obs.version AS pgoptimist_2 FROM obs WHERE id = 1",
		stmts: []ws{{hidden: hid(-2, "obs", "id", "version"),
			captures: []wc{{"public.obs", "obs", []Field{-2}, -1}}}},
	},
	{
		name: "SQL-level PREPARE of a read",
		sql:  "PREPARE q AS SELECT n FROM counter WHERE id = $1",
		out:  "PREPARE q AS SELECT n, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2 FROM counter WHERE id = $1",
		stmts: []ws{{kind: KindPrepare, prepare: "q", inner: &ws{
			sql:    "SELECT n, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2 FROM counter WHERE id = $1",
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}}},
	},
	{
		name: "multi-statement: read then write",
		sql:  "BEGIN; SELECT n FROM counter WHERE id = 2; UPDATE counter SET n = 3 WHERE id = 2; COMMIT",
		out:  "BEGIN; SELECT n, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2 FROM counter WHERE id = 2; UPDATE counter SET n = 3, version = version + 1 WHERE id = 2; COMMIT",
		stmts: []ws{
			{sql: "BEGIN"},
			{sql: "SELECT n, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2 FROM counter WHERE id = 2",
				hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}},
			{kind: KindUpdate, policy: "public.counter", sql: "UPDATE counter SET n = 3, version = version + 1 WHERE id = 2", inc: true,
				keys: []KeyValue{key("id", lit("2"))}, newVersion: NewVersionIncrement,
				inject: &wi{param: 1, sql: "UPDATE counter SET n = 3, version = version + 1 WHERE id = 2 AND (counter.version = $1 OR $1 IS NULL)",
					with: "UPDATE counter SET n = 3, version = version + 1 WHERE id = 2 AND counter.version = '7'"}},
			{sql: "COMMIT"},
		},
	},

	// Writes.
	{
		name: "Rails update: injected as $3, new version computed",
		sql:  `UPDATE "addresses" SET "county" = $1 WHERE "addresses"."id" = $2`,
		out:  "UPDATE addresses SET county = $1, version = version + 1 WHERE addresses.id = $2",
		stmts: []ws{{kind: KindUpdate, policy: "public.addresses", inc: true, keys: []KeyValue{key("id", param(2))},
			newVersion: NewVersionIncrement,
			inject: &wi{param: 3, sql: "UPDATE addresses SET county = $1, version = version + 1 WHERE addresses.id = $2 AND (addresses.version = $3 OR $3 IS NULL)",
				with: "UPDATE addresses SET county = $1, version = version + 1 WHERE addresses.id = $2 AND addresses.version = '7'"}}},
	},
	{
		name: "explicit predicate wins",
		sql:  "UPDATE counter SET n = 5 WHERE id = 1 AND version = 3",
		out:  "UPDATE counter SET n = 5, version = version + 1 WHERE id = 1 AND version = 3",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, checked: true, expected: lit("3"),
			keys: []KeyValue{key("id", lit("1"))}, newVersion: NewVersionIncrement,
			notes: []string{"the explicit version predicate wins"}}},
	},
	{
		name: "alias, RETURNING extended, parameter after the highest",
		sql:  "UPDATE counter c SET n = $2 WHERE c.id = $1 RETURNING c.n",
		out:  "UPDATE counter c SET n = $2, version = c.version + 1 WHERE c.id = $1 RETURNING c.n, c.id AS pgoptimist_1, c.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, keys: []KeyValue{key("id", param(1))},
			newVersion: NewVersionIncrement,
			hidden:     hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "c", []Field{-2}, -1}},
			inject: &wi{param: 3, sql: "UPDATE counter c SET n = $2, version = c.version + 1 WHERE c.id = $1 AND (c.version = $3 OR $3 IS NULL) RETURNING c.n, c.id AS pgoptimist_1, c.version AS pgoptimist_2",
				with: "UPDATE counter c SET n = $2, version = c.version + 1 WHERE c.id = $1 AND c.version = '7' RETURNING c.n, c.id AS pgoptimist_1, c.version AS pgoptimist_2"}}},
	},
	{
		name: "RETURNING that already has key and version",
		sql:  "UPDATE counter SET n = 1 WHERE id = 4 RETURNING id, version",
		out:  "UPDATE counter SET n = 1, version = version + 1 WHERE id = 4 RETURNING id, version",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, keys: []KeyValue{key("id", lit("4"))},
			newVersion: NewVersionIncrement, captures: []wc{{"public.counter", "counter", []Field{0}, 1}},
			inject: &wi{param: 1, sql: "UPDATE counter SET n = 1, version = version + 1 WHERE id = 4 AND (counter.version = $1 OR $1 IS NULL) RETURNING id, version"}}},
	},
	{
		name: "key not pinned: hidden RETURNING learns every new version",
		sql:  "UPDATE counter SET n = 5 WHERE n > 3",
		out:  "UPDATE counter SET n = 5, version = version + 1 WHERE n > 3 RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}},
			notes: []string{"does not pin the whole key"}}},
	},
	{
		name: "key pinned by an expression: not injected",
		sql:  "UPDATE counter SET n = 5 WHERE id = f(1)",
		out:  "UPDATE counter SET n = 5, version = version + 1 WHERE id = f(1) RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}},
	},
	{
		name: "key inside OR: not injected",
		sql:  "UPDATE counter SET n = 5 WHERE id = 1 OR id = 2",
		out:  "UPDATE counter SET n = 5, version = version + 1 WHERE id = 1 OR id = 2 RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}},
	},
	{
		name: "application assigns the version: new version returned",
		sql:  "UPDATE counter SET n = 1, version = 9 WHERE id = 1",
		out:  "UPDATE counter SET n = 1, version = 9 WHERE id = 1 RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", keys: []KeyValue{key("id", lit("1"))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}},
			inject: &wi{param: 1, sql: "UPDATE counter SET n = 1, version = 9 WHERE id = 1 AND (counter.version = $1 OR $1 IS NULL) RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2"}}},
	},
	{
		name: "xmin: injected, new version returned",
		sql:  "UPDATE ledger SET amount = 5 WHERE id = 1",
		out:  "UPDATE ledger SET amount = 5 WHERE id = 1 RETURNING ledger.id AS pgoptimist_1, ledger.xmin AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.ledger", keys: []KeyValue{key("id", lit("1"))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "ledger", "id", "xmin"), captures: []wc{{"public.ledger", "ledger", []Field{-2}, -1}},
			inject: &wi{param: 1, sql: "UPDATE ledger SET amount = 5 WHERE id = 1 AND (ledger.xmin = $1 OR $1 IS NULL) RETURNING ledger.id AS pgoptimist_1, ledger.xmin AS pgoptimist_2",
				with: "UPDATE ledger SET amount = 5 WHERE id = 1 AND ledger.xmin = '7' RETURNING ledger.id AS pgoptimist_1, ledger.xmin AS pgoptimist_2"}}},
	},
	{
		name: "composite key, timestamp version",
		sql:  "UPDATE pair SET v = 1 WHERE k2 = $2 AND pair.k1 = $1",
		out:  "UPDATE pair SET v = 1, updated_at = clock_timestamp() WHERE k2 = $2 AND pair.k1 = $1 RETURNING pair.k1 AS pgoptimist_1, pair.k2 AS pgoptimist_2, pair.updated_at AS pgoptimist_3",
		stmts: []ws{{kind: KindUpdate, policy: "public.pair", inc: true, keys: []KeyValue{key("k1", param(1)), key("k2", param(2))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-3, "pair", "k1", "k2", "updated_at"), captures: []wc{{"public.pair", "pair", []Field{-3, -2}, -1}},
			inject: &wi{param: 3, sql: "UPDATE pair SET v = 1, updated_at = clock_timestamp() WHERE k2 = $2 AND pair.k1 = $1 AND (pair.updated_at = $3 OR $3 IS NULL) RETURNING pair.k1 AS pgoptimist_1, pair.k2 AS pgoptimist_2, pair.updated_at AS pgoptimist_3"}}},
	},
	{
		name: "composite key half pinned: not injected",
		sql:  "UPDATE pair SET v = 1 WHERE k1 = $1",
		out:  "UPDATE pair SET v = 1, updated_at = clock_timestamp() WHERE k1 = $1 RETURNING pair.k1 AS pgoptimist_1, pair.k2 AS pgoptimist_2, pair.updated_at AS pgoptimist_3",
		stmts: []ws{{kind: KindUpdate, policy: "public.pair", inc: true, keys: []KeyValue{key("k1", param(1))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-3, "pair", "k1", "k2", "updated_at"), captures: []wc{{"public.pair", "pair", []Field{-3, -2}, -1}}}},
	},
	{
		name: "DELETE: injected, nothing returned",
		sql:  "DELETE FROM counter WHERE id = $1",
		stmts: []ws{{kind: KindDelete, policy: "public.counter", keys: []KeyValue{key("id", param(1))},
			inject: &wi{param: 2, sql: "DELETE FROM counter WHERE id = $1 AND (counter.version = $2 OR $2 IS NULL)",
				with: "DELETE FROM counter WHERE id = $1 AND counter.version = '7'"}}},
	},
	{
		name: "DELETE RETURNING *",
		sql:  "DELETE FROM counter WHERE id = $1 RETURNING *",
		out:  "DELETE FROM counter WHERE id = $1 RETURNING *, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindDelete, policy: "public.counter", keys: []KeyValue{key("id", param(1))},
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}},
			inject: &wi{param: 2, sql: "DELETE FROM counter WHERE id = $1 AND (counter.version = $2 OR $2 IS NULL) RETURNING *, counter.id AS pgoptimist_1, counter.version AS pgoptimist_2"}}},
	},
	{
		name:  "INSERT RETURNING id: version added",
		sql:   `INSERT INTO "counter" ("n") VALUES ($1) RETURNING "id"`,
		out:   "INSERT INTO counter (n) VALUES ($1) RETURNING id, counter.version AS pgoptimist_1",
		stmts: []ws{{hidden: hid(-1, "counter", "version"), captures: []wc{{"public.counter", "counter", []Field{0}, -1}}}},
	},
	{
		name:  "INSERT without RETURNING: nothing",
		sql:   "INSERT INTO counter (n) VALUES (1)",
		stmts: []ws{{}},
	},
	{
		name: "upsert on the key: injected into the DO UPDATE arm, new version returned",
		sql:  "INSERT INTO counter (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
		out:  "INSERT INTO counter (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = excluded.n, version = counter.version + 1 RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpsert, policy: "public.counter", inc: true, keys: []KeyValue{key("id", param(1))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}},
			inject: &wi{param: 3, sql: "INSERT INTO counter (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = excluded.n, version = counter.version + 1 WHERE counter.version = $3 OR $3 IS NULL RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
				with: "INSERT INTO counter (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = excluded.n, version = counter.version + 1 WHERE counter.version = '7' RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2"}}},
	},
	{
		name: "upsert on another constraint: the VALUES key is not the written row's",
		sql:  "INSERT INTO counter (id, name) VALUES (1, 'a') ON CONFLICT (name) DO UPDATE SET n = 1",
		out:  "INSERT INTO counter (id, name) VALUES (1, 'a') ON CONFLICT (name) DO UPDATE SET n = 1, version = counter.version + 1 RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpsert, policy: "public.counter", inc: true, keys: []KeyValue{key("id", lit("1"))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}},
	},
	{
		name: "observe: never injected",
		sql:  "UPDATE obs SET n = 1 WHERE id = 1",
		out:  "UPDATE obs SET n = 1, version = version + 1 WHERE id = 1 RETURNING obs.id AS pgoptimist_1, obs.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.obs", inc: true, keys: []KeyValue{key("id", lit("1"))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "obs", "id", "version"), captures: []wc{{"public.obs", "obs", []Field{-2}, -1}},
			writtenOver: WrittenOverIncrement,
			notes:       []string{"observe mode: no version injected", "the new version - 1"}}},
	},
	{
		name: "observe, xmin: the WHERE records the version written over, RETURNING reads it back",
		sql:  "UPDATE obsx SET n = $1 WHERE id = $2",
		out: "UPDATE obsx SET n = $1 WHERE id = $2 AND pg_catalog.set_config('pgoptimist.written_over', pg_catalog.concat('v', obsx.xmin), true) IS NOT NULL" +
			" RETURNING obsx.id AS pgoptimist_1, obsx.xmin AS pgoptimist_2, " + readBack + " AS pgoptimist_3",
		stmts: []ws{{kind: KindUpdate, policy: "public.obsx", keys: []KeyValue{key("id", param(2))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:      append(hid(-3, "obsx", "id", "xmin"), writtenOverCol),
			captures:    []wc{{"public.obsx", "obsx", []Field{-3}, -2}},
			writtenOver: WrittenOverReturned, writtenOverAt: -1}},
	},
	{
		name: "observe, timestamp, alias, client RETURNING and no WHERE: every row records its own",
		sql:  "UPDATE obst o SET n = n + 1 RETURNING o.n, o.id",
		out: "UPDATE obst o SET n = n + 1, updated_at = clock_timestamp() WHERE pg_catalog.set_config('pgoptimist.written_over', pg_catalog.concat('v', o.updated_at), true) IS NOT NULL" +
			" RETURNING o.n, o.id, o.updated_at AS pgoptimist_1, " + readBack + " AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.obst", inc: true,
			newVersion:  NewVersionReturned,
			hidden:      append(hid(-2, "obst", "updated_at"), writtenOverCol),
			captures:    []wc{{"public.obst", "o", []Field{1}, -2}},
			writtenOver: WrittenOverReturned, writtenOverAt: -1}},
	},
	{
		name: "observe, uuid, composite key",
		sql:  "UPDATE obsu SET n = 1 WHERE k1 = 1 AND k2 = 'x'",
		out: "UPDATE obsu SET n = 1, etag = gen_random_uuid() WHERE k1 = 1 AND k2 = 'x' AND pg_catalog.set_config('pgoptimist.written_over', pg_catalog.concat('v', obsu.etag), true) IS NOT NULL" +
			" RETURNING obsu.k1 AS pgoptimist_1, obsu.k2 AS pgoptimist_2, obsu.etag AS pgoptimist_3, " + readBack + " AS pgoptimist_4",
		stmts: []ws{{kind: KindUpdate, policy: "public.obsu", inc: true, keys: []KeyValue{key("k1", lit("1")), key("k2", lit("x"))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:      append(hid(-4, "obsu", "k1", "k2", "etag"), writtenOverCol),
			captures:    []wc{{"public.obsu", "obsu", []Field{-4, -3}, -2}},
			writtenOver: WrittenOverReturned, writtenOverAt: -1}},
	},
	{
		name: "observe, integer the application assigns: recorded, not computed",
		sql:  "UPDATE obs SET version = 7 WHERE id = 1",
		out: "UPDATE obs SET version = 7 WHERE id = 1 AND pg_catalog.set_config('pgoptimist.written_over', pg_catalog.concat('v', obs.version), true) IS NOT NULL" +
			" RETURNING obs.id AS pgoptimist_1, obs.version AS pgoptimist_2, " + readBack + " AS pgoptimist_3",
		stmts: []ws{{kind: KindUpdate, policy: "public.obs", keys: []KeyValue{key("id", lit("1"))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:      append(hid(-3, "obs", "id", "version"), writtenOverCol),
			captures:    []wc{{"public.obs", "obs", []Field{-3}, -2}},
			writtenOver: WrittenOverReturned, writtenOverAt: -1}},
	},
	{
		name: "observe, upsert (integer too): recorded in the DO UPDATE arm's WHERE, an inserted row reads it consumed",
		sql:  "INSERT INTO obs AS o (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = o.n + 1 WHERE o.n < 10",
		out: "INSERT INTO obs AS o (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = o.n + 1, version = o.version + 1" +
			" WHERE o.n < 10 AND pg_catalog.set_config('pgoptimist.written_over', pg_catalog.concat('v', o.version), true) IS NOT NULL" +
			" RETURNING o.id AS pgoptimist_1, o.version AS pgoptimist_2, " + readBack + " AS pgoptimist_3",
		stmts: []ws{{kind: KindUpsert, policy: "public.obs", inc: true, keys: []KeyValue{key("id", param(1))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:      append(hid(-3, "obs", "id", "version"), writtenOverCol),
			captures:    []wc{{"public.obs", "o", []Field{-3}, -2}},
			writtenOver: WrittenOverReturned, writtenOverAt: -1}},
	},
	{
		name: "observe, UPDATE ... FROM: a join may evaluate the WHERE ahead of the write: not learned",
		sql:  "UPDATE obsx SET n = s.n FROM src s WHERE s.id = obsx.id",
		out:  "UPDATE obsx SET n = s.n FROM src s WHERE s.id = obsx.id RETURNING obsx.id AS pgoptimist_1, obsx.xmin AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.obsx",
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:   hid(-2, "obsx", "id", "xmin"),
			captures: []wc{{"public.obsx", "obsx", []Field{-2}, -1}},
			notes:    []string{"FROM list or a subquery"}}},
	},
	{
		name: "observe, subquery in the WHERE (may become a join): not learned; integer increment still exact",
		sql:  "UPDATE obs SET n = 1 WHERE id IN (SELECT id FROM src)",
		out:  "UPDATE obs SET n = 1, version = version + 1 WHERE id IN (SELECT id FROM src) RETURNING obs.id AS pgoptimist_1, obs.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.obs", inc: true,
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:      hid(-2, "obs", "id", "version"),
			captures:    []wc{{"public.obs", "obs", []Field{-2}, -1}},
			writtenOver: WrittenOverIncrement}},
	},
	{
		name: "observe, subquery in the WHERE, xmin: not learned",
		sql:  "UPDATE obsx SET n = 1 WHERE EXISTS (SELECT 1 FROM src WHERE src.id = obsx.id)",
		out:  "UPDATE obsx SET n = 1 WHERE EXISTS (SELECT 1 FROM src WHERE src.id = obsx.id) RETURNING obsx.id AS pgoptimist_1, obsx.xmin AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.obsx",
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:   hid(-2, "obsx", "id", "xmin"),
			captures: []wc{{"public.obsx", "obsx", []Field{-2}, -1}},
			notes:    []string{"FROM list or a subquery"}}},
	},
	{
		name: "observe, explicit predicate: checked, not compared",
		sql:  "UPDATE obsx SET n = 1 WHERE id = 1 AND xmin = '5'",
		out:  "UPDATE obsx SET n = 1 WHERE id = 1 AND xmin = '5' RETURNING obsx.id AS pgoptimist_1, obsx.xmin AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.obsx", checked: true, expected: lit("5"), keys: []KeyValue{key("id", lit("1"))},
			newVersion: NewVersionReturned, addedReturning: true,
			hidden:   hid(-2, "obsx", "id", "xmin"),
			captures: []wc{{"public.obsx", "obsx", []Field{-2}, -1}},
			notes:    []string{"explicit version predicate checks the write"}}},
	},
	{
		name:  "observe, DELETE: nothing to learn",
		sql:   "DELETE FROM obsx WHERE id = 1",
		stmts: []ws{{kind: KindDelete, policy: "public.obsx", keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name: "required: refused unless a version is remembered",
		sql:  "UPDATE req SET n = 1 WHERE id = 1",
		out:  "UPDATE req SET n = 1, version = version + 1 WHERE id = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.req", inc: true, refuse: true, keys: []KeyValue{key("id", lit("1"))},
			newVersion: NewVersionIncrement,
			inject:     &wi{param: 1, sql: "UPDATE req SET n = 1, version = version + 1 WHERE id = 1 AND (req.version = $1 OR $1 IS NULL)"}}},
	},
	{
		name:  "required, key not pinned: refused",
		sql:   "DELETE FROM req WHERE n = 1",
		stmts: []ws{{kind: KindDelete, policy: "public.req", refuse: true}},
	},
	{
		name:  "explicit mode: no injection, no RETURNING",
		sql:   "UPDATE plain SET n = 1 WHERE id = 1",
		out:   "UPDATE plain SET n = 1, version = version + 1 WHERE id = 1",
		stmts: []ws{{kind: KindUpdate, policy: "public.plain", inc: true, keys: []KeyValue{key("id", lit("1"))}}},
	},
	{
		name: "WHERE CURRENT OF: not injected",
		sql:  "UPDATE counter SET n = 1 WHERE CURRENT OF cur",
		out:  "UPDATE counter SET n = 1, version = version + 1 WHERE CURRENT OF cur RETURNING counter.id AS pgoptimist_1, counter.version AS pgoptimist_2",
		stmts: []ws{{kind: KindUpdate, policy: "public.counter", inc: true, newVersion: NewVersionReturned, addedReturning: true,
			hidden: hid(-2, "counter", "id", "version"), captures: []wc{{"public.counter", "counter", []Field{-2}, -1}}}},
	},
	{
		name: "SQL-level PREPARE of a write: the PREPARE carries the injection",
		sql:  "PREPARE p(int) AS UPDATE counter SET n = n + 1 WHERE id = $1",
		out:  "PREPARE p(int) AS UPDATE counter SET n = n + 1, version = version + 1 WHERE id = $1",
		stmts: []ws{{kind: KindPrepare, prepare: "p",
			inject: &wi{param: 2, sql: "PREPARE p(int) AS UPDATE counter SET n = n + 1, version = version + 1 WHERE id = $1 AND (counter.version = $2 OR $2 IS NULL)"},
			inner: &ws{kind: KindUpdate, policy: "public.counter", inc: true, keys: []KeyValue{key("id", param(1))}, newVersion: NewVersionIncrement,
				sql:    "UPDATE counter SET n = n + 1, version = version + 1 WHERE id = $1",
				inject: &wi{param: 2, sql: "UPDATE counter SET n = n + 1, version = version + 1 WHERE id = $1 AND (counter.version = $2 OR $2 IS NULL)"}}}},
	},
	{
		// The PREPARE types a third parameter its body does not use: the
		// injected one comes after it (a $3 would be text).
		name: "SQL-level PREPARE listing more types than its body uses",
		sql:  "PREPARE p(int, int, text) AS UPDATE counter SET n = $2 WHERE id = $1",
		out:  "PREPARE p(int, int, text) AS UPDATE counter SET n = $2, version = version + 1 WHERE id = $1",
		stmts: []ws{{kind: KindPrepare, prepare: "p",
			inject: &wi{param: 4, sql: "PREPARE p(int, int, text) AS UPDATE counter SET n = $2, version = version + 1 WHERE id = $1 AND (counter.version = $4 OR $4 IS NULL)"},
			inner: &ws{kind: KindUpdate, policy: "public.counter", inc: true, keys: []KeyValue{key("id", param(1))}, newVersion: NewVersionIncrement,
				sql:    "UPDATE counter SET n = $2, version = version + 1 WHERE id = $1",
				inject: &wi{param: 3, sql: "UPDATE counter SET n = $2, version = version + 1 WHERE id = $1 AND (counter.version = $3 OR $3 IS NULL)"}}}},
	},
}

// TestExecuteWithExpectedWrapped: the extra argument lands in the
// EXECUTE's own argument list, wherever the EXECUTE stands (EXPLAIN,
// CREATE TABLE AS), and the result is the same EXECUTE with one more
// argument.
func TestExecuteWithExpectedWrapped(t *testing.T) {
	r := New(trackedPolicies(), Options{Tracking: true})
	cases := []struct {
		sql  string
		wrap ExecuteWrapper
		want string
	}{
		{"EXECUTE u(1, 5)", WrapNone, "EXECUTE u(1, 5, '7')"},
		{"execute u", WrapNone, "execute u('7')"},
		{`EXECUTE "U" (f(1), ARRAY[(2)]) -- c`, WrapNone, `EXECUTE "U" (f(1), ARRAY[(2)], '7') -- c`},
		{"EXPLAIN EXECUTE u(1)", WrapExplain, "EXPLAIN EXECUTE u(1, '7')"},
		{"EXPLAIN (ANALYZE, BUFFERS off) EXECUTE u(1)", WrapExplainAnalyze, "EXPLAIN (ANALYZE, BUFFERS off) EXECUTE u(1, '7')"},
		{"explain analyze execute u", WrapExplainAnalyze, "explain analyze execute u('7')"},
		{"CREATE TABLE execute AS EXECUTE u(1) WITH NO DATA", WrapCreateTableAs, "CREATE TABLE execute AS EXECUTE u(1, '7') WITH NO DATA"},
		{"CREATE TEMP TABLE t (a) AS EXECUTE u", WrapCreateTableAs, "CREATE TEMP TABLE t (a) AS EXECUTE u('7')"},
		{"EXPLAIN ANALYZE CREATE TABLE t AS EXECUTE u(1)", WrapCreateTableAs, "EXPLAIN ANALYZE CREATE TABLE t AS EXECUTE u(1, '7')"},
	}
	for _, tc := range cases {
		p, err := r.Plan(tc.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		st := &p.Statements[0]
		if st.ExecuteWrapped != tc.wrap || strings.ToLower(st.ExecuteName) != "u" {
			t.Errorf("%q: wrapped %v, name %q; want %v, u", tc.sql, st.ExecuteWrapped, st.ExecuteName, tc.wrap)
		}
		got := st.ExecuteWithExpected("7", false)
		if got != tc.want {
			t.Errorf("%q: %q, want %q", tc.sql, got, tc.want)
		}
		if null := st.ExecuteWithExpected("", true); null != strings.Replace(tc.want, "'7'", "NULL", 1) {
			t.Errorf("%q: with NULL %q", tc.sql, null)
		}
		if q, err := r.Plan(got, ""); err != nil || len(q.Statements[0].ExecuteArgs) != len(st.ExecuteArgs)+1 {
			t.Errorf("%q: %q does not parse to one more argument (%v)", tc.sql, got, err)
		}
	}
	for _, sql := range []string{"EXPLAIN SELECT 1", "CREATE TABLE t AS SELECT 1", "SELECT 'EXECUTE u'"} {
		p, err := r.Plan(sql, "")
		if err != nil {
			t.Fatal(err)
		}
		if st := &p.Statements[0]; st.ExecuteWrapped != WrapNone || st.ExecuteWithExpected("7", false) != st.SQL {
			t.Errorf("%q: wrapped %v, %q", sql, st.ExecuteWrapped, st.ExecuteWithExpected("7", false))
		}
	}
}

func TestPlanTracked(t *testing.T) {
	r := New(trackedPolicies(), Options{Tracking: true, Aggregates: []string{"my_sum"}})
	full := New(trackedPolicies(), Options{Tracking: true, Aggregates: []string{"my_sum"}})
	full.fullAnalysis = true
	direct := New(trackedPolicies(), Options{Tracking: true, Aggregates: []string{"my_sum"}})
	direct.direct = true
	for _, tc := range trackedCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []*Rewriter{r, full, direct} {
				p, err := r.Plan(tc.sql, "")
				if err != nil {
					t.Fatalf("Plan: %v", err)
				}
				checkPlan(t, tc, p)
			}
		})
	}
}

func TestStatementFacts(t *testing.T) {
	r := New(trackedPolicies(), Options{Tracking: true})
	type fact struct {
		kind    Kind
		cmd     Command
		quiet   bool
		discard DiscardTarget
	}
	cases := []struct {
		sql  string
		want []fact
	}{
		{"SELECT 1", []fact{{cmd: CommandSelect}}},
		{"VALUES (1)", []fact{{cmd: CommandSelect}}},
		{"TABLE counter", []fact{{cmd: CommandSelect}}},
		{"WITH x AS (SELECT 1) SELECT * FROM x", []fact{{cmd: CommandSelect}}},
		{"UPDATE other SET x = 1", []fact{{cmd: CommandUpdate, quiet: true}}},
		{"UPDATE counter SET n = 1 WHERE id = 1", []fact{{kind: KindUpdate, cmd: CommandUpdate, quiet: true}}},
		{"WITH x AS (SELECT 1) UPDATE counter SET n = 1", []fact{{kind: KindUpdate, cmd: CommandUpdate}}},
		{"DELETE FROM other", []fact{{cmd: CommandDelete, quiet: true}}},
		{"WITH d AS (DELETE FROM other RETURNING 1) DELETE FROM counter", []fact{{kind: KindDelete, cmd: CommandDelete}}},
		{"INSERT INTO other VALUES (1)", []fact{{cmd: CommandInsert, quiet: true}}},
		{"INSERT INTO counter (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 1", []fact{{kind: KindUpsert, cmd: CommandInsert, quiet: true}}},
		{"WITH v AS (SELECT 1) INSERT INTO other SELECT * FROM v", []fact{{cmd: CommandInsert}}},
		{"MERGE INTO other o USING t ON true WHEN MATCHED THEN DELETE", []fact{{cmd: CommandMerge}}},
		{"EXPLAIN ANALYZE UPDATE counter SET n = 1", []fact{{cmd: CommandOther}}},
		{"BEGIN; UPDATE other SET x = 1; COMMIT", []fact{{}, {cmd: CommandUpdate, quiet: true}, {}}},
		{"DISCARD ALL", []fact{{kind: KindDiscard, discard: DiscardAll}}},
		{"discard plans", []fact{{kind: KindDiscard, discard: DiscardPlans}}},
		{"DISCARD SEQUENCES", []fact{{kind: KindDiscard, discard: DiscardSequences}}},
		{"DISCARD TEMP", []fact{{kind: KindDiscard, discard: DiscardTemp}}},
		{"DISCARD TEMPORARY; SELECT 1", []fact{{kind: KindDiscard, discard: DiscardTemp}, {cmd: CommandSelect}}},
		{"PREPARE p AS DELETE FROM other", []fact{{kind: KindPrepare}}},
	}
	for _, tc := range cases {
		p, err := r.Plan(tc.sql, "")
		if err != nil {
			t.Fatalf("%q: %v", tc.sql, err)
		}
		if len(p.Statements) != len(tc.want) {
			t.Fatalf("%q: %d statements", tc.sql, len(p.Statements))
		}
		for i, w := range tc.want {
			st := &p.Statements[i]
			if got := (fact{st.Kind, st.Command, st.QuietWhenEmpty, st.Discard}); got != w {
				t.Errorf("%q statement %d: %+v, want %+v", tc.sql, i, got, w)
			}
		}
	}
	// The body of a PREPARE has its facts.
	p, _ := r.Plan("PREPARE p AS DELETE FROM other", "")
	if in := p.Statements[0].Inner; in.Command != CommandDelete || !in.QuietWhenEmpty {
		t.Errorf("PREPARE body: %+v", in)
	}
	// DISCARD reaches the parser: the prefilter lets it through.
	if !r.MayTouch("discard all") || !r.NeedsPlan("DISCARD ALL") {
		t.Error("DISCARD does not reach Plan")
	}
	if p, _ := r.Plan("DISCARD ALL", ""); !p.Guarded() {
		t.Error("a plan with DISCARD is one the proxy must follow")
	}
}

func TestQuote(t *testing.T) {
	idents := map[string]string{
		"id": "id", "version": "version", "a1_0": "a1_0", "x$": "x$", "key": "key",
		"Order": `"Order"`, "user": `"user"`, "select": `"select"`, "between": `"between"`, "left": `"left"`,
		"1a": `"1a"`, "$x": `"$x"`, "": `""`, `we"ird`: `"we""ird"`, "has space": `"has space"`, "é": `"é"`,
	}
	for in, want := range idents {
		if got := QuoteIdent(in); got != want {
			t.Errorf("QuoteIdent(%q) = %s, want %s", in, got, want)
		}
	}
	literals := map[string]string{
		"": "''", "7": "'7'", "O'Brien": "'O''Brien'", `a\b`: `E'a\\b'`, `it's \x`: `E'it''s \\x'`,
		"2024-01-01 00:00:00+00": "'2024-01-01 00:00:00+00'",
	}
	for in, want := range literals {
		if got := QuoteLiteral(in); got != want {
			t.Errorf("QuoteLiteral(%q) = %s, want %s", in, got, want)
		}
		// The parser (standard_conforming_strings on) reads the value back.
		tree, err := pg.Parse("SELECT " + QuoteLiteral(in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		c := tree.Stmts[0].Stmt.GetSelectStmt().TargetList[0].GetResTarget().Val.GetAConst()
		if c == nil || c.GetSval().GetSval() != in {
			t.Errorf("QuoteLiteral(%q) parses to %v", in, c)
		}
	}
}

func TestWithExpectedQuotes(t *testing.T) {
	r := New(trackedPolicies(), Options{Tracking: true})
	p, err := r.Plan("UPDATE pair SET v = 1 WHERE k1 = 1 AND k2 = 'x'", "")
	if err != nil {
		t.Fatal(err)
	}
	st := &p.Statements[0]
	for _, v := range []string{"2024-01-01 00:00:00+00", "x' OR true --", `\'; DROP TABLE pair; --`} {
		sql := st.WithExpected(v)
		tree, err := pg.Parse(sql)
		if err != nil {
			t.Fatalf("%q: %v", sql, err)
		}
		// The value stays one constant in the last conjunct.
		u := tree.Stmts[0].Stmt.GetUpdateStmt()
		args := u.WhereClause.GetBoolExpr().GetArgs()
		if len(tree.Stmts) != 1 || len(args) != 3 {
			t.Fatalf("%q: the value escaped its literal", sql)
		}
		if c := args[2].GetAExpr().GetRexpr().GetAConst(); c == nil || c.GetSval().GetSval() != v {
			t.Errorf("%q: the version is not the constant %q", sql, v)
		}
	}
	if st.ExecuteWithExpected("1", false) != st.SQL {
		t.Error("ExecuteWithExpected on a non-EXECUTE statement")
	}
}

func TestExecuteWithExpected(t *testing.T) {
	r := New(trackedPolicies(), Options{Tracking: true})
	cases := []struct{ sql, lit, want, null string }{
		{"EXECUTE p(1, 'a')", "7", "EXECUTE p(1, 'a', '7')", "EXECUTE p(1, 'a', NULL)"},
		{"EXECUTE p", "it's", "EXECUTE p('it''s')", "EXECUTE p(NULL)"},
		{"execute p (1) -- note", "7", "execute p (1, '7') -- note", "execute p (1, NULL) -- note"},
		{`EXECUTE "P"`, `a\b`, `EXECUTE "P"(E'a\\b')`, `EXECUTE "P"(NULL)`},
	}
	for _, tc := range cases {
		p, err := r.Plan(tc.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		st := &p.Statements[0]
		if got := st.ExecuteWithExpected(tc.lit, false); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.sql, got, tc.want)
		}
		if got := st.ExecuteWithExpected("", true); got != tc.null {
			t.Errorf("%q: got %q, want %q", tc.sql, got, tc.null)
		}
		again, err := r.Plan(st.ExecuteWithExpected(tc.lit, false), "")
		if err != nil || len(again.Statements[0].ExecuteArgs) != len(st.ExecuteArgs)+1 ||
			again.Statements[0].ExecuteArgs[len(st.ExecuteArgs)] != lit(tc.lit) {
			t.Errorf("%q: the extra argument does not parse back: %v %+v", tc.sql, err, again)
		}
	}
}

// NeedsPlan plans reads only of tables in a tracked mode: reads of explicit
// tables keep the fast path.
func TestNeedsPlanTracked(t *testing.T) {
	r := New(trackedPolicies(), Options{Tracking: true})
	cases := []struct {
		sql  string
		want bool
	}{
		{"SELECT n FROM plain WHERE id = 1", false},
		{"SELECT * FROM plain FOR UPDATE", false},
		{"SELECT n FROM counter WHERE id = 1", true},
		{"SELECT n FROM obs WHERE id = 1", true},
		{"SELECT n FROM req WHERE id = 1", true},
		{"SELECT p.n FROM plain p JOIN ledger l USING (id)", true},
		{"UPDATE plain SET n = 1", true},
		{"SELECT 1", false},
	}
	for _, tc := range cases {
		if got := r.NeedsPlan(tc.sql); got != tc.want {
			t.Errorf("NeedsPlan(%q) = %v, want %v", tc.sql, got, tc.want)
		}
		if !tc.want {
			if p, err := r.Plan(tc.sql, ""); err != nil || p.Changed || p.Guarded() {
				t.Errorf("%q: NeedsPlan false but the plan is %+v (%v)", tc.sql, p, err)
			}
		}
	}
	if n := testing.AllocsPerRun(100, func() { r.NeedsPlan("SELECT n FROM plain WHERE id = 1") }); n != 0 {
		t.Errorf("NeedsPlan allocates %v times", n)
	}
}

// Literal-normalized texts of tracked reads and writes are planned from
// their templates, and the plans equal the texts' own.
func TestPlanLiteralsTracked(t *testing.T) {
	cases := []struct{ warm, sql string }{
		{"SELECT n FROM counter WHERE id = 1", "SELECT n FROM counter WHERE id = 2"},
		{"SELECT * FROM pair WHERE k1 = 1 AND k2 = 'a'", "SELECT * FROM pair WHERE k1 = 5 AND k2 = 'it''s'"},
		{"UPDATE counter SET n = 1 WHERE id = 1", "UPDATE counter SET n = 41 WHERE id = 42"},
		{"UPDATE ledger SET amount = 1 WHERE id = 1", "UPDATE ledger SET amount = -3 WHERE id = 9"},
		{"BEGIN; SELECT n FROM counter WHERE id = 1; UPDATE counter SET n = 2 WHERE id = 1; COMMIT",
			"BEGIN; SELECT n FROM counter WHERE id = 7; UPDATE counter SET n = 8 WHERE id = 7; COMMIT"},
		{"INSERT INTO counter (id, n) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET n = 3",
			"INSERT INTO counter (id, n) VALUES (4, 5) ON CONFLICT (id) DO UPDATE SET n = 6"},
		{"DELETE FROM pair WHERE k1 = 1 AND k2 = 'a'", "DELETE FROM pair WHERE k1 = 2 AND k2 = 'b'"},
	}
	for _, tc := range cases {
		r := New(trackedPolicies(), Options{Tracking: true})
		direct := New(trackedPolicies(), Options{Tracking: true})
		direct.direct = true
		if _, err := r.Plan(tc.warm, ""); err != nil {
			t.Fatal(err)
		}
		p, err := r.Plan(tc.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		if r.tmplHits.Load() != 1 || r.tmplBad.Load() != 0 {
			t.Errorf("%q: not planned from the template: hits %d, bad %d", tc.sql, r.tmplHits.Load(), r.tmplBad.Load())
		}
		pd, err := direct.Plan(tc.sql, "")
		if err != nil {
			t.Fatal(err)
		}
		if d := planDiff(p, pd, true); d != "" {
			t.Errorf("%q: differs from the direct plan: %s", tc.sql, d)
		}
		for i := range p.Statements {
			a, b := &p.Statements[i], &pd.Statements[i]
			if a.Inject != nil && (a.Inject.SQL != b.Inject.SQL || a.WithExpected("3") != b.WithExpected("3")) {
				t.Errorf("%q: injection\n got  %q %q\n want %q %q", tc.sql, a.Inject.SQL, a.WithExpected("3"), b.Inject.SQL, b.WithExpected("3"))
			}
		}
	}
}

// With tracked mode off (a caller that does not strip hidden columns),
// tracked policies are planned as before.
func TestTrackingOff(t *testing.T) {
	r := New(trackedPolicies(), Options{})
	if r.NeedsPlan("SELECT n FROM counter WHERE id = 1") {
		t.Error("NeedsPlan plans reads with tracked mode off")
	}
	for _, sql := range []string{"SELECT n FROM counter WHERE id = 1", "SELECT count(*) FROM counter"} {
		if p, err := r.Plan(sql, ""); err != nil || p.Changed || p.Guarded() {
			t.Errorf("%q: %+v %v", sql, p, err)
		}
	}
	p, err := r.Plan("UPDATE counter SET n = 1 WHERE id = 1; UPDATE req SET n = 1 WHERE id = 1", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := "UPDATE counter SET n = 1, version = version + 1 WHERE id = 1; UPDATE req SET n = 1, version = version + 1 WHERE id = 1"; p.SQL != want {
		t.Errorf("got %q, want %q", p.SQL, want)
	}
	for _, st := range p.Statements {
		if st.Inject != nil || st.NewVersion != NewVersionNone || len(st.Hidden) > 0 {
			t.Errorf("tracked-mode plan %+v", st)
		}
	}
	if !p.Statements[1].Refuse {
		t.Error("required mode no longer refuses")
	}
}

// TestPrepareRenamed: the proxy's own name in place of the client's, the
// rest of the text as written.
func TestPrepareRenamed(t *testing.T) {
	for _, c := range []struct{ sql, want string }{
		{"PREPARE u(int, int) AS UPDATE counter SET n = $2 WHERE id = $1", `PREPARE pgoptimist_check(int, int) AS UPDATE counter SET n = $2 WHERE id = $1`},
		{"/* c */ prepare \"U x\" as UPDATE t SET n = 1", `/* c */ prepare pgoptimist_check as UPDATE t SET n = 1`},
		{"PREPARE u AS SELECT 1", "PREPARE pgoptimist_check AS SELECT 1"},
		{"EXECUTE u", ""},
		{"PREPARE", ""},
		{"PREPARE u", ""},
	} {
		got, ok := PrepareRenamed(c.sql, "pgoptimist_check")
		if got != c.want || ok != (c.want != "") {
			t.Errorf("PrepareRenamed(%q) = %q, %v; want %q", c.sql, got, ok, c.want)
		}
	}
}

// TestStatementTexts: each statement's own text, as Plan lists them.
func TestStatementTexts(t *testing.T) {
	got, err := StatementTexts("SET search_path TO other;  PREPARE u AS UPDATE counter SET n = 1 ; EXECUTE u")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"SET search_path TO other", "PREPARE u AS UPDATE counter SET n = 1", "EXECUTE u"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("StatementTexts: %q, want %q", got, want)
	}
	if _, err := StatementTexts("SELECT ("); err == nil {
		t.Error("StatementTexts of a syntax error: no error")
	}
}
