package rewrite

import (
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// Literal-normalized planning.
//
// Applications on the simple query protocol inline their values, so every
// execution of "UPDATE t SET n = n + 1 WHERE id = 48213 AND version = 7" is
// a new text. On a cache miss by exact text, Plan lexes the text and, when
// that is safe, replaces every literal with a placeholder parameter: the
// normalized text ("... WHERE id = $1 AND version = $2") is the key of a
// template. A template is the plan of the normalized text, made once (one
// pg_query parse and deparse). The plan of a concrete text is the template
// with the text's own literals put back: each $n of the template's SQL is
// replaced by literal n exactly as written, and each ValueParam n of its
// values by a ValueLiteral holding literal n's value.
//
// When a template is built, the plan it gives for the text at hand is
// checked against that text's own plan (the same fields, SQL that parses to
// the same tree); a template that fails the check, or that cannot be built
// (the normalized text does not parse, a value is an expression over a
// placeholder, ...), is remembered as bad and texts of its shape are
// planned one by one as before.
//
// Safe means: the whole text is made of statements that start with SELECT,
// INSERT, UPDATE, DELETE, MERGE, WITH, VALUES, TABLE, EXECUTE or a
// transaction-control keyword; it has no $ outside plain string literals
// (no parameters, no dollar quotes, no $ in identifiers), no E'', U&'', B'',
// X'' or N'' strings, no adjacent string literals (continuations), no NUL
// byte and no invalid UTF-8. Only plain '...' strings and plain decimal
// numbers are replaced, and only where a parameter means the same as the
// literal:
//
//   - a string only right after an operator, '(' ',' '[', or a keyword that
//     starts an expression (AND, OR, NOT, =, IN, THEN, VALUES, ...): never
//     after a type name (date '2020-01-01', interval '1 day' stay literal);
//   - no literal inside the brackets of a type modifier (::numeric(10, 2));
//   - no number right after BY or in the ORDER/GROUP BY list it starts
//     (ordinals);
//   - a unary minus right before a number is part of the literal, as the
//     grammar folds it into the constant (-5 is the constant -5, while
//     -5::int is the negation of 5::int);
//   - a literal followed by '[' or '.' makes the text unsafe ($1[1] parses,
//     'x'[1] does not).
//
// The plan cached by exact text stays: an instantiated plan is cached by its
// text too, from the second time that text is seen (a small table of
// hashes remembers texts seen once), so texts seen once do not crowd out
// the cache.

// seenSlots is the size of the table of texts instantiated once.
const seenSlots = 1024

// litSpan is one literal of a text replaced by a placeholder.
type litSpan struct {
	start, end int // the literal as written, minus sign included
	num        int // numbers: where the digits start (> start after a minus); strings: -1
}

// value is the literal's value as the planner's valueOf reports it for the
// constant the parser makes of it: a string's content, an integer that
// fits in 32 bits in decimal, any other number as written (with the minus
// sign folded in).
func (l litSpan) value(src string) string {
	if l.num < 0 {
		body := src[l.start+1 : l.end-1]
		if strings.Contains(body, "''") {
			return strings.ReplaceAll(body, "''", "'")
		}
		return body
	}
	digits := src[l.num:l.end]
	neg := l.num > l.start
	if isDigits(digits) {
		if v, err := strconv.ParseInt(digits, 10, 32); err == nil {
			if !neg && (digits[0] != '0' || len(digits) == 1) {
				return digits
			}
			if neg {
				v = -v
			}
			return strconv.FormatInt(v, 10)
		}
	}
	if neg {
		return "-" + digits
	}
	return digits
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return len(s) > 0
}

// plainNumber reports whether s is a decimal number PostgreSQL reads as
// written: digits with an optional fraction and exponent (no underscores,
// no 0x/0o/0b prefixes, no trailing junk).
func plainNumber(s string) bool {
	i, n := 0, len(s)
	d := 0
	for i < n && isDigit(s[i]) {
		i++
		d++
	}
	if i < n && s[i] == '.' {
		i++
		for i < n && isDigit(s[i]) {
			i++
			d++
		}
	}
	if d == 0 {
		return false
	}
	if i < n && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < n && (s[i] == '+' || s[i] == '-') {
			i++
		}
		e := i
		for i < n && isDigit(s[i]) {
			i++
		}
		if i == e {
			return false
		}
	}
	return i == n
}

