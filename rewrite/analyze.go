package rewrite

import (
	"fmt"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// planner plans the statements of one text.
type planner struct {
	r       *Rewriter
	path    []string
	version int32
	// template: the text is a literal-normalized template whose parameters
	// stand for literals; notes show them as placeholders that
	// instantiation replaces with the literals' values.
	template bool
	tmplN    int // the template's number of placeholders
	// skipReads: tracked reads are not rewritten (a first attempt did not
	// deparse); they are marked Untracked.
	skipReads bool
	// root is the statement being planned (the body, for a PREPARE).
	root *pg.Node
	// inject is the injection of the statement being planned, rendered
	// once its tree is final; lastInject is the last one rendered (a
	// PREPARE renders its body's again, wrapped).
	inject, lastInject *pendingInject
}

// show renders a value for a note.
func (pl *planner) show(v Value) string {
	if pl.template && v.Kind == ValueParam {
		return noteRef(v.Param)
	}
	return v.String()
}

var modeNames = [...]string{ModeExplicit: "explicit", ModeTracked: "tracked", ModeRequired: "required", ModeObserve: "observe"}

func (m Mode) String() string {
	if int(m) >= 0 && int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

var typeNames = [...]string{TypeUnknown: "unknown", TypeInteger: "integer", TypeTimestamp: "timestamp", TypeUUID: "uuid", TypeXmin: "xmin"}

func (t VersionType) String() string {
	if int(t) >= 0 && int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

var kindNames = [...]string{KindOther: "other", KindUpdate: "update", KindDelete: "delete", KindUpsert: "upsert", KindPrepare: "prepare", KindExecute: "execute", KindDeallocate: "deallocate", KindDiscard: "discard"}

func (k Kind) String() string {
	if int(k) >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// String renders a value for notes and tools: the literal, $n or the expression.
func (v Value) String() string {
	switch v.Kind {
	case ValueLiteral:
		return v.Literal
	case ValueParam:
		return "$" + strconv.Itoa(v.Param)
	case ValueExpr:
		return v.Expr
	}
	return ""
}

// resolve finds the policy of a table reference, or nil.
func (pl *planner) resolve(rv *pg.RangeVar) *Policy {
	if rv == nil {
		return nil
	}
	cands := pl.r.byTable[rv.Relname]
	if len(cands) == 0 {
		return nil
	}
	if rv.Schemaname != "" {
		for _, p := range cands {
			if p.Schema == rv.Schemaname {
				return p
			}
		}
		return nil
	}
	if len(pl.path) > 0 && pl.path[0] == exactMark {
		return resolveExact(pl.path, rv.Relname, cands)
	}
	for _, s := range pl.path {
		for _, p := range cands {
			if p.Schema == s {
				return p
			}
		}
	}
	return nil
}

// target is a guarded table as a statement refers to it.
type target struct {
	pol *Policy
	rv  *pg.RangeVar
}

// refName is the name the statement's other clauses use for the target:
// its alias, or else its table name.
func (t target) refName() string {
	if t.rv.Alias != nil && t.rv.Alias.Aliasname != "" {
		return t.rv.Alias.Aliasname
	}
	return t.rv.Relname
}

// isColumn reports whether cr refers to column col of the target, unqualified
// or qualified the way PostgreSQL allows: by the alias when there is one, by
// the table name, schema.table or catalog.schema.table otherwise.
func (t target) isColumn(cr *pg.ColumnRef, col string) bool {
	f := cr.Fields
	if len(f) == 0 || len(f) > 4 {
		return false
	}
	names := make([]string, len(f))
	for i, n := range f {
		s, ok := n.Node.(*pg.Node_String_)
		if !ok {
			return false
		}
		names[i] = s.String_.Sval
	}
	if names[len(names)-1] != col {
		return false
	}
	q := names[:len(names)-1]
	switch {
	case len(q) == 0:
		return true
	case t.rv.Alias != nil && t.rv.Alias.Aliasname != "":
		return len(q) == 1 && q[0] == t.rv.Alias.Aliasname
	case len(q) == 1:
		return q[0] == t.rv.Relname
	case len(q) == 2:
		return q[0] == t.pol.Schema && q[1] == t.rv.Relname
	default:
		return q[1] == t.pol.Schema && q[2] == t.rv.Relname
	}
}

// statement plans one statement; text is its original text. It reports
// whether the tree was changed.
func (pl *planner) statement(node *pg.Node, text string) (Statement, bool, error) {
	st := Statement{SQL: text}
	st.Command, st.QuietWhenEmpty = commandOf(node)
	changed := false
	walkFrom := node
	pl.root, pl.inject = node, nil
	switch n := node.GetNode().(type) {
	case *pg.Node_SelectStmt:
		changed = pl.trackRead(&st, node, n.SelectStmt)
	case *pg.Node_UpdateStmt:
		changed = pl.update(&st, n.UpdateStmt)
	case *pg.Node_DeleteStmt:
		changed = pl.delete(&st, n.DeleteStmt)
	case *pg.Node_InsertStmt:
		changed = pl.upsert(&st, n.InsertStmt)
	case *pg.Node_DiscardStmt:
		st.Kind = KindDiscard
		switch n.DiscardStmt.Target {
		case pg.DiscardMode_DISCARD_ALL:
			st.Discard = DiscardAll
			st.Notes = append(st.Notes, "discards all: every prepared statement is deallocated")
		case pg.DiscardMode_DISCARD_PLANS:
			st.Discard = DiscardPlans
		case pg.DiscardMode_DISCARD_SEQUENCES:
			st.Discard = DiscardSequences
		case pg.DiscardMode_DISCARD_TEMP:
			st.Discard = DiscardTemp
		}
		return st, false, nil
	case *pg.Node_MergeStmt:
		changed = pl.embedded(&st, node, "")
	case *pg.Node_ExplainStmt:
		if pl.wrappedExecute(&st, node) {
			return st, false, nil
		}
		if !explainAnalyze(n.ExplainStmt) {
			walkFrom = nil // not executed: nothing to keep honest
			break
		}
		changed = pl.embedded(&st, n.ExplainStmt.Query, "EXPLAIN ANALYZE")
	case *pg.Node_CopyStmt:
		if n.CopyStmt.Query != nil {
			changed = pl.embedded(&st, n.CopyStmt.Query, "COPY")
		}
	case *pg.Node_PrepareStmt:
		return pl.prepare(n.PrepareStmt, text)
	case *pg.Node_ExecuteStmt:
		st.Kind = KindExecute
		st.ExecuteName = n.ExecuteStmt.Name
		for _, a := range n.ExecuteStmt.Params {
			st.ExecuteArgs = append(st.ExecuteArgs, pl.valueOf(a))
		}
		st.Notes = append(st.Notes, fmt.Sprintf("executes prepared statement %s with %d argument(s)", QuoteIdent(st.ExecuteName), len(st.ExecuteArgs)))
		return st, false, nil
	case *pg.Node_DeallocateStmt:
		st.Kind = KindDeallocate
		if n.DeallocateStmt.Name == "" {
			st.DeallocateAll = true
			st.Notes = append(st.Notes, "deallocates all prepared statements")
		} else {
			st.DeallocateName = n.DeallocateStmt.Name
			st.Notes = append(st.Notes, "deallocates prepared statement "+QuoteIdent(st.DeallocateName))
		}
		return st, false, nil
	case *pg.Node_CreateTableAsStmt:
		if pl.wrappedExecute(&st, node) {
			return st, false, nil
		}
	case *pg.Node_CreateFunctionStmt, *pg.Node_RuleStmt:
		walkFrom = nil // bodies run later, not now
	}
	if walkFrom != nil && pl.ctes(&st, walkFrom) {
		changed = true
	}
	if changed {
		out, err := pl.deparse(node)
		if err != nil {
			return st, false, err
		}
		st.SQL = out
	}
	if pi := pl.inject; pi != nil {
		pl.inject, pl.lastInject = nil, pi
		var err error
		if st.Inject.SQL, st.Inject.pre, st.Inject.post, err = pl.renderInject(node, pi); err != nil {
			return st, false, err
		}
	}
	return st, changed, nil
}

// commandOf is a statement's SQL command, and whether it is a plain
// UPDATE, DELETE or INSERT without a WITH clause.
func commandOf(node *pg.Node) (Command, bool) {
	switch n := node.GetNode().(type) {
	case *pg.Node_SelectStmt:
		return CommandSelect, false
	case *pg.Node_InsertStmt:
		return CommandInsert, n.InsertStmt.WithClause == nil
	case *pg.Node_UpdateStmt:
		return CommandUpdate, n.UpdateStmt.WithClause == nil
	case *pg.Node_DeleteStmt:
		return CommandDelete, n.DeleteStmt.WithClause == nil
	case *pg.Node_MergeStmt:
		return CommandMerge, false
	}
	return CommandOther, false
}

func explainAnalyze(e *pg.ExplainStmt) bool {
	for _, o := range e.Options {
		d := o.GetDefElem()
		if d == nil || d.Defname != "analyze" {
			continue
		}
		if d.Arg == nil {
			return true
		}
		switch a := d.Arg.Node.(type) {
		case *pg.Node_String_:
			v := strings.ToLower(a.String_.Sval)
			return v != "false" && v != "off" && v != "0" && v != "no"
		case *pg.Node_Boolean:
			return a.Boolean.Boolval
		case *pg.Node_Integer:
			return a.Integer.Ival != 0
		case *pg.Node_AConst:
			if b, ok := a.AConst.Val.(*pg.A_Const_Boolval); ok {
				return b.Boolval.Boolval
			}
			if i, ok := a.AConst.Val.(*pg.A_Const_Ival); ok {
				return i.Ival.Ival != 0
			}
			if s, ok := a.AConst.Val.(*pg.A_Const_Sval); ok {
				v := strings.ToLower(s.Sval.Sval)
				return v != "false" && v != "off" && v != "0" && v != "no"
			}
		}
		return true
	}
	return false
}

func guardedNote(p *Policy) string {
	return fmt.Sprintf("guarded table %s (mode %s)", p.QualifiedName(), p.Mode)
}

// guardedTarget resolves the target table of an UPDATE, DELETE or upsert
// and, when its policy guards that kind of statement, marks st as such.
func (pl *planner) guardedTarget(st *Statement, rv *pg.RangeVar, kind Kind) (target, bool) {
	pol := pl.resolve(rv)
	if pol == nil {
		return target{}, false
	}
	guarded, what, stmt := pol.Update, "UPDATE of", "update"
	switch kind {
	case KindDelete:
		guarded, what, stmt = pol.Delete, "DELETE from", "delete"
	case KindUpsert:
		what = "ON CONFLICT DO UPDATE of"
	}
	if !guarded {
		st.Notes = append(st.Notes, fmt.Sprintf("%s %s is not guarded (statements: %s not configured)", what, pol.QualifiedName(), stmt))
		return target{}, false
	}
	st.Kind, st.Policy = kind, pol
	st.Notes = append(st.Notes, guardedNote(pol))
	return target{pol: pol, rv: rv}, true
}

// update plans a top-level UPDATE.
func (pl *planner) update(st *Statement, u *pg.UpdateStmt) bool {
	t, ok := pl.guardedTarget(st, u.Relation, KindUpdate)
	if !ok {
		return false
	}
	qualify := t.rv.Alias != nil || len(u.FromClause) > 0
	changed := pl.increment(st, t, &u.TargetList, qualify)
	pl.check(st, t, u.WhereClause)
	if pl.trackWrite(st, t, pl.root, &u.WhereClause, &u.ReturningList, len(u.FromClause) == 0, len(st.Keys) == len(t.pol.Key)) {
		changed = true
	}
	return changed
}

// delete plans a top-level DELETE.
func (pl *planner) delete(st *Statement, d *pg.DeleteStmt) bool {
	t, ok := pl.guardedTarget(st, d.Relation, KindDelete)
	if !ok {
		return false
	}
	pl.check(st, t, d.WhereClause)
	return pl.trackWrite(st, t, pl.root, &d.WhereClause, &d.ReturningList, len(d.UsingClause) == 0, len(st.Keys) == len(t.pol.Key))
}

// upsert plans a top-level INSERT; only ON CONFLICT DO UPDATE is guarded.
// The RETURNING of any INSERT into a tracked table is captured.
func (pl *planner) upsert(st *Statement, ins *pg.InsertStmt) bool {
	oc := ins.OnConflictClause
	if oc == nil || oc.Action != pg.OnConflictAction_ONCONFLICT_UPDATE {
		if pol := pl.resolve(ins.Relation); pl.tracks(pol) && len(ins.ReturningList) > 0 {
			t := target{pol: pol, rv: ins.Relation}
			return pl.capture(st, []tref{{t: t}}, &ins.ReturningList, true, "RETURNING list")
		}
		return false
	}
	t, ok := pl.guardedTarget(st, ins.Relation, KindUpsert)
	if !ok {
		return false
	}
	// In the DO UPDATE arm both the existing row and EXCLUDED are in scope:
	// the increment must name the existing row (never EXCLUDED).
	changed := pl.increment(st, t, &oc.TargetList, true)
	pl.check(st, t, oc.WhereClause)
	// The row the DO UPDATE arm writes is pinned by its WHERE, or by the
	// VALUES row when the conflict is on exactly the key.
	pinned := len(st.Keys) == len(t.pol.Key)
	pl.valuesKeys(st, t, ins)
	if !pinned && len(st.Keys) == len(t.pol.Key) && conflictOnKey(oc, t.pol.Key) {
		pinned = true
	}
	// An injected predicate goes into the DO UPDATE arm's own WHERE.
	if pl.trackWrite(st, t, pl.root, &oc.WhereClause, &ins.ReturningList, true, pinned) {
		changed = true
	}
	return changed
}

// conflictOnKey reports whether ON CONFLICT names exactly the key columns.
func conflictOnKey(oc *pg.OnConflictClause, key []string) bool {
	if oc.Infer == nil || oc.Infer.Conname != "" || oc.Infer.WhereClause != nil || len(oc.Infer.IndexElems) != len(key) {
		return false
	}
	for _, k := range key {
		found := false
		for _, e := range oc.Infer.IndexElems {
			if ie := e.GetIndexElem(); ie != nil && ie.Name == k && ie.Expr == nil {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// valuesKeys adds keys pinned by a single-row VALUES list of an INSERT when
// the DO UPDATE's WHERE does not pin them.
func (pl *planner) valuesKeys(st *Statement, t target, ins *pg.InsertStmt) {
	sel := ins.SelectStmt.GetSelectStmt()
	if sel == nil || len(sel.ValuesLists) != 1 || len(ins.Cols) == 0 {
		return
	}
	row := sel.ValuesLists[0].GetList()
	if row == nil || len(row.Items) != len(ins.Cols) {
		return
	}
	for _, k := range t.pol.Key {
		if hasKey(st.Keys, k) {
			continue
		}
		for i, c := range ins.Cols {
			if rt := c.GetResTarget(); rt != nil && rt.Name == k && len(rt.Indirection) == 0 {
				if v := pl.valueOf(row.Items[i]); v.Kind == ValueLiteral || v.Kind == ValueParam {
					st.Keys = append(st.Keys, KeyValue{Column: k, Value: v})
					st.Notes = append(st.Notes, fmt.Sprintf("key %s = %s (from VALUES)", QuoteIdent(k), pl.show(v)))
				}
			}
		}
	}
}

func hasKey(keys []KeyValue, col string) bool {
	for _, k := range keys {
		if k.Column == col {
			return true
		}
	}
	return false
}

// increment adds the version increment to a SET list unless the statement
// assigns the version itself. qualify names the target in the expression.
func (pl *planner) increment(st *Statement, t target, list *[]*pg.Node, qualify bool) bool {
	col := t.pol.Column
	for _, n := range *list {
		if rt := n.GetResTarget(); rt != nil && rt.Name == col {
			st.Notes = append(st.Notes, fmt.Sprintf("application assigns %s: increment left alone", QuoteIdent(col)))
			return false
		}
	}
	var val *pg.Node
	var desc string
	switch t.pol.Type {
	case TypeInteger:
		var fields []*pg.Node
		ref := QuoteIdent(col)
		if qualify {
			fields = append(fields, pg.MakeStrNode(t.refName()))
			ref = QuoteIdent(t.refName()) + "." + ref
		}
		fields = append(fields, pg.MakeStrNode(col))
		val = pg.MakeAExprNode(pg.A_Expr_Kind_AEXPR_OP, []*pg.Node{pg.MakeStrNode("+")},
			pg.MakeColumnRefNode(fields, -1), pg.MakeAConstIntNode(1, -1), -1)
		desc = ref + " + 1"
	case TypeTimestamp:
		val = pg.MakeFuncCallNode([]*pg.Node{pg.MakeStrNode("clock_timestamp")}, nil, -1)
		desc = "clock_timestamp()"
	case TypeUUID:
		val = pg.MakeFuncCallNode([]*pg.Node{pg.MakeStrNode("gen_random_uuid")}, nil, -1)
		desc = "gen_random_uuid()"
	case TypeXmin:
		st.Notes = append(st.Notes, "version column is xmin: PostgreSQL bumps it, no increment")
		return false
	default:
		st.Notes = append(st.Notes, fmt.Sprintf("version type of %s unknown: no increment added", t.pol.QualifiedName()))
		return false
	}
	*list = append(*list, pg.MakeResTargetNodeWithNameAndVal(col, val, -1))
	st.Incremented = true
	st.Notes = append(st.Notes, fmt.Sprintf("added increment %s = %s", QuoteIdent(col), desc))
	return true
}

// check looks for the version predicate and key values in a WHERE clause
// and decides Checked and Refuse.
func (pl *planner) check(st *Statement, t target, where *pg.Node) {
	defer func() {
		if t.pol.Mode == ModeRequired && !st.Checked {
			st.Refuse = true
			st.Notes = append(st.Notes, "mode required and no version predicate: refused")
		}
	}()
	if where.GetCurrentOfExpr() != nil {
		st.Notes = append(st.Notes, "WHERE CURRENT OF: increment only, the statement cannot be checked")
		return
	}
	conj := conjuncts(where, nil)
	for _, c := range conj {
		if v, ok := pl.equality(c, t, t.pol.Column); ok {
			st.Checked = true
			st.Expected = v
			st.Notes = append(st.Notes, fmt.Sprintf("found version predicate %s = %s", QuoteIdent(t.pol.Column), pl.show(v)))
			break
		}
	}
	for _, k := range t.pol.Key {
		for _, c := range conj {
			if v, ok := pl.equality(c, t, k); ok && (v.Kind == ValueLiteral || v.Kind == ValueParam) {
				st.Keys = append(st.Keys, KeyValue{Column: k, Value: v})
				st.Notes = append(st.Notes, fmt.Sprintf("key %s = %s", QuoteIdent(k), pl.show(v)))
				break
			}
		}
	}
	if !st.Checked {
		if mentions(where, t, t.pol.Column) {
			st.Notes = append(st.Notes, fmt.Sprintf("%s appears in WHERE but not as a top-level AND conjunct %s = ...: not checked", QuoteIdent(t.pol.Column), QuoteIdent(t.pol.Column)))
		}
		st.Notes = append(st.Notes, "no version predicate: written unchecked")
	}
}

// conjuncts appends the top-level AND conjuncts of n.
func conjuncts(n *pg.Node, out []*pg.Node) []*pg.Node {
	if n == nil {
		return out
	}
	if b := n.GetBoolExpr(); b != nil && b.Boolop == pg.BoolExprType_AND_EXPR {
		for _, a := range b.Args {
			out = conjuncts(a, out)
		}
		return out
	}
	return append(out, n)
}

// equality matches "<col> = <expr>" or "<expr> = <col>" and returns the
// other side.
func (pl *planner) equality(n *pg.Node, t target, col string) (Value, bool) {
	e := n.GetAExpr()
	if e == nil || e.Kind != pg.A_Expr_Kind_AEXPR_OP || len(e.Name) == 0 {
		return Value{}, false
	}
	if op := e.Name[len(e.Name)-1].GetString_(); op == nil || op.Sval != "=" {
		return Value{}, false
	}
	if len(e.Name) == 2 {
		if s := e.Name[0].GetString_(); s == nil || s.Sval != "pg_catalog" {
			return Value{}, false
		}
	}
	if cr := e.Lexpr.GetColumnRef(); cr != nil && t.isColumn(cr, col) && e.Rexpr != nil {
		return pl.valueOf(e.Rexpr), true
	}
	if cr := e.Rexpr.GetColumnRef(); cr != nil && t.isColumn(cr, col) && e.Lexpr != nil {
		return pl.valueOf(e.Lexpr), true
	}
	return Value{}, false
}

// mentions reports whether the expression refers to column col of the target
// anywhere.
func mentions(n *pg.Node, t target, col string) bool {
	found := false
	walk(n, func(m protoreflect.Message) bool {
		if cr, ok := m.Interface().(*pg.ColumnRef); ok && t.isColumn(cr, col) {
			found = true
		}
		return !found
	})
	return found
}

// valueOf classifies an expression: a constant (possibly cast), a parameter
// (possibly cast), or any other expression, deparsed.
func (pl *planner) valueOf(n *pg.Node) Value {
	switch x := n.GetNode().(type) {
	case *pg.Node_AConst:
		c := x.AConst
		if c.Isnull {
			break
		}
		switch v := c.Val.(type) {
		case *pg.A_Const_Ival:
			return Value{Kind: ValueLiteral, Literal: strconv.Itoa(int(v.Ival.GetIval()))}
		case *pg.A_Const_Fval:
			return Value{Kind: ValueLiteral, Literal: v.Fval.GetFval()}
		case *pg.A_Const_Sval:
			return Value{Kind: ValueLiteral, Literal: v.Sval.GetSval()}
		case *pg.A_Const_Boolval:
			return Value{Kind: ValueLiteral, Literal: strconv.FormatBool(v.Boolval.GetBoolval())}
		case *pg.A_Const_Bsval:
			return Value{Kind: ValueLiteral, Literal: v.Bsval.GetBsval()}
		}
	case *pg.Node_ParamRef:
		return Value{Kind: ValueParam, Param: int(x.ParamRef.Number)}
	case *pg.Node_TypeCast:
		if v := pl.valueOf(x.TypeCast.Arg); v.Kind == ValueLiteral || v.Kind == ValueParam {
			return v
		}
	}
	return Value{Kind: ValueExpr, Expr: pl.deparseExpr(n)}
}

// deparseExpr renders an expression through the deparser.
func (pl *planner) deparseExpr(n *pg.Node) string {
	sel := &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: &pg.SelectStmt{
		TargetList: []*pg.Node{pg.MakeResTargetNodeWithVal(n, -1)},
	}}}
	out, err := pg.Deparse(&pg.ParseResult{Version: pl.version, Stmts: []*pg.RawStmt{{Stmt: sel}}})
	if err != nil {
		return "?"
	}
	return strings.TrimPrefix(out, "SELECT ")
}

// prepare plans PREPARE name AS <statement>.
func (pl *planner) prepare(p *pg.PrepareStmt, text string) (Statement, bool, error) {
	st := Statement{SQL: text, Kind: KindPrepare, PrepareName: p.Name}
	body := prepareBody(text)
	inner, changed, err := pl.statement(p.Query, body)
	if err != nil {
		return st, false, err
	}
	st.Inner = &inner
	st.Notes = append(st.Notes, fmt.Sprintf("prepares %s: %s statement", QuoteIdent(p.Name), inner.Kind))
	wrapper := &pg.Node{Node: &pg.Node_PrepareStmt{PrepareStmt: p}}
	if changed {
		if st.SQL, err = pl.deparse(wrapper); err != nil {
			return st, false, err
		}
	}
	if inner.Inject != nil && pl.lastInject != nil {
		// The whole PREPARE with the parameter form of the predicate; the
		// parameter's type is left to the server to infer. It comes after
		// every parameter the PREPARE lists a type for, used or not: one
		// of those would give it its (maybe other) type.
		pi := *pl.lastInject
		if n := len(p.Argtypes) + 1; !pl.template && n > pi.param {
			pi.param = n
		}
		sql, _, _, err := pl.renderInject(wrapper, &pi)
		if err != nil {
			return st, false, err
		}
		st.Inject = &Injection{Param: pi.param, Type: inner.Inject.Type, SQL: sql}
	}
	return st, changed, nil
}

// wrappedExecute notes the EXECUTE that an EXPLAIN or a CREATE TABLE AS
// runs (possibly nested: EXPLAIN ANALYZE CREATE TABLE ... AS EXECUTE), so
// that the proxy can give it the argument a PREPARE sent with an injected
// version needs. It reports false when node wraps no EXECUTE.
func (pl *planner) wrappedExecute(st *Statement, node *pg.Node) bool {
	analyze, ctas := false, false
	for {
		switch n := node.GetNode().(type) {
		case *pg.Node_ExplainStmt:
			analyze = analyze || explainAnalyze(n.ExplainStmt)
			node = n.ExplainStmt.Query
			continue
		case *pg.Node_CreateTableAsStmt:
			ctas = true
			node = n.CreateTableAsStmt.Query
			continue
		case *pg.Node_ExecuteStmt:
			st.ExecuteName = n.ExecuteStmt.Name
			for _, a := range n.ExecuteStmt.Params {
				st.ExecuteArgs = append(st.ExecuteArgs, pl.valueOf(a))
			}
		default:
			return false
		}
		break
	}
	switch {
	case ctas:
		st.ExecuteWrapped = WrapCreateTableAs
	case analyze:
		st.ExecuteWrapped = WrapExplainAnalyze
	default:
		st.ExecuteWrapped = WrapExplain
	}
	st.Notes = append(st.Notes, fmt.Sprintf("runs prepared statement %s with %d argument(s) inside another statement", QuoteIdent(st.ExecuteName), len(st.ExecuteArgs)))
	return true
}

// embedded handles a data-modifying statement that runs inside another one
// (MERGE, EXPLAIN ANALYZE, COPY (...) TO): it keeps the version honest but
// no command tag tells how many rows were written, so nothing is checked.
func (pl *planner) embedded(st *Statement, n *pg.Node, where string) bool {
	var rv *pg.RangeVar
	var lists []*[]*pg.Node
	var what string
	qualify := false
	switch x := n.GetNode().(type) {
	case *pg.Node_UpdateStmt:
		rv, what = x.UpdateStmt.Relation, "UPDATE"
		lists = append(lists, &x.UpdateStmt.TargetList)
		qualify = x.UpdateStmt.Relation.GetAlias() != nil || len(x.UpdateStmt.FromClause) > 0
	case *pg.Node_DeleteStmt:
		rv, what = x.DeleteStmt.Relation, "DELETE"
	case *pg.Node_InsertStmt:
		oc := x.InsertStmt.OnConflictClause
		if oc == nil || oc.Action != pg.OnConflictAction_ONCONFLICT_UPDATE {
			return false
		}
		rv, what = x.InsertStmt.Relation, "ON CONFLICT DO UPDATE"
		lists = append(lists, &oc.TargetList)
		qualify = true
	case *pg.Node_MergeStmt:
		rv, what = x.MergeStmt.Relation, "MERGE"
		for _, w := range x.MergeStmt.MergeWhenClauses {
			if c := w.GetMergeWhenClause(); c != nil && c.CommandType == pg.CmdType_CMD_UPDATE {
				lists = append(lists, &c.TargetList)
			}
		}
		qualify = true
	default:
		return false
	}
	pol := pl.resolve(rv)
	if pol == nil {
		return false
	}
	label := strings.TrimSpace(where + " " + what)
	if what == "DELETE" && !pol.Delete || what != "DELETE" && !pol.Update {
		st.Notes = append(st.Notes, fmt.Sprintf("%s of %s is not guarded", label, pol.QualifiedName()))
		return false
	}
	if st.Policy == nil {
		st.Policy = pol
	}
	st.Notes = append(st.Notes, fmt.Sprintf("%s on guarded table %s (mode %s): the command tag cannot be checked", label, pol.QualifiedName(), pol.Mode))
	changed := false
	t := target{pol: pol, rv: rv}
	for _, l := range lists {
		var tmp Statement
		if pl.increment(&tmp, t, l, qualify) {
			changed = true
			st.Incremented = true
		}
		st.Notes = append(st.Notes, tmp.Notes...)
	}
	if pol.Mode == ModeRequired {
		st.Refuse = true
		st.Notes = append(st.Notes, "mode required and the write cannot be checked: refused")
	}
	return changed
}

// ctes handles data-modifying statements in WITH clauses anywhere in n.
func (pl *planner) ctes(st *Statement, n *pg.Node) bool {
	changed := false
	walk(n, func(m protoreflect.Message) bool {
		if c, ok := m.Interface().(*pg.CommonTableExpr); ok {
			if pl.embedded(st, c.Ctequery, "data-modifying CTE "+QuoteIdent(c.Ctename)+":") {
				changed = true
			}
		}
		return true
	})
	return changed
}

// walk calls fn for every message under n, depth first; fn returns false to
// skip a message's children.
func walk(n *pg.Node, fn func(protoreflect.Message) bool) {
	if n == nil {
		return
	}
	walkMsg(n.ProtoReflect(), fn)
}

func walkMsg(m protoreflect.Message, fn func(protoreflect.Message) bool) {
	if !fn(m) {
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkMsg(l.Get(i).Message(), fn)
			}
			return true
		}
		walkMsg(v.Message(), fn)
		return true
	})
}
