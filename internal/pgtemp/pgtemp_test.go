package pgtemp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func start(t *testing.T, opts Options) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return s
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func TestStartQueryStop(t *testing.T) {
	ctx := context.Background()
	var log syncBuffer
	s, err := Start(ctx, Options{Log: &log, Conf: []string{"application_name = 'pgtemp_test'"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer s.Stop()

	if s.Host != "127.0.0.1" || s.Port == 0 || s.Superuser != "postgres" {
		t.Fatalf("unexpected server fields: %+v", s)
	}
	if want := "127.0.0.1:"; !strings.HasPrefix(s.Addr(), want) {
		t.Fatalf("Addr() = %q", s.Addr())
	}

	conn, err := pgx.Connect(ctx, s.DSN("postgres", "", "postgres"))
	if err != nil {
		t.Fatalf("connect over TCP: %v", err)
	}
	var n int
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT 40 + $1::int, current_setting('ssl') = 'on'", 2).Scan(&n, &ssl); err != nil {
		t.Fatalf("query: %v", err)
	}
	if n != 42 || ssl {
		t.Fatalf("got %d ssl=%v, want 42 ssl=false", n, ssl)
	}
	var fsync, maxConn string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('max_connections')").Scan(&fsync, &maxConn); err != nil {
		t.Fatal(err)
	}
	if fsync != "off" || maxConn != "200" {
		t.Fatalf("fsync=%s max_connections=%s", fsync, maxConn)
	}
	conn.Close(ctx)

	// Exec: several statements over the Unix socket.
	if err := s.Exec(ctx, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)"); err != nil {
		t.Fatalf("Exec: %v", err)
	}
	err = s.Exec(ctx, "SELECT * FROM missing_table")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Fatalf("Exec on a missing table: %v, want SQLSTATE 42P01", err)
	}

	dirs := []string{s.DataDir, s.SocketDir, s.baseDir}
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("stat %s: %v", d, err)
		}
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Stop (err=%v)", d, err)
		}
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	// The port is free again.
	if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		c.Close()
		t.Errorf("server still accepts connections on %s after Stop", s.Addr())
	}
	if !strings.Contains(log.String(), "database system is ready to accept connections") {
		t.Errorf("server log was not copied to Options.Log; got:\n%s", log.String())
	}
}

func TestMD5Auth(t *testing.T) {
	ctx := context.Background()
	s := start(t, Options{Auth: "md5"})
	if err := s.Exec(ctx, "CREATE ROLE alice LOGIN PASSWORD 'right-pw'"); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "CREATE DATABASE alicedb OWNER alice"); err != nil {
		t.Fatal(err)
	}

	conn, err := pgx.Connect(ctx, s.DSN("alice", "right-pw", "alicedb"))
	if err != nil {
		t.Fatalf("connect with the right password: %v", err)
	}
	var stored string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&stored); err != nil || stored != "alice" {
		t.Fatalf("current_user = %q, %v", stored, err)
	}
	conn.Close(ctx)

	if err := s.Exec(ctx, "DO $$ BEGIN IF (SELECT rolpassword FROM pg_authid WHERE rolname = 'alice') NOT LIKE 'md5%' THEN RAISE 'password not md5-encrypted'; END IF; END $$"); err != nil {
		t.Fatal(err)
	}

	_, err = pgx.Connect(ctx, s.DSN("alice", "wrong-pw", "alicedb"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("connect with a wrong password: %v, want SQLSTATE 28P01", err)
	}
}

func TestSCRAMAndSSL(t *testing.T) {
	ctx := context.Background()
	certFile, keyFile := selfSigned(t)
	s := start(t, Options{Auth: "scram-sha-256", SSLCertFile: certFile, SSLKeyFile: keyFile})
	if err := s.Exec(ctx, "CREATE ROLE bob LOGIN PASSWORD 'pw'"); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(strings.Replace(s.DSN("bob", "pw", "postgres"), "sslmode=disable", "sslmode=require", 1))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig = &tls.Config{InsecureSkipVerify: true}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect with TLS: %v", err)
	}
	defer conn.Close(ctx)
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
		t.Fatal(err)
	}
	if !ssl {
		t.Fatal("connection is not encrypted")
	}
	_, err = pgx.Connect(ctx, s.DSN("bob", "nope", "postgres"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("connect with a wrong password: %v, want SQLSTATE 28P01", err)
	}
}

func TestFixedPortAndStartError(t *testing.T) {
	s := start(t, Options{})
	// A second server on the same, explicitly requested port must fail and
	// report the server log.
	_, err := Start(context.Background(), Options{Port: s.Port})
	if err == nil {
		t.Fatal("second server on the same port started")
	}
	if !strings.Contains(err.Error(), "server log") {
		t.Errorf("error does not include the server log: %v", err)
	}
}

func TestRetryWhenPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return freePort()
	}
	defer func() { pickPort = freePort }()

	s := start(t, Options{})
	if calls < 2 || s.Port == taken {
		t.Fatalf("Start did not retry on another port: calls=%d port=%d taken=%d", calls, s.Port, taken)
	}
	if err := s.Exec(context.Background(), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestFindBin(t *testing.T) {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		p, err := FindBin(name)
		if err != nil {
			t.Fatal(err)
		}
		if !filepath.IsAbs(p) {
			t.Errorf("FindBin(%q) = %q, not absolute", name, p)
		}
	}
	if _, err := FindBin("no-such-postgres-program"); err == nil {
		t.Error("FindBin found a program that does not exist")
	}
}

func TestDSN(t *testing.T) {
	s := &Server{Host: "127.0.0.1", Port: 5439}
	if got, want := s.DSN("u", "p@ss/w:rd", "db"), "postgres://u:p%40ss%2Fw%3Ard@127.0.0.1:5439/db?sslmode=disable"; got != want {
		t.Errorf("DSN = %q, want %q", got, want)
	}
	if got, want := s.DSN("u", "", "db"), "postgres://u@127.0.0.1:5439/db?sslmode=disable"; got != want {
		t.Errorf("DSN = %q, want %q", got, want)
	}
	cfg, err := pgx.ParseConfig(s.DSN("u", "p@ss/w:rd", "db"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != "p@ss/w:rd" || cfg.User != "u" || cfg.Database != "db" || cfg.Port != 5439 {
		t.Errorf("parsed DSN: %+v", cfg.Config)
	}
}

// selfSigned writes a throwaway certificate and key for 127.0.0.1.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