// pgOpLen is the length PostgreSQL's lexer gives the operator token op: a
// multi-character operator ending in + or - loses them unless it contains
// one of ~ ! @ # % ^ & | ` ? (so "=-5" is "=" then "-5").
func pgOpLen(op string) int {
	n := len(op)
	if n < 2 || op[0] == ':' || (op[n-1] != '+' && op[n-1] != '-') {
		return n
	}
	if strings.ContainsAny(op[:n-1], "~!@#%^&|`?") {
		return n
	}
	for n > 1 && (op[n-1] == '+' || op[n-1] == '-') {
		n--
	}
	return n
}

// plainStringEnd returns the end of the standard string literal whose
// opening quote is at i, or -1 when it is not terminated.
func plainStringEnd(s string, i int) int {
	for i++; i < len(s); i++ {
		if s[i] == '\'' {
			if i+1 < len(s) && s[i+1] == '\'' {
				i++
				continue
			}
			return i + 1
		}
	}
	return -1
}

func isKeyword(s string, a, b int, kws ...string) bool {
	for _, kw := range kws {
		if keyword(s, a, b, kw) {
			return true
		}
	}
	return false
}

// firstKeyword reports whether a statement starting with the identifier
// s[a:b] may be normalized.
func firstKeyword(s string, a, b int) bool {
	return isKeyword(s, a, b, "select", "insert", "update", "delete", "merge", "with", "values", "table",
		"execute", "begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release")
}

// exprKeyword reports whether the identifier s[a:b] is a keyword after which
// an expression starts (so a literal after it is a plain constant and a '-'
// after it is a unary minus).
func exprKeyword(s string, a, b int) bool {
	return isKeyword(s, a, b, "select", "where", "and", "or", "not", "then", "else", "when", "case", "in",
		"between", "like", "ilike", "is", "distinct", "from", "values", "set", "limit", "offset",
		"returning", "having", "on", "by", "for")
}

// Where the normalizer is in a type name (after :: or AS), to recognize
// type modifiers: numeric(10, 2), character varying(80).
const (
	typeNone  = iota
	typeStart // after :: or AS (or schema.): the type name follows
	typeName  // in the type name
)

// typeWord reports whether s[a:b] continues a type name of several words.
func typeWord(s string, a, b int) bool {
	return isKeyword(s, a, b, "varying", "precision", "with", "without", "time", "zone",
		"year", "month", "day", "hour", "minute", "second", "to")
}

// byListEnd reports whether the keyword s[a:b] ends an ORDER BY, GROUP BY
// or PARTITION BY list.
func byListEnd(s string, a, b int) bool {
	return isKeyword(s, a, b, "limit", "offset", "fetch", "for", "having", "window", "union", "intersect",
		"except", "returning", "where", "from", "select", "into", "on", "using", "rows", "range", "groups",
		"values", "set", "do", "when", "then", "else", "end")
}

// token is a token of the normalizer's scan.
type token struct {
	k    tokKind
	a, b int
}

func (t token) punct(s string, c byte) bool { return t.k == tokPunct && s[t.a] == c }

// exprStart reports whether an expression may start right after t (none:
// the start of the text).
func (t token) exprStart(s string) bool {
	switch t.k {
	case tokEOF:
		return true
	case tokOp:
		return true
	case tokPunct:
		return s[t.a] == '(' || s[t.a] == ',' || s[t.a] == '[' || s[t.a] == ';'
	case tokIdent:
		return exprKeyword(s, t.a, t.b)
	}
	return false
}

// normalizer builds the normalized key of a text. It is reused through a
// pool.
type normalizer struct {
	key  []byte
	lits []litSpan
}

var normalizers = sync.Pool{New: func() any { return &normalizer{} }}

