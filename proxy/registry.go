package proxy

import (
	"log/slog"
	"sync"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// The guard registry: the table policies of each database, completed from
// the catalog (catalog.go) once per configuration, and handed to each
// session as its sessionGuard (session_guard.go).

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
