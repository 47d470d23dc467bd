package integration

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgoptimist/pgoptimist/config"
)

// relayProxy starts a proxy in front of the shared server with no guarded
// table, after letting the test adjust its configuration.
func relayProxy(t testing.TB, adjust ...func(*config.Config)) *proxyInstance {
	t.Helper()
	cfg := newConfig(t, pg.Addr())
	for _, f := range adjust {
		f(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test configuration: %v", err)
	}
	p := startProxy(t, cfg)
	relayNoPanics(t, p)
	return p
}

// relayNoPanics fails the test if the proxy recovered a session panic by
// the time the test ends.
func relayNoPanics(t testing.TB, p *proxyInstance) {
	t.Cleanup(func() {
		if n := relayMetric(t, p, "pgoptimist_panics_total"); n != 0 {
			t.Errorf("the proxy recovered %d session panics", n)
		}
	})
}

// relayMetric reads one unlabeled counter or gauge of the proxy.
func relayMetric(t testing.TB, p *proxyInstance, name string) int64 {
	t.Helper()
	var b bytes.Buffer
	if _, err := p.Srv.Metrics().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("metric %s not found in:\n%s", name, b.String())
	return 0
}

// relayWaitMetric waits up to 3s for a metric to reach want and returns
// its last value; some counters are updated just after the client is
// answered.
func relayWaitMetric(t testing.TB, p *proxyInstance, name string, want int64) int64 {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		v := relayMetric(t, p, name)
		if v == want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func relayCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var relayModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

func TestRelayQueryExecModes(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	ts := time.Date(2024, 2, 29, 13, 14, 15, 123456000, time.UTC)
	const numText = "-12345678901234567890.000000000123"
	var num pgtype.Numeric
	if err := num.Scan(numText); err != nil {
		t.Fatal(err)
	}
	text := "héllo 'quoted' \\ \t\n; $1 -- not a comment"
	blob := []byte{0, 1, 2, '\\', 'x', 0xfe, 0xff}
	for _, mode := range relayModes {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := relayCtx(t, 10*time.Second)
			conn := connectMode(t, p.Addr, "postgres", mode)
			// Twice: the second run uses the statement or description caches.
			for round := range 2 {
				var (
					i       int64
					s       string
					b       []byte
					tsGot   time.Time
					n       pgtype.Numeric
					nText   string
					null    *string
					nullInt *int32
				)
				err := conn.QueryRow(ctx,
					`SELECT $1::int8, $2::text, $3::bytea, $4::timestamptz, $5::numeric, $5::numeric::text, $6::text, $7::int4`,
					int64(-9007199254740993), text, blob, ts, num, nil, nil,
				).Scan(&i, &s, &b, &tsGot, &n, &nText, &null, &nullInt)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if i != -9007199254740993 {
					t.Errorf("int8 = %d", i)
				}
				if s != text {
					t.Errorf("text = %q, want %q", s, text)
				}
				if !bytes.Equal(b, blob) {
					t.Errorf("bytea = %x, want %x", b, blob)
				}
				if !tsGot.Equal(ts) {
					t.Errorf("timestamptz = %v, want %v", tsGot, ts)
				}
				if nText != numText {
					t.Errorf("numeric as the server saw it = %s, want %s", nText, numText)
				}
				if v, err := n.Value(); err != nil || v != numText {
					t.Errorf("numeric round trip = %v (%v), want %s", v, err, numText)
				}
				if null != nil || nullInt != nil {
					t.Errorf("NULLs came back as %v, %v", null, nullInt)
				}
			}
			// Several rows and a command tag.
			rows, err := conn.Query(ctx, "SELECT g, repeat('x', g) FROM generate_series(1, $1::int) g", 50)
			if err != nil {
				t.Fatal(err)
			}
			count := 0
			for rows.Next() {
				var g int
				var x string
				if err := rows.Scan(&g, &x); err != nil {
					t.Fatal(err)
				}
				count++
				if g != count || len(x) != g {
					t.Fatalf("row %d: %d %q", count, g, x)
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if count != 50 || rows.CommandTag().String() != "SELECT 50" {
				t.Errorf("%d rows, tag %q", count, rows.CommandTag())
			}
			// An error leaves the connection usable.
			_, err = conn.Exec(ctx, "SELECT $1::int / 0", 1)
			if relayErrCode(err) != "22012" {
				t.Errorf("division by zero: %v", err)
			}
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Errorf("after an error: %d, %v", one, err)
			}
		})
	}
}

func TestRelayBatch(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	for _, mode := range relayModes {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := relayCtx(t, 10*time.Second)
			conn := connectMode(t, p.Addr, "postgres", mode)
			b := &pgx.Batch{}
			b.Queue("SELECT 1::int")
			b.Queue("SELECT $1::text", "two")
			b.Queue("SELECT 10 / $1::int", 0)
			b.Queue("SELECT 4::int")
			b.Queue("SELECT $1::text", "five")
			br := conn.SendBatch(ctx, b)
			var one int
			if err := br.QueryRow().Scan(&one); err != nil || one != 1 {
				t.Errorf("query 1: %d, %v", one, err)
			}
			var two string
			if err := br.QueryRow().Scan(&two); err != nil || two != "two" {
				t.Errorf("query 2: %q, %v", two, err)
			}
			var x int
			if err := br.QueryRow().Scan(&x); relayErrCode(err) != "22012" {
				t.Errorf("query 3: want division_by_zero, got %d, %v", x, err)
			}
			if err := br.QueryRow().Scan(&x); err == nil {
				t.Errorf("query 4 after the error succeeded: %d", x)
			}
			var s string
			if err := br.QueryRow().Scan(&s); err == nil {
				t.Errorf("query 5 after the error succeeded: %q", s)
			}
			if err := br.Close(); relayErrCode(err) != "22012" {
				t.Errorf("batch close: %v", err)
			}
			if st := conn.PgConn().TxStatus(); st != 'I' {
				t.Errorf("transaction status after the batch: %c", st)
			}
			if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&x); err != nil || x != 42 {
				t.Errorf("after the batch: %d, %v", x, err)
			}
			// A batch that succeeds as a whole, in a transaction.
			if _, err := conn.Exec(ctx, "CREATE TEMP TABLE relay_batch (i int)"); err != nil {
				t.Fatal(err)
			}
			b = &pgx.Batch{}
			b.Queue("BEGIN")
			b.Queue("DELETE FROM relay_batch")
			b.Queue("INSERT INTO relay_batch SELECT generate_series(1, $1::int)", 10)
			b.Queue("SELECT sum(i) FROM relay_batch")
			b.Queue("COMMIT")
			br = conn.SendBatch(ctx, b)
			for i := range 3 {
				if _, err := br.Exec(); err != nil {
					t.Fatalf("batch 2 statement %d: %v", i+1, err)
				}
			}
			var sum int
			if err := br.QueryRow().Scan(&sum); err != nil || sum != 55 {
				t.Errorf("sum = %d, %v", sum, err)
			}
			if _, err := br.Exec(); err != nil {
				t.Errorf("commit: %v", err)
			}
			if err := br.Close(); err != nil {
				t.Errorf("batch 2 close: %v", err)
			}
		})
	}
}

