// Package rewrite turns SQL text and table policies into rewrite plans.
// It is pure: no I/O, no globals other than its own caches.
package rewrite

// VersionType is the kind of a guarded table's version column.
type VersionType int

const (
	TypeUnknown   VersionType = iota // not configured and not yet discovered
	TypeInteger                      // integer, bigint, smallint: version = version + 1
	TypeTimestamp                    // timestamp, timestamptz: version = clock_timestamp()
	TypeUUID                         // uuid: version = gen_random_uuid()
	TypeXmin                         // the xmin system column: no increment
)

// Mode says where the expected version of a guarded statement comes from.
type Mode int

const (
	ModeExplicit Mode = iota // the application writes the predicate
	ModeTracked              // the proxy adds it from versions the session has read
	ModeRequired             // tracked, and a guarded statement without any version is refused
	ModeObserve              // versions are tracked as in ModeTracked, but no write is changed in outcome
)

// Tracked reports whether the proxy remembers the versions this table's
// rows had when a session read them (tracked, required and observe modes):
// plans then carry Captures, Hidden columns and, for writes, Inject.
func (p *Policy) Tracked() bool {
	return p.Mode == ModeTracked || p.Mode == ModeRequired || p.Mode == ModeObserve
}

// Policy is one guarded table as the rewriter sees it. Identifiers are as
// PostgreSQL stores them (unquoted names folded to lower case).
type Policy struct {
	Schema string
	Table  string
	Column string
	Type   VersionType
	Key    []string
	Update bool // guard UPDATE (and the DO UPDATE arm of INSERT ... ON CONFLICT)
	Delete bool // guard DELETE
	Mode   Mode
}

// QualifiedName is schema.table.
func (p *Policy) QualifiedName() string { return p.Schema + "." + p.Table }

// Kind is what a top-level statement is, as far as the guard cares.
type Kind int

const (
	KindOther      Kind = iota // anything not guarded: forwarded as is
	KindUpdate                 // UPDATE on a guarded table
	KindDelete                 // DELETE on a guarded table
	KindUpsert                 // INSERT ... ON CONFLICT DO UPDATE on a guarded table
	KindPrepare                // PREPARE name AS <statement>; Inner holds the prepared statement's plan
	KindExecute                // EXECUTE name(args)
	KindDeallocate             // DEALLOCATE name | DEALLOCATE ALL
	KindDiscard                // DISCARD ALL | PLANS | SEQUENCES | TEMP; Discard says which
)

// Command is the SQL command of a top-level statement, whatever table it
// names (Kind says what it is to the guard). It is set for every statement
// of a plan, planned or skipped by the prefilter.
type Command int

const (
	CommandOther  Command = iota // anything else (DDL, SET, BEGIN, PREPARE, EXECUTE, EXPLAIN, COPY, ...)
	CommandSelect                // SELECT, VALUES or TABLE, with or without WITH in front; also SELECT INTO
	CommandInsert                // INSERT, with or without ON CONFLICT
	CommandUpdate                // UPDATE
	CommandDelete                // DELETE
	CommandMerge                 // MERGE
)

// DiscardTarget is what a DISCARD statement discards.
type DiscardTarget int

const (
	DiscardNone      DiscardTarget = iota
	DiscardAll                     // DISCARD ALL: also deallocates every prepared statement (DEALLOCATE ALL)
	DiscardPlans                   // DISCARD PLANS: cached plans only; prepared statements stay
	DiscardSequences               // DISCARD SEQUENCES
	DiscardTemp                    // DISCARD TEMP
)

// ExecuteWrapper is how a statement other than EXECUTE runs an EXECUTE.
type ExecuteWrapper int

const (
	WrapNone           ExecuteWrapper = iota // not wrapped (or no EXECUTE at all)
	WrapExplain                              // EXPLAIN EXECUTE: planned, not run
	WrapExplainAnalyze                       // EXPLAIN ANALYZE EXECUTE: run; its command tag is EXPLAIN
	WrapCreateTableAs                        // CREATE TABLE ... AS EXECUTE (also under EXPLAIN): the server refuses any statement but a SELECT
)

// ValueKind says where a value in a statement comes from.
type ValueKind int

const (
	ValueNone    ValueKind = iota
	ValueLiteral           // a constant; Literal holds its text (unquoted)
	ValueParam             // a parameter $n; Param holds n (1-based)
	ValueExpr              // any other expression; Expr holds its deparsed text
)

// Value is an expression the proxy may need at run time (the expected version, a key value).
type Value struct {
	Kind    ValueKind
	Literal string
	Param   int
	Expr    string
}

// KeyValue is one key column pinned by a top-level "key = value" conjunct.
type KeyValue struct {
	Column string
	Value  Value
}

