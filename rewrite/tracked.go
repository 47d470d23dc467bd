package rewrite

import (
	"fmt"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Tracked mode: hidden result columns for reads and RETURNING, and the
// injected version predicate for writes (the contract is in plan.go).

// hiddenPrefix names the columns the rewriter adds (pgoptimist_ is the
// proxy's reserved prefix).
const hiddenPrefix = "pgoptimist_"

// aggregateNames are PostgreSQL's built-in aggregate functions. A call of
// one of them (or of a name in Options.Aggregates) makes a query an
// aggregate query, where an extra column would be an error.
var aggregateNames = map[string]bool{
	"array_agg": true, "avg": true, "bit_and": true, "bit_or": true, "bit_xor": true, "bool_and": true,
	"bool_or": true, "count": true, "every": true, "json_agg": true, "json_object_agg": true,
	"jsonb_agg": true, "jsonb_object_agg": true, "max": true, "min": true, "range_agg": true,
	"range_intersect_agg": true, "string_agg": true, "sum": true, "xmlagg": true, "corr": true,
	"covar_pop": true, "covar_samp": true, "regr_avgx": true, "regr_avgy": true, "regr_count": true,
	"regr_intercept": true, "regr_r2": true, "regr_slope": true, "regr_sxx": true, "regr_sxy": true,
	"regr_syy": true, "stddev": true, "stddev_pop": true, "stddev_samp": true, "variance": true,
	"var_pop": true, "var_samp": true, "mode": true, "percentile_cont": true, "percentile_disc": true,
	"rank": true, "dense_rank": true, "percent_rank": true, "cume_dist": true, "any_value": true,
	"json_agg_strict": true, "json_object_agg_strict": true, "json_object_agg_unique": true,
	"json_object_agg_unique_strict": true, "jsonb_agg_strict": true, "jsonb_object_agg_strict": true,
	"jsonb_object_agg_unique": true, "jsonb_object_agg_unique_strict": true, "json_arrayagg": true,
	"json_objectagg": true,
}

// isAggregate reports whether a call may be an aggregate: by its syntax
// (count(*), DISTINCT, ORDER BY, WITHIN GROUP, FILTER) or by its name.
func (pl *planner) isAggregate(fc *pg.FuncCall) bool {
	if fc.AggStar || fc.AggDistinct || len(fc.AggOrder) > 0 || fc.AggWithinGroup || fc.AggFilter != nil {
		return true
	}
	if len(fc.Funcname) == 0 {
		return false
	}
	s := fc.Funcname[len(fc.Funcname)-1].GetString_()
	if s == nil {
		return true
	}
	return aggregateNames[s.Sval] || pl.r.aggregates[s.Sval]
}

// tracks reports whether p is a tracked policy and tracked mode is on.
func (pl *planner) tracks(p *Policy) bool {
	return p != nil && pl.r.tracking && p.Tracked()
}

// tref is a tracked table as a FROM list or a write names it.
type tref struct {
	t    target
	skip string // why it is not captured, or ""
}

// cols are the columns a capture needs: the key columns, then the version.
func (r *tref) cols() []string {
	return append(append([]string(nil), r.t.pol.Key...), r.t.pol.Column)
}

// readsTracked reports whether a tracked table is named anywhere under n.
func (pl *planner) readsTracked(n *pg.Node) bool {
	found := false
	walk(n, func(m protoreflect.Message) bool {
		if rv, ok := m.Interface().(*pg.RangeVar); ok {
			if p := pl.resolve(rv); pl.tracks(p) {
				found = true
			}
		}
		return !found
	})
	return found
}

// trackRead plans the capture of a top-level SELECT (or a PREPARE's).
func (pl *planner) trackRead(st *Statement, node *pg.Node, s *pg.SelectStmt) bool {
	if !pl.r.tracking || !pl.readsTracked(node) {
		return false
	}
	if pl.skipReads {
		st.Untracked = true
		st.Notes = append(st.Notes, "reads a tracked table, not tracked: the statement with hidden columns cannot be deparsed")
		return false
	}
	if why := pl.untrackable(node, s); why != "" {
		st.Untracked = true
		st.Notes = append(st.Notes, "reads a tracked table, not tracked: "+why)
		return false
	}
	ctes := map[string]bool{}
	if s.WithClause != nil {
		for _, c := range s.WithClause.Ctes {
			if cte := c.GetCommonTableExpr(); cte != nil {
				ctes[cte.Ctename] = true
			}
		}
	}
	var refs []tref
	for _, item := range s.FromClause {
		pl.fromRefs(item, ctes, false, false, &refs)
	}
	// A name used twice cannot be told apart.
	for i := range refs {
		for j := range refs {
			if i != j && refs[i].t.refName() == refs[j].t.refName() {
				refs[i].skip = "named twice"
			}
		}
	}
	var ok []tref
	for _, r := range refs {
		if r.skip != "" {
			st.Notes = append(st.Notes, fmt.Sprintf("tracked table %s as %s: not captured (%s)", r.t.pol.QualifiedName(), QuoteIdent(r.t.refName()), r.skip))
			continue
		}
		ok = append(ok, r)
	}
	if len(ok) == 0 {
		st.Untracked = true
		st.Notes = append(st.Notes, "reads a tracked table, not tracked: no table reference in its FROM list can be captured")
		return false
	}
	single := len(s.FromClause) == 1 && s.FromClause[0].GetRangeVar() != nil
	return pl.capture(st, ok, &s.TargetList, single, "SELECT list")
}

// untrackable says why extra result columns would change what a SELECT
// means or cannot be relied on, or returns "".
func (pl *planner) untrackable(node *pg.Node, s *pg.SelectStmt) string {
	switch {
	case s.Op != pg.SetOperation_SETOP_NONE:
		return "set operation (UNION, INTERSECT, EXCEPT)"
	case s.IntoClause != nil:
		return "SELECT INTO"
	case len(s.ValuesLists) > 0:
		return "VALUES"
	case len(s.DistinctClause) > 0:
		return "DISTINCT"
	case len(s.GroupClause) > 0 || s.GroupDistinct:
		return "GROUP BY"
	case s.HavingClause != nil:
		return "HAVING"
	case len(s.WindowClause) > 0:
		return "WINDOW clause"
	case dataModifyingCTE(node):
		return "data-modifying CTE"
	}
	why := ""
	check := func(m protoreflect.Message) bool {
		switch x := m.Interface().(type) {
		case *pg.FuncCall:
			if x.Over != nil {
				why = "window function"
			} else if pl.isAggregate(x) {
				why = "aggregate " + funcName(x)
			}
		case *pg.SubLink:
			// An aggregate in a subquery with a FROM list belongs to the
			// subquery (but for one over outer columns only, which is
			// rare); without a FROM list it may be the outer query's.
			sub := x.Subselect.GetSelectStmt()
			return sub != nil && len(sub.FromClause) == 0
		}
		return why == ""
	}
	for _, n := range s.TargetList {
		walk(n, check)
	}
	for _, n := range s.SortClause {
		walk(n, check)
	}
	return why
}

func funcName(fc *pg.FuncCall) string {
	var parts []string
	for _, n := range fc.Funcname {
		if s := n.GetString_(); s != nil {
			parts = append(parts, QuoteIdent(s.Sval))
		}
	}
	return strings.Join(parts, ".")
}

// dataModifyingCTE reports whether a WITH clause under n holds an INSERT,
// UPDATE, DELETE or MERGE.
func dataModifyingCTE(n *pg.Node) bool {
	found := false
	walk(n, func(m protoreflect.Message) bool {
		if c, ok := m.Interface().(*pg.CommonTableExpr); ok {
			switch c.Ctequery.GetNode().(type) {
			case *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt, *pg.Node_MergeStmt:
				found = true
			}
		}
		return !found
	})
	return found
}

// fromRefs collects the tracked tables a FROM item names directly (through
// joins), marking those that cannot be captured.
func (pl *planner) fromRefs(n *pg.Node, ctes map[string]bool, nullable, hidden bool, out *[]tref) {
	switch x := n.GetNode().(type) {
	case *pg.Node_RangeVar:
		rv := x.RangeVar
		if rv.Schemaname == "" && ctes[rv.Relname] {
			return // the CTE of that name, not the table
		}
		p := pl.resolve(rv)
		if !pl.tracks(p) {
			return
		}
		r := tref{t: target{pol: p, rv: rv}}
		switch {
		case hidden:
			r.skip = "inside an aliased join, which hides its name"
		case nullable:
			r.skip = "on the nullable side of an outer join"
		case rv.Alias != nil && len(rv.Alias.Colnames) > 0:
			r.skip = "its columns are renamed"
		}
		*out = append(*out, r)
	case *pg.Node_JoinExpr:
		j := x.JoinExpr
		h := hidden || j.Alias != nil
		ln, rn := nullable, nullable
		switch j.Jointype {
		case pg.JoinType_JOIN_LEFT:
			rn = true
		case pg.JoinType_JOIN_RIGHT:
			ln = true
		case pg.JoinType_JOIN_FULL:
			ln, rn = true, true
		}
		pl.fromRefs(j.Larg, ctes, ln, h, out)
		pl.fromRefs(j.Rarg, ctes, rn, h, out)
	}
}

// isStar reports whether a result expression expands to columns the
// rewriter cannot count (*, t.*, (expr).*).
func isStar(n *pg.Node) bool {
	switch x := n.GetNode().(type) {
	case *pg.Node_ColumnRef:
		f := x.ColumnRef.Fields
		return len(f) > 0 && f[len(f)-1].GetAStar() != nil
	case *pg.Node_AIndirection:
		ind := x.AIndirection.Indirection
		return len(ind) > 0 && ind[len(ind)-1].GetAStar() != nil
	}
	return false
}

// capture finds the key and version columns of refs in a target (or
// RETURNING) list, adds those it does not find at a known position as
// hidden columns, and records the captures. It is called at most once per
// statement (hidden fields count from the end of this one list). single: an unqualified column
// can only be the table's (one table in scope).
func (pl *planner) capture(st *Statement, refs []tref, list *[]*pg.Node, single bool, where string) bool {
	type need struct{ ref, col int }
	pos := map[need]int{}
	for i, n := range *list {
		rt := n.GetResTarget()
		if rt == nil || isStar(rt.Val) {
			break // later positions are unknown
		}
		cr := rt.Val.GetColumnRef()
		if cr == nil || len(rt.Indirection) > 0 || len(cr.Fields) == 1 && !single {
			continue
		}
		for ri := range refs {
			for ci, c := range refs[ri].cols() {
				k := need{ri, ci}
				if _, done := pos[k]; !done && refs[ri].t.isColumn(cr, c) {
					pos[k] = i
				}
			}
		}
	}
	var missing []need
	for ri := range refs {
		for ci := range refs[ri].cols() {
			if _, ok := pos[need{ri, ci}]; !ok {
				missing = append(missing, need{ri, ci})
			}
		}
	}
	hidden := map[need]Field{}
	for i, k := range missing {
		r := &refs[k.ref]
		col := r.cols()[k.col]
		f := Field(i - len(missing))
		hidden[k] = f
		ref := pg.MakeColumnRefNode([]*pg.Node{pg.MakeStrNode(r.t.refName()), pg.MakeStrNode(col)}, -1)
		*list = append(*list, pg.MakeResTargetNodeWithNameAndVal(hiddenPrefix+strconv.Itoa(len(st.Hidden)+1), ref, -1))
		st.Hidden = append(st.Hidden, HiddenColumn{Field: f, Schema: r.t.pol.Schema, Table: r.t.pol.Table, Column: col})
	}
	for ri := range refs {
		r := &refs[ri]
		c := Capture{Policy: r.t.pol, Ref: r.t.refName()}
		var shown []string
		for ci, col := range r.cols() {
			f, ok := Field(0), false
			if p, found := pos[need{ri, ci}]; found {
				f, ok = Field(p), true
			} else {
				f = hidden[need{ri, ci}]
			}
			if ci < len(r.t.pol.Key) {
				c.Keys = append(c.Keys, f)
			} else {
				c.Version = f
			}
			if ok {
				shown = append(shown, fmt.Sprintf("%s at %d", QuoteIdent(col), f))
			} else {
				shown = append(shown, fmt.Sprintf("%s hidden", QuoteIdent(col)))
			}
		}
		st.Captures = append(st.Captures, c)
		st.Notes = append(st.Notes, fmt.Sprintf("tracked table %s as %s captured from the %s: %s",
			r.t.pol.QualifiedName(), QuoteIdent(r.t.refName()), where, strings.Join(shown, ", ")))
	}
	return len(missing) > 0
}

// pendingInject is an injection whose SQL is rendered once the statement's
// tree is final.
type pendingInject struct {
	where *(*pg.Node)
	ref   string
	col   string
	param int
}

// trackWrite plans what a guarded write on a tracked table needs: the
// injection, the new version and the RETURNING capture. keysPinned: every
// key column is pinned in a way that names the written row.
func (pl *planner) trackWrite(st *Statement, t target, root *pg.Node, where *(*pg.Node), returning *[]*pg.Node, single, keysPinned bool) bool {
	pol := t.pol
	if !pl.tracks(pol) {
		return false
	}
	pinned := keysPinned && len(pol.Key) > 0 && where != nil && (*where).GetCurrentOfExpr() == nil
	switch {
	case st.Checked:
		st.Notes = append(st.Notes, "tracked: the explicit version predicate wins")
	case pol.Mode == ModeObserve:
		st.Notes = append(st.Notes, "observe mode: no version injected")
	case !pinned:
		st.Notes = append(st.Notes, "tracked: the WHERE clause does not pin the whole key: no version can be injected")
	default:
		n := maxParam(root) + 1
		rendered := n
		if pl.template {
			// A literal-normalized text has no parameters of its own: its
			// placeholders stand for literals. The injected parameter is
			// $1 in the text itself; the template writes it as the
			// placeholder after the last literal's.
			n, rendered = 1, pl.tmplN+1
		}
		st.Inject = &Injection{Param: n, Type: pol.Type}
		pl.inject = &pendingInject{where: where, ref: t.refName(), col: pol.Column, param: rendered}
		st.Notes = append(st.Notes, fmt.Sprintf("tracked: the version read for the key can be injected as %s.%s = $%d",
			QuoteIdent(t.refName()), QuoteIdent(pol.Column), n))
	}
	needReturning := false
	carrier := false
	if pol.Mode == ModeObserve {
		joined := st.Kind == KindUpdate && (!single || hasSubLink(*where))
		carrier = pl.observeWrite(st, t, where, joined)
	}
	switch st.Kind {
	case KindUpdate:
		if pol.Type == TypeInteger && st.Incremented && pinned && (st.Checked || st.Inject != nil) {
			st.NewVersion = NewVersionIncrement
			st.Notes = append(st.Notes, "tracked: the new version is the expected one + 1")
		} else {
			st.NewVersion, needReturning = NewVersionReturned, true
		}
	case KindUpsert:
		// The row may be inserted or updated: only the row itself tells.
		st.NewVersion, needReturning = NewVersionReturned, true
	}
	if len(*returning) == 0 && !needReturning && !carrier {
		return false
	}
	st.AddedReturning = len(*returning) == 0
	if st.AddedReturning {
		st.Notes = append(st.Notes, "tracked: RETURNING added for the new version (hidden)")
	}
	changed := pl.capture(st, []tref{{t: t}}, returning, single, "RETURNING list")
	if carrier {
		pl.addWrittenOverColumn(st, returning)
		changed = true
	}
	return changed
}

// writtenOverSetting is the transaction-local setting observe mode uses as
// a per-row side channel (see "Observing" in plan.go).
const writtenOverSetting = "pgoptimist.written_over"

// observeWrite decides how observe mode learns the version a write
// overwrote and, for WrittenOverReturned, adds the recording conjunct to
// the WHERE (where: the UPDATE's, or the DO UPDATE arm's). It reports
// whether the RETURNING must carry the setting back. joined: an UPDATE
// whose input is more than a scan of the target (FROM list, subquery).
func (pl *planner) observeWrite(st *Statement, t target, where *(*pg.Node), joined bool) bool {
	pol := t.pol
	if st.Kind != KindUpdate && st.Kind != KindUpsert {
		return false
	}
	switch {
	case st.Checked:
		st.Notes = append(st.Notes, "observe: the explicit version predicate checks the write: not compared")
		return false
	case st.Kind == KindUpdate && pol.Type == TypeInteger && st.Incremented:
		// Kept rather than unified with the setting: version + 1 is
		// computed on the very row written (joined or re-checked alike),
		// so it is exact where the setting is not (joins) and costs
		// nothing per row. An upsert cannot use it: an inserted row's
		// version minus 1 is no version it wrote over.
		st.WrittenOver = WrittenOverIncrement
		st.Notes = append(st.Notes, "observe: the version written over is the new version - 1")
		return false
	case where == nil || *where != nil && (*where).GetCurrentOfExpr() != nil:
		st.Notes = append(st.Notes, "observe: WHERE CURRENT OF: the version written over is not learned")
		return false
	case joined:
		// A join may evaluate the WHERE on every row of the target before
		// the first row is written (a hash join that builds on it): the
		// setting would hold another row's version.
		st.Notes = append(st.Notes, "observe: UPDATE with a FROM list or a subquery in its WHERE: the version written over is not learned")
		return false
	}
	*where = andWith(*where, writtenOverRecord(t.refName(), pol.Column))
	st.WrittenOver = WrittenOverReturned
	st.Notes = append(st.Notes, fmt.Sprintf("observe: the WHERE records %s.%s in %s; a hidden RETURNING column reads it back",
		QuoteIdent(t.refName()), QuoteIdent(pol.Column), writtenOverSetting))
	return true
}

// writtenOverRecord is the always-true conjunct that records the version
// of the row it is evaluated on:
// pg_catalog.set_config('pgoptimist.written_over', pg_catalog.concat('v', <ref>.<col>), true) IS NOT NULL.
// concat renders any type (xid too) with its output function, as ::text
// would, and is never NULL; set_config returns that value.
func writtenOverRecord(ref, col string) *pg.Node {
	return parseExpr("pg_catalog.set_config(" + QuoteLiteral(writtenOverSetting) + ", pg_catalog.concat('v', " +
		QuoteIdent(ref) + "." + QuoteIdent(col) + "), true) IS NOT NULL")
}

// writtenOverRead is the hidden RETURNING expression: "c" followed by what
// the WHERE recorded for this row ("cv<version>"), or just "c" when the
// WHERE did not run on it (an upsert's inserted row); the setting is left
// consumed, so a later row that the WHERE does not run on cannot read it.
func writtenOverRead() *pg.Node {
	cur := "pg_catalog.current_setting(" + QuoteLiteral(writtenOverSetting) + ", true)"
	return parseExpr("pg_catalog.set_config(" + QuoteLiteral(writtenOverSetting) +
		", CASE WHEN pg_catalog.starts_with(" + cur + ", 'v') THEN pg_catalog.concat('c', " + cur + ") ELSE 'c' END, true)")
}

// parseExpr parses an expression the rewriter itself wrote.
func parseExpr(sql string) *pg.Node {
	tree, err := pg.Parse("SELECT " + sql)
	if err != nil {
		panic("rewrite: own expression does not parse: " + err.Error())
	}
	return tree.Stmts[0].Stmt.GetSelectStmt().TargetList[0].GetResTarget().Val
}

// addWrittenOverColumn adds the hidden RETURNING column that carries the
// version written over. It goes last: the fields counted from the end
// move one further from it.
func (pl *planner) addWrittenOverColumn(st *Statement, returning *[]*pg.Node) {
	for i := range st.Hidden {
		st.Hidden[i].Field--
	}
	for i := range st.Captures {
		c := &st.Captures[i]
		for k := range c.Keys {
			if c.Keys[k] < 0 {
				c.Keys[k]--
			}
		}
		if c.Version < 0 {
			c.Version--
		}
	}
	*returning = append(*returning, pg.MakeResTargetNodeWithNameAndVal(hiddenPrefix+strconv.Itoa(len(st.Hidden)+1), writtenOverRead(), -1))
	st.Hidden = append(st.Hidden, HiddenColumn{Field: -1, Column: writtenOverSetting})
	st.WrittenOverField = -1
}

// hasSubLink reports whether a subquery appears under n.
func hasSubLink(n *pg.Node) bool {
	found := false
	walk(n, func(m protoreflect.Message) bool {
		if _, ok := m.Interface().(*pg.SubLink); ok {
			found = true
		}
		return !found
	})
	return found
}

// maxParam is the highest $n under n (0: none).
func maxParam(n *pg.Node) int {
	mx := 0
	walk(n, func(m protoreflect.Message) bool {
		if p, ok := m.Interface().(*pg.ParamRef); ok && int(p.Number) > mx {
			mx = int(p.Number)
		}
		return true
	})
	return mx
}

// andWith is where AND pred, flattening a top-level AND (where may be nil).
func andWith(where, pred *pg.Node) *pg.Node {
	if where == nil {
		return pred
	}
	if b := where.GetBoolExpr(); b != nil && b.Boolop == pg.BoolExprType_AND_EXPR {
		args := append(append([]*pg.Node(nil), b.Args...), pred)
		return pg.MakeBoolExprNode(pg.BoolExprType_AND_EXPR, args, -1)
	}
	return pg.MakeBoolExprNode(pg.BoolExprType_AND_EXPR, []*pg.Node{where, pred}, -1)
}

func (pi *pendingInject) eq() *pg.Node {
	col := pg.MakeColumnRefNode([]*pg.Node{pg.MakeStrNode(pi.ref), pg.MakeStrNode(pi.col)}, -1)
	return pg.MakeAExprNode(pg.A_Expr_Kind_AEXPR_OP, []*pg.Node{pg.MakeStrNode("=")}, col, pg.MakeParamRefNode(int32(pi.param), -1), -1)
}

// paramPredicate is "(<ref>.<col> = $N OR $N IS NULL)".
func (pi *pendingInject) paramPredicate() *pg.Node {
	null := &pg.Node{Node: &pg.Node_NullTest{NullTest: &pg.NullTest{
		Arg: pg.MakeParamRefNode(int32(pi.param), -1), Nulltesttype: pg.NullTestType_IS_NULL, Location: -1}}}
	return pg.MakeBoolExprNode(pg.BoolExprType_OR_EXPR, []*pg.Node{pi.eq(), null}, -1)
}

// render deparses root with the injected predicate in both forms: the
// parameter form, and the literal form split around its placeholder.
func (pl *planner) renderInject(root *pg.Node, pi *pendingInject) (param, pre, post string, err error) {
	orig := *pi.where
	defer func() { *pi.where = orig }()
	*pi.where = andWith(orig, pi.paramPredicate())
	if param, err = pl.deparse(root); err != nil {
		return "", "", "", err
	}
	*pi.where = andWith(orig, pi.eq())
	lit, err := pl.deparse(root)
	if err != nil {
		return "", "", "", err
	}
	at, end := -1, 0
	want := "$" + strconv.Itoa(pi.param)
	for i := 0; ; {
		k, a, b := nextToken(lit, i)
		if k == tokEOF {
			break
		}
		i = b
		if k == tokParam && lit[a:b] == want {
			if at >= 0 {
				return "", "", "", fmt.Errorf("rewrite: %w: injected parameter appears twice", ErrDeparse)
			}
			at, end = a, b
		}
	}
	if at < 0 {
		return "", "", "", fmt.Errorf("rewrite: %w: injected parameter not found", ErrDeparse)
	}
	return param, lit[:at], lit[end:], nil
}

// deparse renders one statement.
func (pl *planner) deparse(node *pg.Node) (string, error) {
	out, err := pg.Deparse(&pg.ParseResult{Version: pl.version, Stmts: []*pg.RawStmt{{Stmt: node}}})
	if err != nil {
		return "", fmt.Errorf("rewrite: %w: %v", ErrDeparse, err)
	}
	return trimStatement(out), nil
}

// ExecuteWithExpected returns an EXECUTE statement's text with one more
// argument: the quoted literal, or NULL when null is true. It is for the
// EXECUTE of a prepared statement whose PREPARE the proxy sent in its
// Inject form; an EXECUTE inside another statement (ExecuteWrapped) gets
// it where it stands. Other statements: SQL.
func (s *Statement) ExecuteWithExpected(literal string, null bool) string {
	if s.Kind != KindExecute && s.ExecuteWrapped == WrapNone {
		return s.SQL
	}
	arg := "NULL"
	if !null {
		arg = QuoteLiteral(literal)
	}
	at, list := executeArgsAt(s.SQL, s.ExecuteName)
	switch {
	case at < 0:
		return s.SQL
	case list:
		return s.SQL[:at] + ", " + arg + s.SQL[at:]
	}
	return s.SQL[:at] + "(" + arg + ")" + s.SQL[at:]
}

// executeArgsAt finds where "EXECUTE name" in sql takes one more argument:
// at the closing bracket of its argument list (list true), or right after
// the name when it has none. It returns -1 when there is no such EXECUTE.
func executeArgsAt(sql, name string) (int, bool) {
	var prev [2]token // the two tokens before the current one
	for i := 0; ; {
		k, a, b := nextToken(sql, i)
		if k == tokEOF {
			if prev[1].k != tokEOF && isExecuteOf(sql, prev[0], prev[1], name) {
				return prev[1].b, false
			}
			return -1, false
		}
		if prev[1].k != tokEOF && isExecuteOf(sql, prev[0], prev[1], name) {
			if k != tokPunct || sql[a] != '(' {
				return prev[1].b, false
			}
			depth := 0
			for j := a; ; {
				kk, aa, bb := nextToken(sql, j)
				if kk == tokEOF {
					return -1, false
				}
				if kk == tokPunct {
					switch sql[aa] {
					case '(', '[':
						depth++
					case ')', ']':
						depth--
						if depth == 0 {
							return aa, true
						}
					}
				}
				j = bb
			}
		}
		prev[0], prev[1] = prev[1], token{k, a, b}
		i = b
	}
}

// isExecuteOf reports whether the tokens kw, id of sql are EXECUTE and the
// prepared statement's name (as stored: unquoted names folded).
func isExecuteOf(sql string, kw, id token, name string) bool {
	if kw.k != tokIdent || !strings.EqualFold(sql[kw.a:kw.b], "execute") {
		return false
	}
	switch id.k {
	case tokIdent:
		return strings.ToLower(sql[id.a:id.b]) == name
	case tokQuotedIdent:
		t := sql[id.a:id.b]
		return len(t) >= 2 && t[0] == '"' && strings.ReplaceAll(t[1:len(t)-1], `""`, `"`) == name
	}
	return false
}

// StatementTexts splits sql into the texts of its top-level statements as
// written (without a trailing ';'), one per statement Plan lists, in order:
// the client's own text of a statement the proxy may have to prepare again.
func StatementTexts(sql string) ([]string, error) {
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, &ParseError{SQL: sql, Err: err}
	}
	out := make([]string, len(tree.Stmts))
	for i, raw := range tree.Stmts {
		out[i] = stmtText(sql, raw)
	}
	return out, nil
}

// PrepareRenamed returns the text of a PREPARE statement with its name
// replaced by name (quoted as needed), the rest byte for byte: the same
// statement prepared under a name of the proxy's. ok is false when sql
// does not start with PREPARE, a name, and "(" or AS.
func PrepareRenamed(sql, name string) (string, bool) {
	k, a, b := nextToken(sql, 0)
	if k != tokIdent || !keyword(sql, a, b, "prepare") {
		return "", false
	}
	k, a, b = nextToken(sql, b)
	if k != tokIdent && k != tokQuotedIdent {
		return "", false
	}
	k2, a2, b2 := nextToken(sql, b)
	if !(k2 == tokPunct && sql[a2] == '(') && !(k2 == tokIdent && keyword(sql, a2, b2, "as")) {
		return "", false
	}
	return sql[:a] + QuoteIdent(name) + sql[b:], true
}
