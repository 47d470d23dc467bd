package main

import (
	"fmt"
	"sort"
	"sync"
)

// ledger is the client's own account of the increments it made to the
// ledger table, to be compared with the table at the end of the soak.
//
// Every write of the soak is a read-modify-write of one row,
// "SET balance = <read balance + 1> WHERE id = $1 AND version = <read version>",
// through the proxy, which adds "version = version + 1". So for every row,
// whatever happened:
//
//   - balance = version - initialVersion: each committed write moved both by one
//     (a write the proxy did not increment breaks it);
//   - balance >= confirmed: every write the client saw commit is in the table
//     (a lost update, two writers from the same read both "succeeding", leaves
//     the balance below the number of successes);
//   - balance <= confirmed + uncertain: nothing committed that the client did
//     not send (uncertain counts writes whose outcome the client could not
//     know, because the connection broke before the answer).
type ledger struct {
	mu        sync.Mutex
	confirmed map[int]int64
	uncertain map[int]int64
}

// initialVersion is the version every ledger row starts with.
const initialVersion = 1

func newLedger() *ledger {
	return &ledger{confirmed: map[int]int64{}, uncertain: map[int]int64{}}
}

// confirm records committed increments, one per id.
func (l *ledger) confirm(ids ...int) {
	l.mu.Lock()
	for _, id := range ids {
		l.confirmed[id]++
	}
	l.mu.Unlock()
}

// unsure records increments that may or may not have committed.
func (l *ledger) unsure(ids ...int) {
	l.mu.Lock()
	for _, id := range ids {
		l.uncertain[id]++
	}
	l.mu.Unlock()
}

// totals returns the confirmed and uncertain increments over all rows.
func (l *ledger) totals() (confirmed, uncertain int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.confirmed {
		confirmed += n
	}
	for _, n := range l.uncertain {
		uncertain += n
	}
	return confirmed, uncertain
}

// row is one ledger row as read from the table at the end.
type row struct {
	balance, version int64
}

// check compares the table's rows with the ledger and returns one line per
// broken invariant (none when the table is consistent), ordered by id.
func (l *ledger) check(table map[int]row) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]int, 0, len(table))
	for id := range table {
		ids = append(ids, id)
	}
	for id := range l.confirmed {
		if _, ok := table[id]; !ok {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)

	var problems []string
	for _, id := range ids {
		r, ok := table[id]
		c, u := l.confirmed[id], l.uncertain[id]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("id=%d: row missing from the table, %d confirmed increments", id, c))
			continue
		case r.balance < c:
			problems = append(problems, fmt.Sprintf("id=%d: lost update: balance %d, but %d increments were confirmed to the client", id, r.balance, c))
		case r.balance > c+u:
			problems = append(problems, fmt.Sprintf("id=%d: balance %d exceeds the %d confirmed and %d uncertain increments", id, r.balance, c, u))
		}
		if r.version-initialVersion != r.balance {
			problems = append(problems, fmt.Sprintf("id=%d: version %d does not match balance %d (every committed write increments both)", id, r.version, r.balance))
		}
	}
	return problems
}
