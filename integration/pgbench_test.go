package integration

import (
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// pgbenchRun runs pgbench against addr and returns its combined output.
func pgbenchRun(t *testing.T, addr, db string, args ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	full := append([]string{"-h", host, "-p", port, "-U", "postgres"}, args...)
	full = append(full, db)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, findTool(t, "pgbench"), full...)
	cmd.Env = append(os.Environ(), "PGSSLMODE="+clientSSLMode(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench %v: %v\n%s", args, err, out)
	}
	return string(out)
}

var (
	pgbenchProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	pgbenchFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+) `)
	pgbenchMode      = regexp.MustCompile(`(?m)^query mode: (\w+)$`)
)

func TestPgbench(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			db := newDatabase(t, "")
			p := relayProxy(t)

			out := pgbenchRun(t, p.Addr, db, "-i", "-s", "1", "-q")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			d := direct(t, db)
			var accounts int
			if err := d.QueryRow(ctx, "SELECT count(*) FROM pgbench_accounts").Scan(&accounts); err != nil || accounts != 100000 {
				t.Fatalf("after pgbench -i: %d accounts, %v\n%s", accounts, err, out)
			}

			out = pgbenchRun(t, p.Addr, db, "-c", "4", "-j", "2", "-T", "5", "-M", mode)
			if m := pgbenchMode.FindStringSubmatch(out); m == nil || m[1] != mode {
				t.Errorf("pgbench ran in query mode %v, want %s", m, mode)
			}
			m := pgbenchProcessed.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no transaction count in pgbench output:\n%s", out)
			}
			processed, _ := strconv.Atoi(m[1])
			if processed <= 0 {
				t.Errorf("pgbench processed %d transactions:\n%s", processed, out)
			}
			m = pgbenchFailed.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no failed transaction count in pgbench output:\n%s", out)
			}
			if m[1] != "0" {
				t.Errorf("pgbench: %s failed transactions:\n%s", m[1], out)
			}
			// Every committed transaction of the TPC-B-like script added one
			// history row and moved the same amount across the tables.
			var history, sumDelta, sumAccounts, sumBranches int64
			if err := d.QueryRow(ctx, `SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
				(SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches)`).Scan(&history, &sumDelta, &sumAccounts, &sumBranches); err != nil {
				t.Fatal(err)
			}
			if history != int64(processed) {
				t.Errorf("pgbench reported %d transactions, the server has %d history rows", processed, history)
			}
			if sumDelta != sumAccounts || sumDelta != sumBranches {
				t.Errorf("balances disagree: history %d, accounts %d, branches %d", sumDelta, sumAccounts, sumBranches)
			}
			t.Logf("%s: %d transactions through the proxy (%d history rows)", mode, processed, history)
			if n := relayMetric(t, p, "pgoptimist_sessions_total"); n < 5 {
				t.Errorf("the proxy saw %d sessions", n)
			}
		})
	}
}
