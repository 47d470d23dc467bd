package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestLedgerCheck(t *testing.T) {
	l := newLedger()
	l.confirm(1, 2)
	l.confirm(1)
	l.unsure(2)
	l.unsure(3)

	for _, tc := range []struct {
		name  string
		table map[int]row
		want  []string // substrings, one per expected problem, in order
	}{
		{
			name:  "consistent, the uncertain writes did not commit",
			table: map[int]row{1: {2, 3}, 2: {1, 2}, 3: {0, 1}, 4: {0, 1}},
		},
		{
			name:  "consistent, the uncertain writes committed",
			table: map[int]row{1: {2, 3}, 2: {2, 3}, 3: {1, 2}, 4: {0, 1}},
		},
		{
			// Two writers read balance 1 at version 2 and both succeeded:
			// the second overwrote the first.
			name:  "lost update, version still incremented twice",
			table: map[int]row{1: {1, 3}, 2: {1, 2}, 3: {0, 1}},
			want:  []string{"id=1: lost update: balance 1, but 2 increments", "id=1: version 3 does not match balance 1"},
		},
		{
			// The guard neither incremented nor checked.
			name:  "lost update, version never incremented",
			table: map[int]row{1: {1, 1}, 2: {1, 2}, 3: {0, 1}},
			want:  []string{"id=1: lost update", "id=1: version 1 does not match balance 1"},
		},
		{
			// A pipeline's first write stayed although its second was stale.
			name:  "a write nobody was told about",
			table: map[int]row{1: {2, 3}, 2: {3, 4}, 3: {0, 1}},
			want:  []string{"id=2: balance 3 exceeds the 1 confirmed and 1 uncertain"},
		},
		{
			name:  "row missing",
			table: map[int]row{2: {1, 2}},
			want:  []string{"id=1: row missing from the table, 2 confirmed increments"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := l.check(tc.table)
			if len(got) != len(tc.want) {
				t.Fatalf("check = %q, want %d problems like %q", got, len(tc.want), tc.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tc.want[i]) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got[i], tc.want[i])
				}
			}
		})
	}

	confirmed, uncertain := l.totals()
	if confirmed != 3 || uncertain != 2 {
		t.Errorf("totals = %d confirmed, %d uncertain; want 3, 2", confirmed, uncertain)
	}
}

func TestClassify(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	for _, tc := range []struct {
		err   error
		kind  errKind
		label string
	}{
		{&pgconn.PgError{Code: "VL409"}, kindConflict, "VL409"},
		{fmt.Errorf("write: %w", &pgconn.PgError{Code: "57P01"}), kindDisconnect, "57P01"},
		{&pgconn.PgError{Code: "57P03"}, kindDisconnect, "57P03"},
		{&pgconn.PgError{Code: "08006"}, kindDisconnect, "08006"},
		{fmt.Errorf("receive: %w", io.ErrUnexpectedEOF), kindDisconnect, "EOF"},
		{reset, kindDisconnect, "connection reset"},
		{fmt.Errorf("exec: %w", pgconn.ErrConnClosed), kindDisconnect, "conn closed"},
		{&pgconn.PgError{Code: "25P02"}, kindOther, "25P02"},
		{&pgconn.PgError{Code: "40P01"}, kindOther, "40P01"},
		{fmt.Errorf("id=1: %w", errGuardSilent), kindOther, "other"},
		{context.DeadlineExceeded, kindOther, "timeout"},
	} {
		if got := classify(tc.err); got != tc.kind {
			t.Errorf("classify(%v) = %s, want %s", tc.err, got, tc.kind)
		}
		if got := errLabel(tc.err); got != tc.label {
			t.Errorf("errLabel(%v) = %q, want %q", tc.err, got, tc.label)
		}
	}
}

func TestParseStatusMemory(t *testing.T) {
	status := "Name:\tpgoptimist\nVmPeak:\t 1300000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nThreads:\t5\n"
	rss, hwm, err := parseStatusMemory([]byte(status))
	if err != nil || rss != 30720 || hwm != 40960 {
		t.Errorf("parseStatusMemory = %d, %d, %v; want 30720, 40960, nil", rss, hwm, err)
	}
	if _, _, err := parseStatusMemory([]byte("Name:\tx\n")); err == nil {
		t.Error("parseStatusMemory without VmRSS: no error")
	}
}