// relayCopyText escapes a value for COPY's text format.
func relayCopyText(s string) string {
	r := strings.NewReplacer("\\", "\\\\", "\t", "\\t", "\n", "\\n", "\r", "\\r")
	return r.Replace(s)
}

func TestRelayCopy(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, `CREATE TABLE relay_copy (id int PRIMARY KEY, t text, b bytea, n int);
CREATE TABLE relay_copy2 (id int PRIMARY KEY, t text, b bytea, n int);`)
	p := relayProxy(t)
	ctx := relayCtx(t, 30*time.Second)
	conn := connect(t, p.Addr, db)

	const nrows = 10000
	rows := make([][]any, nrows)
	var want bytes.Buffer
	h := md5.New()
	for i := range nrows {
		id := i + 1
		text := fmt.Sprintf("row %d", id)
		if id%1000 == 0 {
			text = fmt.Sprintf("row %d\twith tab\\backslash\nand newline é", id)
		}
		var n any = int32(id * 7)
		nText := strconv.Itoa(id * 7)
		if id%997 == 0 {
			n, nText = nil, `\N`
		}
		blob := []byte{byte(id), byte(id >> 8), 0}
		rows[i] = []any{int32(id), text, blob, n}
		fmt.Fprintf(&want, "%d\t%s\t\\\\x%s\t%s\n", id, relayCopyText(text), hex.EncodeToString(blob), nText)
		h.Write([]byte(text))
	}
	cols := []string{"id", "t", "b", "n"}
	got, err := conn.CopyFrom(ctx, pgx.Identifier{"relay_copy"}, cols, pgx.CopyFromSlice(nrows, func(i int) ([]any, error) { return rows[i], nil }))
	if err != nil {
		t.Fatalf("CopyFrom: %v", err)
	}
	if got != nrows {
		t.Fatalf("CopyFrom copied %d rows, want %d", got, nrows)
	}

	// What arrived, checked on a direct connection.
	d := direct(t, db)
	var count, sum int64
	var digest string
	if err := d.QueryRow(ctx, "SELECT count(*), sum(id), md5(string_agg(t, '' ORDER BY id)) FROM relay_copy").Scan(&count, &sum, &digest); err != nil {
		t.Fatal(err)
	}
	if count != nrows || sum != nrows*(nrows+1)/2 || digest != hex.EncodeToString(h.Sum(nil)) {
		t.Errorf("server has %d rows, sum %d, digest %s", count, sum, digest)
	}

	// COPY TO STDOUT through the proxy: the exact bytes.
	var out bytes.Buffer
	tag, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT id, t, b, n FROM relay_copy ORDER BY id) TO STDOUT")
	if err != nil {
		t.Fatalf("CopyTo: %v", err)
	}
	if tag.RowsAffected() != nrows {
		t.Errorf("CopyTo tag %q", tag)
	}
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Errorf("COPY TO STDOUT output differs: got %d bytes, want %d", out.Len(), want.Len())
		gl, wl := strings.Split(out.String(), "\n"), strings.Split(want.String(), "\n")
		for i := 0; i < len(gl) && i < len(wl); i++ {
			if gl[i] != wl[i] {
				t.Errorf("first difference at line %d:\n got %q\nwant %q", i+1, gl[i], wl[i])
				break
			}
		}
	}

	// COPY FROM STDIN in text format through the proxy, fed those bytes.
	tag, err = conn.PgConn().CopyFrom(ctx, bytes.NewReader(out.Bytes()), "COPY relay_copy2 FROM STDIN")
	if err != nil {
		t.Fatalf("COPY FROM STDIN: %v", err)
	}
	if tag.RowsAffected() != nrows {
		t.Errorf("COPY FROM STDIN tag %q", tag)
	}
	var diff int
	if err := d.QueryRow(ctx, `SELECT count(*) FROM (SELECT * FROM relay_copy EXCEPT SELECT * FROM relay_copy2
		UNION ALL SELECT * FROM relay_copy2 EXCEPT SELECT * FROM relay_copy) x`).Scan(&diff); err != nil || diff != 0 {
		t.Errorf("tables differ after COPY FROM STDIN: %d rows, %v", diff, err)
	}

	// A COPY FROM STDIN the server rejects halfway leaves the session usable.
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tdup\t\\N\t1\n"), "COPY relay_copy2 FROM STDIN")
	if relayErrCode(err) != "23505" {
		t.Errorf("duplicate key in COPY: %v", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Errorf("after a failed COPY: %v", err)
	}
}

