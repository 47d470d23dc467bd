package rewrite

import (
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Options bound the work the rewriter does. Zero values take the defaults.
type Options struct {
	MaxSQLBytes int // longest text handed to the parser; 0 = 1 MiB
	MaxDepth    int // estimated parse-tree nesting limit; 0 = 1000
	CacheSize   int // cached plans; 0 = 4096, negative = no cache
	CacheBytes  int // approximate memory the cached plans may hold; 0 = 64 MiB
	// Tracking turns tracked mode on: policies in tracked, required and
	// observe modes get hidden result columns, captures and injections
	// (see plan.go). Off, they are planned as explicit ones are (required
	// still refuses a write without a version predicate), and reads of
	// their tables keep NeedsPlan's fast path: for a caller that does not
	// strip hidden columns.
	Tracking bool
	// Aggregates names aggregate functions beyond PostgreSQL's built-in
	// ones (as stored: unquoted names in lower case), for example every
	// name of pg_proc WHERE prokind = 'a'. A SELECT that calls one is an
	// aggregate query, whose result tracked mode cannot extend; a name it
	// does not know is taken for a plain function, and the extended
	// statement of an aggregate query without GROUP BY then fails.
	Aggregates []string
}

const (
	defaultMaxSQLBytes = 1 << 20
	defaultMaxDepth    = 1000
	defaultCacheSize   = 4096
	defaultCacheBytes  = 64 << 20
)

// ErrTooLong and ErrTooDeep are the Err of a ParseError for text refused
// before it reaches the parser.
var (
	ErrTooLong = errors.New("statement text longer than the limit")
	ErrTooDeep = errors.New("statement nests deeper than the limit")
	// ErrDeparse is returned (wrapped) when a rewritten tree cannot be turned
	// back into SQL that parses to that very tree (pg_query's deparser gets a
	// few rare constructs wrong). Treat the text like one that cannot be
	// parsed.
	ErrDeparse = errors.New("rewritten statement cannot be deparsed")
)

// ParseError is returned when a text cannot be parsed, is longer than
// Options.MaxSQLBytes or nests deeper than Options.MaxDepth.
type ParseError struct {
	SQL string
	Err error
}

func (e *ParseError) Error() string { return "rewrite: cannot parse statement: " + e.Err.Error() }
func (e *ParseError) Unwrap() error { return e.Err }

// Rewriter plans statements against a fixed set of table policies. It is
// safe for concurrent use.
type Rewriter struct {
	policies []Policy
	byTable  map[string][]*Policy
	match    *matcher
	opts     Options

	// fullAnalysis turns off the per-statement prefilter (tests use it to
	// check the prefilter against the analysis).
	fullAnalysis bool
	// direct turns off literal normalization: every text missing the
	// cache is parsed and planned itself (tests compare the two paths).
	direct bool
	// tracking: some policy is tracked (Policy.Tracked): reads of its
	// table are planned; trackedMatch finds the names of those tables.
	tracking     bool
	trackedMatch *matcher
	aggregates   map[string]bool

	mu     sync.RWMutex
	cache  map[string]map[string]*cacheEntry // searchPath -> SQL -> entry
	tmpls  map[string]map[string]*cacheEntry // searchPath -> normalized SQL -> template
	n      int                               // entries in cache and tmpls together
	bytes  int
	hits   atomic.Uint64
	misses atomic.Uint64

	// Literal-normalized planning (normalize.go).
	tmplHits atomic.Uint64 // plans instantiated from a template
	tmplBad  atomic.Uint64 // templates found unusable when built
	seed     maphash.Seed
	seen     [seenSlots]atomic.Uint64 // hashes of texts instantiated once
}

type cacheEntry struct {
	plan *Plan
	err  error
	tmpl *template // in tmpls
	size int
}

// New returns a Rewriter for the policies, which it copies.
func New(policies []Policy, opts Options) *Rewriter {
	if opts.MaxSQLBytes <= 0 {
		opts.MaxSQLBytes = defaultMaxSQLBytes
	}
	if opts.MaxDepth <= 0 {
		opts.MaxDepth = defaultMaxDepth
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = defaultCacheSize
	}
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = defaultCacheBytes
	}
	r := &Rewriter{
		policies: make([]Policy, len(policies)),
		byTable:  map[string][]*Policy{},
		opts:     opts,
		cache:    map[string]map[string]*cacheEntry{},
		tmpls:    map[string]map[string]*cacheEntry{},
		seed:     maphash.MakeSeed(),
	}
	tables := make([]string, 0, len(policies))
	var tracked []string
	for i, p := range policies {
		p.Key = append([]string(nil), p.Key...)
		r.policies[i] = p
		tables = append(tables, p.Table)
		if p.Tracked() && opts.Tracking {
			r.tracking = true
			tracked = append(tracked, p.Table)
		}
	}
	r.trackedMatch = newTableMatcher(tracked)
	r.aggregates = map[string]bool{}
	for _, a := range opts.Aggregates {
		r.aggregates[a] = true
	}
	for i := range r.policies {
		p := &r.policies[i]
		r.byTable[p.Table] = append(r.byTable[p.Table], p)
	}
	r.match = newMatcher(tables)
	return r
}

