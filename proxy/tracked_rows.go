package proxy

import (
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Tracked mode, the server's answers: the result sets of tracked
// statements lose the hidden fields the rewriter added (RowDescription,
// every DataRow, and the answers to Describe), and the fields the plan's
// Captures name are remembered. Only the answers to requests that carry a
// trackSet are decoded; every other DataRow is copied through.

// trackRun is one statement's run (or Describe) as the tracking sees it.
type trackRun struct {
	st    *rewrite.Statement
	store *versionStore
	write bool // not a plain read: what it returns is the session's own write

	// The written row (UPDATE, DELETE, upsert with a pinned key).
	key         []string
	keyOK       bool
	expected    string // the version the write was checked against
	hasExpected bool

	// From the RowDescription, for binary values: each field's format and type.
	fmts []int16
	oids []uint32

	tables []string // each capture's schema.table, made once per run
	// skip: captures whose fields the RowDescription shows to come from
	// another table than the plan says: never captured (no guessing).
	skip []bool
}

// describeTo says who gets the answer to a Describe carrying a trackSet.
type describeTo uint8

const (
	describeClient   describeTo = iota // the client's own Describe: all fields hidden → NoData
	describePipeline                   // a translated simple query's: all hidden → nothing
	describeOwn                        // the proxy's, to learn the result formats: nothing
)

// trackSet is attached to a pending request whose answers the tracking
// handles: one run (extended protocol), or one per statement of a simple
// query, in order (i: the statement whose result comes next).
type trackSet struct {
	runs     []*trackRun
	i        int
	describe describeTo
	// Describe of a statement sent with the injected parameter: the
	// ParameterDescription loses its last type; prep learns the types.
	stripParam bool
	prep       *prepared
}

func (ts *trackSet) cur() *trackRun {
	if ts.i < len(ts.runs) {
		return ts.runs[ts.i]
	}
	return nil
}

// trackHead is the trackSet of the oldest pending request, if any.
func (s *session) trackHead() *trackSet {
	if s.guard == nil || s.guard.store == nil {
		return nil
	}
	p, ok := s.queue.peek()
	if !ok {
		return nil
	}
	return p.track
}

// hiddenCount is how many trailing fields of a run's result are hidden.
func (r *trackRun) hiddenCount() int {
	if r == nil || r.st == nil {
		return 0
	}
	return len(r.st.Hidden)
}

// onTrackedRowDescription relays a RowDescription without the hidden
// fields and learns the fields' formats and types.
func (s *session) onTrackedRowDescription(msg []byte) {
	p, _ := s.queue.peek()
	ts := p.track
	if p.kind == pendDescribe {
		s.queue.pop()
	}
	run := ts.cur()
	hidden := run.hiddenCount()
	body := frameBody(msg)
	if len(body) < 2 {
		s.cout.append(msg...)
		return
	}
	n := int(int16(binary.BigEndian.Uint16(body)))
	// Walk the fields: the offset where the first hidden one starts, and
	// each field's type and format.
	b, cut := body[2:], -1
	var fmts []int16
	var oids, tabs []uint32
	if run != nil {
		fmts, oids, tabs = make([]int16, 0, n), make([]uint32, 0, n), make([]uint32, 0, n)
	}
	for i := 0; i < n; i++ {
		if i == n-hidden {
			cut = len(body) - len(b)
		}
		_, rest, ok := cstringBytes(b)
		if !ok || len(rest) < 18 {
			s.cout.append(msg...) // malformed: the client sees what the server sent
			return
		}
		if run != nil {
			tabs = append(tabs, binary.BigEndian.Uint32(rest))
			oids = append(oids, binary.BigEndian.Uint32(rest[6:]))
			fmts = append(fmts, int16(binary.BigEndian.Uint16(rest[16:])))
		}
		b = rest[18:]
	}
	if run != nil {
		run.fmts, run.oids = fmts, oids
		s.checkCaptures(run, tabs)
	}
	if ts.describe == describeOwn && p.kind == pendDescribe {
		return
	}
	if hidden == 0 || hidden > n {
		s.cout.append(msg...)
		return
	}
	if hidden == n {
		if p.kind == pendDescribe && ts.describe == describeClient {
			s.cout.append(noDataFrame...)
		}
		return // a RETURNING added for the proxy: the client sees no rows
	}
	var cnt [2]byte
	binary.BigEndian.PutUint16(cnt[:], uint16(n-hidden))
	s.cout.b = appendFrame(s.cout.b, byte(msgRowDescription), cnt[:], body[2:cut])
}

var noDataFrame = appendFrame(nil, byte(msgNoData))

// onTrackedDataRow captures what the plan says a row carries and relays it
// without the hidden fields.
func (s *session) onTrackedDataRow(msg []byte) {
	p, _ := s.queue.peek()
	run := p.track.cur()
	hidden := run.hiddenCount()
	if run == nil || run.st == nil {
		s.cout.append(msg...)
		return
	}
	body := frameBody(msg)
	if len(body) < 2 {
		s.cout.append(msg...)
		return
	}
	n := int(int16(binary.BigEndian.Uint16(body)))
	if hidden > n {
		s.cout.append(msg...)
		return
	}
	// Offsets of each field's length word: n is small, on the stack for
	// the common widths.
	var offBuf [32]int
	offs := offBuf[:0]
	b := body[2:]
	for i := 0; i < n; i++ {
		if len(b) < 4 {
			s.cout.append(msg...)
			return
		}
		offs = append(offs, len(body)-len(b))
		l := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if l > 0 {
			if l > len(b) {
				s.cout.append(msg...)
				return
			}
			b = b[l:]
		}
	}
	value := func(i int) ([]byte, bool) {
		if i < 0 || i >= n {
			return nil, false
		}
		o := offs[i]
		l := int(int32(binary.BigEndian.Uint32(body[o:])))
		if l < 0 {
			return nil, false
		}
		return body[o+4 : o+4+l], true
	}
	if len(run.tables) != len(run.st.Captures) {
		run.tables = make([]string, len(run.st.Captures))
		for ci := range run.st.Captures {
			run.tables[ci] = run.st.Captures[ci].Policy.QualifiedName()
		}
	}
	for ci := range run.st.Captures {
		if ci < len(run.skip) && run.skip[ci] {
			continue
		}
		run.capture(&run.st.Captures[ci], run.tables[ci], n, value)
	}
	if hidden == 0 {
		s.cout.append(msg...)
		return
	}
	if hidden == n {
		return
	}
	var cnt [2]byte
	binary.BigEndian.PutUint16(cnt[:], uint16(n-hidden))
	s.cout.b = appendFrame(s.cout.b, byte(msgDataRow), cnt[:], body[2:offs[n-hidden]])
}

// text renders field i's value as text (binary values decoded by type).
func (r *trackRun) text(i int, v []byte) (string, bool) {
	if i < len(r.fmts) && r.fmts[i] == 1 {
		var oid uint32
		if i < len(r.oids) {
			oid = r.oids[i]
		}
		return decodeParam(v, true, oid)
	}
	return unsafeString(v), true
}

// capture remembers one table reference's key and version from a row; a
// row whose key or version is NULL or cannot be read is not captured.
func (r *trackRun) capture(c *rewrite.Capture, table string, n int, value func(int) ([]byte, bool)) {
	vs := r.store
	key := append(vs.keyBuf[:0], table...)
	for _, f := range c.Keys {
		i := f.Index(n)
		v, ok := value(i)
		if !ok {
			return
		}
		t, ok := r.text(i, v)
		if !ok {
			return
		}
		key = append(append(key, 0), t...)
	}
	vs.keyBuf = key
	vi := c.Version.Index(n)
	v, ok := value(vi)
	if !ok {
		return
	}
	t, ok := r.text(vi, v)
	if !ok {
		return
	}
	if r.write {
		if c.Policy.Mode == rewrite.ModeObserve {
			if over, ok := r.writtenOver(t, n, value); ok {
				vs.observeWrite(c.Policy, key, over)
			}
		}
		vs.ownWrite(key, table, string(unsafeBytes(t)), false)
		return
	}
	if cur := vs.m[unsafeString(key)]; cur != nil && cur.version == t {
		vs.touch(cur)
		return
	}
	vs.set(key, table, string(unsafeBytes(t)))
}

// writtenOver is the version a row of an observe-mode write had just
// before the write, as the plan says to learn it (rewrite.WrittenOver);
// ok is false when it is not known or the row was inserted (it overwrote
// nothing). newVersion is the row's captured version after the write.
func (r *trackRun) writtenOver(newVersion string, n int, value func(int) ([]byte, bool)) (string, bool) {
	switch r.st.WrittenOver {
	case rewrite.WrittenOverIncrement:
		v, err := strconv.ParseInt(newVersion, 10, 64)
		if err != nil {
			return "", false
		}
		return strconv.FormatInt(v-1, 10), true
	case rewrite.WrittenOverReturned:
		i := r.st.WrittenOverField.Index(n)
		v, ok := value(i)
		if !ok {
			return "", false
		}
		// "cv<version>": the write's WHERE ran on this row and recorded
		// its version; "c": it did not (an upsert's inserted row).
		s, ok := r.text(i, v)
		if !ok || !strings.HasPrefix(s, "cv") {
			return "", false
		}
		return s[2:], true
	}
	return "", false
}

// onTrackedParameterDescription relays a ParameterDescription without the
// injected parameter, and learns the parameter types for decoding binary
// key values later.
func (s *session) onTrackedParameterDescription(msg []byte) {
	p, _ := s.queue.peek()
	ts := p.track
	body := frameBody(msg)
	if len(body) < 2 {
		s.cout.append(msg...)
		return
	}
	n := int(int16(binary.BigEndian.Uint16(body)))
	if len(body) != 2+4*n {
		s.cout.append(msg...)
		return
	}
	if ts.prep != nil {
		for i := 0; i < n; i++ {
			oid := binary.BigEndian.Uint32(body[2+4*i:])
			if i < len(ts.prep.oids) {
				if ts.prep.oids[i] == 0 {
					ts.prep.oids[i] = oid
				}
			} else {
				ts.prep.oids = append(ts.prep.oids, oid)
			}
		}
	}
	if p.answer == answerProxy {
		return
	}
	if !ts.stripParam || n == 0 {
		s.cout.append(msg...)
		return
	}
	var cnt [2]byte
	binary.BigEndian.PutUint16(cnt[:], uint16(n-1))
	s.cout.b = appendFrame(s.cout.b, byte(msgParameterDescription), cnt[:], body[2:2+4*(n-1)])
}

// onTrackedComplete runs at the end of a tracked statement's execution:
// the session's own successful write moves what it remembers on.
func (s *session) onTrackedComplete(ts *trackSet, msg []byte) {
	run := ts.cur()
	if p, _ := s.queue.peek(); p.kind == pendQuery {
		ts.i++ // the next result belongs to the next statement
	}
	if run == nil || run.st == nil || serverMsg(msg[0]) != msgCommandComplete {
		return
	}
	st := run.st
	n := rowsAffected(msg)
	if !run.keyOK {
		// A write whose rows the tracking cannot name (no pinned key and
		// no RETURNING that says: MERGE, a DELETE by range, a
		// data-modifying CTE, EXPLAIN ANALYZE): the session must not be
		// refused later for having changed rows itself, so what it
		// remembers of the table is forgotten.
		if st.Policy != nil && st.Policy.Tracked() && n != 0 &&
			(st.Kind == rewrite.KindDelete || len(st.Captures) == 0) {
			run.store.forgetTable(st.Policy.QualifiedName())
		}
		return
	}
	if n <= 0 {
		return
	}
	vs := run.store
	key := vs.rowKey(st.Policy.QualifiedName(), run.key)
	table := st.Policy.QualifiedName()
	switch {
	case st.Kind == rewrite.KindDelete:
		vs.ownWrite(key, table, "", true)
	case st.NewVersion == rewrite.NewVersionIncrement:
		if v, ok := incremented(run.expected); run.hasExpected && ok {
			vs.ownWrite(key, table, v, false)
		} else {
			vs.ownWrite(key, table, "", true)
		}
	}
}

// checkCaptures verifies, from a RowDescription's table OIDs, that each
// field a capture reads comes from the capture's table (the catalog's OID
// for it); a capture that does not is skipped for this result.
func (s *session) checkCaptures(run *trackRun, tabs []uint32) {
	run.skip = run.skip[:0]
	if run.st == nil || s.guard == nil || s.guard.db == nil || s.guard.db.facts.oids == nil {
		return
	}
	oids := s.guard.db.facts.oids
	n := len(tabs)
	for ci := range run.st.Captures {
		c := &run.st.Captures[ci]
		bad := false
		for _, f := range append(c.Keys[:len(c.Keys):len(c.Keys)], c.Version) {
			i := f.Index(n)
			if i < 0 || i >= n {
				bad = true
				break
			}
			pol := oids[tabs[i]]
			if pol == nil || pol.Schema != c.Policy.Schema || pol.Table != c.Policy.Table {
				bad = true
				break
			}
		}
		run.skip = append(run.skip, bad)
	}
}
