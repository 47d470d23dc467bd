package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
)

// Metrics are the proxy's Prometheus metrics, in a registry of their own
// (one per Server, so tests can run several servers in one process).
//
// The counters the relay bumps on every session or statement are plain
// atomics, read by the registry only when scraped (CounterFunc and
// GaugeFunc): one uncontended atomic add on the hot path, as before the
// Prometheus client was used. Series labelled by table are kept in byTable
// collectors; the histograms are the client's own.
type Metrics struct {
	reg *prometheus.Registry

	sessionsTotal   atomic.Int64
	sessionsActive  atomic.Int64
	refusedTooMany  atomic.Int64 // also sessions_refused_total{reason="max_connections"}
	upstreamErrors  atomic.Int64 // also sessions_refused_total{reason="upstream_unreachable"}
	refusedTLS      atomic.Int64 // sessions_refused_total{reason="tls_required"}
	refusedByServer atomic.Int64 // sessions_refused_total{reason="server_refused"}
	refusedStartup  atomic.Int64 // sessions_refused_total{reason="max_startup_connections"}
	refusedGuard    atomic.Int64 // sessions_refused_total{reason="guard_unavailable"}
	refusedBudget   atomic.Int64 // sessions_refused_total{reason="buffer_budget"}
	protocolErrors  atomic.Int64
	panics          atomic.Int64
	cancels         atomic.Int64
	planned         atomic.Int64
	rewritten       atomic.Int64
	parseErrors     atomic.Int64
	discoveryErrors atomic.Int64
	bytesIn         atomic.Int64 // protocol bytes from clients
	bytesOut        atomic.Int64 // protocol bytes to clients
	trackedRows     atomic.Int64 // versions remembered by tracked/observe sessions now

	// planCache reports the plan caches' hits and misses (set by the
	// server: the caches belong to the per-database rewriters).
	planCache func() (hits, misses uint64)

	stales      *byTable
	refusals    *byTable
	lostUpdates *byTable
	evictions   *byTable

	guardedSeconds *prometheus.HistogramVec
	guardedMu      sync.RWMutex
	guardedByTable map[tableKey]*[outcomeCount]prometheus.Observer
	sessionSeconds prometheus.Histogram

	reloads        *prometheus.CounterVec
	reloadOK       prometheus.Gauge
	reloadLastTime prometheus.Gauge
	configInfo     *prometheus.GaugeVec
}

// outcomeCount is the number of checkOutcome values; outcomeNames labels them.
const outcomeCount = 3

var outcomeNames = [outcomeCount]string{outcomeOK: "ok", outcomeStale: "stale", outcomeSkipped: "skipped"}

type tableKey struct{ schema, table string }

// Buckets, in seconds. A checked statement is one server round trip (tens
// of microseconds on a LAN to seconds under lock contention); a session
// lasts from a request (web workers often reconnect) to days (pools).
var (
	guardedBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10}
	sessionBuckets = []float64{.01, .1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}
)

