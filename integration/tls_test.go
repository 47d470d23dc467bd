package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

// The relay with TLS on both legs: clients connect with sslmode=require to
// a proxy with tls.mode require, which talks to a PostgreSQL with ssl=on
// with upstream.tls require. Everything the plain relay does must work the
// same when the event loop decrypts and encrypts the records itself.

// tlsEnv is a PostgreSQL with ssl=on and a proxy with TLS on both legs in
// front of it.
type tlsEnv struct {
	srv   *pgtemp.Server
	certs authCerts
	p     *proxyInstance
}

func tlsProxyConfig(certs authCerts) func(*config.Config) {
	return func(c *config.Config) {
		c.TLS = config.ClientTLS{Mode: "require", CertFile: certs.CertFile, KeyFile: certs.KeyFile}
		c.Upstream.TLS = "require"
		c.Tables = []config.Table{{Name: "public.address"}}
	}
}

// tlsURL is a pgx URL through addr with sslmode=require.
func tlsURL(addr, db string) string {
	return authURL(addr, "postgres", "", db, "require")
}

// tlsConnect opens a pgx connection with TLS through addr and checks it is
// TLS.
func tlsConnect(t testing.TB, addr string, adjust func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	return connectURL(t, tlsURL(addr, "postgres"), adjust, true)
}

