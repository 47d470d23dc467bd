package proxy

import (
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Tracked mode, the session's memory: the version of each row of a tracked
// table that the session has read (or written itself), keyed by table and
// key, bounded by a cap with least-recently-used eviction. Rows of tables
// in scope transaction are forgotten at the end of every transaction; rows
// in scope session live as long as the connection. The session's own
// writes inside a transaction are logged with what they replaced, so a
// rollback puts the memory back as the database is.

// defaultTrackedRows is the per-session cap when the configuration sets none.
const defaultTrackedRows = 10000

// remembered is one row's version as the session knows it.
type remembered struct {
	key        string // table, then each key column's text, NUL-separated
	table      string // schema.table, for the eviction metric
	version    string // as text
	session    bool   // scope session: kept past the transaction's end
	prev, next *remembered
}

// undoStep is what one own write replaced: restored if the transaction
// rolls back.
type undoStep struct {
	mark       string // not a step: SAVEPOINT mark was set here
	key, table string
	session    bool
	version    string
	had        bool // the key was remembered before the write
}

// versionStore is one session's remembered versions.
type versionStore struct {
	cap        int
	m          map[string]*remembered
	head, tail *remembered // head: most recently used
	metrics    *Metrics
	scopes     map[string]bool // schema.table → scope session
	// anySessionScope: some table has scope session (else every capture
	// is forgotten at its transaction's end).
	anySessionScope bool
	undo            []undoStep // own writes of the open transaction
	rolledBack      bool       // a ROLLBACK (to a savepoint or not) completed since the last ReadyForQuery
	rollbackTo      string     // the savepoint a ROLLBACK TO sent since the last ReadyForQuery names
	undoLost        bool       // the transaction wrote more rows than undo holds
	failed          bool       // an error was reported since the last ReadyForQuery
	keyBuf          []byte
	log             *slog.Logger // observe mode's lost updates
	logLimit        *logThrottle // their lines, shared by the server's sessions
}

func newVersionStore(cap int, m *Metrics, scopes map[string]bool) *versionStore {
	if cap <= 0 {
		cap = defaultTrackedRows
	}
	vs := &versionStore{cap: cap, m: make(map[string]*remembered), metrics: m, scopes: scopes}
	for _, session := range scopes {
		vs.anySessionScope = vs.anySessionScope || session
	}
	return vs
}

// rowKey builds the store key of a row from its table and key texts, in a
// buffer reused by the next call.
func (vs *versionStore) rowKey(table string, keys []string) []byte {
	b := append(vs.keyBuf[:0], table...)
	for _, k := range keys {
		b = append(append(b, 0), k...)
	}
	vs.keyBuf = b
	return b
}

// lookup returns the version remembered for key.
func (vs *versionStore) lookup(key string) (string, bool) {
	r := vs.m[key]
	if r == nil {
		return "", false
	}
	vs.touch(r)
	return r.version, true
}

func (vs *versionStore) unlink(r *remembered) {
	if r.prev != nil {
		r.prev.next = r.next
	} else {
		vs.head = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	} else {
		vs.tail = r.prev
	}
	r.prev, r.next = nil, nil
}

func (vs *versionStore) pushFront(r *remembered) {
	r.next = vs.head
	if vs.head != nil {
		vs.head.prev = r
	}
	vs.head = r
	if vs.tail == nil {
		vs.tail = r
	}
}

func (vs *versionStore) touch(r *remembered) {
	if vs.head != r {
		vs.unlink(r)
		vs.pushFront(r)
	}
}

// set remembers key's version. A key given as bytes is copied only when new.
func (vs *versionStore) set(key []byte, table, version string) {
	if r := vs.m[unsafeString(key)]; r != nil {
		if r.version != version {
			r.version = version
		}
		vs.touch(r)
		return
	}
	r := &remembered{key: string(key), table: table, version: version, session: vs.scopes[table]}
	vs.m[r.key] = r
	vs.pushFront(r)
	vs.metrics.TrackedRows(1)
	for len(vs.m) > vs.cap {
		old := vs.tail
		vs.remove(old)
		vs.metrics.TrackedEvicted(old.table)
	}
}

func (vs *versionStore) remove(r *remembered) {
	vs.unlink(r)
	delete(vs.m, r.key)
	vs.metrics.TrackedRows(-1)
}

// forget drops key.
func (vs *versionStore) forget(key string) {
	if r := vs.m[key]; r != nil {
		vs.remove(r)
	}
}

// ownWrite changes what is remembered for key after the session's own
// write (version "" with forget: the row is gone or its version unknown),
// logging what it replaced for a rollback.
func (vs *versionStore) ownWrite(key []byte, table, version string, forget bool) {
	step := undoStep{key: string(key), table: table, session: vs.scopes[table]}
	if r := vs.m[step.key]; r != nil {
		step.version, step.had = r.version, true
	}
	if len(vs.undo) < 4*vs.cap {
		vs.undo = append(vs.undo, step)
	} else {
		vs.undoLost = true // bounded: a rollback then forgets every row
	}
	if forget {
		vs.forget(step.key)
		return
	}
	vs.set(key, table, version)
}

// sawTag notes a command tag that ends part of a transaction's work.
func (vs *versionStore) sawTag(tag []byte) {
	if string(tag) == "ROLLBACK" {
		vs.rolledBack = true
	}
}

// ready runs at each ReadyForQuery with the new transaction status.
func (vs *versionStore) ready(status txStatus) {
	rolledBack, failed := vs.rolledBack, vs.failed
	vs.rolledBack, vs.failed = false, false
	switch status {
	case txIdle:
		if (rolledBack || failed) && len(vs.undo) > 0 {
			// The whole transaction is undone: so are its own writes.
			vs.restore(0)
			if vs.undoLost {
				vs.forgetAll()
			}
		}
		vs.undo, vs.undoLost = vs.undo[:0], false
		vs.rollbackTo = ""
		// Scope transaction: forgotten at every transaction's end.
		for r := vs.head; r != nil; {
			next := r.next
			if !r.session {
				vs.remove(r)
			}
			r = next
		}
	case txInBlock:
		to := vs.rollbackTo
		vs.rollbackTo = ""
		if !rolledBack || len(vs.undo) == 0 && !vs.undoLost {
			return
		}
		if vs.undoLost {
			vs.forgetAll()
			vs.undo, vs.undoLost = vs.undo[:0], false
			return
		}
		// ROLLBACK TO SAVEPOINT: the steps since the savepoint's mark are
		// undone (the savepoint itself stays).
		for i := len(vs.undo) - 1; i >= 0 && to != ""; i-- {
			if vs.undo[i].mark == to {
				vs.restore(i + 1)
				vs.undo = vs.undo[:i+1]
				return
			}
		}
		// Which savepoint is not known (sent another way than a simple
		// query of its own): the rows this transaction wrote are forgotten
		// (their next write goes unchecked) rather than restored to a
		// version the database may no longer have: never a refusal of the
		// session's own write.
		for i := range vs.undo {
			if vs.undo[i].mark == "" {
				vs.forget(vs.undo[i].key)
			}
		}
		vs.undo = vs.undo[:0]
	}
}

// forgetAll forgets every row (a rollback whose steps were not all kept).
func (vs *versionStore) forgetAll() {
	for vs.head != nil {
		vs.remove(vs.head)
	}
}

// restore undoes the own-write steps from undo[from] on, newest first.
func (vs *versionStore) restore(from int) {
	for i := len(vs.undo) - 1; i >= from; i-- {
		u := &vs.undo[i]
		switch {
		case u.mark != "":
		case u.had:
			vs.set([]byte(u.key), u.table, u.version)
		default:
			vs.forget(u.key)
		}
	}
}

// noteCommand follows the savepoint commands a simple query sends on its
// own (SAVEPOINT, ROLLBACK TO, RELEASE), so a ROLLBACK TO undoes exactly
// the steps since its savepoint. Noted when sent: a command that fails
// aborts the transaction, whose end restores everything anyway.
func (vs *versionStore) noteCommand(sql string) {
	op, n := rewrite.Savepoint(sql)
	switch op {
	case rewrite.SavepointSet:
		vs.undo = append(vs.undo, undoStep{mark: n})
	case rewrite.SavepointRollbackTo:
		vs.rollbackTo = n
	case rewrite.SavepointRelease:
		// The savepoint (and those after it) is gone; its steps belong to
		// the enclosing level now.
		for j := len(vs.undo) - 1; j >= 0; j-- {
			if vs.undo[j].mark != n {
				continue
			}
			k := j
			for _, u := range vs.undo[j:] {
				if u.mark == "" {
					vs.undo[k] = u
					k++
				}
			}
			vs.undo = vs.undo[:k]
			break
		}
	}
}

// close forgets everything (the session ends).
func (vs *versionStore) close() {
	if n := len(vs.m); n > 0 {
		vs.metrics.TrackedRows(-int64(n))
	}
	vs.m, vs.head, vs.tail = nil, nil, nil
}

// incremented is an integer version plus one.
func incremented(v string) (string, bool) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return "", false
	}
	return strconv.FormatInt(n+1, 10), true
}