// normalize fills nz with the normalized text of s and its literals and
// reports whether s is safe to normalize and has any literal.
func (nz *normalizer) normalize(s string) bool {
	nz.key = nz.key[:0]
	nz.lits = nz.lits[:0]
	if len(s) == 0 || strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
		return false
	}
	var (
		p1, p2    token // the previous two tokens (tokEOF: none)
		pend      litSpan
		pending   bool
		stmtStart = true
		depth     = 0
		typmod    uint64 // bit d: the bracket at depth d holds type modifiers
		typ       = typeNone
		byDepth   = -1 // depth of the ORDER/GROUP BY list being read, or -1
		last      = 0  // s[last:] is not in the key yet
	)
	p1.k, p2.k = tokEOF, tokEOF
	// emit puts the pending literal into the key once the token after it,
	// next, is known.
	emit := func(next token) bool {
		pending = false
		if next.punct(s, '[') || next.punct(s, '.') {
			return false // $1[1] and $1.f parse, a literal there does not
		}
		if pend.num > pend.start && next.k == tokOp && next.b-next.a == 2 && s[next.a] == ':' {
			pend.start = pend.num // -5::int is the negation of 5::int
		}
		if pend.start > 0 && isIdentCont(s[pend.start-1]) || pend.end < len(s) && isIdentCont(s[pend.end]) {
			return false // the placeholder would run into its neighbour
		}
		nz.key = append(nz.key, s[last:pend.start]...)
		nz.key = append(nz.key, '$')
		nz.key = strconv.AppendInt(nz.key, int64(len(nz.lits)+1), 10)
		nz.lits = append(nz.lits, pend)
		last = pend.end
		return true
	}
	for i := 0; ; {
		k, a, b := nextToken(s, i)
		if k == tokOp {
			b = a + pgOpLen(s[a:b])
		}
		t := token{k, a, b}
		if pending && !emit(t) {
			return false
		}
		if k == tokEOF {
			break
		}
		i = b
		if stmtStart && !t.punct(s, ';') {
			if !(k == tokIdent && firstKeyword(s, a, b) || t.punct(s, '(')) {
				return false
			}
			stmtStart = false
		}
		inTypmod := typmod&(1<<depth) != 0
		prevTyp := typ
		typ = typeNone
		switch k {
		case tokParam:
			return false
		case tokIdent, tokQuotedIdent:
			if strings.IndexByte(s[a:b], '$') >= 0 {
				return false
			}
			if k == tokIdent {
				switch {
				case keyword(s, a, b, "by"):
					byDepth = depth
				case depth == byDepth && byListEnd(s, a, b):
					byDepth = -1
				}
			}
			switch {
			case prevTyp == typeStart && !(k == tokIdent && isKeyword(s, a, b, "materialized", "not")) ||
				prevTyp == typeName && k == tokIdent && typeWord(s, a, b):
				typ = typeName
			case k == tokIdent && keyword(s, a, b, "as"):
				typ = typeStart
			}
		case tokString:
			if s[a] != '\'' || plainStringEnd(s, a) != b || p1.k == tokString {
				return false
			}
			if !inTypmod && p1.exprStart(s) && !(p1.k == tokOp && s[p1.a] == ':') {
				pend, pending = litSpan{start: a, end: b, num: -1}, true
			}
		case tokNumber:
			if !plainNumber(s[a:b]) || p1.punct(s, '.') {
				return false
			}
			ordinal := p1.k == tokIdent && keyword(s, p1.a, p1.b, "by") || p1.punct(s, ',') && depth == byDepth
			if !inTypmod && !ordinal {
				pend, pending = litSpan{start: a, end: b, num: a}, true
				if p1.k == tokOp && p1.b-p1.a == 1 && s[p1.a] == '-' && p2.exprStart(s) {
					pend.start = p1.a // a unary minus: part of the constant
				}
			}
		case tokOp:
			if b-a == 2 && s[a] == ':' {
				typ = typeStart
			}
		case tokPunct:
			switch s[a] {
			case '$':
				return false
			case '(', '[':
				if depth++; depth >= 64 {
					return false
				}
				if prevTyp == typeName || inTypmod {
					typmod |= 1 << depth
				}
			case ')', ']':
				if depth > 0 {
					typmod &^= 1 << depth
					depth--
				}
				if byDepth > depth {
					byDepth = -1
				}
			case ';':
				if depth != 0 {
					return false
				}
				stmtStart = true
				byDepth = -1
			case '.':
				if prevTyp == typeName {
					typ = typeStart // schema.type
				}
			}
		}
		p2, p1 = p1, t
	}
	if len(nz.lits) == 0 {
		return false
	}
	nz.key = append(nz.key, s[last:]...)
	return true
}