func TestRelayListenNotify(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	ctx := relayCtx(t, 10*time.Second)
	listener := connect(t, p.Addr, "postgres")
	notifier := connect(t, p.Addr, "postgres")
	if _, err := listener.Exec(ctx, "LISTEN relay_chan"); err != nil {
		t.Fatal(err)
	}
	if _, err := notifier.Exec(ctx, "SELECT pg_notify('relay_chan', $1)", "payload é 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := notifier.Exec(ctx, "NOTIFY relay_chan, 'payload 2'"); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"payload é 1", "payload 2"} {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			t.Fatalf("notification %d: %v", i+1, err)
		}
		if n.Channel != "relay_chan" || n.Payload != want {
			t.Errorf("notification %d: %q %q", i+1, n.Channel, n.Payload)
		}
		if n.PID != notifier.PgConn().PID() {
			t.Errorf("notification %d from pid %d, notifier's backend is %d", i+1, n.PID, notifier.PgConn().PID())
		}
	}
	// The listener's pid is the server's backend pid (BackendKeyData relayed).
	var pid uint32
	if err := listener.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil || pid != listener.PgConn().PID() {
		t.Errorf("pg_backend_pid() = %d (%v), BackendKeyData said %d", pid, err, listener.PgConn().PID())
	}
	// No notification is left over.
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if n, err := listener.WaitForNotification(wctx); err == nil {
		t.Errorf("unexpected notification %+v", n)
	}
}

