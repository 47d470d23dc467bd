package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
)

// TestBufferedBudgetBoundsMemory: guarded sessions that send huge queries
// (which the guard must hold whole under on_parse_error: reject) share one
// budget; the sessions it cannot hold end with FATAL 53200 instead of the
// process growing, and the one it holds goes on. Four clients each send
// 24 MiB of a 30 MiB query with a budget of 40 MiB: without the budget the
// proxy would hold 96 MiB.
func TestBufferedBudgetBoundsMemory(t *testing.T) {
	db := newDatabase(t, "CREATE TABLE address (id int PRIMARY KEY, version int NOT NULL DEFAULT 1)")
	cfg := newConfig(t, pg.Addr(), config.Table{Name: "public.address"})
	cfg.Guard.OnParseError = "reject"
	cfg.Limits.MaxBufferedBytes = 40 << 20
	p := startProxy(t, cfg)

	const total, sent = 30 << 20, 24 << 20
	header := binary.BigEndian.AppendUint32([]byte{'Q'}, total-1)
	chunk := bytes.Repeat([]byte{' '}, 1<<20)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse

	var conns []*relayRaw
	prefix := "SELECT 1 FROM address WHERE id = 1 --"
	firstSent := len(header) + len(prefix)
	for i := 0; i < 4; i++ {
		r := relayRawConnect(t, p.Addr, db)
		conns = append(conns, r)
		r.writeRaw(append(append([]byte{}, header...), prefix...))
		if i == 0 {
			// The first holds the budget before the others start.
			for deadline := time.Now().Add(10 * time.Second); p.Srv.BufferedBytes() == 0; time.Sleep(10 * time.Millisecond) {
				r.writeRaw(chunk)
				firstSent += len(chunk)
				if time.Now().After(deadline) {
					t.Fatal("the first session never reserved its message")
				}
			}
		}
	}
	refused := 0
	for i, r := range conns[1:] {
		for n := 0; n < sent; n += len(chunk) {
			if _, err := r.conn.Write(chunk); err != nil {
				break // the proxy has closed it
			}
		}
		_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(r.conn)
		var e pgproto3.ErrorResponse
		if len(got) > 5 && got[0] == 'E' && e.Decode(got[5:]) == nil && e.Code == "53200" && e.Severity == "FATAL" {
			refused++
		} else {
			t.Errorf("session %d over the budget got %q", i+2, got[:min(len(got), 200)])
		}
	}
	runtime.ReadMemStats(&ms)
	if grown := int64(ms.HeapInuse) - int64(base); grown > 70<<20 {
		t.Errorf("heap grew by %d MiB while the budget is 40 MiB", grown>>20)
	}
	if used := p.Srv.BufferedBytes(); used != total {
		t.Errorf("budget in use %d, want the first session's %d", used, total)
	}
	// The first session completes its statement and goes on.
	r := conns[0]
	for firstSent < total-1 { // all but the text's terminator
		k := min(len(chunk), total-1-firstSent)
		r.writeRaw(chunk[:k])
		firstSent += k
	}
	r.writeRaw([]byte{0})
	msgs := r.untilReady()
	if len(msgs) == 0 {
		t.Fatal("no answer to the held statement")
	}
	if e, ok := msgs[0].(*pgproto3.ErrorResponse); ok && !strings.Contains(e.Message, "guarded") && e.Code != "54000" {
		t.Errorf("held statement answered %s %s", e.Code, e.Message)
	}
	startupQuery(t, r)
	if used := p.Srv.BufferedBytes(); used != 0 {
		t.Errorf("budget in use %d after the statement was handled", used)
	}
}

// TestOversizedStatementsStreamed: in a guarded session under the default
// on_parse_error: forward, statements longer than the parser takes are
// copied through as they arrive instead of being held whole, in the simple
// and the extended protocol: with a budget smaller than the statements,
// they still run (held whole, they would end the session with 53200). A
// guarded statement of more than 32767 parameters, which PostgreSQL takes
// (the counts are unsigned), is checked like any other.
func TestOversizedStatementsStreamed(t *testing.T) {
	db := newDatabase(t, "CREATE TABLE address (id int PRIMARY KEY, version int NOT NULL DEFAULT 1); INSERT INTO address VALUES (1), (2), (3)")
	cfg := newConfig(t, pg.Addr(), config.Table{Name: "public.address"})
	cfg.Limits.MaxBufferedBytes = cfg.Limits.MaxSQLBytes
	p := startProxy(t, cfg)
	long := "SELECT length('" + strings.Repeat("x", 3<<20) + "'::text) AS n"
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		id := i + 1
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			c := connectMode(t, p.Addr, db, mode)
			// A guarded statement first, so the session decodes what follows.
			if _, err := c.Exec(ctx, "UPDATE address SET id = id WHERE id = $1 AND version = 1", id); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := c.QueryRow(ctx, long).Scan(&n); err != nil || n != 3<<20 {
				t.Fatalf("oversized statement: n = %d, err %v", n, err)
			}
			if mode == pgx.QueryExecModeSimpleProtocol {
				return
			}
			// A guarded statement of more than 32767 parameters.
			const many = 40000
			args := []any{id, 2}
			var b strings.Builder
			b.WriteString("UPDATE address SET id = id WHERE id = $1 AND version = $2 AND 0 <> ALL (ARRAY[")
			for i := 3; i <= many; i++ {
				args = append(args, i)
				if i > 3 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "$%d::int", i)
			}
			b.WriteString("])")
			if tag, err := c.Exec(ctx, b.String(), args...); err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("guarded write of %d parameters: %q, %v", many, tag, err)
			}
			// The session is still guarded.
			tag, err := c.Exec(ctx, "UPDATE address SET id = id WHERE id = $1 AND version = 2", id)
			if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "VL409" {
				t.Fatalf("stale write answered %q, %v; want VL409", tag, err)
			}
		})
	}
}
