// Command soak runs pgoptimist under a few minutes of mixed load and faults,
// and checks that no update was lost (make soak).
//
// It starts a throwaway PostgreSQL (internal/pgtemp) and bin/pgoptimist as a
// separate process guarding a ledger table (explicit mode), then runs a few
// hundred concurrent client sessions (pgx; simple protocol, named and unnamed
// prepared statements) that mix reads, read-modify-writes retried on VL409,
// explicit transactions that commit or roll back, pipelines (pgx Batch),
// while the soak reloads the proxy's configuration (SIGHUP, every other one
// guarding one more table) and restarts the server once in the middle
// (pg_ctl restart -m fast). Sessions reconnect after the restart.
//
// It fails (exit status 1) on a lost update or any other ledger mismatch, on
// any error other than a stale write (VL409) and the disconnections the
// restart causes while it lasts, on a refused reload, on a proxy panic, on
// sessions left open at the end, and when the proxy does not stop cleanly on
// SIGTERM. It prints the proxy's memory (VmRSS, VmHWM from /proc/PID/status)
// idle, per session, and at its peak.
//
// Everything listens on 127.0.0.1. Settings (flag, or environment variable):
//
//	-bin           SOAK_BIN           bin/pgoptimist
//	-duration      SOAK_DURATION      3m     load phase
//	-sessions      SOAK_SESSIONS      300    concurrent client sessions
//	-rows          SOAK_ROWS          256    ledger rows (fewer: more conflicts)
//	-think         SOAK_THINK         250ms  mean pause between units of work
//	-reload-every  SOAK_RELOAD_EVERY  15s    configuration reloads (0: none)
//	-restart       SOAK_RESTART       true   restart the server halfway
//	-unguarded     SOAK_UNGUARDED     false  guard no table: the soak must then fail
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

type settings struct {
	bin         string
	duration    time.Duration
	sessions    int
	rows        int
	think       time.Duration
	reloadEvery time.Duration
	restart     bool
	unguarded   bool
	opTimeout   time.Duration
}

func parseSettings() (settings, error) {
	var s settings
	var errs []string
	envDur := func(name string, def time.Duration) time.Duration {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", name, v, err))
			}
			return d
		}
		return def
	}
	envInt := func(name string, def int) int {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", name, v, err))
			}
			return n
		}
		return def
	}
	envStr := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	flag.StringVar(&s.bin, "bin", envStr("SOAK_BIN", "bin/pgoptimist"), "pgoptimist binary")
	flag.DurationVar(&s.duration, "duration", envDur("SOAK_DURATION", 3*time.Minute), "length of the load phase")
	flag.IntVar(&s.sessions, "sessions", envInt("SOAK_SESSIONS", 300), "concurrent client sessions")
	flag.IntVar(&s.rows, "rows", envInt("SOAK_ROWS", 256), "ledger rows")
	flag.DurationVar(&s.think, "think", envDur("SOAK_THINK", 250*time.Millisecond), "mean pause between units of work of a session")
	flag.DurationVar(&s.reloadEvery, "reload-every", envDur("SOAK_RELOAD_EVERY", 15*time.Second), "interval between configuration reloads (0: none)")
	flag.BoolVar(&s.restart, "restart", envStr("SOAK_RESTART", "true") != "false" && os.Getenv("SOAK_RESTART") != "0", "restart the server halfway")
	flag.BoolVar(&s.unguarded, "unguarded", envStr("SOAK_UNGUARDED", "false") == "true" || os.Getenv("SOAK_UNGUARDED") == "1", "guard no table, to see the soak catch lost updates")
	flag.Parse()
	s.opTimeout = 60 * time.Second
	if len(errs) > 0 {
		return s, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	if s.duration <= 0 || s.sessions <= 0 || s.rows < 2 || s.think < 0 || s.reloadEvery < 0 {
		return s, fmt.Errorf("need duration > 0, sessions > 0, rows >= 2, think >= 0, reload-every >= 0")
	}
	return s, nil
}

// cleanups are undone in reverse order, once, by whichever comes first: the
// end of main, an interrupt, or the watchdog.
type cleanups struct {
	mu    sync.Mutex
	funcs []func()
	done  bool
}

