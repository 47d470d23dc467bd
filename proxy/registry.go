package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// The guard registry: the table policies of each database, completed from
// the catalog (catalog.go) once per configuration generation, and handed to
// each session as its sessionGuard (session_guard.go). A reload starts a new
// generation; open sessions move to it at their next idle point
// (session.followReload), new ones start in it.

// guardRegistry holds the table policies of each database.
type guardRegistry struct {
	log     *slog.Logger
	metrics *Metrics
	// lostUpdateLog: observe mode logs at most one lost update a second
	// (each line says how many it left out); the metric counts them all.
	lostUpdateLog logThrottle

	gen atomic.Int64 // the configuration generation; read at every idle point

	mu  sync.Mutex
	cfg *config.Config
	dbs map[string]*dbGuard // of the current generation
}

func newGuardRegistry(log *slog.Logger, m *Metrics) *guardRegistry {
	return &guardRegistry{log: log, metrics: m, dbs: make(map[string]*dbGuard), lostUpdateLog: logThrottle{interval: time.Second}}
}

func (g *guardRegistry) setConfig(cfg *config.Config) {
	g.mu.Lock()
	g.cfg = cfg
	g.dbs = make(map[string]*dbGuard)
	g.gen.Add(1)
	g.mu.Unlock()
}

// generation is the current configuration generation.
func (g *guardRegistry) generation() int64 { return g.gen.Load() }

// current returns the guard of a database in the current generation (nil
// when no table is configured) and the generation.
func (g *guardRegistry) current(database string) (*dbGuard, int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	gen := g.gen.Load()
	if len(g.cfg.Tables) == 0 {
		return nil, gen
	}
	db := g.dbs[database]
	if db == nil {
		db = &dbGuard{gen: gen, cfg: g.cfg, database: database, log: g.log}
		g.dbs[database] = db
	}
	return db, gen
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
		if rw := db.rewriter(); rw != nil {
			h, m := rw.CacheStats()
			hits, misses = hits+h, misses+m
		}
	}
	return hits, misses
}

// dbState is where a database's discovery stands.
type dbState uint8

const (
	dbUnknown     dbState = iota // not asked yet, or the last attempt failed
	dbDiscovering                // a session is asking the server
	dbReady                      // facts known: kept until the next reload
)

// dbGuard is the guard of one database for one configuration generation.
type dbGuard struct {
	gen      int64
	cfg      *config.Config
	database string
	log      *slog.Logger

	mu    sync.Mutex
	state dbState
	done  chan struct{} // closed when the discovery in progress ends

	// Set once when ready, then read-only.
	rw          *rewrite.Rewriter // nil when no configured table exists here
	facts       catalogFacts
	relnames    []string // the guarded tables' unqualified names, each once
	resolveSQL  string   // asks what each of relnames resolves to in a session
	resolveCols int
}

func (db *dbGuard) rewriter() *rewrite.Rewriter {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.rw
}

// status is the discovery state, for a session deciding at an idle point.
func (db *dbGuard) status() dbState {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.state
}

// begin claims the discovery for the caller; false when another session
// has it or it is done.
func (db *dbGuard) begin() bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.state != dbUnknown {
		return false
	}
	db.state, db.done = dbDiscovering, make(chan struct{})
	return true
}

// finish ends the caller's discovery with the catalog's rows, or with the
// error that stopped it (the next session tries again).
func (db *dbGuard) finish(rows []catalogRow, err error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if err != nil {
		db.state = dbUnknown
	} else {
		db.facts = buildFacts(db.cfg, rows, db.database, db.log)
		if len(db.facts.policies) > 0 {
			db.rw = rewrite.New(db.facts.policies, rewrite.Options{MaxSQLBytes: db.cfg.Limits.MaxSQLBytes, Tracking: true})
		}
		db.relnames = db.relnames[:0]
		for _, p := range db.facts.policies {
			if !slices.Contains(db.relnames, p.Table) {
				db.relnames = append(db.relnames, p.Table)
			}
		}
		db.resolveSQL, db.resolveCols = resolveSQL(db.relnames), len(db.relnames)
		db.state = dbReady
	}
	close(db.done)
}

// ensure makes the database's facts known, discovering them through the
// session's own connection (still in its blocking startup phase) unless
// another session is at it, in which case it waits for that one.
func (db *dbGuard) ensure(s *session, deadline time.Time) error {
	for {
		db.mu.Lock()
		switch db.state {
		case dbReady:
			db.mu.Unlock()
			return nil
		case dbDiscovering:
			done := db.done
			db.mu.Unlock()
			select {
			case <-done:
			case <-time.After(time.Until(deadline)):
				return errors.New("timed out waiting for another session's catalog discovery")
			}
			continue
		}
		db.state, db.done = dbDiscovering, make(chan struct{})
		db.mu.Unlock()
		rows, err := discoverBlocking(s, db.cfg)
		db.finish(rows, err)
		return err
	}
}

// forSession returns the guard for a session that has just authenticated:
// the database's facts (discovered now if this generation has not seen the
// database yet) and this session's own resolution of the guarded names. It
// returns nil when nothing is guarded in the database, and an error when
// the guard cannot be set up: the session must then be refused, never run
// unguarded.
func (g *guardRegistry) forSession(s *session, deadline time.Time) (*sessionGuard, int64, error) {
	db, gen := g.current(s.database)
	if db == nil {
		return nil, gen, nil
	}
	if err := db.ensure(s, deadline); err != nil {
		g.metrics.discoveryErrors.Add(1)
		return nil, gen, err
	}
	sg := g.newSessionGuard(db)
	if sg == nil {
		return nil, gen, nil
	}
	names, err := resolveBlocking(s, db)
	if err != nil {
		return nil, gen, fmt.Errorf("resolving the guarded table names: %w", err)
	}
	sg.res.path = rewrite.ExactPath(names)
	return sg, gen, nil
}

// newSessionGuard makes a session's guard from a database's facts; nil when
// no configured table exists there.
func (g *guardRegistry) newSessionGuard(db *dbGuard) *sessionGuard {
	if db.rw == nil {
		return nil
	}
	cfg := db.cfg
	return &sessionGuard{
		db:             db,
		rw:             db.rw,
		staleCode:      cfg.Guard.StaleSQLState,
		requiredCode:   cfg.Guard.RequiredSQLState,
		onParseError:   cfg.Guard.OnParseError,
		log:            g.log,
		metrics:        g.metrics,
		sideEffects:    db.facts.sideEffects,
		stmts:          make(map[string]*prepared),
		portals:        make(map[string]*boundPortal),
		changers:       make(map[string]struct{}),
		changerPortals: make(map[string]struct{}),
		store:          newSessionStore(cfg, db.facts.policies, g.metrics, g.log, &g.lostUpdateLog),
	}
}