// Plan is what a statement text (possibly several statements) becomes.
type Plan struct {
	SQL        string      // text to send: the input itself, byte for byte, when Changed is false
	Changed    bool        // SQL differs from the input
	Statements []Statement // one per top-level statement, in order (empty for empty input)
}

// Guarded reports whether any statement of the plan touches a guarded table
// (a guarded write, or a read whose result is tracked) or is one the proxy
// follows (PREPARE, EXECUTE, DEALLOCATE, DISCARD).
func (p *Plan) Guarded() bool {
	for i := range p.Statements {
		st := &p.Statements[i]
		switch {
		case st.Policy != nil, len(st.Captures) > 0, st.Untracked:
			return true
		case st.Kind == KindPrepare, st.Kind == KindExecute, st.Kind == KindDeallocate, st.Kind == KindDiscard:
			return true
		}
	}
	return false
}

// Statement is the plan of one top-level statement.
type Statement struct {
	SQL         string // this statement alone, rewritten (or its original text when unchanged), without a trailing ';'
	Kind        Kind
	Policy      *Policy // the guarded target table, nil when none
	Incremented bool    // the proxy added the version increment
	Checked     bool    // the statement carries a version predicate: zero rows affected is a conflict
	Expected    Value   // the expected version, when Checked
	Keys        []KeyValue
	Refuse      bool     // ModeRequired and no version predicate: refuse with the required SQLSTATE
	Notes       []string // why, in words, for `pgoptimist rewrite`

	// KindPrepare: the statement's name and the plan of its body; the body's
	// $n refer to the EXECUTE arguments.
	PrepareName string
	Inner       *Statement
	// KindExecute: the prepared statement's name and its arguments. They
	// are set too for a statement that runs an EXECUTE inside another
	// (EXPLAIN [ANALYZE] EXECUTE, CREATE TABLE ... AS EXECUTE), whose Kind
	// stays KindOther and whose ExecuteWrapped says how.
	ExecuteName    string
	ExecuteArgs    []Value
	ExecuteWrapped ExecuteWrapper
	// KindDeallocate.
	DeallocateName string
	DeallocateAll  bool
	// KindDiscard.
	Discard DiscardTarget

	// Command is the SQL command, set for every statement (see Command).
	Command Command
	// QuietWhenEmpty: a plain UPDATE, DELETE or INSERT without a WITH
	// clause (so no data-modifying CTE): a run that affects no row writes
	// nothing by itself. Triggers and rules of the table are not known
	// here; the caller adds that condition. For KindPrepare see Inner.
	QuietWhenEmpty bool

	// Tracked mode (Options.Tracking and a policy with Policy.Tracked):
	// see "Tracked mode" below. All are zero otherwise.
	Captures       []Capture      // where the result carries tracked tables' keys and versions
	Hidden         []HiddenColumn // result columns the rewriter added: the last len(Hidden) fields
	AddedReturning bool           // the statement had no RETURNING: its whole result is hidden
	Untracked      bool           // reads a tracked table, but its result cannot be tracked exactly
	Inject         *Injection     // the version read can be injected (tracked, required modes)
	NewVersion     NewVersion     // how the row's version after this write is known

	// Observe mode: how the proxy learns, for each row the write returns,
	// the version the row had just before this write (see "Observing").
	WrittenOver      WrittenOver
	WrittenOverField Field // WrittenOverReturned: the hidden field that carries it
}