// needsTracking reports whether a statement's run concerns the store:
// its result carries captures, or it is a write of a tracked row.
func needsTracking(st *rewrite.Statement) bool {
	if st == nil {
		return false
	}
	if len(st.Captures) > 0 || st.Inject != nil || st.NewVersion != rewrite.NewVersionNone {
		return true
	}
	// Any other write of a tracked table: what it changed must not stay
	// remembered as it was (see onTrackedComplete).
	return st.Policy != nil && st.Policy.Tracked()
}

// forgottenAtOnce reports whether st, run alone in its own implicit
// transaction, is a plain read whose captures scope transaction forgets
// at that transaction's end: every table it captures is transaction-scoped,
// and the rewriter changed nothing in it but the hidden columns (no
// policy: it writes no guarded table).
func (vs *versionStore) forgottenAtOnce(st *rewrite.Statement) bool {
	if st.Kind != rewrite.KindOther || st.Command != rewrite.CommandSelect || st.Policy != nil ||
		st.Inject != nil || st.NewVersion != rewrite.NewVersionNone || len(st.Captures) == 0 {
		return false
	}
	for _, c := range st.Captures {
		if vs.scopes[c.Policy.QualifiedName()] {
			return false
		}
	}
	return true
}

// forgetTable forgets every row of a table (a write of the table that the
// tracking cannot follow row by row).
func (vs *versionStore) forgetTable(table string) {
	for r := vs.head; r != nil; {
		next := r.next
		if r.table == table {
			vs.remove(r)
		}
		r = next
	}
}