// tlsDirect is a connection to the server over its Unix socket, for
// setup and checks.
func (e *tlsEnv) direct(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.srv.SocketDSN("", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// backendGone waits until the server has no backend pid.
func (e *tlsEnv) backendGone(t testing.TB, pid uint32) {
	t.Helper()
	d := e.direct(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := d.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d still there after its client left", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsRaw is a protocol-level client over TLS; wire records what came over
// the socket before decryption.
type tlsRaw struct {
	tcp  net.Conn
	conn *tls.Conn
	fe   *pgproto3.Frontend
	pid  uint32
	wire *bytes.Buffer
}

type teeConn struct {
	net.Conn
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (c teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

// tlsRawConnect does SSLRequest, a TLS handshake (TLS 1.2 at most when
// tls12, so that alerts are visible on the wire) and a trust startup.
func tlsRawConnect(t testing.TB, addr string, tls12 bool) *tlsRaw {
	t.Helper()
	tcp, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	_ = tcp.SetDeadline(time.Now().Add(30 * time.Second))
	req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)
	if _, err := tcp.Write(req); err != nil {
		t.Fatal(err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(tcp, answer[:]); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", answer[0], err)
	}
	tc := &tls.Config{InsecureSkipVerify: true}
	if tls12 {
		tc.MaxVersion = tls.VersionTLS12
	}
	r := &tlsRaw{tcp: tcp, wire: &bytes.Buffer{}}
	r.conn = tls.Client(teeConn{Conn: tcp, mu: &sync.Mutex{}, buf: r.wire}, tc)
	if err := r.conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	r.fe = pgproto3.NewFrontend(bufio.NewReader(r.conn), r.conn)
	r.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.BackendKeyData:
			r.pid = m.ProcessID
		case *pgproto3.ErrorResponse:
			t.Fatalf("startup: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			return r
		}
	}
}

// lastRecordType is the content type of the last whole TLS record read
// from the wire.
func lastRecordType(wire []byte) byte {
	var typ byte
	for len(wire) >= 5 {
		n := 5 + int(binary.BigEndian.Uint16(wire[3:5]))
		if len(wire) < n {
			break
		}
		typ, wire = wire[0], wire[n:]
	}
	return typ
}

// tlsForwarder relays TCP connections to target and can cut them
// abruptly, to play a server that vanishes without close_notify.
type tlsForwarder struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
}

func newTLSForwarder(t testing.TB, target string) *tlsForwarder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &tlsForwarder{ln: ln}
	t.Cleanup(func() { ln.Close(); f.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c.(*net.TCPConn), u.(*net.TCPConn))
			f.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return f
}

// cut resets every connection (SO_LINGER 0: RST, no close_notify).
func (f *tlsForwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		_ = c.SetLinger(0)
		c.Close()
	}
	f.conns = nil
}

func TestTLSBothLegs(t *testing.T) {
	t.Parallel()
	certs := authMakeCerts(t)
	srv := authStartServer(t, pgtemp.Options{SSLCertFile: certs.CertFile, SSLKeyFile: certs.KeyFile})
	e := &tlsEnv{srv: srv, certs: certs}
	if _, err := e.direct(t).Exec(context.Background(), addressDDL); err != nil {
		t.Fatal(err)
	}
	e.p = authProxy(t, srv.Addr(), tlsProxyConfig(certs))
	p := e.p

	t.Run("legs", func(t *testing.T) {
		conn := tlsConnect(t, p.Addr, nil)
		var ssl bool
		if err := conn.QueryRow(context.Background(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
			t.Fatalf("server sees TLS %v (%v)", ssl, err)
		}
	})

	t.Run("pipeline", func(t *testing.T) {
		ctx := relayCtx(t, 30*time.Second)
		pc := tlsConnect(t, p.Addr, nil).PgConn()
		const n = 2000
		pl := pc.StartPipeline(ctx)
		for i := range n {
			pl.SendQueryParams("SELECT $1::int + 1, repeat('x', $1::int % 300)", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil, nil)
		}
		if err := pl.Sync(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			res, err := pl.GetResults()
			if err != nil {
				t.Fatalf("result %d: %v", i, err)
			}
			rr, ok := res.(*pgconn.ResultReader)
			if !ok {
				t.Fatalf("result %d is %T", i, res)
			}
			r := rr.Read()
			if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != strconv.Itoa(i+1) || len(r.Rows[0][1]) != i%300 {
				t.Fatalf("result %d: %v %q", i, r.Err, r.Rows)
			}
		}
		if res, err := pl.GetResults(); err != nil {
			t.Fatal(err)
		} else if _, ok := res.(*pgconn.PipelineSync); !ok {
			t.Fatalf("after the results: %T", res)
		}
		if err := pl.Close(); err != nil {
			t.Fatal(err)
		}
		// A batch in each mode (extended ones are pipelined by pgx).
		for _, mode := range relayModes {
			conn := tlsConnect(t, p.Addr, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = mode })
			b := &pgx.Batch{}
			for i := range 300 {
				b.Queue("SELECT $1::int * 2", i)
			}
			br := conn.SendBatch(ctx, b)
			for i := range 300 {
				var v int
				if err := br.QueryRow().Scan(&v); err != nil || v != 2*i {
					t.Fatalf("%v: batch row %d: %d %v", mode, i, v, err)
				}
			}
			if err := br.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("copy", func(t *testing.T) {
		ctx := relayCtx(t, 60*time.Second)
		conn := tlsConnect(t, p.Addr, nil)
		if _, err := conn.Exec(ctx, "CREATE TEMP TABLE blob (n int, v text)"); err != nil {
			t.Fatal(err)
		}
		var in bytes.Buffer
		raw := make([]byte, 3000)
		for i := 0; in.Len() < 12<<20; i++ {
			_, _ = rand.Read(raw)
			fmt.Fprintf(&in, "%d\t%s\n", i, hex.EncodeToString(raw))
		}
		tag, err := conn.PgConn().CopyFrom(ctx, bytes.NewReader(in.Bytes()), "COPY blob FROM STDIN")
		if err != nil {
			t.Fatal(err)
		}
		lines := int64(bytes.Count(in.Bytes(), []byte("\n")))
		if tag.RowsAffected() != lines {
			t.Fatalf("COPY FROM: %d rows, want %d", tag.RowsAffected(), lines)
		}
		var out bytes.Buffer
		tag, err = conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT * FROM blob ORDER BY n) TO STDOUT")
		if err != nil || tag.RowsAffected() != lines {
			t.Fatalf("COPY TO: %v %v", tag, err)
		}
		if md5.Sum(out.Bytes()) != md5.Sum(in.Bytes()) {
			t.Fatalf("%d MiB copied in came back different (%d bytes)", in.Len()>>20, out.Len())
		}
	})

	t.Run("cancel", func(t *testing.T) {
		conn := tlsConnect(t, p.Addr, func(cc *pgx.ConnConfig) {
			cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
				return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 8 * time.Second}
			}
		})
		before := relayMetric(t, p, "pgoptimist_cancel_requests_total")
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := conn.Exec(ctx, "SELECT pg_sleep(10)")
		cancel()
		if code := relayErrCode(err); code != "57014" {
			t.Fatalf("want query_canceled (57014), got %v", err)
		}
		var one int
		if err := conn.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("connection unusable after cancel: %v", err)
		}
		if after := relayWaitMetric(t, p, "pgoptimist_cancel_requests_total", before+1); after != before+1 {
			t.Errorf("cancel requests forwarded: %d, want 1", after-before)
		}
	})

	t.Run("listen_notify", func(t *testing.T) {
		ctx := relayCtx(t, 10*time.Second)
		listener := tlsConnect(t, p.Addr, nil)
		notifier := tlsConnect(t, p.Addr, nil)
		if _, err := listener.Exec(ctx, "LISTEN tls_chan"); err != nil {
			t.Fatal(err)
		}
		big := strings.Repeat("n", 7000)
		for _, payload := range []string{"one", big} {
			if _, err := notifier.Exec(ctx, "SELECT pg_notify('tls_chan', $1)", payload); err != nil {
				t.Fatal(err)
			}
			n, err := listener.WaitForNotification(ctx)
			if err != nil || n.Channel != "tls_chan" || n.Payload != payload || n.PID != notifier.PgConn().PID() {
				t.Fatalf("notification: %+v %v", n, err)
			}
		}
	})

	t.Run("guard_stale", func(t *testing.T) {
		ctx := relayCtx(t, 20*time.Second)
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			c := tlsConnect(t, p.Addr, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = mode })
			var id int64
			if err := c.QueryRow(ctx, "INSERT INTO address (state) VALUES ('FL') RETURNING id").Scan(&id); err != nil {
				t.Fatal(err)
			}
			if tag, err := c.Exec(ctx, "UPDATE address SET state='NC' WHERE id=$1 AND version=1", id); err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("%v: first update: %v %v", mode, tag, err)
			}
			_, err := c.Exec(ctx, "UPDATE address SET state='GA' WHERE id=$1 AND version=1", id)
			pe := wantCode(t, err, "VL409")
			if want := fmt.Sprintf("expected version 1, current version 2 (id=%d)", id); pe.Detail != want {
				t.Errorf("%v: detail %q, want %q", mode, pe.Detail, want)
			}
			if got := version(t, c, "address", id); got != 2 {
				t.Errorf("%v: version after stale update = %d, want 2", mode, got)
			}
		}
	})

	t.Run("slow_reader", func(t *testing.T) {
		// A 200 MB result read a little at a time: the proxy reads from
		// the server only as fast as the client takes, so the server ends
		// up waiting to write (ClientWrite) with most of the result unsent.
		ctx := relayCtx(t, 60*time.Second)
		conn := tlsConnect(t, p.Addr, nil)
		pid := conn.PgConn().PID()
		rr := conn.PgConn().ExecParams(ctx, "SELECT repeat('x', 2000) FROM generate_series(1, 100000)", nil, nil, nil, nil)
		for i := 0; i < 100 && rr.NextRow(); i++ {
		}
		d := e.direct(t)
		deadline := time.Now().Add(20 * time.Second)
		for {
			var state, wait string
			if err := d.QueryRow(ctx, "SELECT state, coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state, &wait); err != nil {
				t.Fatal(err)
			}
			if state == "active" && wait == "ClientWrite" {
				break
			}
			if state != "active" || time.Now().After(deadline) {
				t.Fatalf("server backend is %s/%s: the result was not held back by the slow client", state, wait)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The rest still arrives whole.
		rows := 100
		for rr.NextRow() {
			if len(rr.Values()[0]) != 2000 {
				t.Fatalf("row %d: %d bytes", rows, len(rr.Values()[0]))
			}
			rows++
		}
		if _, err := rr.Close(); err != nil || rows != 100000 {
			t.Fatalf("%d rows, %v", rows, err)
		}
	})

	t.Run("client_close_notify", func(t *testing.T) {
		// The client ends TLS with close_notify but sends no Terminate.
		r := tlsRawConnect(t, p.Addr, false)
		if err := r.conn.Close(); err != nil {
			t.Fatal(err)
		}
		e.backendGone(t, r.pid)
	})

	t.Run("client_abrupt_close", func(t *testing.T) {
		// The client vanishes mid-record: no close_notify, half a record.
		r := tlsRawConnect(t, p.Addr, false)
		_ = r.tcp.(*net.TCPConn).SetLinger(0)
		if _, err := r.tcp.Write([]byte{23, 3, 3, 0x40, 0}); err != nil {
			t.Fatal(err)
		}
		r.tcp.Close()
		e.backendGone(t, r.pid)
	})

	t.Run("server_ends_session", func(t *testing.T) {
		// The server terminates the backend (FATAL, then close_notify):
		// the client gets the FATAL and then the proxy's close_notify.
		r := tlsRawConnect(t, p.Addr, true)
		if _, err := e.direct(t).Exec(context.Background(), "SELECT pg_terminate_backend($1)", r.pid); err != nil {
			t.Fatal(err)
		}
		var fatal *pgproto3.ErrorResponse
		for {
			m, err := r.fe.Receive()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("after the FATAL: %v, want EOF", err)
				}
				break
			}
			if er, ok := m.(*pgproto3.ErrorResponse); ok {
				cp := *er
				fatal = &cp
			}
		}
		if fatal == nil || fatal.Code != "57P01" {
			t.Fatalf("want the server's FATAL 57P01, got %+v", fatal)
		}
		if typ := lastRecordType(r.wire.Bytes()); typ != 21 {
			t.Errorf("last TLS record from the proxy has type %d, want an alert (close_notify)", typ)
		}
	})

	t.Run("server_abrupt_close", func(t *testing.T) {
		// The server's connection is reset under the proxy.
		fw := newTLSForwarder(t, srv.Addr())
		fp := authProxy(t, fw.ln.Addr().String(), tlsProxyConfig(certs))
		conn := tlsConnect(t, fp.Addr, nil)
		var one int
		if err := conn.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		fw.cut()
		ctx := relayCtx(t, 10*time.Second)
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err == nil {
			t.Fatal("a query succeeded over a reset server connection")
		}
		if n := relayWaitMetric(t, fp, "pgoptimist_sessions_active", 0); n != 0 {
			t.Fatalf("%d sessions still active after the server vanished", n)
		}
	})

	t.Run("renegotiation_refused", func(t *testing.T) {
		tlsRenegotiation(t, e)
	})

	t.Run("key_update", func(t *testing.T) {
		tlsKeyUpdate(t, e)
	})

	// The proxy went on serving through all of the above.
	if n := relayWaitMetric(t, p, "pgoptimist_sessions_active", 0); n != 0 {
		t.Errorf("%d sessions still active at the end", n)
	}
}

