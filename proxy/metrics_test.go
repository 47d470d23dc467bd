package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
	"github.com/pgoptimist/pgoptimist/rewrite"
	dto "github.com/prometheus/client_model/go"
)

// families gathers m's metric families by name.
func families(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fs, err := m.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(fs))
	for _, f := range fs {
		out[f.GetName()] = f
	}
	return out
}

// sample finds the sample of family name whose labels include want.
func sample(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("metric family %s not exposed", name)
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("metric %s%v not exposed", name, want)
	return nil
}

func testConfig(tables ...config.Table) *config.Config {
	cfg := config.Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream.TLS = "disable"
	cfg.Tables = tables
	cfg.Normalize()
	return &cfg
}

// TestMetricsSeries: the series that existed before the Prometheus client
// keep their names and types, the Go and process collectors are there, and
// every table of the configuration has zero series before its first event.
func TestMetricsSeries(t *testing.T) {
	m := newMetrics()
	m.configApplied(testConfig(config.Table{Name: "public.address"}, config.Table{Name: `"MyTable"`}))
	fams := families(t, m)
	for name, typ := range map[string]dto.MetricType{
		"pgoptimist_sessions_total":                     dto.MetricType_COUNTER,
		"pgoptimist_sessions_active":                    dto.MetricType_GAUGE,
		"pgoptimist_connections_refused_total":          dto.MetricType_COUNTER,
		"pgoptimist_upstream_errors_total":              dto.MetricType_COUNTER,
		"pgoptimist_protocol_errors_total":              dto.MetricType_COUNTER,
		"pgoptimist_panics_total":                       dto.MetricType_COUNTER,
		"pgoptimist_cancel_requests_total":              dto.MetricType_COUNTER,
		"pgoptimist_statements_planned_total":           dto.MetricType_COUNTER,
		"pgoptimist_statements_rewritten_total":         dto.MetricType_COUNTER,
		"pgoptimist_parse_errors_total":                 dto.MetricType_COUNTER,
		"pgoptimist_discovery_errors_total":             dto.MetricType_COUNTER,
		"pgoptimist_plan_cache_hits_total":              dto.MetricType_COUNTER,
		"pgoptimist_plan_cache_misses_total":            dto.MetricType_COUNTER,
		"pgoptimist_stale_conflicts_total":              dto.MetricType_COUNTER,
		"pgoptimist_version_required_total":             dto.MetricType_COUNTER,
		"pgoptimist_lost_updates_observed_total":        dto.MetricType_COUNTER,
		"pgoptimist_tracked_evictions_total":            dto.MetricType_COUNTER,
		"pgoptimist_tracked_rows":                       dto.MetricType_GAUGE,
		"pgoptimist_sessions_refused_total":             dto.MetricType_COUNTER,
		"pgoptimist_client_bytes_received_total":        dto.MetricType_COUNTER,
		"pgoptimist_client_bytes_sent_total":            dto.MetricType_COUNTER,
		"pgoptimist_guarded_statement_duration_seconds": dto.MetricType_HISTOGRAM,
		"pgoptimist_session_duration_seconds":           dto.MetricType_HISTOGRAM,
		"pgoptimist_config_reloads_total":               dto.MetricType_COUNTER,
		"pgoptimist_config_last_reload_successful":      dto.MetricType_GAUGE,
		"pgoptimist_config_info":                        dto.MetricType_GAUGE,
		"go_goroutines":                                 dto.MetricType_GAUGE,
		"go_memstats_heap_alloc_bytes":                  dto.MetricType_GAUGE,
		"process_cpu_seconds_total":                     dto.MetricType_COUNTER,
		"process_resident_memory_bytes":                 dto.MetricType_GAUGE,
	} {
		f := fams[name]
		if f == nil {
			t.Errorf("%s is not exposed", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s is a %v, want %v", name, f.GetType(), typ)
		}
	}
	for _, table := range []string{"public.address", "public.MyTable"} {
		for _, name := range []string{"pgoptimist_stale_conflicts_total", "pgoptimist_version_required_total", "pgoptimist_lost_updates_observed_total", "pgoptimist_tracked_evictions_total"} {
			if v := sample(t, fams, name, map[string]string{"table": table}).GetCounter().GetValue(); v != 0 {
				t.Errorf("%s{table=%q} = %v, want a zero series", name, table, v)
			}
		}
		for _, outcome := range []string{"ok", "stale", "skipped"} {
			sample(t, fams, "pgoptimist_guarded_statement_duration_seconds", map[string]string{"table": table, "outcome": outcome})
		}
	}
	for _, reason := range []string{"max_connections", "upstream_unreachable", "tls_required", "server_refused"} {
		sample(t, fams, "pgoptimist_sessions_refused_total", map[string]string{"reason": reason})
	}
}

// TestMetricsCounting: the methods the proxy calls move the series they
// name, and nothing else.
func TestMetricsCounting(t *testing.T) {
	m := newMetrics()
	p := &rewrite.Policy{Schema: "public", Table: "address"}
	m.stale(p)
	m.stale(p)
	m.refused(p)
	m.LostUpdateObserved("public.address")
	m.TrackedEvicted("public.address")
	m.TrackedRows(5)
	m.TrackedRows(-2)
	m.refusedTooMany.Add(1)
	m.refusedTLS.Add(2)
	m.sessionsActive.Add(1)
	m.sessionsActive.Add(-1)
	m.checked(p, outcomeStale, time.Now().Add(-3*time.Millisecond))
	m.checked(p, outcomeOK, time.Now())
	m.checked(p, outcomeOK, time.Now())
	m.sessionEnded(time.Now().Add(-2 * time.Second))

	if got := m.StaleCount("public.address"); got != 2 {
		t.Errorf("StaleCount = %d, want 2", got)
	}
	if got := m.LostUpdatesObserved("public.address"); got != 1 {
		t.Errorf("LostUpdatesObserved = %d, want 1", got)
	}
	fams := families(t, m)
	tbl := map[string]string{"table": "public.address"}
	for name, want := range map[string]float64{
		"pgoptimist_stale_conflicts_total":       2,
		"pgoptimist_version_required_total":      1,
		"pgoptimist_lost_updates_observed_total": 1,
		"pgoptimist_tracked_evictions_total":     1,
	} {
		if got := sample(t, fams, name, tbl).GetCounter().GetValue(); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := sample(t, fams, "pgoptimist_tracked_rows", nil).GetGauge().GetValue(); got != 3 {
		t.Errorf("tracked rows = %v, want 3", got)
	}
	if got := sample(t, fams, "pgoptimist_sessions_active", nil).GetGauge().GetValue(); got != 0 {
		t.Errorf("sessions active = %v, want 0", got)
	}
	for reason, want := range map[string]float64{"max_connections": 1, "tls_required": 2, "server_refused": 0} {
		if got := sample(t, fams, "pgoptimist_sessions_refused_total", map[string]string{"reason": reason}).GetCounter().GetValue(); got != want {
			t.Errorf("sessions refused (%s) = %v, want %v", reason, got, want)
		}
	}
	stale := sample(t, fams, "pgoptimist_guarded_statement_duration_seconds", map[string]string{"table": "public.address", "outcome": "stale"}).GetHistogram()
	if stale.GetSampleCount() != 1 || stale.GetSampleSum() < 0.003 {
		t.Errorf("stale latency: %d samples, sum %v; want 1 sample of at least 3ms", stale.GetSampleCount(), stale.GetSampleSum())
	}
	if n := sample(t, fams, "pgoptimist_guarded_statement_duration_seconds", map[string]string{"table": "public.address", "outcome": "ok"}).GetHistogram().GetSampleCount(); n != 2 {
		t.Errorf("ok latency samples = %d, want 2", n)
	}
	if h := sample(t, fams, "pgoptimist_session_duration_seconds", nil).GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() < 2 {
		t.Errorf("session duration: %d samples, sum %v; want 1 of at least 2s", h.GetSampleCount(), h.GetSampleSum())
	}
}

// TestMetricsReloadAndConfigHash: reload results are counted, the last one
// is a gauge, and config_info carries one hash, the current configuration's.
func TestMetricsReloadAndConfigHash(t *testing.T) {
	m := newMetrics()
	a := testConfig(config.Table{Name: "public.a"})
	b := testConfig(config.Table{Name: "public.b"})
	if ConfigHash(a) == ConfigHash(b) {
		t.Fatal("different configurations have the same hash")
	}
	if ConfigHash(a) != ConfigHash(testConfig(config.Table{Name: "A"})) {
		t.Fatal("configurations equal once normalised have different hashes")
	}
	m.configApplied(a)
	m.configApplied(b)
	m.Reloaded(nil)
	m.Reloaded(errors.New("bad file"))
	fams := families(t, m)
	info := fams["pgoptimist_config_info"].GetMetric()
	if len(info) != 1 || info[0].GetLabel()[0].GetValue() != ConfigHash(b) {
		t.Errorf("config_info = %v, want one series with hash %s", info, ConfigHash(b))
	}
	for result, want := range map[string]float64{"ok": 1, "failed": 1} {
		if got := sample(t, fams, "pgoptimist_config_reloads_total", map[string]string{"result": result}).GetCounter().GetValue(); got != want {
			t.Errorf("reloads{result=%s} = %v, want %v", result, got, want)
		}
	}
	if got := sample(t, fams, "pgoptimist_config_last_reload_successful", nil).GetGauge().GetValue(); got != 0 {
		t.Errorf("last reload successful = %v after a failed reload, want 0", got)
	}
	m.Reloaded(nil)
	if got := sample(t, families(t, m), "pgoptimist_config_last_reload_successful", nil).GetGauge().GetValue(); got != 1 {
		t.Errorf("last reload successful = %v after a good reload, want 1", got)
	}
}

// TestMetricsTextAndHandler: WriteTo and /metrics both give the Prometheus
// text format with integral counters written as integers (what tests and
// simple scrapers parse).
func TestMetricsTextAndHandler(t *testing.T) {
	srv := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newMetrics()}
	srv.metrics.sessionsTotal.Add(42)
	var b bytes.Buffer
	if _, err := srv.metrics.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "\npgoptimist_sessions_total 42\n") {
		t.Fatalf("WriteTo lacks pgoptimist_sessions_total 42:\n%s", b.String())
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "\npgoptimist_sessions_total 42\n") || !strings.Contains(rec.Body.String(), "go_goroutines") {
		t.Fatalf("/metrics: %d\n%s", rec.Code, rec.Body.String())
	}
}