// writeKey is the written row's key texts in Policy.Key order, from the
// statement's pinned key values; ok is false when one is not known.
func writeKey(st *rewrite.Statement, arg func(int) (string, bool)) ([]string, bool) {
	if st.Policy == nil || len(st.Policy.Key) == 0 {
		return nil, false
	}
	out := make([]string, len(st.Policy.Key))
	for i, col := range st.Policy.Key {
		found := false
		for _, kv := range st.Keys {
			if kv.Column != col {
				continue
			}
			switch kv.Value.Kind {
			case rewrite.ValueLiteral:
				out[i], found = kv.Value.Literal, true
			case rewrite.ValueParam:
				out[i], found = arg(kv.Value.Param)
			}
			break
		}
		if !found {
			return nil, false
		}
	}
	return out, true
}

// watchingTags reports whether every CommandComplete must be read for its
// tag: the open transaction holds own writes a ROLLBACK would undo.
func (s *session) watchingTags() bool {
	return s.guard != nil && s.guard.store != nil && len(s.guard.store.undo) > 0
}

// trackComplete handles the end of a statement for the tracking.
func (s *session) trackComplete(ts *trackSet, msg []byte) {
	if s.guard == nil || s.guard.store == nil {
		return
	}
	if ts != nil {
		s.onTrackedComplete(ts, msg)
	}
	if len(s.guard.store.undo) > 0 && serverMsg(msg[0]) == msgCommandComplete {
		tag := frameBody(msg)
		if len(tag) > 0 && tag[len(tag)-1] == 0 {
			tag = tag[:len(tag)-1]
		}
		s.guard.store.sawTag(tag)
	}
}