func TestRelayNotice(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	ctx := relayCtx(t, 10*time.Second)
	var mu sync.Mutex
	var notices []pgconn.Notice
	conn := connectWith(t, p.Addr, "postgres", func(cc *pgx.ConnConfig) {
		cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			mu.Lock()
			notices = append(notices, *n)
			mu.Unlock()
		}
	})
	if _, err := conn.Exec(ctx, "DO $$ BEGIN RAISE NOTICE 'relay notice %', 42; RAISE WARNING 'relay warning' USING DETAIL = 'some detail'; END $$"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 2 {
		t.Fatalf("got %d notices: %+v", len(notices), notices)
	}
	if n := notices[0]; n.Severity != "NOTICE" || n.Code != "00000" || n.Message != "relay notice 42" {
		t.Errorf("notice 1: %+v", n)
	}
	if n := notices[1]; n.Severity != "WARNING" || n.Code != "01000" || n.Message != "relay warning" || n.Detail != "some detail" {
		t.Errorf("notice 2: %+v", n)
	}
}

func TestRelayCancel(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	conn := connectWith(t, p.Addr, "postgres", func(cc *pgx.ConnConfig) {
		// Cancel with a CancelRequest (through the proxy) rather than by
		// closing the connection, pgx's default.
		cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
			return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 8 * time.Second}
		}
	})
	before := relayMetric(t, p, "pgoptimist_cancel_requests_total")
	for round := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		_, err := conn.Exec(ctx, "SELECT pg_sleep(10)")
		cancel()
		elapsed := time.Since(start)
		if code := relayErrCode(err); code != "57014" {
			t.Fatalf("round %d: want query_canceled (57014), got %v after %v", round, err, elapsed)
		}
		if elapsed > 5*time.Second {
			t.Errorf("round %d: cancel took %v", round, elapsed)
		}
		var one int
		if err := conn.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("round %d: connection unusable after cancel: %v", round, err)
		}
	}
	if after := relayWaitMetric(t, p, "pgoptimist_cancel_requests_total", before+2); after-before != 2 {
		t.Errorf("cancel requests forwarded: %d, want 2", after-before)
	}

	// A CancelRequest with a key no session owns is not forwarded.
	r := relayDial(t, p.Addr)
	pkt := binary.BigEndian.AppendUint32(nil, 16)
	pkt = binary.BigEndian.AppendUint32(pkt, 80877102)
	pkt = binary.BigEndian.AppendUint32(pkt, 12345)
	pkt = binary.BigEndian.AppendUint32(pkt, 67890)
	r.writeRaw(pkt)
	if _, err := io.ReadAll(r.conn); err != nil {
		t.Errorf("reading after a bogus CancelRequest: %v", err)
	}
	if after := relayMetric(t, p, "pgoptimist_cancel_requests_total"); after-before != 2 {
		t.Errorf("a cancel request with an unknown key was forwarded (%d)", after-before)
	}
}