// Notes of a template name the placeholder n as noteRef(n); instantiation
// puts the literal's value there.
const (
	noteRefOpen  = '\x00'
	noteRefClose = '\x01'
)

func noteRef(n int) string {
	return string(noteRefOpen) + strconv.Itoa(n) + string(noteRefClose)
}

// pattern is a text with placeholders: parts[0] lit(refs[0]) parts[1] ...
type pattern struct {
	parts []string
	refs  []patRef
}

type patRef struct {
	lit  int   // the literal, 0-based; injectRef: the injected parameter
	wrap uint8 // when to bracket the literal
}

// injectRef stands for the parameter tracked mode injects, which is $1 in
// the text itself (see trackWrite).
const injectRef = -1

const (
	wrapAlways uint8 = 1 << iota // $1[1], $1.f: a literal needs brackets
	wrapNeg                      // -$1, $1::t: a negative number needs brackets
)

// newPattern finds the placeholders ($1..$n) of text. exact: the text is
// (part of) the normalized input itself, whose literals go back exactly as
// written; otherwise it is deparser output, where a literal may need
// brackets to mean what the placeholder means. $n+1, the injected
// parameter, is accepted where inject is true.
func newPattern(text string, n int, exact bool, inject ...bool) (pattern, bool) {
	var p pattern
	last := 0
	for i := 0; ; {
		k, a, b := nextToken(text, i)
		if k == tokEOF {
			break
		}
		i = b
		if k != tokParam {
			continue
		}
		v, err := strconv.Atoi(text[a+1 : b])
		if err == nil && v == n+1 && len(inject) > 0 && inject[0] {
			p.parts = append(p.parts, text[last:a])
			p.refs = append(p.refs, patRef{lit: injectRef})
			last = b
			continue
		}
		if err != nil || v < 1 || v > n {
			return pattern{}, false
		}
		ref := patRef{lit: v - 1}
		if !exact {
			nk, na, nb := nextToken(text, b)
			switch {
			case nk == tokPunct && (text[na] == '[' || text[na] == '.'):
				ref.wrap |= wrapAlways
			case nk == tokOp && nb-na == 2 && text[na] == ':':
				ref.wrap |= wrapNeg
			}
			if a > 0 && (isOpChar(text[a-1]) || text[a-1] == ':') {
				ref.wrap |= wrapNeg
			}
		}
		p.parts = append(p.parts, text[last:a])
		p.refs = append(p.refs, ref)
		last = b
	}
	p.parts = append(p.parts, text[last:])
	return p, true
}

func (p *pattern) size() int {
	n := 0
	for _, s := range p.parts {
		n += len(s)
	}
	return n + 16*len(p.refs)
}

// render puts the literals of src into the pattern.
func (p *pattern) render(src string, lits []litSpan, exact bool) string {
	if len(p.refs) == 0 {
		return p.parts[0]
	}
	n := 0
	for _, s := range p.parts {
		n += len(s)
	}
	for _, r := range p.refs {
		if r.lit == injectRef {
			n += 2
			continue
		}
		l := lits[r.lit]
		n += l.end - l.start + 3
	}
	var b strings.Builder
	b.Grow(n)
	for i, r := range p.refs {
		b.WriteString(p.parts[i])
		if r.lit == injectRef {
			b.WriteString("$1")
			continue
		}
		l := lits[r.lit]
		if exact {
			b.WriteString(src[l.start:l.end])
			continue
		}
		neg := l.num > l.start
		wrap := r.wrap&wrapAlways != 0 || neg && r.wrap&wrapNeg != 0
		if wrap {
			b.WriteByte('(')
		}
		if neg {
			// Whatever stood between the minus and the digits (a comment
			// even) stays out of deparsed text.
			b.WriteByte('-')
			b.WriteString(src[l.num:l.end])
		} else {
			b.WriteString(src[l.start:l.end])
		}
		if wrap {
			b.WriteByte(')')
		}
	}
	b.WriteString(p.parts[len(p.parts)-1])
	return b.String()
}