// trackError notes an error: an implicit transaction that fails is rolled back.
func (s *session) trackError() {
	if s.guard != nil && s.guard.store != nil {
		s.guard.store.failed = true
	}
}

// trackReady runs at each ReadyForQuery.
func (s *session) trackReady() {
	if s.guard != nil && s.guard.store != nil {
		s.guard.store.ready(s.txStatus)
	}
}

// newSessionStore makes a session's memory when a table of the database is
// in a tracked mode; nil otherwise (the tracking then costs nothing).
func newSessionStore(cfg *config.Config, policies []rewrite.Policy, m *Metrics, log *slog.Logger, logLimit *logThrottle) *versionStore {
	tracked := false
	for i := range policies {
		tracked = tracked || policies[i].Tracked()
	}
	if !tracked {
		return nil
	}
	scopes := make(map[string]bool)
	for _, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		scopes[schema+"."+table] = t.Scope == "session"
	}
	vs := newVersionStore(cfg.Guard.TrackedRowsPerSession, m, scopes)
	vs.log, vs.logLimit = log, logLimit
	return vs
}

// observeWrite runs in observe mode for each row of the session's own
// UPDATE (or upsert) with the version the row had just before this write
// (the plan says how it is learned: rewrite.WrittenOver). When that is
// not the version this session read, someone else's write came in between
// and this write overwrote it: a lost update, which tracked mode would
// have refused. A row the session never read is not compared.
func (vs *versionStore) observeWrite(pol *rewrite.Policy, key []byte, writtenOver string) {
	r := vs.m[unsafeString(key)]
	if r == nil {
		return // never read: nothing to compare
	}
	if same, known := sameVersion(pol.Type, r.version, writtenOver); same || !known {
		return
	}
	table := pol.QualifiedName()
	vs.metrics.LostUpdateObserved(table)
	if vs.log == nil || vs.logLimit == nil {
		return
	}
	if ok, suppressed := vs.logLimit.allow(time.Now()); ok {
		keys := strings.Split(unsafeString(key[len(table)+1:]), "\x00")
		vs.log.Warn("lost update observed: the row changed after this session read it, and this write overwrote that change",
			"table", table, "key", strings.Join(keys, ","), "read_version", r.version, "written_over", writtenOver,
			"suppressed", suppressed)
	}
}

// sameVersion compares a version as the session captured it (text output,
// or a binary value rendered by decodeParam) with one the server rendered
// as text. known is false when they differ in form and cannot be compared
// (a timestamp in a DateStyle other than ISO): such a write is not counted.
func sameVersion(typ rewrite.VersionType, read, over string) (same, known bool) {
	if read == over {
		return true, true
	}
	switch typ {
	case rewrite.TypeInteger, rewrite.TypeXmin:
		a, err1 := strconv.ParseInt(read, 10, 64)
		b, err2 := strconv.ParseInt(over, 10, 64)
		return a == b, err1 == nil && err2 == nil
	case rewrite.TypeUUID:
		return strings.EqualFold(read, over), true
	case rewrite.TypeTimestamp:
		a, ok1 := parseTimestamp(read)
		b, ok2 := parseTimestamp(over)
		return a.Equal(b), ok1 && ok2
	}
	return false, true
}

// timestampLayouts are PostgreSQL's ISO text output of timestamptz (its
// zone offset in hours, minutes or seconds) and timestamp (no zone, read
// as UTC, as decodeParam renders a binary one), and decodeParam's own.
var timestampLayouts = []string{
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999Z07:00:00",
	"2006-01-02 15:04:05.999999999",
}

func parseTimestamp(s string) (time.Time, bool) {
	for _, l := range timestampLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