// Tracked mode: the contract between the rewriter and the proxy. It is on
// only with Options.Tracking, for policies in tracked, required or observe
// mode; otherwise plans are as in explicit mode.
//
// Reading. A statement whose result rows carry rows of a tracked table (a
// SELECT, top-level or as the body of a SQL-level PREPARE, including FOR
// UPDATE and WITH in front; the RETURNING of an INSERT, UPDATE, DELETE or
// upsert) has one Capture per table reference whose rows it returns. A
// Capture names the result fields holding the key columns (in Policy.Key
// order) and the version column. Those the statement does not return at a
// position known before the RowDescription arrives are added at the end of
// its target (or RETURNING) list, as <ref>.<column> AS pgoptimist_<n>, and
// listed in Hidden, in order: Hidden[i] is always field i-len(Hidden) from
// the end. A star (*, t.*, (x).*) has a width the rewriter cannot know, so
// columns at or after a star are not relied on: they are added too. A
// field's position is therefore a Field: >= 0 from the start, < 0 from the
// end (Field.Index resolves it).
//
// The proxy strips the hidden fields from the RowDescription, every
// DataRow, and the RowDescription answering a Describe of the statement or
// of its portals (text and binary formats: a Bind's result-format codes
// must cover the added fields, one code for all already does). In the
// RowDescription a hidden or captured field carries the table's OID and
// the column's attribute number (negative for xmin, as in pg_attribute),
// so the proxy can check it is what HiddenColumn (schema, table, column)
// names. It captures only the fields Captures lists, never other fields
// that carry a tracked table's OID; a row whose key or version is NULL is
// not captured. Kind stays KindOther for a read: Command says SELECT.
//
// A read of a tracked table whose result cannot be tracked exactly is left
// unchanged and marked Untracked (the Notes say why): aggregates (by syntax,
// by PostgreSQL's built-in names, and Options.Aggregates), DISTINCT and
// DISTINCT ON, GROUP BY, HAVING, window functions, set operations (UNION,
// INTERSECT, EXCEPT), SELECT INTO, VALUES, data-modifying CTEs, or no FROM
// item that can be captured. A table reference that cannot be captured in
// an otherwise trackable statement (on the nullable side of an outer join,
// inside an aliased join, read in a subquery or CTE, renamed columns, two
// references of one name) has no Capture and a note.
//
// Writing. A guarded UPDATE, DELETE or upsert on a table in tracked or
// required mode, without a version predicate of its own, whose WHERE pins
// every key column with a top-level AND conjunct key = <constant or $n>,
// has Inject (an upsert: its DO UPDATE WHERE pins the key, or its conflict
// target is exactly the key and its single VALUES row pins it). Keys holds
// the key values; the proxy looks up the version the session remembers for
// them and sends the statement as follows:
//   - extended protocol: Parse Inject.SQL instead of SQL. It has one more
//     parameter, $Inject.Param (the highest $n of the statement + 1); give
//     it type 0 in Parse (pad the type list with zeros), so the server
//     infers the version column's own type (int4, int8, timestamptz, xid,
//     uuid, ...), and strip it from ParameterDescription answers. Bind the
//     remembered version there, in the format it was captured in, or NULL
//     when there is none: the predicate is
//     "(<ref>.<version> = $N OR $N IS NULL)", so NULL leaves the statement
//     unchecked. One Parse serves both cases, which a named statement
//     prepared before any Bind needs;
//   - simple protocol: with a remembered version (as text) send
//     WithExpected(version), the statement with
//     "AND <ref>.<version> = '<version>'" (quoted by QuoteLiteral);
//     without one send SQL;
//   - SQL-level PREPARE: the KindPrepare statement has Inject too, whose
//     SQL is the whole PREPARE with the parameter form (the parameter's
//     type is left to inference even when the PREPARE lists types); every
//     EXECUTE of it then needs one more argument: send the KindExecute
//     statement's ExecuteWithExpected(version, false), or (.., true) for
//     NULL. Inner.Inject is the body's; the PREPARE's Inject.Param can be
//     higher than Inner.Inject.Param, when the PREPARE lists more types
//     than its body uses: the added argument always comes after every
//     argument the client gives. An EXECUTE run inside another statement
//     (ExecuteWrapped) needs the extra argument as well:
//     ExecuteWithExpected adds it to the EXECUTE wherever it stands.
// A statement sent with a version is then exactly an explicitly checked
// one: zero rows affected is a conflict (VL409), Keys and the version make
// the detail. An explicit predicate always wins: Checked is set and Inject
// is nil. Required mode: Refuse is set as before when there is no explicit
// predicate; with Inject it means "refuse unless a version is remembered
// for Keys". Observe mode never has Inject: no outcome may change.
//
// Moving on. After a tracked UPDATE or upsert succeeds, NewVersion says how
// the session learns the row's new version: NewVersionIncrement, the
// version it was checked against (Expected, or the injected value) plus 1
// (an integer version this statement increments, key pinned; run unchecked,
// the new version is unknown: forget Keys); NewVersionReturned, from the
// result, where Captures says (a RETURNING is added for the purpose when the
// statement has none: AddedReturning, every field is hidden, and the
// client must see no RowDescription and no DataRow, and NoData answers a
// Describe). A DELETE forgets Keys; its RETURNING, if any, is captured
// like any other (the rows it names are gone). An INSERT ... RETURNING
// into a tracked table (Kind KindOther, Command CommandInsert) is captured.
//
// Observing. An UPDATE or upsert of a table in observe mode without a
// version predicate of its own says how the proxy learns the version each
// row it writes had just before the write (the version written over), to
// compare with the version the session read (a Capture of the same result
// gives each row's key):
//   - WrittenOverIncrement: an UPDATE of an integer version it increments:
//     the new version minus 1 (version + 1 is computed on the row written
//     over, joined or re-checked alike, so the relation is exact; an
//     upsert uses the setting below, which also tells an inserted row);
//   - WrittenOverReturned: the field WrittenOverField (hidden, text) of
//     each returned row holds "cv<version>" when the row was updated over
//     <version> (as the version column's text output), or "c" when the
//     row was inserted (an upsert's INSERT arm writes over nothing);
//   - WrittenOverNone: not learned (a join in the UPDATE, WHERE CURRENT
//     OF, an explicit predicate), and the Notes say why.
// WrittenOverReturned works through a transaction-local setting,
// pgoptimist.written_over, as a per-row side channel: the write's WHERE
// (the DO UPDATE arm's, for an upsert) gets the always-true conjunct
//   pg_catalog.set_config('pgoptimist.written_over',
//     pg_catalog.concat('v', <ref>.<version>), true) IS NOT NULL
// and its RETURNING the hidden column
//   pg_catalog.set_config('pgoptimist.written_over', CASE WHEN
//     pg_catalog.starts_with(<setting>, 'v') THEN pg_catalog.concat('c',
//     <setting>) ELSE 'c' END, true)
// which returns what the WHERE recorded and marks it consumed. Why this
// is exact:
//   - a WHERE condition is evaluated on the row about to be written, and
//     set_config is volatile, so the planner never folds it away, hoists it
//     into a one-time filter or evaluates it once for several rows. When a
//     row was updated concurrently (READ COMMITTED), PostgreSQL re-checks
//     the WHERE on its newest version before writing it (EvalPlanQual for
//     UPDATE; for ON CONFLICT DO UPDATE it locks the newest version and
//     evaluates the arm's WHERE on it): the setting then holds the version
//     actually written over;
//   - ModifyTable computes a row's RETURNING right after writing that row,
//     before it asks its input for the next row; an UPDATE's input is the
//     scan of the target table (no FROM list, no subquery in the WHERE), so
//     the last row the WHERE was evaluated on is the row written: each row
//     of a multi-row write reads its own version. A join could evaluate
//     the condition on every row of the target before the first row is
//     written (a hash join building on the target), so an UPDATE with a
//     FROM list or a subquery in its WHERE gets WrittenOverNone (but the
//     integer increment, which is computed on the joined row);
//   - an upsert's inserted row never runs the DO UPDATE arm's WHERE: its
//     RETURNING finds the setting consumed ("c", or NULL when never set),
//     whatever an earlier row or statement of the transaction left there;
//   - nothing changes in outcome: the conjunct is always true (set_config
//     returns its value, never NULL), and the setting is transaction-local
//     and costs no round trip. A client can see it (SHOW
//     pgoptimist.written_over) in its transaction, and as an empty
//     placeholder setting after it.