func newMetrics() *Metrics {
	m := &Metrics{
		reg:            prometheus.NewRegistry(),
		stales:         newByTable("pgoptimist_stale_conflicts_total", "Checked writes that matched no row (stale record errors), by table."),
		refusals:       newByTable("pgoptimist_version_required_total", "Guarded writes refused for lack of a version (mode required), by table."),
		lostUpdates:    newByTable("pgoptimist_lost_updates_observed_total", "Writes that mode observe let through although the row had changed since the session read it (tracked would have refused them), by table."),
		evictions:      newByTable("pgoptimist_tracked_evictions_total", "Remembered row versions dropped to stay within the tracking budget, by table."),
		guardedByTable: make(map[tableKey]*[outcomeCount]prometheus.Observer),
		guardedSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgoptimist_guarded_statement_duration_seconds",
			Help:    "Checked statements, from forwarding to knowing their outcome (ok: rows affected or an error of its own; stale: zero rows; skipped: an earlier error made the server skip it), by table and outcome.",
			Buckets: guardedBuckets,
		}, []string{"table", "outcome"}),
		sessionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgoptimist_session_duration_seconds",
			Help:    "Client sessions that completed startup, from startup to close.",
			Buckets: sessionBuckets,
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgoptimist_config_reloads_total",
			Help: "Configuration reloads (SIGHUP or file change), by result: ok, or failed (the old configuration stays).",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgoptimist_config_last_reload_successful",
			Help: "1 when the last configuration reload (or the start) succeeded, 0 when it failed and an older configuration is in force.",
		}),
		reloadLastTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgoptimist_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was applied (Unix time).",
		}),
		configInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgoptimist_config_info",
			Help: "The configuration in force: hash is the first 16 hex digits of the SHA-256 of its normalised form, equal on replicas configured alike.",
		}, []string{"hash"}),
	}
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("failed")
	m.reloadOK.Set(1)

	counter := func(name, help string, v func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v()) })
	}
	gauge := func(name, help string, v func() int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(v()) })
	}
	cacheStat := func(hits bool) func() int64 {
		return func() int64 {
			if m.planCache == nil {
				return 0
			}
			h, mi := m.planCache()
			if hits {
				return int64(h)
			}
			return int64(mi)
		}
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		counter("pgoptimist_sessions_total", "Client sessions that completed startup.", m.sessionsTotal.Load),
		gauge("pgoptimist_sessions_active", "Client sessions now open.", m.sessionsActive.Load),
		counter("pgoptimist_connections_refused_total", "Connections refused by limits.max_connections.", m.refusedTooMany.Load),
		counter("pgoptimist_upstream_errors_total", "Failed connections to the upstream server.", m.upstreamErrors.Load),
		refusedCollector{m},
		counter("pgoptimist_protocol_errors_total", "Sessions ended by a malformed client message.", m.protocolErrors.Load),
		counter("pgoptimist_panics_total", "Session panics recovered.", m.panics.Load),
		counter("pgoptimist_cancel_requests_total", "Cancel requests forwarded.", m.cancels.Load),
		counter("pgoptimist_statements_planned_total", "Statements that passed the prefilter and were planned (cached or not).", m.planned.Load),
		counter("pgoptimist_statements_rewritten_total", "Prepared statements rewritten.", m.rewritten.Load),
		counter("pgoptimist_parse_errors_total", "Statements on guarded tables that could not be parsed.", m.parseErrors.Load),
		counter("pgoptimist_discovery_errors_total", "Failed catalog discoveries.", m.discoveryErrors.Load),
		counter("pgoptimist_plan_cache_hits_total", "Plans found in the cache by exact statement text.", cacheStat(true)),
		counter("pgoptimist_plan_cache_misses_total", "Plans not found by exact text (made from a template or planned anew).", cacheStat(false)),
		counter("pgoptimist_client_bytes_received_total", "Protocol bytes read from clients by the relay (plaintext, startup not counted).", m.bytesIn.Load),
		counter("pgoptimist_client_bytes_sent_total", "Protocol bytes written to clients by the relay (plaintext, startup not counted).", m.bytesOut.Load),
		gauge("pgoptimist_tracked_rows", "Row versions remembered now by sessions on tables in mode tracked, required or observe.", m.trackedRows.Load),
		m.stales, m.refusals, m.lostUpdates, m.evictions,
		m.guardedSeconds, m.sessionSeconds,
		m.reloads, m.reloadOK, m.reloadLastTime, m.configInfo,
	)
	return m
}

// refusedCollector serves pgoptimist_sessions_refused_total by reason,
// from the counters the startup path bumps.
type refusedCollector struct{ m *Metrics }

var refusedDesc = prometheus.NewDesc("pgoptimist_sessions_refused_total",
	"Client connections refused before a session started, by reason: max_connections (limits.max_connections), upstream_unreachable, tls_required (tls.mode require and a plain client), server_refused (the server answered the startup with an error: authentication failed, no such database or role...), max_startup_connections (limits.max_startup_connections), guard_unavailable (the guarded tables could not be checked: the session is refused rather than run unguarded), buffer_budget (a message did not fit limits.max_buffered_bytes; counted here although the session had started).",
	[]string{"reason"}, nil)

func (c refusedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- refusedDesc }

func (c refusedCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range []struct {
		reason string
		v      *atomic.Int64
	}{
		{"max_connections", &c.m.refusedTooMany},
		{"upstream_unreachable", &c.m.upstreamErrors},
		{"tls_required", &c.m.refusedTLS},
		{"server_refused", &c.m.refusedByServer},
		{"max_startup_connections", &c.m.refusedStartup},
		{"guard_unavailable", &c.m.refusedGuard},
		{"buffer_budget", &c.m.refusedBudget},
	} {
		ch <- prometheus.MustNewConstMetric(refusedDesc, prometheus.CounterValue, float64(r.v.Load()), r.reason)
	}
}

// byTable is a counter by table whose values can also be read back
// (StaleCount), and which can be given zero series for the configured
// tables, so a dashboard or alert sees the table before its first event.
type byTable struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	vals map[string]int64
}

func newByTable(name, help string) *byTable {
	return &byTable{desc: prometheus.NewDesc(name, help, []string{"table"}, nil), vals: make(map[string]int64)}
}

func (b *byTable) add(table string) {
	b.mu.Lock()
	b.vals[table]++
	b.mu.Unlock()
}

func (b *byTable) get(table string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.vals[table]
}

// ensure creates a zero series for table, keeping any existing count.
func (b *byTable) ensure(table string) {
	b.mu.Lock()
	if _, ok := b.vals[table]; !ok {
		b.vals[table] = 0
	}
	b.mu.Unlock()
}

