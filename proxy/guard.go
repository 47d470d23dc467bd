package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// guardRegistry holds the table policies of each database, completed from
// the catalog (OID, version column type, primary key) at first use.
type guardRegistry struct {
	log     *slog.Logger
	metrics *Metrics

	mu  sync.Mutex
	cfg *config.Config
	gen int
	dbs map[string]*dbGuard
}

// dbGuard is the guard of one database for one configuration generation.
type dbGuard struct {
	mu          sync.Mutex // held while a session discovers the catalog
	gen         int
	complete    bool // every configured table was found
	rw          *rewrite.Rewriter
	sideEffects map[string]bool
}

func newGuardRegistry(log *slog.Logger, m *Metrics) *guardRegistry {
	return &guardRegistry{log: log, metrics: m, dbs: make(map[string]*dbGuard)}
}

// planCacheStats sums the plan cache counters of the current rewriters.
func (g *guardRegistry) planCacheStats() (hits, misses uint64) {
	g.mu.Lock()
	dbs := make([]*dbGuard, 0, len(g.dbs))
	for _, db := range g.dbs {
		dbs = append(dbs, db)
	}
	g.mu.Unlock()
	for _, db := range dbs {
		if !db.mu.TryLock() {
			continue // discovering: no rewriter worth counting yet
		}
		if db.rw != nil {
			h, m := db.rw.CacheStats()
			hits, misses = hits+h, misses+m
		}
		db.mu.Unlock()
	}
	return hits, misses
}

func (g *guardRegistry) setConfig(cfg *config.Config) {
	g.mu.Lock()
	g.cfg = cfg
	g.gen++
	g.dbs = make(map[string]*dbGuard)
	g.mu.Unlock()
}

// sessionGuard is one session's view of the guard: the rewriter for its
// database and the guarded prepared statements and portals it has made.
type sessionGuard struct {
	rw           *rewrite.Rewriter
	searchPath   string
	staleCode    string
	requiredCode string
	onParseError string
	log          *slog.Logger
	metrics      *Metrics

	sideEffects map[string]bool // tables with statement-level triggers or rules
	stmts       map[string]*prepared
	portals     map[string]*boundPortal
}

// prepared is a guarded prepared statement (protocol or SQL level: they
// share one namespace in PostgreSQL).
type prepared struct {
	plan           *rewrite.Statement
	oids           []uint32 // parameter types given by the client, for decoding binary values
	quietWhenEmpty bool     // a run that affects no row writes nothing (see syncAhead)
}

// boundPortal is a portal bound to a guarded statement.
type boundPortal struct {
	stmt           *rewrite.Statement
	oids           []uint32
	quietWhenEmpty bool
	bind           []byte // the Bind message, for a checked statement
}

// staleDetail decodes the expected version and key values from the Bind.
func (bp *boundPortal) staleDetail() staleDetail {
	var b pgproto3.Bind
	if err := b.Decode(bp.bind[5:]); err != nil {
		return resolveDetail(bp.stmt, func(int) (string, bool) { return "", false })
	}
	return resolveDetail(bp.stmt, func(n int) (string, bool) {
		if n < 1 || n > len(b.Parameters) {
			return "", false
		}
		binaryFormat := false
		switch len(b.ParameterFormatCodes) {
		case 0:
		case 1:
			binaryFormat = b.ParameterFormatCodes[0] == 1
		default:
			if n <= len(b.ParameterFormatCodes) {
				binaryFormat = b.ParameterFormatCodes[n-1] == 1
			}
		}
		var oid uint32
		if n <= len(bp.oids) {
			oid = bp.oids[n-1]
		}
		return decodeParam(b.Parameters[n-1], binaryFormat, oid)
	})
}

// quietWhenEmpty reports whether a run of st that affects no row writes
// nothing at all: a plain UPDATE, DELETE or INSERT (no WITH clause that
// could hold a data-modifying CTE) on a table without statement-level
// triggers or rules.
func (g *sessionGuard) quietWhenEmpty(st *rewrite.Statement) bool {
	if st.Policy == nil || g.sideEffects[st.Policy.QualifiedName()] {
		return false
	}
	sql := strings.TrimLeft(st.SQL, " \t\r\n")
	for _, kw := range []string{"update", "delete", "insert"} {
		if len(sql) > len(kw) && strings.EqualFold(sql[:len(kw)], kw) {
			return true
		}
	}
	return false
}