func TestRelayFunctionCall(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	r := relayRawConnect(t, p.Addr, "postgres")
	int4 := func(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

	// int4pl (oid 177), binary arguments and result.
	r.fe.Send(&pgproto3.FunctionCall{Function: 177, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{int4(1), int4(2)}, ResultFormatCode: 1})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	m := r.receive()
	resp, ok := m.(*pgproto3.FunctionCallResponse)
	if !ok {
		t.Fatalf("want FunctionCallResponse, got %T %+v", m, m)
	}
	if !bytes.Equal(resp.Result, int4(3)) {
		t.Errorf("int4pl(1, 2) = %x, want 00000003", resp.Result)
	}
	if _, ok := r.receive().(*pgproto3.ReadyForQuery); !ok {
		t.Fatal("no ReadyForQuery after the function call")
	}

	// Text format.
	r.fe.Send(&pgproto3.FunctionCall{Function: 177, Arguments: [][]byte{[]byte("40"), []byte("2")}})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if resp, ok := r.receive().(*pgproto3.FunctionCallResponse); !ok || string(resp.Result) != "42" {
		t.Errorf("int4pl('40', '2') in text: %+v", resp)
	}
	if _, ok := r.receive().(*pgproto3.ReadyForQuery); !ok {
		t.Fatal("no ReadyForQuery after the function call")
	}

	// A failing function call: the error, then ReadyForQuery.
	r.fe.Send(&pgproto3.FunctionCall{Function: 177, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{int4(2147483647), int4(1)}, ResultFormatCode: 1})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if e, ok := r.receive().(*pgproto3.ErrorResponse); !ok || e.Code != "22003" {
		t.Errorf("int4pl overflow: %+v", e)
	}
	if _, ok := r.receive().(*pgproto3.ReadyForQuery); !ok {
		t.Fatal("no ReadyForQuery after the failed function call")
	}

	// The session goes on with a query.
	r.fe.Send(&pgproto3.Query{String: "SELECT 'after'"})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got string
	for {
		m := r.receive()
		if d, ok := m.(*pgproto3.DataRow); ok {
			got = string(d.Values[0])
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if got != "after" {
		t.Errorf("query after function calls returned %q", got)
	}
}

func TestRelayPsqlMultiStatement(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	out, err := psql(t, p.Addr, "postgres", "-A", "-t", "-c", "select 1; select 2")
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if out != "1\n2\n" {
		t.Errorf("psql -c 'select 1; select 2' printed %q, want %q", out, "1\n2\n")
	}
	out, err = psql(t, p.Addr, "postgres", "-c", "select 1 as a; select 'two' as b")
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	for _, want := range []string{" a \n---\n 1\n(1 row)", "  b  \n-----\n two\n(1 row)"} {
		if !strings.Contains(out, want) {
			t.Errorf("psql output lacks %q:\n%s", want, out)
		}
	}
	// An error in the middle stops the rest and is reported.
	out, err = psql(t, p.Addr, "postgres", "-A", "-t", "-c", "select 1; select 1/0; select 3")
	if err == nil || !strings.Contains(out, "division by zero") || strings.Contains(out, "3") {
		t.Errorf("psql with an error: %v\n%s", err, out)
	}
}

func TestRelayParameterStatus(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	ctx := relayCtx(t, 10*time.Second)
	conn := connectWith(t, p.Addr, "postgres", func(cc *pgx.ConnConfig) {
		cc.RuntimeParams["application_name"] = "relay-start"
		cc.RuntimeParams["search_path"] = "relay_schema, public"
	})
	pc := conn.PgConn()
	if v := pc.ParameterStatus("application_name"); v != "relay-start" {
		t.Errorf("application_name at startup = %q", v)
	}
	if v := pc.ParameterStatus("server_version"); v == "" {
		t.Error("no server_version parameter status")
	}
	var sp string
	if err := conn.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil || sp != "relay_schema, public" {
		t.Errorf("startup parameter search_path: %q, %v", sp, err)
	}
	if _, err := conn.Exec(ctx, "SET application_name = 'relay-test'"); err != nil {
		t.Fatal(err)
	}
	if v := pc.ParameterStatus("application_name"); v != "relay-test" {
		t.Errorf("application_name after SET = %q", v)
	}
	if _, err := conn.Exec(ctx, "SET TimeZone = 'Asia/Tokyo'"); err != nil {
		t.Fatal(err)
	}
	if v := pc.ParameterStatus("TimeZone"); v != "Asia/Tokyo" {
		t.Errorf("TimeZone after SET = %q", v)
	}
	var app string
	if err := direct(t, "postgres").QueryRow(ctx, "SELECT application_name FROM pg_stat_activity WHERE pid = $1", pc.PID()).Scan(&app); err != nil || app != "relay-test" {
		t.Errorf("server sees application_name %q, %v", app, err)
	}
}

func TestRelayLargeRow(t *testing.T) {
	t.Parallel()
	p := relayProxy(t)
	raw := make([]byte, 4<<20)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	big := hex.EncodeToString(raw) // 8 MiB of text
	sum := md5.Sum([]byte(big))
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := relayCtx(t, 30*time.Second)
			conn := connectMode(t, p.Addr, "postgres", mode)
			var got, digest string
			var n int
			if err := conn.QueryRow(ctx, "SELECT $1::text, md5($1::text), length($1::text)", big).Scan(&got, &digest, &n); err != nil {
				t.Fatal(err)
			}
			if got != big {
				t.Errorf("8 MiB value came back different (%d bytes)", len(got))
			}
			if digest != hex.EncodeToString(sum[:]) || n != len(big) {
				t.Errorf("server saw length %d, md5 %s", n, digest)
			}
			// A large result the server generates.
			if err := conn.QueryRow(ctx, "SELECT repeat('ab', 4 << 20)").Scan(&got); err != nil || got != strings.Repeat("ab", 4<<20) {
				t.Errorf("large server-side value: %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestRelayMaxMessageBytes(t *testing.T) {
	t.Parallel()
	p := relayProxy(t, func(c *config.Config) { c.Limits.MaxMessageBytes = 1 << 20 })
	ctx := relayCtx(t, 20*time.Second)

	// Raw: a Query header announcing 2 MB.
	r := relayRawConnect(t, p.Addr, "postgres")
	hdr := []byte{'Q'}
	hdr = binary.BigEndian.AppendUint32(hdr, 2<<20)
	r.writeRaw(append(hdr, []byte("SELECT '")...))
	end := r.drain()
	if end.Err == nil || end.Err.Severity != "FATAL" || end.Err.Code != "08P01" {
		t.Errorf("oversized message: want FATAL 08P01, got %+v", end)
	} else if !strings.Contains(end.Err.Message, "exceeds") {
		t.Errorf("oversized message error: %q", end.Err.Message)
	}
	if end.Ready {
		t.Error("session went on after an oversized message")
	} else if !relayClosed(r) {
		t.Error("connection not closed after FATAL")
	}

	// pgx sending a whole 2 MB query.
	conn := connect(t, p.Addr, "postgres")
	_, err := conn.Exec(ctx, "SELECT '"+strings.Repeat("x", 2<<20)+"'", pgx.QueryExecModeSimpleProtocol)
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		if pe.Severity != "FATAL" || pe.Code != "08P01" {
			t.Errorf("2 MB query through pgx: %v", err)
		}
	} else if err == nil {
		t.Error("2 MB query through a 1 MiB limit succeeded")
	} else {
		t.Logf("2 MB query through pgx ended with a connection error (no FATAL read before the reset): %v", err)
	}
	if !conn.IsClosed() {
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err == nil {
			t.Error("connection still usable after an oversized message")
		}
	}

	// The proxy serves new connections, and messages under the limit.
	conn2 := connect(t, p.Addr, "postgres")
	var n int
	if err := conn2.QueryRow(ctx, "SELECT length($1::text)", strings.Repeat("y", 900<<10)).Scan(&n); err != nil || n != 900<<10 {
		t.Errorf("900 KiB parameter under a 1 MiB limit: %d, %v", n, err)
	}
	if got := relayWaitMetric(t, p, "pgoptimist_protocol_errors_total", 2); got != 2 {
		t.Errorf("protocol errors metric = %d, want 2 (the raw and the pgx oversized messages)", got)
	}
}

// relayClosed reports whether the server side closed r within a few seconds.
func relayClosed(r *relayRaw) bool {
	_ = r.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	var b [1]byte
	_, err := r.conn.Read(b[:])
	return errors.Is(err, io.EOF) || relayIsConnReset(err)
}

func TestRelayMaxConnections(t *testing.T) {
	t.Parallel()
	p := relayProxy(t, func(c *config.Config) { c.Limits.MaxConnections = 2 })
	ctx := relayCtx(t, 20*time.Second)
	c1 := connect(t, p.Addr, "postgres")
	c2 := connect(t, p.Addr, "postgres")
	_, err := pgx.Connect(ctx, dsn(p.Addr, "", "", "postgres"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" || pe.Severity != "FATAL" {
		t.Fatalf("third connection: want FATAL 53300, got %v", err)
	}
	if got := relayMetric(t, p, "pgoptimist_connections_refused_total"); got != 1 {
		t.Errorf("refused connections metric = %d, want 1", got)
	}
	for _, c := range []*pgx.Conn{c1, c2} {
		var one int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Errorf("open connection after a refusal: %v", err)
		}
	}
	c1.Close(ctx)
	// The slot is given back when the session ends, just after the close.
	var c3 *pgx.Conn
	deadline := time.Now().Add(3 * time.Second)
	for {
		c3, err = pgx.Connect(ctx, dsn(p.Addr, "", "", "postgres"))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("connection after one closed: %v", err)
	}
	defer c3.Close(ctx)
	var one int
	if err := c3.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Error(err)
	}
	// Full again.
	before := relayMetric(t, p, "pgoptimist_connections_refused_total")
	if _, err := pgx.Connect(ctx, dsn(p.Addr, "", "", "postgres")); relayErrCode(err) != "53300" {
		t.Errorf("connection over the limit again: %v", err)
	}
	if got := relayMetric(t, p, "pgoptimist_connections_refused_total"); got != before+1 {
		t.Errorf("refused connections metric went from %d to %d", before, got)
	}
}

func TestRelayUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := newConfig(t, addr)
	p, logs := startProxyCapture(t, cfg)
	relayNoPanics(t, p)
	ctx := relayCtx(t, 10*time.Second)
	_, err = pgx.Connect(ctx, dsn(p.Addr, "", "", "postgres"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08006" || pe.Severity != "FATAL" {
		t.Fatalf("want FATAL 08006, got %v", err)
	}
	// A client that has not logged in learns nothing about the upstream;
	// the operator's log says where and why.
	if pe.Message != "pgoptimist: could not connect to the database server" || pe.Detail != "" {
		t.Errorf("client told %q (%q)", pe.Message, pe.Detail)
	}
	if !strings.Contains(logs.String(), addr) || !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("log does not say where and why:\n%s", logs.String())
	}
	if got := relayMetric(t, p, "pgoptimist_upstream_errors_total"); got != 1 {
		t.Errorf("upstream errors metric = %d", got)
	}
}

func TestRelayStartupTimeout(t *testing.T) {
	t.Parallel()
	p := relayProxy(t, func(c *config.Config) { c.Limits.StartupTimeout = 300 * time.Millisecond })
	// A client that sends nothing.
	start := time.Now()
	r := relayDial(t, p.Addr)
	_ = r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(r.conn)
	elapsed := time.Since(start)
	if err != nil && !relayIsConnReset(err) {
		t.Fatalf("silent client: %v after %v", err, elapsed)
	}
	if elapsed < 250*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("silent client closed after %v, want about 300ms", elapsed)
	}
	t.Logf("silent client closed after %v (%d bytes)", elapsed, len(b))

	// A client that sends half a startup packet.
	start = time.Now()
	r = relayDial(t, p.Addr)
	r.writeRaw([]byte{0, 0, 0, 40, 0, 3})
	_, err = io.ReadAll(r.conn)
	elapsed = time.Since(start)
	if (err != nil && !relayIsConnReset(err)) || elapsed > 2*time.Second {
		t.Errorf("half startup packet: closed after %v, %v", elapsed, err)
	}

	// Normal clients still connect; the timeout ends with the startup.
	conn := connect(t, p.Addr, "postgres")
	time.Sleep(500 * time.Millisecond)
	var one int
	if err := conn.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
		t.Errorf("idle session after the startup timeout: %v", err)
	}
}

