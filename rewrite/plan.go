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
)

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

// Guarded reports whether any statement of the plan touches a guarded table.
func (p *Plan) Guarded() bool {
	for i := range p.Statements {
		if p.Statements[i].Policy != nil || p.Statements[i].Kind == KindPrepare || p.Statements[i].Kind == KindExecute || p.Statements[i].Kind == KindDeallocate {
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
	// KindExecute: the prepared statement's name and its arguments.
	ExecuteName string
	ExecuteArgs []Value
	// KindDeallocate.
	DeallocateName string
	DeallocateAll  bool
}