// sClient is openssl s_client in a session through the proxy: the
// StartupMessage is written to its stdin and it is up to ReadyForQuery.
type sClient struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr chan string // s_client's stderr, line by line
	errLog strings.Builder
	pid    uint32
}

func startSClient(t *testing.T, addr, version string) *sClient {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ctx := relayCtx(t, 30*time.Second)
	c := &sClient{cmd: exec.CommandContext(ctx, bin, "s_client", "-connect", addr, "-starttls", "postgres", version), stderr: make(chan string, 100)}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.stderr)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			c.stderr <- sc.Text()
		}
	}()
	c.out = bufio.NewReader(stdout)
	pkt, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.stdin.Write(pkt); err != nil {
		t.Fatal(err)
	}
	// ReadyForQuery is 'Z', 0,0,0,5, 'I'.
	seen := c.until(t, []byte{'Z', 0, 0, 0, 5, 'I'})
	i := bytes.Index(seen, []byte{'K', 0, 0, 0, 12})
	if i < 0 {
		t.Fatal("no BackendKeyData before ReadyForQuery")
	}
	c.pid = binary.BigEndian.Uint32(seen[i+5:])
	return c
}

// until reads s_client's output up to pattern and returns it.
func (c *sClient) until(t *testing.T, pattern []byte) []byte {
	t.Helper()
	var seen []byte
	for !bytes.HasSuffix(seen, pattern) {
		b, err := c.out.ReadByte()
		if err != nil {
			t.Fatalf("s_client output ended before %q: %v\n%s", pattern, err, c.drainErr())
		}
		seen = append(seen, b)
	}
	return seen
}

