package integration

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/pgoptimist/pgoptimist/config"
)

// BenchmarkTracked measures what tracking costs, one connection, against
// the same table unguarded through the proxy:
//
//	go test ./integration/ -run '^$' -bench Tracked -benchtime 3000x
//
// read: a pgbench -S-like point SELECT (hidden key and version added,
// captured and stripped); rmw: BEGIN, SELECT, UPDATE (version injected
// and checked), COMMIT.
func BenchmarkTracked(b *testing.B) {
	db := newDatabase(b, `CREATE TABLE accounts (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, balance int, filler char(84));
INSERT INTO accounts (id, balance) SELECT g, 0 FROM generate_series(1, 10000) g;`)
	ctx := context.Background()
	targets := []struct {
		name   string
		tables []config.Table
	}{
		{"unguarded", nil},
		{"explicit", []config.Table{{Name: "accounts"}}}, // guarded, nothing tracked
		{"tracked", []config.Table{{Name: "accounts", Mode: "tracked"}}},
	}
	for _, tg := range targets {
		var p *proxyInstance
		if tg.tables == nil {
			// A guarded table elsewhere keeps the guard on, as in production.
			p = guardedProxy(b, config.Table{Name: "other_table"})
		} else {
			p = guardedProxy(b, tg.tables...)
		}
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			c := connectMode(b, p.Addr, db, mode)
			b.Run("read/"+mode.String()+"/"+tg.name, func(b *testing.B) {
				var bal int
				for i := 0; i < b.N; i++ {
					if err := c.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1", 1+i%10000).Scan(&bal); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("rmw/"+mode.String()+"/"+tg.name, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					id := 1 + i%10000
					tx, err := c.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					var bal int
					if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1", id).Scan(&bal); err != nil {
						b.Fatal(err)
					}
					if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = $2", bal+1, id); err != nil {
						b.Fatal(err)
					}
					if err := tx.Commit(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
