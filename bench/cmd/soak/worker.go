package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// opKind is one kind of unit of work a session does.
type opKind int

const (
	opRead     opKind = iota // SELECT one row, or an aggregate over the ledger
	opWrite                  // read-modify-write of one row, retried on VL409
	opTx                     // BEGIN, two read-modify-writes, INSERT, COMMIT; retried on VL409
	opRollback               // BEGIN, a read-modify-write, ROLLBACK
	opPipeline               // a pgx Batch (one Sync): two guarded writes, a read, an INSERT
	opAudit                  // UPDATE of the audit table, guarded only in every other reload
	numOps
)

var opNames = [numOps]string{"read", "write", "transaction", "rollback", "pipeline", "audit"}

// opWeights is the mix, in percent.
var opWeights = [numOps]int{30, 33, 12, 5, 15, 5}

// maxAttempts bounds the retries of one write after VL409.
const maxAttempts = 25

// auditRows is how many rows the audit table starts with.
const auditRows = 200

// execModes are the ways pgx talks to the server; sessions take them in
// turn so that the simple protocol, named prepared statements and unnamed
// ones all go through the proxy.
var execModes = []pgx.QueryExecMode{
	pgx.QueryExecModeSimpleProtocol,
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeExec,
}

// errGuardSilent is a checked write that matched no row without the stale
// error: the guard was off.
var errGuardSilent = errors.New("a checked UPDATE matched no row and no VL409 was raised")

// soak is the shared state of a run: the ledger, counters and the restart
// window.
type soak struct {
	set    settings
	dsn    string // through the proxy
	ledger *ledger

	stopping atomic.Bool
	ops      [numOps]atomic.Int64
	sessions atomic.Int64 // sessions opened
	// conflicts counts VL409 answers; each was retried.
	conflicts atomic.Int64
	// gaveUp counts writes abandoned after maxAttempts conflicts in a row.
	gaveUp atomic.Int64
	// latency counts units of work by how long they took (retries
	// included), in the buckets of latencyBounds and one beyond.
	latency    [len(latencyBounds) + 1]atomic.Int64
	maxLatency atomic.Int64 // nanoseconds

	mu             sync.Mutex
	restarting     bool
	restartDone    time.Time
	restartErrs    map[string]int // errors allowed because of the restart, by label and where
	failures       int
	failureSamples []string
}

// latencyBounds are the upper bounds of the latency buckets.
var latencyBounds = [...]time.Duration{10 * time.Millisecond, 100 * time.Millisecond, time.Second, 10 * time.Second}

func (s *soak) observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d >= latencyBounds[i] {
		i++
	}
	s.latency[i].Add(1)
	for {
		m := s.maxLatency.Load()
		if int64(d) <= m || s.maxLatency.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// restartGrace is how long after the restart has finished a session may
// still first notice that its connection is gone.
const restartGrace = 10 * time.Second

func newSoak(set settings, dsn string) *soak {
	return &soak{set: set, dsn: dsn, ledger: newLedger(), restartErrs: map[string]int{}}
}

func (s *soak) setRestarting(on bool) {
	s.mu.Lock()
	s.restarting = on
	if !on {
		s.restartDone = time.Now()
	}
	s.mu.Unlock()
}

// inRestartWindow reports whether the server is restarting or finished
// restarting less than restartGrace ago.
func (s *soak) inRestartWindow() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarting || (!s.restartDone.IsZero() && time.Since(s.restartDone) < restartGrace)
}

// noteRestartErr counts an error the restart caused under label.
func (s *soak) noteRestartErr(label string) {
	s.mu.Lock()
	s.restartErrs[label]++
	s.mu.Unlock()
}

// fail records an error that fails the run.
func (s *soak) fail(msg string) {
	s.mu.Lock()
	s.failures++
	if len(s.failureSamples) < 20 {
		s.failureSamples = append(s.failureSamples, time.Now().Format("15:04:05.000")+" "+msg)
	}
	s.mu.Unlock()
}

// noteErr sorts an error that ended a unit of work: what a server restart
// causes is counted while the restart lasts, everything else fails the run.
func (s *soak) noteErr(where string, err error) {
	kind := classify(err)
	if kind == kindDisconnect && s.inRestartWindow() {
		s.noteRestartErr(errLabel(err) + " in " + where)
		return
	}
	s.fail(fmt.Sprintf("%s: %s error: %v", where, kind, err))
}

// connect opens one session through the proxy.
func (s *soak) connect(mode pgx.QueryExecMode) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(s.dsn)
	if err != nil {
		return nil, err
	}
	cc.DefaultQueryExecMode = mode
	cc.ConnectTimeout = 15 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, err
	}
	s.sessions.Add(1)
	return conn, nil
}