// Field locates a result field: n >= 0 is the field at 0-based position n;
// n < 0 counts from the end (-1 is the last field).
type Field int

// Index resolves the field in a row of nfields fields.
func (f Field) Index(nfields int) int {
	if f < 0 {
		return nfields + int(f)
	}
	return int(f)
}

// Capture locates one tracked table reference's key and version in the
// result rows.
type Capture struct {
	Policy  *Policy
	Ref     string  // the name the statement uses for the table (its alias, else its name)
	Keys    []Field // the key columns, in Policy.Key order
	Version Field   // the version column
}

// HiddenColumn is a result column the rewriter added; the client never sees
// it. Hidden columns are always the last fields of the result, in order.
type HiddenColumn struct {
	Field  Field  // < 0: counted from the end
	Schema string // the table column it returns (as stored, unquoted)
	Table  string
	Column string // for TypeXmin: "xmin"; Schema and Table empty: a value the rewriter computes, which Column names
}

// Injection is how a tracked write carries the version the session read.
type Injection struct {
	Param int         // N: the parameter the proxy adds (highest $n of the statement + 1)
	Type  VersionType // the version column's kind
	SQL   string      // the statement with "AND (<ref>.<version> = $N OR $N IS NULL)"

	// The statement with "AND <ref>.<version> = " and a literal: pre, the
	// literal, post.
	pre, post string
}

// NewVersion says how the proxy learns a row's version after the session's
// own successful write.
type NewVersion int

const (
	NewVersionNone      NewVersion = iota // not a tracked UPDATE or upsert
	NewVersionIncrement                   // the expected version + 1 (integer)
	NewVersionReturned                    // in the result, where Captures says
)

// WrittenOver says how observe mode learns the version a write overwrote.
type WrittenOver int

const (
	WrittenOverNone      WrittenOver = iota // not learned: the write is not compared
	WrittenOverIncrement                    // the new version (captured) minus 1
	WrittenOverReturned                     // in the hidden field WrittenOverField
)

// WithExpected returns the statement's SQL with the version predicate
// "AND <ref>.<version> = <literal>" added, the literal (the version as
// text) quoted by QuoteLiteral, for the simple protocol. Without Inject,
// and for KindPrepare, it returns SQL.
func (s *Statement) WithExpected(literal string) string {
	if s.Inject == nil || s.Kind == KindPrepare {
		return s.SQL
	}
	return s.Inject.pre + QuoteLiteral(literal) + s.Inject.post
}