// template is the plan of a literal-normalized text.
type template struct {
	bad     bool // unusable: plan texts of this shape one by one
	changed bool
	single  bool    // changed, one statement: Plan.SQL is the statement's SQL
	sql     pattern // Plan.SQL when changed and not single
	stmts   []Statement
	stmtSQL []pattern
	inject  []*injectPattern // per statement: its Inject's texts, or nil
	exact   []bool           // the statement was not rewritten: its SQL is the input's text
	notes   [][]bool
	size    int
}

// injectPattern is an Injection's texts as patterns.
type injectPattern struct {
	sql, pre, post pattern
}

// newTemplate plans the normalized text norm, which has n placeholders.
func (r *Rewriter) newTemplate(norm string, path []string, n int) *template {
	bad := &template{bad: true, size: 2*len(norm) + 256}
	p, rewritten, err := r.planText(norm, path, n)
	if err != nil {
		return bad
	}
	t := &template{changed: p.Changed, stmts: p.Statements, size: 2*len(norm) + 512}
	for i := range p.Statements {
		st := &p.Statements[i]
		if st.Inner != nil || !templateValue(st.Expected, n) || !templateValues(st.ExecuteArgs, n) {
			return bad
		}
		for _, kv := range st.Keys {
			if !templateValue(kv.Value, n) {
				return bad
			}
		}
		exact := !rewritten[i]
		sp, ok := newPattern(st.SQL, n, exact)
		if !ok {
			return bad
		}
		t.stmtSQL = append(t.stmtSQL, sp)
		t.exact = append(t.exact, exact)
		var ip *injectPattern
		if st.Inject != nil {
			ip = &injectPattern{}
			var ok1, ok2, ok3 bool
			ip.sql, ok1 = newPattern(st.Inject.SQL, n, false, true)
			ip.pre, ok2 = newPattern(st.Inject.pre, n, false)
			ip.post, ok3 = newPattern(st.Inject.post, n, false)
			if !ok1 || !ok2 || !ok3 {
				return bad
			}
			t.size += ip.sql.size() + ip.pre.size() + ip.post.size()
		}
		t.inject = append(t.inject, ip)
		var refs []bool
		for j, note := range st.Notes {
			if strings.IndexByte(note, noteRefOpen) >= 0 {
				if refs == nil {
					refs = make([]bool, len(st.Notes))
				}
				refs[j] = true
			}
			t.size += len(note)
		}
		t.notes = append(t.notes, refs)
		t.size += 256 + sp.size()
	}
	if p.Changed {
		if len(p.Statements) == 1 && p.SQL == p.Statements[0].SQL {
			t.single = true
		} else {
			sp, ok := newPattern(p.SQL, n, false)
			if !ok {
				return bad
			}
			t.sql = sp
			t.size += sp.size()
		}
	}
	return t
}

// templateValue reports whether v can be instantiated: a parameter stands
// for a literal; an expression must not contain one (its text would have to
// be rewritten).
func templateValue(v Value, n int) bool {
	switch v.Kind {
	case ValueParam:
		return v.Param >= 1 && v.Param <= n
	case ValueExpr:
		for i := 0; ; {
			k, _, b := nextToken(v.Expr, i)
			if k == tokEOF {
				return true
			}
			if k == tokParam {
				return false
			}
			i = b
		}
	}
	return true
}

func templateValues(vs []Value, n int) bool {
	for _, v := range vs {
		if !templateValue(v, n) {
			return false
		}
	}
	return true
}