// runWorker is one client: it opens a session, does a few hundred units of
// work, closes it and opens the next, until the soak stops. Its first session
// is opened before the load starts (ready, then wait for start) so that the
// memory of that many idle sessions can be measured.
func (s *soak) runWorker(n int, ready *sync.WaitGroup, start <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(n), uint64(time.Now().UnixNano())))
	mode := execModes[n%len(execModes)]
	first := true
	for !s.stopping.Load() {
		duringRestart := s.inRestartWindow()
		conn, err := s.connect(mode)
		if first {
			first = false
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), s.set.opTimeout)
				_, _, err = (&session{s: s, conn: conn, rng: rng}).readRow(ctx, 1)
				cancel()
				if err != nil {
					conn.Close(context.Background())
				}
			}
			ready.Done()
			<-start
		}
		if err != nil {
			if duringRestart && (pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded)) {
				// A login started while the server restarts or recovers
				// waits behind the other sessions' reconnections: with
				// 300 clients reconnecting, PostgreSQL 15 took up to 8.5 s
				// to answer a login directly on a 2-CPU machine, so under
				// the soak's load some exceed the connect timeout. A
				// timeout of a login started later, or of a statement,
				// still fails the run.
				s.noteRestartErr("timeout in connect")
			} else {
				s.noteErr("connect", err)
			}
			time.Sleep(time.Duration(100+rng.IntN(200)) * time.Millisecond)
			continue
		}
		w := &session{s: s, conn: conn, rng: rng}
		w.run(50 + rng.IntN(250))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn.Close(ctx)
		cancel()
	}
}

// session is one open connection of a worker.
type session struct {
	s    *soak
	conn *pgx.Conn
	rng  *rand.Rand
}

// run does up to n units of work, and stops at the first error (the
// connection is then closed, whatever the error).
func (w *session) run(n int) {
	for i := 0; i < n && !w.s.stopping.Load(); i++ {
		kind := w.pickOp()
		ctx, cancel := context.WithTimeout(context.Background(), w.s.set.opTimeout)
		began := time.Now()
		err := w.do(ctx, kind)
		w.s.observe(time.Since(began))
		cancel()
		w.s.ops[kind].Add(1)
		if err != nil {
			w.s.noteErr(opNames[kind], err)
			return
		}
		if st := w.conn.PgConn().TxStatus(); st != 'I' {
			w.s.fail(fmt.Sprintf("%s: the session is not idle after it (ReadyForQuery status %q)", opNames[kind], st))
			return
		}
		if w.s.set.think > 0 {
			time.Sleep(time.Duration(w.rng.Int64N(int64(2 * w.s.set.think))))
		}
	}
}

func (w *session) pickOp() opKind {
	r := w.rng.IntN(100)
	for k := opKind(0); k < numOps; k++ {
		if r < opWeights[k] {
			return k
		}
		r -= opWeights[k]
	}
	return opRead
}

func (w *session) do(ctx context.Context, kind opKind) error {
	switch kind {
	case opRead:
		return w.read(ctx)
	case opWrite:
		return w.write(ctx)
	case opTx:
		return w.transaction(ctx)
	case opRollback:
		return w.rollback(ctx)
	case opPipeline:
		return w.pipeline(ctx)
	case opAudit:
		return w.audit(ctx)
	}
	return fmt.Errorf("unknown op %d", kind)
}

// pickIDs returns n distinct ledger ids in ascending order: every writer
// locks rows in the same order, so the soak has no deadlocks of its own.
func (w *session) pickIDs(n int) []int {
	ids := make([]int, 0, n)
	for len(ids) < n {
		id := 1 + w.rng.IntN(w.s.set.rows)
		dup := false
		for _, have := range ids {
			dup = dup || have == id
		}
		if !dup {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	return ids
}

func (w *session) readRow(ctx context.Context, id int) (balance, version int64, err error) {
	err = w.conn.QueryRow(ctx, "SELECT balance, version FROM ledger WHERE id = $1", id).Scan(&balance, &version)
	return balance, version, err
}

// writeRow writes balance+1 to a row read at version.
func (w *session) writeRow(ctx context.Context, id int, balance, version int64) error {
	tag, err := w.conn.Exec(ctx, "UPDATE ledger SET balance = $3 WHERE id = $1 AND version = $2", id, version, balance+1)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("id=%d version=%d: %w (%s)", id, version, errGuardSilent, tag)
	}
	return nil
}

func (w *session) read(ctx context.Context) error {
	if w.rng.IntN(3) == 0 {
		var n, sum int64
		return w.conn.QueryRow(ctx, "SELECT count(*), coalesce(sum(balance), 0)::bigint FROM ledger").Scan(&n, &sum)
	}
	_, _, err := w.readRow(ctx, w.pickIDs(1)[0])
	return err
}

// write is an autocommit read-modify-write, retried on VL409.
func (w *session) write(ctx context.Context) error {
	id := w.pickIDs(1)[0]
	for attempt := 0; attempt < maxAttempts; attempt++ {
		balance, version, err := w.readRow(ctx, id)
		if err != nil {
			return err
		}
		err = w.writeRow(ctx, id, balance, version)
		if err == nil {
			w.s.ledger.confirm(id)
			return nil
		}
		switch classify(err) {
		case kindConflict:
			w.s.conflicts.Add(1)
			continue
		case kindDisconnect:
			// The UPDATE may have committed before the connection broke.
			w.s.ledger.unsure(id)
		}
		return err
	}
	w.s.gaveUp.Add(1)
	return nil
}

// transaction moves two rows in one explicit transaction. After VL409 the
// transaction must be failed exactly as PostgreSQL fails it (25P02 until
// ROLLBACK); then it is retried from the start.
func (w *session) transaction(ctx context.Context) error {
	ids := w.pickIDs(2)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if _, err := w.conn.Exec(ctx, "BEGIN"); err != nil {
			return err
		}
		conflict := false
		for _, id := range ids {
			balance, version, err := w.readRow(ctx, id)
			if err != nil {
				return err
			}
			if err := w.writeRow(ctx, id, balance, version); err != nil {
				if classify(err) != kindConflict {
					return err
				}
				conflict = true
				break
			}
		}
		if conflict {
			w.s.conflicts.Add(1)
			_, err := w.conn.Exec(ctx, "SELECT 1")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "25P02" {
				if err == nil || classify(err) != kindDisconnect {
					return fmt.Errorf("a statement after VL409 inside BEGIN answered %v, want SQLSTATE 25P02", err)
				}
				return err
			}
			if _, err := w.conn.Exec(ctx, "ROLLBACK"); err != nil {
				return err
			}
			continue
		}
		if _, err := w.conn.Exec(ctx, "INSERT INTO audit (note) VALUES ($1)", fmt.Sprintf("moved %v", ids)); err != nil {
			return err
		}
		tag, err := w.conn.Exec(ctx, "COMMIT")
		if err != nil {
			if classify(err) == kindDisconnect {
				w.s.ledger.unsure(ids...)
			}
			return err
		}
		if tag.String() != "COMMIT" {
			return fmt.Errorf("COMMIT of a transaction without errors answered %q", tag)
		}
		w.s.ledger.confirm(ids...)
		return nil
	}
	w.s.gaveUp.Add(1)
	return nil
}