func TestRelayShutdown(t *testing.T) {
	t.Parallel()
	t.Run("forced", func(t *testing.T) {
		t.Parallel()
		p := relayProxy(t)
		idle := connect(t, p.Addr, "postgres")
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		n := p.Srv.Shutdown(ctx)
		elapsed := time.Since(start)
		if n != 1 {
			t.Errorf("Shutdown closed %d sessions by force, want 1", n)
		}
		if elapsed < 900*time.Millisecond || elapsed > 3*time.Second {
			t.Errorf("Shutdown took %v, want about 1s", elapsed)
		}
		if p.Srv.Ready() {
			t.Error("Ready after Shutdown")
		}
		if _, err := idle.Exec(context.Background(), "SELECT 1"); err == nil {
			t.Error("session still works after a forced shutdown")
		}
		if c, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
			c.Close()
			t.Error("new connection accepted after Shutdown")
		}
	})
	t.Run("graceful", func(t *testing.T) {
		t.Parallel()
		p := relayProxy(t)
		sess := connect(t, p.Addr, "postgres")
		done := make(chan int, 1)
		start := time.Now()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- p.Srv.Shutdown(ctx)
		}()
		// The open session finishes its work, then leaves.
		time.Sleep(200 * time.Millisecond)
		var v int
		if err := sess.QueryRow(context.Background(), "SELECT 7").Scan(&v); err != nil || v != 7 {
			t.Errorf("session during shutdown: %d, %v", v, err)
		}
		select {
		case n := <-done:
			t.Fatalf("Shutdown returned (%d) with a session open", n)
		default:
		}
		sess.Close(context.Background())
		select {
		case n := <-done:
			if n != 0 {
				t.Errorf("Shutdown closed %d sessions by force, want 0", n)
			}
			if e := time.Since(start); e > 3*time.Second {
				t.Errorf("Shutdown returned %v after start", e)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown did not return after the last session closed")
		}
		if _, err := pgx.Connect(context.Background(), dsn(p.Addr, "", "", "postgres")); err == nil {
			t.Error("new connection accepted after Shutdown")
		}
	})
}