func (c *cleanups) add(f func()) {
	c.mu.Lock()
	c.funcs = append(c.funcs, f)
	c.mu.Unlock()
}

func (c *cleanups) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	c.done = true
	for i := len(c.funcs) - 1; i >= 0; i-- {
		c.funcs[i]()
	}
}

func main() {
	set, err := parseSettings()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	var clean cleanups
	// Ctrl-C, or a soak that runs far past its time, still removes the
	// server and the proxy.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	hardDeadline := set.duration + 5*time.Minute
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "soak: %s: stopping\n", sig)
		case <-time.After(hardDeadline):
			fmt.Fprintf(os.Stderr, "soak: FAIL: still running %s after start; giving up\n", hardDeadline)
		}
		clean.run()
		os.Exit(1)
	}()
	ok := run(set, &clean)
	clean.run()
	if !ok {
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Printf("[soak %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// run is the whole soak; it reports true when every check passed.
func run(set settings, clean *cleanups) bool {
	bin, err := filepath.Abs(set.bin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v (run make build, or set SOAK_BIN)\n", err)
		return false
	}
	dir, err := os.MkdirTemp("", "pgoptimist-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return false
	}
	keepDir := false
	clean.add(func() {
		if keepDir {
			fmt.Printf("logs kept in %s\n", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	failSetup := func(what string, err error) bool {
		keepDir = true
		fmt.Fprintf(os.Stderr, "soak: FAIL: %s: %v\n", what, err)
		return false
	}

	// --- PostgreSQL --------------------------------------------------------
	serverLog, err := os.Create(filepath.Join(dir, "postgresql.log"))
	if err != nil {
		return failSetup("server log", err)
	}
	clean.add(func() { serverLog.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	pg, err := pgtemp.Start(ctx, pgtemp.Options{
		Log:  serverLog,
		Conf: []string{fmt.Sprintf("max_connections = %d", set.sessions+50)},
	})
	cancel()
	if err != nil {
		return failSetup("start PostgreSQL", err)
	}
	clean.add(func() {
		if err := pg.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
		}
	})
	pgVersion, err := setupDatabase(pg, set.rows)
	if err != nil {
		return failSetup("set up the database", err)
	}

	// --- the proxy ---------------------------------------------------------
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	px, err := startProxy(ctx, bin, dir, pg.Addr(), set.unguarded)
	cancel()
	if err != nil {
		return failSetup("start the proxy", err)
	}
	proxyStopped := false
	clean.add(func() {
		if !proxyStopped {
			px.kill()
		}
	})
	dsn := fmt.Sprintf("postgres://postgres@%s/soak?sslmode=disable", px.addr)
	logf("pgoptimist %s (pid %d) at %s in front of PostgreSQL %s at %s; logs in %s",
		bin, px.cmd.Process.Pid, px.addr, pgVersion, pg.Addr(), dir)

	s := newSoak(set, dsn)

	// Baseline memory: the proxy after one session has come and gone (its
	// catalog discovery and plan caches warm).
	conn, err := s.connect(pgx.QueryExecModeCacheStatement)
	if err != nil {
		return failSetup("first session through the proxy", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	_, _, err = (&session{s: s, conn: conn}).readRow(ctx, 1)
	conn.Close(ctx)
	cancel()
	if err != nil {
		return failSetup("first read through the proxy", err)
	}
	time.Sleep(time.Second)
	idleRSS, _, err := px.memory()
	if err != nil {
		return failSetup("read the proxy's memory", err)
	}

	// --- sessions open, idle -----------------------------------------------
	logf("opening %d sessions", set.sessions)
	var ready, workers sync.WaitGroup
	start := make(chan struct{})
	ready.Add(set.sessions)
	workers.Add(set.sessions)
	for i := 0; i < set.sessions; i++ {
		go func() {
			defer workers.Done()
			s.runWorker(i, &ready, start)
		}()
	}
	ready.Wait()
	time.Sleep(time.Second)
	openRSS, _, err := px.memory()
	if err != nil {
		return failSetup("read the proxy's memory", err)
	}
	openSessions := metricInt(px, "pgoptimist_sessions_active")

	// --- load --------------------------------------------------------------
	logf("load for %s: %d sessions, %d ledger rows, think %s, reload every %s, restart halfway: %v",
		set.duration, set.sessions, set.rows, set.think, set.reloadEvery, set.restart)
	began := time.Now()
	close(start)

	var peakRSS int64
	sample := func() {
		if rss, _, err := px.memory(); err == nil && rss > peakRSS {
			peakRSS = rss
		}
	}
	end := time.After(set.duration)
	sampleTick := time.NewTicker(250 * time.Millisecond)
	defer sampleTick.Stop()
	progress := time.NewTicker(15 * time.Second)
	defer progress.Stop()
	var reloadC <-chan time.Time
	if set.reloadEvery > 0 {
		t := time.NewTicker(set.reloadEvery)
		defer t.Stop()
		reloadC = t.C
	}
	var restartAt <-chan time.Time
	if set.restart {
		restartAt = time.After(set.duration / 2)
	}
	restartDone := make(chan error, 1)
	var restartBegan time.Time
	var restartTook time.Duration
	reloadsSent := 0
	withAudit := false
load:
	for {
		select {
		case <-end:
			break load
		case <-sampleTick.C:
			sample()
		case <-progress.C:
			sample()
			logf("%s: %d units of work, %d sessions opened, %d conflicts retried, %d failures, RSS %.1f MiB",
				time.Since(began).Round(time.Second), s.totalOps(), s.sessions.Load(), s.conflicts.Load(), s.failureCount(), mib(peakRSS))
		case <-reloadC:
			withAudit = !withAudit
			if err := px.reload(withAudit); err != nil {
				s.fail(fmt.Sprintf("reload: %v", err))
			}
			reloadsSent++
		case <-restartAt:
			logf("restarting PostgreSQL (pg_ctl restart -m fast)")
			restartBegan = time.Now()
			s.setRestarting(true)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				restartDone <- restartServer(ctx, pg)
			}()
		case err := <-restartDone:
			restartTook = time.Since(restartBegan)
			s.setRestarting(false)
			if err != nil {
				s.fail(err.Error())
			}
			logf("PostgreSQL is back after %s", restartTook.Round(time.Millisecond))
		}
	}
	loadTime := time.Since(began)
	if !restartBegan.IsZero() && restartTook == 0 {
		// The load phase ended during the restart: wait for it.
		if err := <-restartDone; err != nil {
			s.fail(err.Error())
		}
		restartTook = time.Since(restartBegan)
		s.setRestarting(false)
	}

	// --- stop --------------------------------------------------------------
	s.stopping.Store(true)
	workersDone := make(chan struct{})
	go func() { workers.Wait(); close(workersDone) }()
	select {
	case <-workersDone:
	case <-time.After(set.opTimeout + 30*time.Second):
		s.fail("sessions did not finish their last unit of work")
	}
	sample()
	// Sessions close asynchronously in the proxy; give them a moment.
	leftOpen := int64(-1)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if leftOpen = metricInt(px, "pgoptimist_sessions_active"); leftOpen == 0 {
			break
		}
	}
	if leftOpen != 0 {
		s.fail(fmt.Sprintf("%d sessions still open in the proxy after every client closed its connection", leftOpen))
	}
	time.Sleep(time.Second)
	closedRSS, hwm, err := px.memory()
	if err != nil {
		s.fail(fmt.Sprintf("read the proxy's memory: %v", err))
	}
	metrics, err := px.metricValues(context.Background(), "pgoptimist_stale_conflicts_total", "pgoptimist_panics_total",
		"pgoptimist_protocol_errors_total", "pgoptimist_sessions_total", "pgoptimist_upstream_errors_total")
	if err != nil {
		s.fail(fmt.Sprintf("metrics: %v", err))
	}
	if v := metrics["pgoptimist_panics_total"]; v != "0" {
		s.fail(fmt.Sprintf("the proxy recovered %s session panics", v))
	}
	if v := metrics["pgoptimist_protocol_errors_total"]; v != "0" {
		s.fail(fmt.Sprintf("the proxy ended %s sessions for protocol errors", v))
	}

	// --- the ledger --------------------------------------------------------
	table, err := readLedger(pg)
	var problems []string
	if err != nil {
		s.fail(fmt.Sprintf("read the ledger: %v", err))
	} else {
		problems = s.ledger.check(table)
		for _, p := range problems {
			s.fail("ledger: " + p)
		}
	}

	// Every other reload guards the audit table: sessions opened under such
	// a configuration increment its version on UPDATE, so some must have.
	auditBumped, err := countAuditBumped(pg)
	if err != nil {
		s.fail(fmt.Sprintf("read the audit table: %v", err))
	} else if !set.unguarded && reloadsSent > 0 && s.ops[opAudit].Load() > 0 && auditBumped == 0 {
		s.fail("no audit row has a version above 1: the reloaded configuration guarding it never took effect")
	}

	proxyStopped = true
	if err := px.stop(40 * time.Second); err != nil {
		s.fail(err.Error())
	}
	levels, msgs, reloadsApplied, reloadErrors, panics := px.logSummary()
	for _, l := range reloadErrors {
		s.fail("reload refused: " + l)
	}
	for _, l := range panics {
		s.fail("proxy log: " + l)
	}
	if reloadsApplied < reloadsSent {
		s.fail(fmt.Sprintf("%d reloads sent, %d applied (\"configuration reloaded\" in the proxy's log)", reloadsSent, reloadsApplied))
	}

	// --- report ------------------------------------------------------------
	confirmed, uncertain := s.ledger.totals()
	var balanceSum int64
	for _, r := range table {
		balanceSum += r.balance
	}
	total := s.totalOps()
	fmt.Println()
	fmt.Printf("pgoptimist soak: PostgreSQL %s, %d CPUs, %d sessions, %s of load, %d ledger rows, think %s\n",
		pgVersion, runtime.NumCPU(), set.sessions, loadTime.Round(time.Second), set.rows, set.think)
	fmt.Printf("  units of work      %d (%.0f/s):", total, float64(total)/loadTime.Seconds())
	for k := opKind(0); k < numOps; k++ {
		fmt.Printf(" %s %d", opNames[k], s.ops[k].Load())
	}
	fmt.Println()
	fmt.Printf("  latency            %s\n", s.latencySummary())
	fmt.Printf("  sessions opened    %d (proxy: %s)\n", s.sessions.Load(), metrics["pgoptimist_sessions_total"])
	fmt.Printf("  conflicts (VL409)  %d seen and retried by the clients, %d writes given up after %d attempts; proxy counted %s\n",
		s.conflicts.Load(), s.gaveUp.Load(), maxAttempts, orZero(metrics[`pgoptimist_stale_conflicts_total{table="public.ledger"}`]))
	fmt.Printf("  reloads            %d sent (SIGHUP), %d applied, %d refused; %d audit rows incremented while the reload guarded it\n",
		reloadsSent, reloadsApplied, len(reloadErrors), auditBumped)
	if set.restart {
		fmt.Printf("  server restart     at %s, took %s; errors it caused (allowed): %s; proxy upstream errors %s\n",
			(set.duration / 2).Round(time.Second), restartTook.Round(time.Millisecond), s.restartErrSummary(), metrics["pgoptimist_upstream_errors_total"])
	}
	verdict := "OK, no lost update"
	if err != nil || len(problems) > 0 {
		verdict = fmt.Sprintf("%d problems", len(problems))
	}
	fmt.Printf("  ledger             %d rows, sum(balance) %d; client: %d confirmed increments, %d uncertain (connection lost before the answer): %s\n",
		len(table), balanceSum, confirmed, uncertain, verdict)
	fmt.Printf("  proxy memory       idle %.1f MiB; %d sessions open %.1f MiB (%.1f KiB per session); peak RSS %.1f MiB sampled, VmHWM %.1f MiB (%.1f KiB per session); after all closed %.1f MiB\n",
		mib(idleRSS), openSessions, mib(openRSS), perSession(openRSS-idleRSS, openSessions),
		mib(peakRSS), mib(hwm), perSession(max(hwm, peakRSS)-idleRSS, int64(set.sessions)), mib(closedRSS))
	fmt.Printf("  proxy log          %s\n", levelSummary(levels))
	for i, m := range msgs {
		if i == 8 {
			fmt.Printf("                     ... %d more\n", len(msgs)-i)
			break
		}
		fmt.Printf("                     %s\n", m)
	}
	failures, samples := s.failureReport()
	if failures > 0 {
		keepDir = true
		fmt.Printf("FAIL: %d failures\n", failures)
		for _, f := range samples {
			fmt.Printf("  %s\n", f)
		}
		return false
	}
	fmt.Println("PASS")
	return true
}

// setupDatabase creates the soak database: the ledger (rows rows, version 1,
// balance 0) and the audit table. It returns the server's version.
func setupDatabase(pg *pgtemp.Server, rows int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, "CREATE DATABASE soak"); err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, pg.SocketDSN("", "soak"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, fmt.Sprintf(`
CREATE TABLE ledger (id integer PRIMARY KEY, version integer NOT NULL DEFAULT %d, balance bigint NOT NULL DEFAULT 0);
INSERT INTO ledger (id) SELECT generate_series(1, %d);
CREATE TABLE audit (id serial PRIMARY KEY, version integer NOT NULL DEFAULT 1, note text);
INSERT INTO audit (note) SELECT 'seed' FROM generate_series(1, %d);`, initialVersion, rows, auditRows), pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return "", err
	}
	var version string
	err = conn.QueryRow(ctx, "SHOW server_version").Scan(&version)
	return version, err
}

// countAuditBumped counts the audit rows whose version moved.
func countAuditBumped(pg *pgtemp.Server) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.SocketDSN("", "soak"))
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, "SELECT count(*) FROM audit WHERE version > 1").Scan(&n)
	return n, err
}

// readLedger reads the whole ledger directly from the server.
func readLedger(pg *pgtemp.Server) (map[int]row, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.SocketDSN("", "soak"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id, balance, version FROM ledger")
	if err != nil {
		return nil, err
	}
	table := map[int]row{}
	var id int
	var r row
	_, err = pgx.ForEachRow(rows, []any{&id, &r.balance, &r.version}, func() error {
		table[id] = r
		return nil
	})
	return table, err
}

func (s *soak) totalOps() int64 {
	var n int64
	for k := range s.ops {
		n += s.ops[k].Load()
	}
	return n
}

func (s *soak) latencySummary() string {
	var parts []string
	lower := "0"
	for i := range s.latency {
		upper := "inf"
		if i < len(latencyBounds) {
			upper = latencyBounds[i].String()
		}
		parts = append(parts, fmt.Sprintf("[%s,%s) %d", lower, upper, s.latency[i].Load()))
		lower = upper
	}
	return fmt.Sprintf("per unit of work, retries included: %s; max %s",
		strings.Join(parts, " "), time.Duration(s.maxLatency.Load()).Round(time.Millisecond))
}

func (s *soak) failureCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures
}

func (s *soak) failureReport() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures, append([]string(nil), s.failureSamples...)
}

func (s *soak) restartErrSummary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.restartErrs) == 0 {
		return "none"
	}
	var parts []string
	for label, n := range s.restartErrs {
		parts = append(parts, fmt.Sprintf("%s %d", label, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// metricInt reads one unlabelled metric, -1 when it cannot.
func metricInt(px *proxyProc, name string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vals, err := px.metricValues(ctx, name)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(vals[name], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func levelSummary(levels map[string]int) string {
	var parts []string
	for _, l := range []string{"ERROR", "WARN", "INFO", "DEBUG"} {
		if n := levels[l]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", l, n))
		}
	}
	if len(parts) == 0 {
		return "empty"
	}
	return strings.Join(parts, ", ") + " lines"
}

func orZero(v string) string {
	if v == "" {
		return "0"
	}
	return v
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

func perSession(kib, sessions int64) float64 {
	if sessions <= 0 {
		return 0
	}
	return float64(kib) / float64(sessions)
}