// rollback writes a row inside a transaction and rolls it back: the write
// must leave no trace, neither in the balance nor in the version.
func (w *session) rollback(ctx context.Context) error {
	id := w.pickIDs(1)[0]
	if _, err := w.conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	balance, version, err := w.readRow(ctx, id)
	if err != nil {
		return err
	}
	if err := w.writeRow(ctx, id, balance, version); err != nil {
		if classify(err) != kindConflict {
			return err
		}
		w.s.conflicts.Add(1)
	}
	tag, err := w.conn.Exec(ctx, "ROLLBACK")
	if err != nil {
		return err
	}
	if tag.String() != "ROLLBACK" {
		return fmt.Errorf("ROLLBACK answered %q", tag)
	}
	return nil
}

// pipeline reads two rows, then sends both writes, a read and an INSERT as
// one pgx Batch: one Sync, so one implicit transaction. A VL409 on either
// write must undo the other (nothing is confirmed, and the ledger check
// finds any write that stayed).
func (w *session) pipeline(ctx context.Context) error {
	ids := w.pickIDs(2)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		var balance, version [2]int64
		rb := &pgx.Batch{}
		for i, id := range ids {
			rb.Queue("SELECT balance, version FROM ledger WHERE id = $1", id).QueryRow(func(r pgx.Row) error {
				return r.Scan(&balance[i], &version[i])
			})
		}
		if err := w.conn.SendBatch(ctx, rb).Close(); err != nil {
			return err
		}

		b := &pgx.Batch{}
		for i, id := range ids {
			b.Queue("UPDATE ledger SET balance = $3 WHERE id = $1 AND version = $2", id, version[i], balance[i]+1).Exec(func(tag pgconn.CommandTag) error {
				if tag.RowsAffected() != 1 {
					return fmt.Errorf("pipeline id=%d version=%d: %w (%s)", id, version[i], errGuardSilent, tag)
				}
				return nil
			})
		}
		var sum int64
		b.Queue("SELECT coalesce(sum(balance), 0)::bigint FROM ledger").QueryRow(func(r pgx.Row) error { return r.Scan(&sum) })
		b.Queue("INSERT INTO audit (note) VALUES ($1)", fmt.Sprintf("pipelined %v", ids))
		err := w.conn.SendBatch(ctx, b).Close()
		if err == nil {
			w.s.ledger.confirm(ids...)
			return nil
		}
		switch classify(err) {
		case kindConflict:
			w.s.conflicts.Add(1)
			continue
		case kindDisconnect:
			// The batch commits at its Sync, which may have been before
			// the connection broke.
			w.s.ledger.unsure(ids...)
		}
		return err
	}
	w.s.gaveUp.Add(1)
	return nil
}

// audit touches the audit table, guarded (statements: [update], no version
// predicate, so incremented but never checked) only in every other
// configuration the reloads install.
func (w *session) audit(ctx context.Context) error {
	id := 1 + w.rng.IntN(auditRows)
	if _, err := w.conn.Exec(ctx, "UPDATE audit SET note = $2 WHERE id = $1", id, "touched"); err != nil {
		return err
	}
	var note string
	var version int64
	return w.conn.QueryRow(ctx, "SELECT note, version FROM audit WHERE id = $1", id).Scan(&note, &version)
}