// Policies returns a copy of the rewriter's policies.
func (r *Rewriter) Policies() []Policy {
	out := make([]Policy, len(r.policies))
	for i, p := range r.policies {
		p.Key = append([]string(nil), p.Key...)
		out[i] = p
	}
	return out
}

// MayTouch is a cheap text prefilter: false means the text names no guarded
// table and holds no PREPARE, EXECUTE, DEALLOCATE or DISCARD, so Plan would
// leave it unchanged with only KindOther statements. It may answer true for
// text that turns out to be unguarded. It does not allocate.
func (r *Rewriter) MayTouch(sql string) bool { return r.match.match(sql) }

// CacheStats reports the plan cache's hits and misses since New.
func (r *Rewriter) CacheStats() (hits, misses uint64) { return r.hits.Load(), r.misses.Load() }

// Plan parses sql and returns its rewrite plan. searchPath resolves
// unqualified table names: the session's effective search_path as a
// comma-separated list of schema names ("" means "public"), or what the
// server said the guarded names resolve to (ExactPath). Plans are cached by
// (searchPath, sql) and shared: callers must not modify them. A plan never
// refers to the caller's memory (the text is copied). The error, if any, is
// a *ParseError, or wraps ErrDeparse.
//
// Texts that differ only in their literals share one parse: the first is
// planned with its literals replaced by parameters and the result is kept
// as a template (see normalize.go); the plan of a later text is the
// template with that text's literals put back. Its SQL, when Changed, then
// spells the literals as the text does (the deparser may spell them
// differently, 00012 as 12) and may bracket a negative number; it parses to
// the same tree.
func (r *Rewriter) Plan(sql string, searchPath string) (*Plan, error) {
	if len(sql) > r.opts.MaxSQLBytes {
		return nil, &ParseError{SQL: strings.Clone(sql), Err: fmt.Errorf("%w (%d > %d bytes)", ErrTooLong, len(sql), r.opts.MaxSQLBytes)}
	}
	if r.opts.CacheSize > 0 {
		r.mu.RLock()
		e := r.cache[searchPath][sql]
		r.mu.RUnlock()
		if e != nil {
			r.hits.Add(1)
			return e.plan, e.err
		}
	}
	r.misses.Add(1)
	sql = strings.Clone(sql)
	path := parseSearchPath(searchPath)
	if r.opts.CacheSize > 0 && !r.direct {
		// A text that fits a known template has its template's nesting;
		// planLiterals checks the depth itself before parsing a new one.
		if plan, err, ok := r.planLiterals(sql, searchPath, path); ok {
			return plan, err
		}
	}
	if exceedsDepth(sql, r.opts.MaxDepth) {
		return nil, &ParseError{SQL: sql, Err: fmt.Errorf("%w (%d)", ErrTooDeep, r.opts.MaxDepth)}
	}
	plan, err := r.plan(sql, path)
	if r.opts.CacheSize > 0 {
		r.store(strings.Clone(searchPath), sql, &cacheEntry{plan: plan, err: err, size: entrySize(sql, plan)})
	}
	return plan, err
}