// waitErr waits for a line of stderr containing s.
func (c *sClient) waitErr(t *testing.T, s string) {
	t.Helper()
	for line := range c.stderr {
		c.errLog.WriteString(line + "\n")
		if strings.Contains(line, s) {
			return
		}
	}
	t.Fatalf("s_client never said %q:\n%s", s, c.errLog.String())
}

// drainErr returns all of stderr once s_client has exited.
func (c *sClient) drainErr() string {
	for line := range c.stderr {
		c.errLog.WriteString(line + "\n")
	}
	return c.errLog.String()
}

// tlsRenegotiation asks for a TLS 1.2 renegotiation in the middle of a
// session (openssl s_client's R command): the proxy refuses it, as
// PostgreSQL does, and the session ends without the server noticing
// anything but its client leaving.
func tlsRenegotiation(t *testing.T, e *tlsEnv) {
	c := startSClient(t, e.p.Addr, "-tls1_2")
	if _, err := c.stdin.Write([]byte("R\n")); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(c.out)
	log := c.drainErr()
	err := c.cmd.Wait()
	c.stdin.Close()
	// crypto/tls answers a ClientHello after the handshake with a fatal
	// alert (PostgreSQL's OpenSSL with a no_renegotiation one): either way
	// no second handshake happens and the session ends.
	if err == nil || !strings.Contains(log, "RENEGOTIATING") || !strings.Contains(log, "alert") {
		t.Errorf("s_client (%v) did not report a refused renegotiation:\n%s%q", err, log, rest)
	}
	e.backendGone(t, c.pid)
}

// tlsKeyUpdate sends a TLS 1.3 KeyUpdate asking for the proxy's in return
// (s_client's K command) in the middle of a session: the loop answers it
// and the session goes on under the new keys both ways.
func tlsKeyUpdate(t *testing.T, e *tlsEnv) {
	c := startSClient(t, e.p.Addr, "-tls1_3")
	if _, err := c.stdin.Write([]byte("K\n")); err != nil {
		t.Fatal(err)
	}
	c.waitErr(t, "KEYUPDATE")
	// Extended protocol: a stdin chunk starting with 'Q' would be
	// s_client's quit command.
	var q []byte
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT 'after' || '-key-update'"}, &pgproto3.Bind{},
		&pgproto3.Execute{}, &pgproto3.Sync{},
	} {
		var err error
		if q, err = m.Encode(q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.stdin.Write(q); err != nil {
		t.Fatal(err)
	}
	c.until(t, []byte("after-key-update"))
	c.until(t, []byte{'Z', 0, 0, 0, 5, 'I'})
	c.stdin.Close()
	_, _ = io.ReadAll(c.out)
	c.drainErr()
	_ = c.cmd.Wait()
	e.backendGone(t, c.pid)
}
