package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Metrics are the proxy's counters, served in Prometheus text format.
type Metrics struct {
	sessionsTotal   atomic.Int64
	sessionsActive  atomic.Int64
	refusedTooMany  atomic.Int64
	upstreamErrors  atomic.Int64
	protocolErrors  atomic.Int64
	panics          atomic.Int64
	cancels         atomic.Int64
	planned         atomic.Int64
	rewritten       atomic.Int64
	parseErrors     atomic.Int64
	discoveryErrors atomic.Int64

	// planCache reports the plan caches' hits and misses (set by the
	// server: the caches belong to the per-database rewriters).
	planCache func() (hits, misses uint64)

	mu       sync.Mutex
	stales   map[string]int64
	refusals map[string]int64
}

func newMetrics() *Metrics {
	return &Metrics{stales: make(map[string]int64), refusals: make(map[string]int64)}
}

func (m *Metrics) stale(p *rewrite.Policy) {
	m.mu.Lock()
	m.stales[p.QualifiedName()]++
	m.mu.Unlock()
}

func (m *Metrics) refused(p *rewrite.Policy) {
	m.mu.Lock()
	m.refusals[p.QualifiedName()]++
	m.mu.Unlock()
}

// StaleCount returns the stale conflicts reported for a table so far.
func (m *Metrics) StaleCount(table string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stales[table]
}

// WriteTo writes the metrics in Prometheus text exposition format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	counter := func(name, help string, v int64) {
		fmt.Fprintf(cw, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	counter("pgoptimist_sessions_total", "Client sessions that completed startup.", m.sessionsTotal.Load())
	fmt.Fprintf(cw, "# HELP pgoptimist_sessions_active Client sessions now open.\n# TYPE pgoptimist_sessions_active gauge\npgoptimist_sessions_active %d\n", m.sessionsActive.Load())
	counter("pgoptimist_connections_refused_total", "Connections refused by limits.max_connections.", m.refusedTooMany.Load())
	counter("pgoptimist_upstream_errors_total", "Failed connections to the upstream server.", m.upstreamErrors.Load())
	counter("pgoptimist_protocol_errors_total", "Sessions ended by a malformed client message.", m.protocolErrors.Load())
	counter("pgoptimist_panics_total", "Session panics recovered.", m.panics.Load())
	counter("pgoptimist_cancel_requests_total", "Cancel requests forwarded.", m.cancels.Load())
	counter("pgoptimist_statements_planned_total", "Statements that passed the prefilter and were planned (cached or not).", m.planned.Load())
	counter("pgoptimist_statements_rewritten_total", "Prepared statements rewritten.", m.rewritten.Load())
	counter("pgoptimist_parse_errors_total", "Statements on guarded tables that could not be parsed.", m.parseErrors.Load())
	counter("pgoptimist_discovery_errors_total", "Failed catalog discoveries.", m.discoveryErrors.Load())
	if m.planCache != nil {
		hits, misses := m.planCache()
		counter("pgoptimist_plan_cache_hits_total", "Plans found in the cache by exact statement text.", int64(hits))
		counter("pgoptimist_plan_cache_misses_total", "Plans not found by exact text (made from a template or planned anew).", int64(misses))
	}
	m.mu.Lock()
	labeled := func(name, help string, vals map[string]int64) {
		fmt.Fprintf(cw, "# HELP %s %s\n# TYPE %s counter\n", name, help, name)
		keys := make([]string, 0, len(vals))
		for k := range vals {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(cw, "%s{table=%q} %d\n", name, k, vals[k])
		}
	}
	labeled("pgoptimist_stale_conflicts_total", "Checked writes that matched no row (stale record errors), by table.", m.stales)
	labeled("pgoptimist_version_required_total", "Guarded writes refused for lack of a version (mode required), by table.", m.refusals)
	m.mu.Unlock()
	return cw.n, cw.err
}

type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// Handler serves /metrics, /healthz and /readyz.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = s.metrics.WriteTo(w)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}
