package integration

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

// TestForcedShutdownSays57P01: sessions still open when shutdown_timeout
// has passed get FATAL 57P01, as PostgreSQL's clients do when an
// administrator stops the server, before their connection closes.
func TestForcedShutdownSays57P01(t *testing.T) {
	t.Parallel()
	cfg := newConfig(t, pg.Addr(), config.Table{Name: "public.address"})
	p := startProxy(t, cfg)
	r := relayRawConnect(t, p.Addr, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if n := p.Srv.Shutdown(ctx); n != 1 {
		t.Fatalf("shutdown closed %d sessions by force, want 1", n)
	}
	_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(r.conn)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatal(err)
	}
	var e pgproto3.ErrorResponse
	if len(rest) < 5 || rest[0] != 'E' || e.Decode(rest[5:]) != nil {
		t.Fatalf("client received %q, want an ErrorResponse", rest)
	}
	if e.Severity != "FATAL" || e.Code != "57P01" || e.Message != "terminating connection due to administrator command" {
		t.Errorf("client received %s %s %q", e.Severity, e.Code, e.Message)
	}
}

// TestStartupConnectionsLimited: connections that have not logged in are
// limited on their own (limits.max_startup_connections); one over the limit
// is refused at once with 53300, and once the silent ones are gone (closed,
// or cut by limits.startup_timeout) a client logs in.
func TestStartupConnectionsLimited(t *testing.T) {
	t.Parallel()
	cfg := newConfig(t, pg.Addr())
	cfg.Limits.MaxStartupConnections = 3
	p := startProxy(t, cfg)
	var silent []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The silent ones hold their slots before any other connection comes.
	for deadline := time.Now().Add(10 * time.Second); p.Srv.StartupConnections() < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections logging in, want the 3 silent ones", p.Srv.StartupConnections())
		}
	}
	// The fourth is refused at once, before anything is read from it (so
	// in plain text even where TLS is required: a refusal under a flood
	// costs no handshake). The silent ones are accepted first: retry until
	// the refusal is seen.
	refused := false
	for i := 0; i < 100 && !refused; i++ {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(startupPacket(3<<16, "user", "postgres", "database", "postgres"))
		got := make([]byte, 512)
		n, _ := io.ReadAtLeast(c, got, 5)
		c.Close()
		var e pgproto3.ErrorResponse
		refused = n > 5 && got[0] == 'E' && e.Decode(got[5:n]) == nil && e.Code == "53300"
		if !refused {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !refused {
		t.Fatal("a fourth connection was not refused with FATAL 53300")
	}
	for _, c := range silent {
		c.Close()
	}
	var c *pgx.Conn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = pgx.Connect(ctx, dsn(p.Addr, "", "", "")); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after the silent connections closed: %v", err)
	}
	c.Close(ctx)
}

// TestSlowLoginAllowed: limits.startup_timeout bounds the wait for the
// startup packet only; a client that takes longer than that to answer the
// server's password request still logs in (limits.login_timeout, like the
// server's authentication_timeout, bounds that part).
func TestSlowLoginAllowed(t *testing.T) {
	t.Parallel()
	srv := authStartServer(t, pgtemp.Options{Auth: "md5"})
	authCreateUser(t, srv, "slow_md5", "slow-secret", "md5")
	cfg := newConfig(t, srv.Addr())
	cfg.Limits.StartupTimeout = 500 * time.Millisecond
	p := startProxy(t, cfg)

	r := relayDial(t, p.Addr)
	r.startup("slow_md5", "postgres")
	req, ok := r.receive().(*pgproto3.AuthenticationMD5Password)
	if !ok {
		t.Fatal("no md5 password request")
	}
	time.Sleep(1500 * time.Millisecond) // three startup timeouts
	inner := md5.Sum([]byte("slow-secret" + "slow_md5"))
	outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), req.Salt[:]...))
	r.fe.Send(&pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(outer[:])})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	r.untilReady()
	startupQuery(t, r)
}

// TestMissingTableLoggedOnce: a configured table that does not exist is
// reported once per configuration, not checked again (under a lock) and
// logged again for every new connection.
func TestMissingTableLoggedOnce(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, "")
	p, logs := startProxyCapture(t, newConfig(t, pg.Addr(), config.Table{Name: "public.nowhere"}))
	for i := 0; i < 5; i++ {
		c := connect(t, p.Addr, db)
		c.Close(context.Background())
	}
	if n := strings.Count(logs.String(), "guarded table does not exist"); n != 1 {
		t.Errorf("logged %d times for 5 connections:\n%s", n, logs.String())
	}
}

// TestServerGoneDuringLogin: when the connection to the server breaks
// during the login (a restart, a crash, a network fault: here a relay in
// front of the real server that cuts it once the server has answered the
// startup packet), the client is told with FATAL 08006 instead of finding
// its connection closed without a word.
func TestServerGoneDuringLogin(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", pg.Addr())
				if err != nil {
					return
				}
				defer s.Close()
				go func() { _, _ = io.Copy(s, c) }()
				buf := make([]byte, 1)
				_, _ = s.Read(buf) // the server has answered: cut here
			}()
		}
	}()
	p := startProxy(t, newConfig(t, ln.Addr().String()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pgx.Connect(ctx, dsn(p.Addr, "", "", ""))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08006" || pe.Severity != "FATAL" {
		t.Fatalf("want FATAL 08006, got %v", err)
	}
}

// TestHostileConnectionsLoggedAsSummary: a flood of connections that end
// badly before logging in gives one log line and then a summary, not a line
// each.
func TestHostileConnectionsLoggedAsSummary(t *testing.T) {
	t.Parallel()
	p, logs := startProxyCapture(t, newConfig(t, pg.Addr()))
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(startupPacket(4 << 16)) // unsupported protocol: FATAL 0A000
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.ReadAll(c)
		c.Close()
	}
	if n := strings.Count(logs.String(), "session ended during startup"); n < 1 || n > 2 {
		t.Errorf("50 hostile connections gave %d log lines:\n%s", n, logs.String())
	}
}

// TestClientBytesCounted: the relay counts the protocol bytes it reads from
// and writes to clients.
func TestClientBytesCounted(t *testing.T) {
	t.Parallel()
	p := guardedProxy(t)
	c := connect(t, p.Addr, "")
	var s string
	if err := c.QueryRow(context.Background(), "SELECT repeat('x', 100000)").Scan(&s); err != nil {
		t.Fatal(err)
	}
	if in := relayMetric(t, p, "pgoptimist_client_bytes_received_total"); in < int64(len("SELECT repeat('x', 100000)")) {
		t.Errorf("bytes received from clients: %d", in)
	}
	// The counter is added to just after the write that answers the client.
	out := relayMetric(t, p, "pgoptimist_client_bytes_sent_total")
	for deadline := time.Now().Add(3 * time.Second); out < 100000 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		out = relayMetric(t, p, "pgoptimist_client_bytes_sent_total")
	}
	if out < 100000 {
		t.Errorf("bytes sent to clients: %d, after a 100 kB result", out)
	}
}