func entrySize(sql string, p *Plan) int {
	n := 2*len(sql) + 256
	if p != nil {
		if p.Changed {
			n += len(p.SQL)
		}
		for i := range p.Statements {
			st := &p.Statements[i]
			n += 256
			if st.Inner != nil {
				n += 256 + len(st.Inner.SQL)
			}
			if st.Inject != nil {
				n += 64 + len(st.Inject.SQL) + len(st.Inject.pre) + len(st.Inject.post)
			}
			n += 64 * (len(st.Hidden) + len(st.Captures))
			if p.Changed {
				n += len(st.SQL)
			}
		}
	}
	return n
}

// store caches a plan by exact text.
func (r *Rewriter) store(searchPath, sql string, e *cacheEntry) {
	r.storeIn(&r.cache, searchPath, sql, e)
}

// storeIn adds e to one of the caches (cache or tmpls), which share the
// bounds.
func (r *Rewriter) storeIn(m *map[string]map[string]*cacheEntry, searchPath, key string, e *cacheEntry) {
	if e.size > r.opts.CacheBytes/4 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := (*m)[searchPath][key]; old != nil {
		return // planned concurrently; keep the first
	}
	if r.n >= r.opts.CacheSize || r.bytes+e.size > r.opts.CacheBytes {
		r.evictLocked(e.size)
	}
	inner := (*m)[searchPath]
	if inner == nil {
		inner = map[string]*cacheEntry{}
		(*m)[searchPath] = inner
	}
	inner[key] = e
	r.n++
	r.bytes += e.size
}

// evictLocked drops about a quarter of the cache (in map order, which is
// effectively random), and more if need be to make room for size bytes.
// Plans cached by exact text go first: a template stands for every text of
// its shape and costs the most to rebuild.
func (r *Rewriter) evictLocked(size int) {
	targetN := r.opts.CacheSize - r.opts.CacheSize/4 - 1
	targetBytes := r.opts.CacheBytes - r.opts.CacheBytes/4 - size
	for _, m := range []map[string]map[string]*cacheEntry{r.cache, r.tmpls} {
		for sp, inner := range m {
			for k, e := range inner {
				if r.n <= targetN && r.bytes <= targetBytes {
					return
				}
				delete(inner, k)
				r.n--
				r.bytes -= e.size
			}
			if len(inner) == 0 {
				delete(m, sp)
			}
		}
	}
}

// parseSearchPath splits a resolved search_path.
func parseSearchPath(sp string) []string {
	if path, ok := exactEntries(sp); ok {
		return path
	}
	var out []string
	for _, s := range strings.Split(sp, ",") {
		s = strings.TrimSpace(s)
		if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
			s = strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
		}
		if s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		out = []string{"public"}
	}
	return out
}

// plan parses and rewrites; sql is the rewriter's own copy.
func (r *Rewriter) plan(sql string, path []string) (*Plan, error) {
	p, _, err := r.planText(sql, path, 0)
	return p, err
}

// planText is plan; it also reports which statements were rewritten.
// tmplN > 0: sql is a literal-normalized template with tmplN placeholders
// (notes show its parameters as placeholders for the literals).
func (r *Rewriter) planText(sql string, path []string, tmplN int) (*Plan, []bool, error) {
	p, rewritten, err := r.planTextOnce(sql, path, tmplN, false)
	if err != nil && r.tracking && errors.Is(err, ErrDeparse) {
		// A read is never refused for the rewriter's sake: planned again
		// without hidden columns, it goes untracked.
		p, rewritten, err = r.planTextOnce(sql, path, tmplN, true)
	}
	return p, rewritten, err
}