// instantiate is the plan of src, whose literals are lits.
func (t *template) instantiate(src string, lits []litSpan) *Plan {
	p := &Plan{SQL: src, Changed: t.changed, Statements: make([]Statement, len(t.stmts))}
	val := func(v Value) Value {
		if v.Kind != ValueParam {
			return v
		}
		return Value{Kind: ValueLiteral, Literal: lits[v.Param-1].value(src)}
	}
	for i := range t.stmts {
		st := t.stmts[i]
		st.SQL = t.stmtSQL[i].render(src, lits, t.exact[i])
		if ip := t.inject[i]; ip != nil {
			st.Inject = &Injection{Param: st.Inject.Param, Type: st.Inject.Type,
				SQL: ip.sql.render(src, lits, false), pre: ip.pre.render(src, lits, false), post: ip.post.render(src, lits, false)}
		}
		st.Expected = val(st.Expected)
		for _, kv := range st.Keys {
			if kv.Value.Kind == ValueParam {
				keys := make([]KeyValue, len(st.Keys))
				for k, kv := range st.Keys {
					keys[k] = KeyValue{Column: kv.Column, Value: val(kv.Value)}
				}
				st.Keys = keys
				break
			}
		}
		for _, a := range st.ExecuteArgs {
			if a.Kind == ValueParam {
				args := make([]Value, len(st.ExecuteArgs))
				for k, a := range st.ExecuteArgs {
					args[k] = val(a)
				}
				st.ExecuteArgs = args
				break
			}
		}
		if refs := t.notes[i]; refs != nil {
			notes := make([]string, len(st.Notes))
			for j, note := range st.Notes {
				if refs[j] {
					note = fillNote(note, src, lits)
				}
				notes[j] = note
			}
			st.Notes = notes
		}
		p.Statements[i] = st
	}
	if t.changed {
		if t.single {
			p.SQL = p.Statements[0].SQL
		} else {
			p.SQL = t.sql.render(src, lits, false)
		}
	}
	return p
}

// fillNote replaces the placeholders of a template's note with the values
// of the literals.
func fillNote(note, src string, lits []litSpan) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(note, noteRefOpen)
		if i < 0 {
			b.WriteString(note)
			return b.String()
		}
		j := strings.IndexByte(note[i:], noteRefClose)
		n, err := 0, error(nil)
		if j > 0 {
			n, err = strconv.Atoi(note[i+1 : i+j])
		}
		if j <= 0 || err != nil || n < 1 || n > len(lits) {
			b.WriteString(note) // cannot happen: the planner wrote it
			return b.String()
		}
		b.WriteString(note[:i])
		b.WriteString(lits[n-1].value(src))
		note = note[i+j+1:]
	}
}

// planLiterals plans sql (the rewriter's copy) through its literal-
// normalized template. ok is false when sql cannot be normalized or its
// template is bad: the caller plans sql itself.
func (r *Rewriter) planLiterals(sql, searchPath string, path []string) (plan *Plan, err error, ok bool) {
	nz := normalizers.Get().(*normalizer)
	defer func() {
		if cap(nz.key) <= 64<<10 {
			normalizers.Put(nz)
		}
	}()
	if !nz.normalize(sql) {
		return nil, nil, false
	}
	r.mu.RLock()
	e := r.tmpls[searchPath][string(nz.key)]
	r.mu.RUnlock()
	if e == nil {
		if exceedsDepth(sql, r.opts.MaxDepth) {
			return nil, nil, false // the caller reports it
		}
		key := string(nz.key)
		t := r.newTemplate(key, path, len(nz.lits))
		// The text's own plan is the answer this time, and the check of
		// the template.
		plan, err = r.plan(sql, path)
		if !t.bad && (err != nil || planDiff(t.instantiate(sql, nz.lits), plan, true) != "") {
			t = &template{bad: true, size: t.size}
		}
		if t.bad {
			r.tmplBad.Add(1)
		}
		sp := strings.Clone(searchPath)
		r.storeIn(&r.tmpls, sp, key, &cacheEntry{tmpl: t, size: t.size})
		r.store(sp, sql, &cacheEntry{plan: plan, err: err, size: entrySize(sql, plan)})
		return plan, err, true
	}
	if e.tmpl.bad {
		return nil, nil, false
	}
	plan = e.tmpl.instantiate(sql, nz.lits)
	r.tmplHits.Add(1)
	if r.seenBefore(searchPath, sql) {
		r.store(strings.Clone(searchPath), sql, &cacheEntry{plan: plan, size: entrySize(sql, plan)})
	}
	return plan, nil, true
}

