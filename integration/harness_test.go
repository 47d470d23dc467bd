// Package integration runs pgoptimist end to end: a throwaway PostgreSQL
// started by the tests, the proxy in process, and real clients (pgx, psql,
// pgbench) talking to it over TCP.
package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
	"github.com/pgoptimist/pgoptimist/proxy"
)

// pg is the server shared by the tests of this package (trust auth).
var pg *pgtemp.Server

// tlsMatrix (PGOPTIMIST_TEST_TLS=1, make test-tls) runs the suite with TLS
// on both legs: the shared server has ssl=on, proxies in front of it use
// upstream.tls require and accept TLS clients (tls.mode allow), and pgx,
// psql and pgbench connect with sslmode=require. Raw protocol tests stay
// plain towards the proxy, so they cover a plain client with a TLS server.
var (
	tlsMatrix   = os.Getenv("PGOPTIMIST_TEST_TLS") != ""
	matrixCerts authCerts
)

// clientSSLMode is the sslmode the suite's clients use.
func clientSSLMode() string {
	if tlsMatrix {
		return "require"
	}
	return "disable"
}

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	var err error
	var opts pgtemp.Options
	if tlsMatrix {
		dir, derr := os.MkdirTemp("", "pgoptimist-certs")
		if derr != nil {
			fmt.Fprintln(os.Stderr, "integration:", derr)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		if matrixCerts, err = makeCerts(dir); err != nil {
			fmt.Fprintln(os.Stderr, "integration: certificates:", err)
			os.Exit(1)
		}
		opts.SSLCertFile, opts.SSLKeyFile = matrixCerts.CertFile, matrixCerts.KeyFile
	}
	pg, err = pgtemp.Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: cannot start PostgreSQL:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := pg.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if matrixCerts.CAFile != "" {
		os.RemoveAll(filepath.Dir(matrixCerts.CAFile))
	}
	os.Exit(code)
}

// proxyInstance is a proxy running in this process.
type proxyInstance struct {
	Addr string
	Srv  *proxy.Server
	Cfg  *config.Config
}

// newConfig returns a valid configuration pointing at upstream with the
// given tables (names may be unqualified).
func newConfig(t testing.TB, upstream string, tables ...config.Table) *config.Config {
	t.Helper()
	cfg := config.Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream.Address = upstream
	cfg.Upstream.TLS = "disable"
	cfg.Tables = tables
	if tlsMatrix {
		cfg.TLS = config.ClientTLS{Mode: "allow", CertFile: matrixCerts.CertFile, KeyFile: matrixCerts.KeyFile}
		if upstream == pg.Addr() {
			cfg.Upstream.TLS = "require"
		}
	}
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Normalize()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test configuration: %v", err)
	}
	return &cfg
}

// testLogger writes the proxy's logs to the test log (debug level when
// PGOPTIMIST_TEST_DEBUG is set).
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("PGOPTIMIST_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	var closed atomic.Bool
	t.Cleanup(func() { closed.Store(true) })
	return slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		if !closed.Load() {
			t.Log(strings.TrimRight(string(p), "\n"))
		}
		return len(p), nil
	}), &slog.HandlerOptions{Level: level}))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// startProxy runs a proxy with cfg until the test ends.
func startProxy(t testing.TB, cfg *config.Config) *proxyInstance {
	t.Helper()
	return startProxyLogging(t, cfg, testLogger(t))
}

// logCapture keeps what a proxy logs, for tests that check it.
type logCapture struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// startProxyCapture runs a proxy whose log (debug level) goes to the
// returned capture.
func startProxyCapture(t testing.TB, cfg *config.Config) (*proxyInstance, *logCapture) {
	t.Helper()
	c := &logCapture{}
	return startProxyLogging(t, cfg, slog.New(slog.NewTextHandler(c, &slog.HandlerOptions{Level: slog.LevelDebug}))), c
}