// planTextOnce is planText; skipReads leaves tracked reads alone (marked
// Untracked).
func (r *Rewriter) planTextOnce(sql string, path []string, tmplN int, skipReads bool) (*Plan, []bool, error) {
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, nil, &ParseError{SQL: sql, Err: err}
	}
	p := &Plan{SQL: sql}
	pl := &planner{r: r, path: path, version: tree.Version, template: tmplN > 0, tmplN: tmplN, skipReads: skipReads}
	changed := false
	var rewritten []bool
	for _, raw := range tree.Stmts {
		text := stmtText(sql, raw)
		if !r.fullAnalysis && !r.match.match(text) {
			// Names no guarded table and is no PREPARE, EXECUTE, DISCARD or
			// DEALLOCATE: nothing to look at.
			st := Statement{SQL: text}
			st.Command, st.QuietWhenEmpty = commandOf(raw.Stmt)
			p.Statements = append(p.Statements, st)
			rewritten = append(rewritten, false)
			continue
		}
		st, ch, err := pl.statement(raw.Stmt, text)
		if err != nil {
			return nil, nil, err
		}
		changed = changed || ch
		p.Statements = append(p.Statements, st)
		rewritten = append(rewritten, ch)
	}
	if !changed {
		return p, rewritten, nil
	}
	// The deparser is not perfect (pg_query v5 emits unparsable SQL for
	// "FOR UPDATE ... SKIP LOCKED", and others have been reported): the text
	// sent must parse back to the very tree that was rewritten. When the
	// deparse of the whole tree does not, the statements' own texts (the
	// original of each unchanged statement, the deparse of each changed one)
	// are tried instead, under the same check.
	var out string
	if len(tree.Stmts) == 1 {
		out = p.Statements[0].SQL // already the deparse of the whole tree
	} else {
		out, err = pg.Deparse(tree)
	}
	if err != nil || !parsesTo(out, tree) {
		out = joinStatements(p.Statements)
		if !parsesTo(out, tree) {
			return nil, nil, fmt.Errorf("rewrite: %w: the result does not parse back to the rewritten tree", ErrDeparse)
		}
	}
	p.SQL = out
	p.Changed = true
	return p, rewritten, nil
}

// parsesTo reports whether sql parses to tree (ignoring locations, which it
// clears in tree).
func parsesTo(sql string, tree *pg.ParseResult) bool {
	again, err := pg.Parse(sql)
	return err == nil && sameTree(tree, again)
}

// joinStatements joins the statements' texts. A newline ends a trailing
// line comment before the separator.
func joinStatements(sts []Statement) string {
	var b strings.Builder
	for i := range sts {
		if i > 0 {
			b.WriteString(";\n")
		}
		b.WriteString(sts[i].SQL)
		if strings.Contains(sts[i].SQL, "--") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// sameTree reports whether two parse results are equal but for locations.
// It clears the locations of both.
func sameTree(a, b *pg.ParseResult) bool {
	if len(a.Stmts) != len(b.Stmts) {
		return false
	}
	clearLocations(a.ProtoReflect())
	clearLocations(b.ProtoReflect())
	return proto.Equal(a, b)
}

func clearLocations(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() == protoreflect.Int32Kind && !fd.IsList() &&
			(fd.Name() == "location" || fd.Name() == "stmt_location" || fd.Name() == "stmt_len"):
			m.Clear(fd)
		case fd.Kind() != protoreflect.MessageKind || fd.IsMap():
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				clearLocations(l.Get(i).Message())
			}
		default:
			clearLocations(v.Message())
		}
		return true
	})
}

// stmtText is a statement's own text in sql.
func stmtText(sql string, raw *pg.RawStmt) string {
	start := int(raw.StmtLocation)
	if start < 0 || start > len(sql) {
		start = 0
	}
	end := len(sql)
	if raw.StmtLen > 0 && start+int(raw.StmtLen) <= len(sql) {
		end = start + int(raw.StmtLen)
	}
	return trimStatement(sql[start:end])
}
