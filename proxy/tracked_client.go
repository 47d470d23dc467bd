package proxy

import (
	"encoding/binary"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Tracked mode, the client's requests: which runs the tracking follows,
// and the version the session read injected into its writes (an extra
// parameter in the extended protocol, a literal in the simple one).

// newRun starts the tracking of one run of st, or nil when it needs none.
func (g *sessionGuard) newRun(st *rewrite.Statement) *trackRun {
	if g.store == nil || !needsTracking(st) {
		return nil
	}
	return &trackRun{st: st, store: g.store, write: st.Command != rewrite.CommandSelect}
}

// isWrite reports whether st is a write of a tracked row whose key the
// tracking follows.
func isTrackedWrite(st *rewrite.Statement) bool {
	return st.Policy != nil && st.Policy.Tracked() &&
		(st.Kind == rewrite.KindUpdate || st.Kind == rewrite.KindDelete || st.Kind == rewrite.KindUpsert)
}

// trackAction completes a simple-query statement's action for the
// tracking: the written row's key, and, when the session remembers its
// version, the statement sent with it and checked.
func (s *session) trackAction(a *action, src *rewrite.Statement) {
	g := s.guard
	run := g.newRun(a.stmt)
	a.run = run
	if run == nil || !isTrackedWrite(a.stmt) {
		return
	}
	st := a.stmt
	arg := executeArgs(src)
	run.key, run.keyOK = writeKey(st, arg)
	if st.Checked {
		if d := resolveDetail(st, arg); d.expectedKnown {
			run.expected, run.hasExpected = d.expected, true
		}
		return
	}
	// An EXECUTE gets its version as an argument (injectExecute).
	if st.Inject == nil || src.Kind == rewrite.KindExecute || !run.keyOK {
		return
	}
	v, ok := g.store.lookup(unsafeString(g.store.rowKey(st.Policy.QualifiedName(), run.key)))
	if !ok {
		return
	}
	cp := *st
	cp.Checked, cp.Refuse = true, false
	cp.Expected = rewrite.Value{Kind: rewrite.ValueLiteral, Literal: v}
	cp.SQL = st.WithExpected(v)
	a.stmt, a.source, a.check, a.refuse, a.sql = &cp, &cp, true, false, cp.SQL
	run.st, run.expected, run.hasExpected = &cp, v, true
}

// querySet is the trackSet of a simple query's statements, nil when none
// needs tracking.
func querySet(acts []action) *trackSet {
	var runs []*trackRun
	for i := range acts {
		if acts[i].run != nil {
			if runs == nil {
				runs = make([]*trackRun, len(acts))
			}
			runs[i] = acts[i].run
		}
	}
	if runs == nil {
		return nil
	}
	return &trackSet{runs: runs}
}

// oneSet is the trackSet of a single run.
func oneSet(run *trackRun, to describeTo) *trackSet {
	if run == nil {
		return nil
	}
	return &trackSet{runs: []*trackRun{run}, describe: to}
}

// sqlOf is the text a simple query's statements are sent as, with any
// injected version.
func sqlOf(plan *rewrite.Plan, acts []action) string {
	changed := false
	for i := range acts {
		changed = changed || acts[i].sql != ""
	}
	if !changed {
		return plan.SQL
	}
	var b []byte
	for i := range plan.Statements {
		if i > 0 {
			b = append(b, ";\n"...)
		}
		sql := plan.Statements[i].SQL
		if acts[i].sql != "" {
			sql = acts[i].sql
		}
		b = append(b, sql...)
		if strings.Contains(sql, "--") {
			b = append(b, '\n') // a trailing comment must not swallow the separator
		}
	}
	return string(b)
}

// injectParse reports whether a statement is prepared with the injected
// parameter: it has an injection and the client's parameter types leave
// room for it, and so does the protocol (a statement already using $65535
// cannot take one more: it runs unchecked).
func injectParse(st *rewrite.Statement, nOids int) bool {
	return st.Inject != nil && nOids < st.Inject.Param && st.Inject.Param <= maxParams
}

// injectTail is a Parse's parameter types padded with zeros (inferred by
// the server) up to the injected parameter.
func injectTail(tail []byte, param int) []byte {
	n := int(binary.BigEndian.Uint16(tail))
	out := binary.BigEndian.AppendUint16(nil, uint16(param))
	out = append(out, tail[2:2+4*n]...)
	for i := n; i < param; i++ {
		out = append(out, 0, 0, 0, 0)
	}
	return out
}

// trackBind prepares a portal's run of a tracked statement: the written
// row's key from the bound values and, for a statement prepared with the
// injected parameter, the Bind with the remembered version (or NULL) as
// its last value. It returns the Bind to send and the statement as run
// (checked when a version was injected).
func (s *session) trackBind(prep *prepared, msg []byte) ([]byte, *rewrite.Statement, *trackRun) {
	g := s.guard
	st := prep.plan
	run := g.newRun(st)
	if run == nil || !isTrackedWrite(st) {
		return msg, st, run
	}
	var b pgproto3.Bind
	if err := b.Decode(frameBody(msg)); err != nil {
		return msg, st, run
	}
	arg := func(n int) (string, bool) {
		if n < 1 || n > len(b.Parameters) {
			return "", false
		}
		bin := false
		switch len(b.ParameterFormatCodes) {
		case 0:
		case 1:
			bin = b.ParameterFormatCodes[0] == 1
		default:
			if n <= len(b.ParameterFormatCodes) {
				bin = b.ParameterFormatCodes[n-1] == 1
			}
		}
		var oid uint32
		if n <= len(prep.oids) {
			oid = prep.oids[n-1]
		}
		return decodeParam(b.Parameters[n-1], bin, oid)
	}
	run.key, run.keyOK = writeKey(st, arg)
	if st.Checked {
		if d := resolveDetail(st, arg); d.expectedKnown {
			run.expected, run.hasExpected = d.expected, true
		}
	}
	if !prep.injected || len(b.Parameters) != st.Inject.Param-1 {
		return msg, st, run
	}
	eff := st
	var value []byte
	if run.keyOK {
		if v, ok := g.store.lookup(unsafeString(g.store.rowKey(st.Policy.QualifiedName(), run.key))); ok {
			cp := *st
			cp.Checked, cp.Refuse = true, false
			cp.Expected = rewrite.Value{Kind: rewrite.ValueLiteral, Literal: v}
			eff, value = &cp, []byte(v)
			run.st, run.expected, run.hasExpected = &cp, v, true
		}
	}
	out, err := appendParam(&b, value)
	if err != nil {
		return msg, st, run
	}
	return out, eff, run
}

// appendParam is the Bind b with one more parameter value, in text format
// (nil: NULL, the statement unchecked).
func appendParam(b *pgproto3.Bind, value []byte) ([]byte, error) {
	switch len(b.ParameterFormatCodes) {
	case 0: // all text, the injected value too
	case 1:
		if b.ParameterFormatCodes[0] == 1 {
			codes := make([]int16, len(b.Parameters)+1)
			for i := range b.Parameters {
				codes[i] = 1
			}
			b.ParameterFormatCodes = codes
		}
	default:
		b.ParameterFormatCodes = append(b.ParameterFormatCodes, 0)
	}
	b.Parameters = append(b.Parameters, value)
	return b.Encode(nil)
}

// bindNullInjected gives a Bind of a statement prepared with the injected
// parameter NULL there (unchecked), when it binds the client's parameters.
func bindNullInjected(prep *prepared, msg []byte) []byte {
	var b pgproto3.Bind
	if err := b.Decode(frameBody(msg)); err != nil || len(b.Parameters) != prep.plan.Inject.Param-1 {
		return msg
	}
	out, err := appendParam(&b, nil)
	if err != nil {
		return msg
	}
	return out
}

// resultFormats finds a Bind's result-format codes: their count and the
// offset of the count in b (the Bind after its two names, already checked
// by validBind).
func resultFormats(b []byte) (off, nr int) {
	nf := int(binary.BigEndian.Uint16(b))
	off = 2 + 2*nf
	np := int(binary.BigEndian.Uint16(b[off:]))
	off += 2
	for i := 0; i < np; i++ {
		l := int(int32(binary.BigEndian.Uint32(b[off:])))
		off += 4
		if l > 0 {
			off += l
		}
	}
	return off, int(binary.BigEndian.Uint16(b[off:]))
}

// textResults reports whether a Bind (after its two names) asks for every
// result in text format, so values can be read without the field types.
func textResults(b []byte) bool {
	off, nr := resultFormats(b)
	for i := 0; i < nr; i++ {
		if b[off+2+2*i] != 0 || b[off+3+2*i] != 0 {
			return false
		}
	}
	return true
}

// withHiddenFormats extends a Bind's result formats for the hidden fields:
// a code per field (more than one code) must cover them too; they come as
// text. Zero or one code already applies to every field.
func withHiddenFormats(msg []byte, hidden int) []byte {
	_, rest, _ := cstringBytes(frameBody(msg))
	_, rest, _ = cstringBytes(rest)
	off, nr := resultFormats(rest)
	if nr < 2 || hidden == 0 {
		return msg
	}
	start := len(msg) - len(rest) + off
	body := make([]byte, 0, len(msg)-headerLen+2*hidden)
	body = append(body, msg[headerLen:start]...)
	body = binary.BigEndian.AppendUint16(body, uint16(nr+hidden))
	body = append(body, msg[start+2:]...)
	for i := 0; i < hidden; i++ {
		body = append(body, 0, 0)
	}
	return appendFrame(nil, byte(msgBind), body)
}

// onDescribe relays a Describe, noting the answers that must be stripped.
func (s *session) onDescribe(msg []byte) error {
	g := s.guard
	body := frameBody(msg)
	if len(body) < 2 {
		return protoErrorf("Describe: malformed message")
	}
	name, _, ok := cstringBytes(body[1:])
	if !ok {
		return protoErrorf("Describe: missing string terminator")
	}
	p := pending{kind: pendDescribe}
	switch body[0] {
	case targetStatement:
		if prep := g.stmts[unsafeString(name)]; prep != nil && g.store != nil && (len(prep.plan.Hidden) > 0 || prep.injected) {
			p.track = &trackSet{runs: []*trackRun{{st: prep.plan, store: g.store}}, stripParam: prep.injected, prep: prep}
		}
	case targetPortal:
		if bp := g.portals[unsafeString(name)]; bp != nil && bp.run != nil {
			p.track = oneSet(bp.run, describeClient)
			bp.described = true
		}
	}
	s.queue.push(p)
	s.sout.append(msg...)
	return nil
}

// ownDescribe asks for a tracked portal's result formats before its first
// Execute, when the client did not and a result may be binary.
func (s *session) ownDescribe(bp *boundPortal, portal []byte) error {
	if bp.described || s.queue.skipping {
		return nil
	}
	bp.described = true
	if bp.run.st == nil || len(bp.run.st.Captures) == 0 {
		return nil
	}
	s.queue.push(pending{kind: pendDescribe, answer: answerProxy, track: oneSet(bp.run, describeOwn)})
	return s.send(&pgproto3.Describe{ObjectType: targetPortal, Name: string(portal)})
}