func (b *byTable) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }

func (b *byTable) Collect(ch chan<- prometheus.Metric) {
	b.mu.Lock()
	tables := make([]string, 0, len(b.vals))
	for t := range b.vals {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	ms := make([]prometheus.Metric, len(tables))
	for i, t := range tables {
		ms[i] = prometheus.MustNewConstMetric(b.desc, prometheus.CounterValue, float64(b.vals[t]), t)
	}
	b.mu.Unlock()
	for _, m := range ms {
		ch <- m
	}
}

func (m *Metrics) stale(p *rewrite.Policy) { m.stales.add(p.QualifiedName()) }

func (m *Metrics) refused(p *rewrite.Policy) { m.refusals.add(p.QualifiedName()) }

// StaleCount returns the stale conflicts reported for a table so far.
func (m *Metrics) StaleCount(table string) int64 { return m.stales.get(table) }

// LostUpdateObserved counts a write that mode observe let through although
// the row had changed since the session read it (table is schema.table).
func (m *Metrics) LostUpdateObserved(table string) { m.lostUpdates.add(table) }

// LostUpdatesObserved returns the count of LostUpdateObserved for a table.
func (m *Metrics) LostUpdatesObserved(table string) int64 { return m.lostUpdates.get(table) }

// TrackedEvicted counts a remembered row version of table dropped to stay
// within the tracking budget.
func (m *Metrics) TrackedEvicted(table string) { m.evictions.add(table) }

// TrackedRows adds delta (negative when versions are forgotten) to the
// number of row versions remembered now.
func (m *Metrics) TrackedRows(delta int64) { m.trackedRows.Add(delta) }

// BytesIn and BytesOut count the protocol bytes read from and written to
// clients by the relay (after TLS decryption, before encryption; the
// startup exchange is not counted).
func (m *Metrics) BytesIn(n int) { m.bytesIn.Add(int64(n)) }

// BytesOut: see BytesIn.
func (m *Metrics) BytesOut(n int) { m.bytesOut.Add(int64(n)) }

// checked records a checked statement's outcome and how long it took since
// sent. The observers are cached per table, so no string is built per
// statement.
func (m *Metrics) checked(p *rewrite.Policy, out checkOutcome, sent time.Time) {
	if sent.IsZero() || int(out) >= outcomeCount {
		return
	}
	obs := m.guardedObservers(p.Schema, p.Table)
	obs[out].Observe(time.Since(sent).Seconds())
}

func (m *Metrics) guardedObservers(schema, table string) *[outcomeCount]prometheus.Observer {
	k := tableKey{schema, table}
	m.guardedMu.RLock()
	obs := m.guardedByTable[k]
	m.guardedMu.RUnlock()
	if obs != nil {
		return obs
	}
	m.guardedMu.Lock()
	defer m.guardedMu.Unlock()
	if obs = m.guardedByTable[k]; obs == nil {
		obs = new([outcomeCount]prometheus.Observer)
		for i, name := range outcomeNames {
			obs[i] = m.guardedSeconds.WithLabelValues(schema+"."+table, name)
		}
		m.guardedByTable[k] = obs
	}
	return obs
}

// sessionEnded records the duration of a session that started at start
// (call as: defer metrics.sessionEnded(time.Now())).
func (m *Metrics) sessionEnded(start time.Time) {
	m.sessionSeconds.Observe(time.Since(start).Seconds())
}

// configApplied records the configuration now in force: its hash, and zero
// series for its tables (so "rate(...{table=...})" works before the first
// conflict).
func (m *Metrics) configApplied(cfg *config.Config) {
	m.configInfo.Reset()
	m.configInfo.WithLabelValues(ConfigHash(cfg)).Set(1)
	m.reloadLastTime.SetToCurrentTime()
	for _, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		if schema == "" {
			continue
		}
		name := schema + "." + table
		for _, b := range []*byTable{m.stales, m.refusals, m.lostUpdates, m.evictions} {
			b.ensure(name)
		}
		m.guardedObservers(schema, table)
	}
}

// Reloaded records the result of a configuration reload: err is nil when
// the new configuration is in force, the reason otherwise.
func (m *Metrics) Reloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues("failed").Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.reloadOK.Set(1)
}

// ConfigHash is the first 16 hex digits of the SHA-256 of the normalised
// configuration: the same on every replica configured alike.
func ConfigHash(cfg *config.Config) string {
	b, err := json.Marshal(cfg)
	if err != nil {
		return "unknown"
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Registry returns the registry holding the server's metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// WriteTo writes the metrics in Prometheus text exposition format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	families, err := m.reg.Gather()
	if err != nil {
		return 0, err
	}
	cw := &countingWriter{w: w}
	enc := expfmt.NewEncoder(cw, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return cw.n, err
		}
	}
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
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
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