// TestMetricsWiredEndToEnd runs the proxy in front of a real PostgreSQL and
// checks the series fed from the relay: a stale conflict is timed with
// outcome stale, a good checked write with outcome ok, and a finished
// session's duration is recorded.
func TestMetricsWiredEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pg.Stop() }()
	if err := pg.Exec(ctx, `CREATE TABLE public.metric_row (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, v text);
INSERT INTO public.metric_row (id) VALUES (1);`); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(config.Table{Name: "public.metric_row"})
	cfg.Upstream.Address = pg.Addr()
	srv, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		srv.Shutdown(sctx)
		<-done
	}()

	conn, err := pgx.Connect(ctx, "postgres://postgres@"+ln.Addr().String()+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "UPDATE metric_row SET v = 'a' WHERE id = 1 AND version = 1"); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, "UPDATE metric_row SET v = 'b' WHERE id = 1 AND version = 1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "VL409" {
		t.Fatalf("second write: %v, want VL409", err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}

	fams := families(t, srv.metrics)
	for outcome, want := range map[string]uint64{"ok": 1, "stale": 1} {
		h := sample(t, fams, "pgoptimist_guarded_statement_duration_seconds", map[string]string{"table": "public.metric_row", "outcome": outcome}).GetHistogram()
		if h.GetSampleCount() != want {
			t.Errorf("guarded latency{outcome=%s}: %d samples, want %d", outcome, h.GetSampleCount(), want)
		}
	}
	// The session's end is recorded after the client is gone: wait for it
	// (sessions_active drops in the same deferred calls).
	deadline := time.Now().Add(10 * time.Second)
	for srv.metrics.sessionsActive.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := sample(t, families(t, srv.metrics), "pgoptimist_session_duration_seconds", nil).GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("session duration samples = %d, want 1", n)
	}
}

// TestMetricsCheckedDoesNotAllocate: timing a checked statement, once its
// table has been seen, allocates nothing (no label string is built).
func TestMetricsCheckedDoesNotAllocate(t *testing.T) {
	m := newMetrics()
	p := &rewrite.Policy{Schema: "public", Table: "address"}
	sent := time.Now()
	m.checked(p, outcomeOK, sent)
	if n := testing.AllocsPerRun(1000, func() { m.checked(p, outcomeOK, sent) }); n != 0 {
		t.Fatalf("checked allocates %v times per call", n)
	}
}

// BenchmarkMetricsChecked is the cost added to each checked statement.
func BenchmarkMetricsChecked(b *testing.B) {
	m := newMetrics()
	p := &rewrite.Policy{Schema: "public", Table: "address"}
	b.ReportAllocs()
	for b.Loop() {
		m.checked(p, outcomeOK, time.Now())
	}
}

// BenchmarkMetricsSessionCounter is the cost of a hot-path counter, the
// same plain atomic add as before the Prometheus client.
func BenchmarkMetricsSessionCounter(b *testing.B) {
	m := newMetrics()
	b.ReportAllocs()
	for b.Loop() {
		m.planned.Add(1)
	}
}