// seenBefore reports whether the text was instantiated recently, and
// remembers it.
func (r *Rewriter) seenBefore(searchPath, sql string) bool {
	h := maphash.String(r.seed, sql) ^ maphash.String(r.seed, searchPath)*0x9e3779b97f4a7c15 | 1
	slot := &r.seen[h%seenSlots]
	if slot.Load() == h {
		return true
	}
	slot.Store(h)
	return false
}

// planDiff describes how two plans of the same text differ, or returns "".
// SQL texts may differ where they parse to the same tree. notes: compare
// the notes too.
func planDiff(a, b *Plan, notes bool) string {
	if a.Changed != b.Changed {
		return "Changed differs"
	}
	if len(a.Statements) != len(b.Statements) {
		return "number of statements differs"
	}
	if !a.Changed && a.SQL != b.SQL {
		return "unchanged SQL differs"
	}
	if a.SQL != b.SQL && !sameSQL(a.SQL, b.SQL) {
		return "SQL parses to different trees"
	}
	for i := range a.Statements {
		if d := stmtDiff(&a.Statements[i], &b.Statements[i], notes); d != "" {
			return "statement " + strconv.Itoa(i) + ": " + d
		}
	}
	return ""
}

func stmtDiff(x, y *Statement, notes bool) string {
	switch {
	case (x.Policy == nil) != (y.Policy == nil) || x.Policy != nil && x.Policy.QualifiedName() != y.Policy.QualifiedName():
		return "policy differs"
	case x.Kind != y.Kind || x.Incremented != y.Incremented || x.Checked != y.Checked || x.Refuse != y.Refuse:
		return "kind, increment, check or refusal differs"
	case x.Expected != y.Expected:
		return "expected value differs"
	case !slices.Equal(x.Keys, y.Keys):
		return "keys differ"
	case !slices.Equal(x.ExecuteArgs, y.ExecuteArgs):
		return "EXECUTE arguments differ"
	case x.Command != y.Command || x.QuietWhenEmpty != y.QuietWhenEmpty || x.Discard != y.Discard:
		return "command facts differ"
	case x.Untracked != y.Untracked || x.AddedReturning != y.AddedReturning || x.NewVersion != y.NewVersion ||
		x.WrittenOver != y.WrittenOver || x.WrittenOverField != y.WrittenOverField ||
		!slices.Equal(x.Hidden, y.Hidden) || !slices.EqualFunc(x.Captures, y.Captures, sameCapture):
		return "tracking differs"
	case (x.Inject == nil) != (y.Inject == nil):
		return "injection differs"
	case x.Inject != nil && (x.Inject.Param != y.Inject.Param || x.Inject.Type != y.Inject.Type ||
		x.Inject.SQL != y.Inject.SQL && !sameSQL(x.Inject.SQL, y.Inject.SQL) ||
		!sameSQL(x.WithExpected("0"), y.WithExpected("0"))):
		return "injected SQL differs"
	case x.PrepareName != y.PrepareName || x.ExecuteName != y.ExecuteName ||
		x.DeallocateName != y.DeallocateName || x.DeallocateAll != y.DeallocateAll:
		return "names differ"
	case notes && !slices.Equal(x.Notes, y.Notes):
		return "notes differ"
	case x.SQL != y.SQL && !sameSQL(x.SQL, y.SQL):
		return "SQL parses to different trees"
	case (x.Inner == nil) != (y.Inner == nil):
		return "inner statement differs"
	case x.Inner != nil:
		if d := stmtDiff(x.Inner, y.Inner, notes); d != "" {
			return "inner: " + d
		}
	}
	return ""
}

func sameCapture(a, b Capture) bool {
	return a.Policy.QualifiedName() == b.Policy.QualifiedName() && a.Ref == b.Ref &&
		slices.Equal(a.Keys, b.Keys) && a.Version == b.Version
}

// sameSQL reports whether two texts parse to the same tree (locations
// aside).
func sameSQL(a, b string) bool {
	ta, err := pg.Parse(a)
	if err != nil {
		return false
	}
	tb, err := pg.Parse(b)
	return err == nil && sameTree(ta, tb)
}