// forSession returns the guard for a session that has just authenticated,
// discovering the catalog through the session's own connection when this
// database has not been seen yet (or some table was missing last time).
// It returns nil when nothing is guarded in the database.
func (g *guardRegistry) forSession(s *session) *sessionGuard {
	g.mu.Lock()
	cfg, gen := g.cfg, g.gen
	if len(cfg.Tables) == 0 {
		g.mu.Unlock()
		return nil
	}
	db := g.dbs[s.database]
	if db == nil {
		db = &dbGuard{}
		g.dbs[s.database] = db
	}
	g.mu.Unlock()

	db.mu.Lock()
	if db.gen != gen || !db.complete {
		rw, sideEffects, complete, err := g.discover(s, cfg)
		if err != nil {
			db.mu.Unlock()
			g.log.Error("catalog discovery failed: this session's statements are not guarded", "database", s.database, "err", err)
			g.metrics.discoveryErrors.Add(1)
			return nil
		}
		db.rw, db.sideEffects, db.complete, db.gen = rw, sideEffects, complete, gen
	}
	rw, sideEffects := db.rw, db.sideEffects
	db.mu.Unlock()
	if rw == nil {
		return nil
	}
	return &sessionGuard{
		rw:           rw,
		searchPath:   s.user + ",public",
		staleCode:    cfg.Guard.StaleSQLState,
		requiredCode: cfg.Guard.RequiredSQLState,
		onParseError: cfg.Guard.OnParseError,
		log:          g.log,
		metrics:      g.metrics,
		sideEffects:  sideEffects,
		stmts:        make(map[string]*prepared),
		portals:      make(map[string]*boundPortal),
	}
}

// catalogRow is what discovery learns of one configured table.
type catalogRow struct {
	found       bool
	colType     string // format_type of the version column; "" when it does not exist
	pkey        []string
	sideEffects bool // statement-level triggers or rules
}

// discover asks the server, through the session's connection and before the
// client has sent anything, for each configured table's version column type
// and primary key. It runs in the idle state right after authentication, so
// it cannot disturb the client's transaction state.
func (g *guardRegistry) discover(s *session, cfg *config.Config) (*rewrite.Rewriter, map[string]bool, bool, error) {
	var values []string
	for i, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		values = append(values, fmt.Sprintf("(%d, %s, %s, %s)", i, quoteLiteral(schema), quoteLiteral(table), quoteLiteral(t.VersionColumn())))
	}
	q := `SELECT p.i, c.oid IS NOT NULL, coalesce(format_type(a.atttypid, a.atttypmod), ''),
  coalesce((SELECT string_agg(att.attname, chr(31) ORDER BY k.n)
    FROM pg_index ix CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute att ON att.attrelid = ix.indrelid AND att.attnum = k.attnum
    WHERE ix.indrelid = c.oid AND ix.indisprimary), ''),
  coalesce(c.relhasrules OR EXISTS (SELECT FROM pg_trigger tg
    WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal AND tg.tgtype & 1 = 0), false)
FROM (VALUES ` + strings.Join(values, ", ") + `) AS p(i, s, t, col)
LEFT JOIN pg_namespace n ON n.nspname = p.s
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.t AND c.relkind IN ('r', 'p', 'v', 'f')
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = p.col AND NOT a.attisdropped
ORDER BY p.i`
	b, _ := (&pgproto3.Query{String: q}).Encode(nil)
	if _, err := s.sw.Write(b); err != nil {
		return nil, nil, false, err
	}
	if err := s.sw.Flush(); err != nil {
		return nil, nil, false, err
	}
	rows := make([]catalogRow, len(cfg.Tables))
	var qerr error
	for {
		msg, err := s.sr.next()
		if err != nil {
			return nil, nil, false, fmt.Errorf("reading catalog: %w", err)
		}
		switch msg[0] {
		case 'D':
			var dr pgproto3.DataRow
			if err := dr.Decode(msg[5:]); err != nil || len(dr.Values) != 5 {
				return nil, nil, false, errors.New("unexpected catalog row")
			}
			var i int
			if _, err := fmt.Sscan(string(dr.Values[0]), &i); err != nil || i < 0 || i >= len(rows) {
				return nil, nil, false, errors.New("unexpected catalog row index")
			}
			rows[i] = catalogRow{found: string(dr.Values[1]) == "t", colType: string(dr.Values[2])}
			if k := string(dr.Values[3]); k != "" {
				rows[i].pkey = strings.Split(k, "\x1f")
			}
			rows[i].sideEffects = string(dr.Values[4]) == "t"
		case 'E':
			var er pgproto3.ErrorResponse
			_ = er.Decode(msg[5:])
			qerr = fmt.Errorf("catalog query: %s (SQLSTATE %s)", er.Message, er.Code)
		case 'Z':
			if qerr != nil {
				return nil, nil, false, qerr
			}
			policies, complete := g.policies(cfg, rows, s.database)
			if len(policies) == 0 {
				return nil, nil, complete, nil
			}
			sideEffects := make(map[string]bool)
			for i, t := range cfg.Tables {
				if rows[i].sideEffects {
					schema, table := t.SchemaTable()
					sideEffects[schema+"."+table] = true
				}
			}
			return rewrite.New(policies, rewrite.Options{MaxSQLBytes: cfg.Limits.MaxSQLBytes}), sideEffects, complete, nil
		}
	}
}