func startProxyLogging(t testing.TB, cfg *config.Config, log *slog.Logger) *proxyInstance {
	t.Helper()
	srv, err := proxy.New(cfg, log)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &proxyInstance{Addr: ln.Addr().String(), Srv: srv, Cfg: cfg}
}

// guardedProxy starts a proxy in front of the shared server guarding tables.
func guardedProxy(t testing.TB, tables ...config.Table) *proxyInstance {
	return startProxy(t, newConfig(t, pg.Addr(), tables...))
}

// dsn is a pgx/libpq URL for addr, with the suite's sslmode.
func dsn(addr, user, password, db string) string {
	return dsnMode(addr, user, password, db, clientSSLMode())
}

// dsnMode is dsn with an explicit sslmode.
func dsnMode(addr, user, password, db, sslmode string) string {
	if db == "" {
		db = "postgres"
	}
	if user == "" {
		user = "postgres"
	}
	cred := user
	if password != "" {
		cred += ":" + password
	}
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=%s", cred, addr, db, sslmode)
}

// connect opens a pgx connection through addr, closed when the test ends.
func connect(t testing.TB, addr, db string) *pgx.Conn {
	t.Helper()
	return connectWith(t, addr, db, nil)
}

// connectMode is connect with a default query exec mode.
func connectMode(t testing.TB, addr, db string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	return connectWith(t, addr, db, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = mode })
}

// connectWith is connect after adjust has changed the connection
// configuration (adjust may be nil).
func connectWith(t testing.TB, addr, db string, adjust func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	return connectURL(t, dsn(addr, "", "", db), adjust, tlsMatrix)
}

// connectURL opens a pgx connection to url, adjusted, closed when the test
// ends, and checks whether it is TLS.
func connectURL(t testing.TB, url string, adjust func(*pgx.ConnConfig), wantTLS bool) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if adjust != nil {
		adjust(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, isTLS := conn.PgConn().Conn().(*tls.Conn); isTLS != wantTLS {
		t.Fatalf("connection to %s: TLS %v, want %v", url, isTLS, wantTLS)
	}
	return conn
}

// direct opens a pgx connection to the server itself, for setup and checks.
func direct(t testing.TB, db string) *pgx.Conn {
	return connect(t, pg.Addr(), db)
}

var dbSeq atomic.Int64

// newDatabase creates a database for one test, dropped when it ends, and
// runs the setup SQL in it (directly, not through a proxy).
func newDatabase(t testing.TB, setup string) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx := context.Background()
	if err := pg.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = pg.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	if setup != "" {
		c := direct(t, name)
		if _, err := c.Exec(ctx, setup, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("setup: %v", err)
		}
	}
	return name
}

// psql runs psql against addr and returns its combined output.
func psql(t testing.TB, addr, db string, args ...string) (string, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	full := append([]string{"-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", "postgres", "-d", db}, args...)
	cmd := exec.Command(findTool(t, "psql"), full...)
	cmd.Env = append(os.Environ(), "PGSSLMODE="+clientSSLMode(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// findTool locates a client program (psql, pgbench); missing is a failure,
// since make test installs them.
func findTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p, err := pgtemp.FindBin(name)
	if err != nil {
		t.Fatalf("%s not found: %v", name, err)
	}
	return p
}

// psqlSame runs sql with psql directly and through the proxy at addr and
// fails unless both print the same.
func psqlSame(t testing.TB, addr, db, sql string) {
	t.Helper()
	want, err := psql(t, pg.Addr(), db, "-c", sql)
	if err != nil {
		t.Fatalf("%q directly: %v\n%s", sql, err, want)
	}
	got, err := psql(t, addr, db, "-c", sql)
	if err != nil {
		t.Fatalf("%q through the proxy: %v\n%s", sql, err, got)
	}
	if got != want {
		t.Errorf("%q through the proxy:\n%s\ndirectly:\n%s", sql, got, want)
	}
}