// policies combines configured policies with what the catalog said. Tables
// or columns that do not exist are logged and left unguarded.
func (g *guardRegistry) policies(cfg *config.Config, rows []catalogRow, database string) ([]rewrite.Policy, bool) {
	var out []rewrite.Policy
	complete := true
	for i, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		r := rows[i]
		name := schema + "." + table
		if !r.found {
			g.log.Warn("guarded table does not exist: its statements are forwarded unguarded", "table", name, "database", database, "key", fmt.Sprintf("tables[%d].name", i))
			complete = false
			continue
		}
		column := t.VersionColumn()
		if r.colType == "" {
			g.log.Warn("version column does not exist: the table's statements are forwarded unguarded", "table", name, "column", column, "database", database, "key", fmt.Sprintf("tables[%d].column", i))
			complete = false
			continue
		}
		p, ok := PolicyFromConfig(t, r.colType, r.pkey)
		if !ok {
			g.log.Warn("version column type is not supported: the table's statements are forwarded unguarded", "table", name, "column", column, "type", r.colType, "database", database)
			continue
		}
		out = append(out, p)
	}
	return out, complete
}

// PolicyFromConfig builds the rewriter's policy for a configured table,
// completing it with what the catalog says: the version column's type
// (format_type; used when the configuration sets none) and the primary key
// (used when the configuration sets no key). ok is false when the type is
// not one a version can have.
func PolicyFromConfig(t config.Table, catalogType string, primaryKey []string) (rewrite.Policy, bool) {
	schema, table := t.SchemaTable()
	column := t.VersionColumn()
	p := rewrite.Policy{
		Schema: schema, Table: table, Column: column,
		Type: versionType(t.Type, column, catalogType),
		Key:  t.KeyColumns(), Mode: mode(t.Mode),
		Update: t.GuardsUpdate(), Delete: t.GuardsDelete(),
	}
	if len(p.Key) == 0 {
		p.Key = primaryKey
	}
	return p, p.Type != rewrite.TypeUnknown
}

func mode(m string) rewrite.Mode {
	switch m {
	case "tracked":
		return rewrite.ModeTracked
	case "required":
		return rewrite.ModeRequired
	}
	return rewrite.ModeExplicit
}

// versionType maps a configured type, or else the catalog's, to the
// rewriter's version types.
func versionType(configured, column, catalog string) rewrite.VersionType {
	t := configured
	if t == "" {
		t = catalog
	}
	if column == "xmin" {
		return rewrite.TypeXmin
	}
	switch {
	case t == "integer" || t == "bigint" || t == "smallint":
		return rewrite.TypeInteger
	case t == "timestamp" || t == "timestamptz" || strings.HasPrefix(t, "timestamp"):
		return rewrite.TypeTimestamp
	case t == "uuid":
		return rewrite.TypeUUID
	case t == "xmin" || t == "xid":
		return rewrite.TypeXmin
	}
	return rewrite.TypeUnknown
}

// plan plans a statement that passed the prefilter. On a parse failure it
// returns a nil plan and, under on_parse_error: reject, the statement that
// raises the refusal (forward: "", and the caller forwards the text as is).
func (g *sessionGuard) plan(sql string) (*rewrite.Plan, string) {
	plan, err := g.rw.Plan(sql, g.searchPath)
	if err == nil {
		g.metrics.planned.Add(1)
		return plan, ""
	}
	g.metrics.parseErrors.Add(1)
	if g.onParseError == "reject" {
		g.log.Warn("statement on a guarded table could not be parsed: refused", "err", err)
		return nil, rejectSQL("54000", "pgoptimist: statement on a guarded table refused: "+err.Error())
	}
	g.log.Warn("statement on a guarded table could not be parsed: forwarded unguarded", "err", err)
	return nil, ""
}

// trackPrepared follows SQL-level PREPARE and DEALLOCATE.
func (g *sessionGuard) trackPrepared(plan *rewrite.Plan) {
	for i := range plan.Statements {
		st := &plan.Statements[i]
		switch st.Kind {
		case rewrite.KindPrepare:
			if st.Inner != nil && st.Inner.Policy != nil {
				g.stmts[st.PrepareName] = &prepared{plan: st.Inner}
			} else {
				delete(g.stmts, st.PrepareName)
			}
		case rewrite.KindDeallocate:
			if st.DeallocateAll {
				clear(g.stmts)
			} else {
				delete(g.stmts, st.DeallocateName)
			}
		}
	}
}
