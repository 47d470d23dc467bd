package proxy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Transcript tests: the relay's state machine driven without sockets, as a
// table of what the client sends, what the server must then receive, what
// the server answers and what the client must then receive. Frames are
// compared decoded, one line per message, so a failure reads as a
// conversation.
//
// A transcript is strict about time: before each input step every frame
// the proxy wrote since the last one must have been expected, so a frame
// that goes out too early (a held client released before its check's
// outcome) fails as surely as a wrong one. At the end nothing may be left
// unread, pending or held.
//
// The server's frames are what PostgreSQL sends (protocol documentation,
// "Message Flow"): after an error in the extended protocol it answers
// nothing up to the next Sync; Describe of a statement is answered with
// ParameterDescription and RowDescription or NoData; Flush has no answer of
// its own; Close of a name that does not exist is answered CloseComplete.

// step is one line of a transcript: an input (from the client or the
// server) or an expectation (what the server or the client got since the
// last expectation of that side).
type step struct {
	dir  direction
	in   []pgproto3.Message
	want []expect
}

type direction uint8

const (
	fromClient direction = iota
	fromServer
	atServer
	atClient
	clientTogether // a marker: see together
)

func (d direction) String() string {
	return [...]string{"from client", "from server", "at server", "at client", "together"}[d]
}

// together marks a transcript whose client steps must each reach the relay
// in one read, because the frames arriving together is the point (a Sync
// right behind a checked Execute goes out with it): run byte by byte, only
// the server's bytes are cut.
func together(parts ...[]step) transcript {
	return join(append([][]step{{{dir: clientTogether}}}, parts...)...)
}

// client is input from the client: frontend messages, or slices of them.
func client(msgs ...any) step { return step{dir: fromClient, in: flatten(msgs, true)} }

// server is input from the server: backend messages, or slices of them.
func server(msgs ...any) step { return step{dir: fromServer, in: flatten(msgs, false)} }

// flatten turns messages and slices of messages of one direction into one
// list.
func flatten(items []any, frontend bool) []pgproto3.Message {
	var out []pgproto3.Message
	for _, it := range items {
		switch v := it.(type) {
		case []any:
			out = append(out, flatten(v, frontend)...)
		case []pgproto3.FrontendMessage:
			for _, m := range v {
				out = append(out, flatten([]any{m}, frontend)...)
			}
		case []pgproto3.BackendMessage:
			for _, m := range v {
				out = append(out, flatten([]any{m}, frontend)...)
			}
		case pgproto3.Message:
			_, fe := v.(pgproto3.FrontendMessage)
			_, be := v.(pgproto3.BackendMessage)
			if frontend && !fe || !frontend && !be {
				panic(fmt.Sprintf("transcript: %T in the wrong direction", it))
			}
			out = append(out, v)
		default:
			panic(fmt.Sprintf("transcript: %T is not a message", it))
		}
	}
	return out
}

// serverGets expects frames at the server: pgproto3 messages (or slices of
// them) compared exactly, or an expect (sqlLike) for text the proxy
// generates. No arguments: nothing went to the server.
func serverGets(want ...any) step { return step{dir: atServer, want: expects(want, true)} }

// clientGets expects frames at the client, as serverGets.
func clientGets(want ...any) step { return step{dir: atClient, want: expects(want, false)} }

// expect matches one decoded frame.
type expect interface {
	match(got pgproto3.Message) bool
	String() string
}

func expects(items []any, frontend bool) []expect {
	var out []expect
	for _, it := range items {
		switch v := it.(type) {
		case expect:
			out = append(out, v)
			continue
		case []any:
			out = append(out, expects(v, frontend)...)
			continue
		}
		for _, m := range flatten([]any{it}, frontend) {
			// Through the encoding and back, so expected and received
			// frames render alike (nil and empty slices, defaults).
			b, err := m.Encode(nil)
			if err != nil {
				panic(err)
			}
			out = append(out, exactly{render(decodeFrame(b, frontend))})
		}
	}
	return out
}

// exactly matches a frame whose rendering is the same.
type exactly struct{ line string }

func (e exactly) match(got pgproto3.Message) bool { return render(got) == e.line }
func (e exactly) String() string                  { return e.line }

// sqlLike matches a Query, or a Parse of the named statement without
// parameter types, whose text starts with prefix and then contains each
// part in order: for statements the proxy generates (the DO blocks that
// raise its errors), whose full text is the business of stale.go's tests.
type sqlLike struct {
	parse  bool
	name   string
	prefix string
	parts  []string
}

func (l sqlLike) match(got pgproto3.Message) bool {
	var text string
	switch m := got.(type) {
	case *pgproto3.Query:
		if l.parse {
			return false
		}
		text = m.String
	case *pgproto3.Parse:
		if !l.parse || m.Name != l.name || len(m.ParameterOIDs) != 0 {
			return false
		}
		text = m.Query
	default:
		return false
	}
	if !strings.HasPrefix(text, l.prefix) {
		return false
	}
	rest := text[len(l.prefix):]
	for _, p := range l.parts {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}
	return true
}

func (l sqlLike) String() string {
	var b strings.Builder
	if l.parse {
		fmt.Fprintf(&b, "Parse %q ", l.name)
	} else {
		b.WriteString("Query ")
	}
	fmt.Fprintf(&b, "%q…", l.prefix)
	for _, p := range l.parts {
		fmt.Fprintf(&b, "%q…", p)
	}
	return b.String()
}

// staleQuery is the statement that raises the stale error for a key and
// an expected version, sent as a simple Query.
func staleQuery(expected, key string) sqlLike {
	return sqlLike{prefix: "DO $pgoptimist$", parts: []string{`FROM public.address WHERE id = ` + quoteLiteral(key),
		"RAISE EXCEPTION USING ERRCODE = 'VL409'", "expected version " + expected}}
}

// staleParse is staleQuery prepared as the statement name.
func staleParse(name, expected, key string) sqlLike {
	l := staleQuery(expected, key)
	l.parse, l.name = true, name
	return l
}

// requiredQuery is the statement that raises the refusal of a guarded
// statement without a version predicate on public.strict, sent as a simple
// Query.
func requiredQuery() sqlLike {
	return sqlLike{prefix: "DO $pgoptimist$", parts: []string{"RAISE EXCEPTION USING ERRCODE = 'VL428'", "public.strict is guarded in required mode"}}
}

// requiredParse is requiredQuery prepared as the statement name.
func requiredParse(name string) sqlLike {
	l := requiredQuery()
	l.parse, l.name = true, name
	return l
}

// render is a frame's one-line description; equal lines mean equal frames.
func render(m pgproto3.Message) string {
	switch m := m.(type) {
	case *pgproto3.Query:
		return fmt.Sprintf("Query %q", m.String)
	case *pgproto3.Parse:
		s := fmt.Sprintf("Parse %q %q", m.Name, m.Query)
		if len(m.ParameterOIDs) > 0 {
			s += fmt.Sprintf(" types=%v", m.ParameterOIDs)
		}
		return s
	case *pgproto3.Bind:
		params := make([]string, len(m.Parameters))
		for i, p := range m.Parameters {
			if p == nil {
				params[i] = "NULL"
			} else {
				params[i] = fmt.Sprintf("%q", p)
			}
		}
		s := fmt.Sprintf("Bind portal=%q stmt=%q params=[%s]", m.DestinationPortal, m.PreparedStatement, strings.Join(params, " "))
		if len(m.ParameterFormatCodes) > 0 || len(m.ResultFormatCodes) > 0 {
			s += fmt.Sprintf(" formats=%v results=%v", m.ParameterFormatCodes, m.ResultFormatCodes)
		}
		return s
	case *pgproto3.Execute:
		return fmt.Sprintf("Execute %q max=%d", m.Portal, m.MaxRows)
	case *pgproto3.Describe:
		return fmt.Sprintf("Describe %c %q", m.ObjectType, m.Name)
	case *pgproto3.Close:
		return fmt.Sprintf("Close %c %q", m.ObjectType, m.Name)
	case *pgproto3.Sync:
		return "Sync"
	case *pgproto3.Flush:
		return "Flush"
	case *pgproto3.ParseComplete:
		return "ParseComplete"
	case *pgproto3.BindComplete:
		return "BindComplete"
	case *pgproto3.CloseComplete:
		return "CloseComplete"
	case *pgproto3.NoData:
		return "NoData"
	case *pgproto3.CommandComplete:
		return fmt.Sprintf("CommandComplete %q", m.CommandTag)
	case *pgproto3.ReadyForQuery:
		return fmt.Sprintf("ReadyForQuery %c", m.TxStatus)
	case *pgproto3.ParameterDescription:
		return fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs)
	case *pgproto3.RowDescription:
		fs := make([]string, len(m.Fields))
		for i, f := range m.Fields {
			fs[i] = fmt.Sprintf("%s:%d", f.Name, f.DataTypeOID)
			if f.TableOID != 0 || f.TableAttributeNumber != 0 {
				fs[i] += fmt.Sprintf("@%d.%d", f.TableOID, f.TableAttributeNumber)
			}
			if f.Format != 0 {
				fs[i] += "/binary"
			}
		}
		return "RowDescription " + strings.Join(fs, " ")
	case *pgproto3.DataRow:
		vs := make([]string, len(m.Values))
		for i, v := range m.Values {
			if v == nil {
				vs[i] = "NULL"
			} else {
				vs[i] = fmt.Sprintf("%q", v)
			}
		}
		return "DataRow " + strings.Join(vs, " ")
	case *pgproto3.ErrorResponse:
		s := fmt.Sprintf("ErrorResponse %s %s %q", m.Severity, m.Code, m.Message)
		for _, f := range []struct{ k, v string }{
			{"detail", m.Detail}, {"hint", m.Hint}, {"where", m.Where}, {"schema", m.SchemaName},
			{"table", m.TableName}, {"column", m.ColumnName}, {"constraint", m.ConstraintName},
			{"file", m.File}, {"routine", m.Routine},
		} {
			if f.v != "" {
				s += fmt.Sprintf(" %s=%q", f.k, f.v)
			}
		}
		if m.Line != 0 {
			s += fmt.Sprintf(" line=%d", m.Line)
		}
		return s
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// decodeFrame decodes one whole frame sent by the client (frontend) or the
// server.
func decodeFrame(b []byte, frontend bool) pgproto3.Message {
	var m pgproto3.Message
	if frontend {
		switch clientMsg(b[0]) {
		case msgQuery:
			m = &pgproto3.Query{}
		case msgParse:
			m = &pgproto3.Parse{}
		case msgBind:
			m = &pgproto3.Bind{}
		case msgExecute:
			m = &pgproto3.Execute{}
		case msgDescribe:
			m = &pgproto3.Describe{}
		case msgClose:
			m = &pgproto3.Close{}
		case msgSync:
			m = &pgproto3.Sync{}
		case msgFlush:
			m = &pgproto3.Flush{}
		case msgTerminate:
			m = &pgproto3.Terminate{}
		}
	} else {
		switch serverMsg(b[0]) {
		case msgParseComplete:
			m = &pgproto3.ParseComplete{}
		case msgBindComplete:
			m = &pgproto3.BindComplete{}
		case msgCloseComplete:
			m = &pgproto3.CloseComplete{}
		case msgNoData:
			m = &pgproto3.NoData{}
		case msgCommandComplete:
			m = &pgproto3.CommandComplete{}
		case msgEmptyQueryResponse:
			m = &pgproto3.EmptyQueryResponse{}
		case msgPortalSuspended:
			m = &pgproto3.PortalSuspended{}
		case msgReadyForQuery:
			m = &pgproto3.ReadyForQuery{}
		case msgParameterDescription:
			m = &pgproto3.ParameterDescription{}
		case msgRowDescription:
			m = &pgproto3.RowDescription{}
		case msgDataRow:
			m = &pgproto3.DataRow{}
		case msgErrorResponse:
			m = &pgproto3.ErrorResponse{}
		case msgNoticeResponse:
			m = &pgproto3.NoticeResponse{}
		}
	}
	if m == nil {
		return unknownFrame(fmt.Sprintf("unknown frame %q", b))
	}
	// Decoders may keep slices of their input: decode a copy.
	if err := m.Decode(append([]byte(nil), b[headerLen:]...)); err != nil {
		return unknownFrame(fmt.Sprintf("undecodable %c frame %q: %v", b[0], b, err))
	}
	return m
}

// unknownFrame stands for bytes that are not a frame the test knows; it
// matches nothing.
type unknownFrame string

func (unknownFrame) Decode([]byte) error               { return nil }
func (unknownFrame) Encode(dst []byte) ([]byte, error) { return dst, nil }
func (u unknownFrame) MarshalJSON() ([]byte, error)    { return json.Marshal(string(u)) }
func (unknownFrame) Frontend()                         {}
func (unknownFrame) Backend()                          {}

// splitFrames decodes a byte stream into frames; trailing bytes that are
// not a whole frame become an unknownFrame.
func splitFrames(b []byte, frontend bool) []pgproto3.Message {
	var out []pgproto3.Message
	for len(b) > 0 {
		_, total, ok, err := frameHeader(b, 0)
		if !ok || err != nil || total > len(b) {
			return append(out, unknownFrame(fmt.Sprintf("partial frame %q", b)))
		}
		out = append(out, decodeFrame(b[:total], frontend))
		b = b[total:]
	}
	return out
}

// diffFrames compares expected and received frames; "" when they match,
// else a listing that marks each frame kept (" "), missing ("-") or
// unexpected ("+"), aligned by a longest common subsequence.
func diffFrames(want []expect, got []pgproto3.Message) string {
	n, m := len(want), len(got)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if want[i].match(got[j]) {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	if lcs[0][0] == n && n == m {
		return ""
	}
	var b strings.Builder
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && want[i].match(got[j]):
			fmt.Fprintf(&b, "    %s\n", show(got[j]))
			i, j = i+1, j+1
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			fmt.Fprintf(&b, "  + %s\n", show(got[j]))
			j++
		default:
			fmt.Fprintf(&b, "  - %s\n", want[i])
			i++
		}
	}
	return b.String()
}

// transcript is a conversation through the relay, run on a fresh
// testSession.
type transcript []step

// run plays the transcript on a fresh testSession.
func (tr transcript) run(t *testing.T, f feed) {
	t.Helper()
	tr.play(t, testSession(t), f)
}

// feed says how input steps reach the relay: whole, as one read, or one
// byte at a time, so frames are passed through in pieces and gathered
// across reads. The relay must say the same either way.
type feed uint8

const (
	feedWhole feed = iota
	feedBytewise
)

func (tr transcript) play(t *testing.T, s *session, f feed) {
	t.Helper()
	clientWhole := false
	where := "start"
	defer func() {
		// The event loop ends a session that panics; here it is the
		// transcript that fails, and the other transcripts go on.
		if r := recover(); r != nil {
			t.Fatalf("%s: the relay panicked: %v", where, r)
		}
	}()
	for i, st := range tr {
		where = fmt.Sprintf("step %d (%s)", i+1, st.dir)
		switch st.dir {
		case clientTogether:
			clientWhole = true
			continue
		case fromClient, fromServer:
			if s.sout.len() > 0 || s.cout.len() > 0 {
				t.Fatalf("%s: frames written before it were not expected:\nat server:\n%sat client:\n%s", where,
					listFrames(splitFrames(s.sout.data(), true)), listFrames(splitFrames(s.cout.data(), false)))
			}
			var b []byte
			for _, m := range st.in {
				var err error
				if b, err = m.Encode(b); err != nil {
					t.Fatalf("%s: %v", where, err)
				}
			}
			chunk := len(b)
			if f == feedBytewise && !(clientWhole && st.dir == fromClient) {
				chunk = 1
			}
			for len(b) > 0 {
				k := min(chunk, len(b))
				if st.dir == fromClient {
					s.cin.append(b[:k]...)
					s.processClient()
				} else {
					// As the event loop does: server frames, then the
					// client's held frames once nothing holds them.
					s.sin.append(b[:k]...)
					s.processServer()
					if !s.checks.holding() {
						s.processClient()
					}
				}
				b = b[k:]
			}
		case atServer, atClient:
			out, frontend := &s.sout, true
			if st.dir == atClient {
				out, frontend = &s.cout, false
			}
			got := splitFrames(out.data(), frontend)
			out.consume(out.len())
			if d := diffFrames(st.want, got); d != "" {
				other, name := s.cout.data(), "client"
				if st.dir == atClient {
					other, name = s.sout.data(), "server"
				}
				if len(other) > 0 {
					d += fmt.Sprintf("(meanwhile at the %s:)\n%s", name, listFrames(splitFrames(other, st.dir == atClient)))
				}
				t.Fatalf("%s: frames differ (- expected, + got):\n%s", where, d)
			}
		}
		if s.ending {
			t.Fatalf("%s: the session ended: %v", where, s.endErr)
		}
	}
	if s.sout.len() > 0 || s.cout.len() > 0 {
		t.Fatalf("end: frames written and not expected:\nat server:\n%sat client:\n%s",
			listFrames(splitFrames(s.sout.data(), true)), listFrames(splitFrames(s.cout.data(), false)))
	}
	if s.cin.len() > 0 || s.sin.len() > 0 {
		t.Fatalf("end: input left unread: client %d bytes, server %d bytes", s.cin.len(), s.sin.len())
	}
	if s.checks.current() != nil || s.checks.holding() {
		t.Fatal("end: a check is still in flight")
	}
	if n := s.queue.len(); n > 0 || s.queue.skipping {
		t.Fatalf("end: %d requests still pending (skipping: %v)", n, s.queue.skipping)
	}
}

func listFrames(ms []pgproto3.Message) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "    %s\n", show(m))
	}
	return b.String()
}

// show is render cut short for a failure message: the DO blocks are long.
func show(m pgproto3.Message) string {
	s := render(m)
	if len(s) <= 240 {
		return s
	}
	return s[:160] + " … " + s[len(s)-60:]
}

// Frames as PostgreSQL sends them.
var (
	parseComplete = &pgproto3.ParseComplete{}
	bindComplete  = &pgproto3.BindComplete{}
	closeComplete = &pgproto3.CloseComplete{}
	noData        = &pgproto3.NoData{}
	syncMsg       = &pgproto3.Sync{}
	flushMsg      = &pgproto3.Flush{}
)

func cc(tag string) *pgproto3.CommandComplete {
	return &pgproto3.CommandComplete{CommandTag: []byte(tag)}
}

func ready(status byte) *pgproto3.ReadyForQuery { return &pgproto3.ReadyForQuery{TxStatus: status} }

func query(sql string) *pgproto3.Query { return &pgproto3.Query{String: sql} }

func parse(name, sql string) *pgproto3.Parse { return &pgproto3.Parse{Name: name, Query: sql} }

func bind(portal, stmt string, params ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for _, p := range params {
		b.Parameters = append(b.Parameters, []byte(p))
	}
	return b
}

func execute(portal string) *pgproto3.Execute { return &pgproto3.Execute{Portal: portal} }

// The answer to "SELECT n" in the simple protocol, or to Describe (portal)
// and Execute in the extended one.
func selectRows(n string) []pgproto3.BackendMessage {
	return []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("?column?"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte(n)}},
		cc("SELECT 1"),
	}
}

// checkViolation is an ordinary error of a guarded statement, relayed as
// it is.
var checkViolation = &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "23514",
	Message: `new row for relation "address" violates check constraint "address_state_check"`,
	Detail:  "Failing row contains (7, 3, x, Pinellas).", SchemaName: "public", TableName: "address",
	ConstraintName: "address_state_check", File: "execMain.c", Line: 2069, Routine: "ExecConstraints"}

// raised is an error of the proxy's as the server reports it when one of
// the proxy's DO blocks raises it: with the block's PL/pgSQL context
// (Where, File, Line, Routine). relayed is the same error as the client
// must get it: without, since the context describes the proxy's block, not
// the client's statement.
func raised(e pgproto3.ErrorResponse) *pgproto3.ErrorResponse {
	e.Where, e.File, e.Line, e.Routine = "PL/pgSQL function inline_code_block line 1 at RAISE", "pl_exec.c", 3911, "exec_stmt_raise"
	return &e
}

func relayed(e pgproto3.ErrorResponse) *pgproto3.ErrorResponse { return &e }

func staleError(detail string) pgproto3.ErrorResponse {
	return pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "VL409",
		Message: "stale record: public.address was changed by another transaction", Detail: detail,
		Hint: "re-read the row and retry", SchemaName: "public", TableName: "address", ColumnName: "version"}
}

var requiredError = pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "VL428",
	Message:    "version required: public.strict is guarded in required mode and this statement carries no version predicate",
	Detail:     `add "AND version = <the version you read>" to the statement, or read the row first`,
	SchemaName: "public", TableName: "strict", ColumnName: "version"}

// The statements of the transcripts, as the client writes them and as the
// server gets them.
const (
	updSQL       = "UPDATE address SET state = 'x' WHERE id = 7 AND version = 2"
	updSent      = "UPDATE address SET state = 'x', version = version + 1 WHERE id = 7 AND version = 2"
	updParam     = "UPDATE address SET state = $1 WHERE id = $2 AND version = $3"
	updParamSent = "UPDATE address SET state = $1, version = version + 1 WHERE id = $2 AND version = $3"
)

// join concatenates transcript pieces.
func join(parts ...[]step) transcript {
	var t transcript
	for _, p := range parts {
		t = append(t, p...)
	}
	return t
}

// begin opens a transaction block.
var begin = []step{
	client(query("BEGIN")),
	serverGets(query("BEGIN")),
	server(cc("BEGIN"), ready('T')),
	clientGets(cc("BEGIN"), ready('T')),
}

// runTranscripts runs each transcript with its input whole and byte by
// byte.
func runTranscripts(t *testing.T, cases map[string]transcript) {
	for name, tr := range cases {
		t.Run(name, func(t *testing.T) {
			t.Run("whole", func(t *testing.T) { tr.run(t, feedWhole) })
			t.Run("bytewise", func(t *testing.T) { tr.run(t, feedBytewise) })
		})
	}
}

// TestTranscriptSimple: a simple Query of one checked statement
// (checkSimple). Zero rows: the CommandComplete and ReadyForQuery are
// withheld and the server raises the stale error itself, so the client
// sees the error and the server's own ReadyForQuery, never "UPDATE 0".
func TestTranscriptSimple(t *testing.T) {
	sent := []step{
		client(query(updSQL)),
		serverGets(query(updSent)),
	}
	runTranscripts(t, map[string]transcript{
		"rows": join(sent, []step{
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		"stale": join(sent, []step{
			server(cc("UPDATE 0"), ready('I')),
			clientGets(),
			serverGets(staleQuery("2", "7")),
			server(raised(staleError("expected version 2, current version 3 (id=7)")), ready('I')),
			clientGets(relayed(staleError("expected version 2, current version 3 (id=7)")), ready('I')),
		}),
		"stale in a transaction block": join(begin, sent, []step{
			server(cc("UPDATE 0"), ready('T')),
			clientGets(),
			serverGets(staleQuery("2", "7")),
			server(raised(staleError("expected version 2, row no longer exists (id=7)")), ready('E')),
			clientGets(relayed(staleError("expected version 2, row no longer exists (id=7)")), ready('E')),
		}),
		"server error": join(sent, []step{
			server(checkViolation, ready('I')),
			clientGets(checkViolation, ready('I')),
		}),
		"server error in a transaction block": join(begin, sent, []step{
			server(checkViolation, ready('E')),
			clientGets(checkViolation, ready('E')),
		}),
	})
}

// TestTranscriptPipeline: a multi-statement simple query with a checked
// statement, run as an extended-protocol pipeline that pauses after it
// (checkPipeline). The client sees what the simple query would have
// given: the rows of each statement, one ReadyForQuery; the proxy's Parse,
// Bind and Describe answers (ParseComplete, BindComplete, NoData) are
// dropped, the Describe's RowDescription is the simple query's own.
func TestTranscriptPipeline(t *testing.T) {
	sent := []step{
		client(query("SELECT 1; " + updSQL + "; SELECT 2")),
		serverGets(
			parse("", "SELECT 1"), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""),
			parse("", updSent), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""), flushMsg),
	}
	first := []any{parseComplete, bindComplete, selectRows("1")}
	runTranscripts(t, map[string]transcript{
		"rows": join(sent, []step{
			server(first, parseComplete, bindComplete, noData, cc("UPDATE 1")),
			clientGets(selectRows("1"), cc("UPDATE 1")),
			serverGets(parse("", "SELECT 2"), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""), syncMsg),
			server(parseComplete, bindComplete, selectRows("2"), ready('I')),
			clientGets(selectRows("2"), ready('I')),
		}),
		// The later statement never runs; the server's error rolls the
		// implicit transaction back, SELECT 1 included.
		"stale": join(sent, []step{
			server(first, parseComplete, bindComplete, noData, cc("UPDATE 0")),
			clientGets(selectRows("1")),
			serverGets(staleParse("", "2", "7"), bind("", ""), execute(""), syncMsg),
			server(parseComplete, bindComplete, raised(staleError("expected version 2, current version 3 (id=7)")), ready('I')),
			clientGets(relayed(staleError("expected version 2, current version 3 (id=7)")), ready('I')),
		}),
		"server error": join(sent, []step{
			server(first, parseComplete, bindComplete, noData, checkViolation),
			clientGets(selectRows("1"), checkViolation),
			serverGets(syncMsg),
			server(ready('I')),
			clientGets(ready('I')),
		}),
	})
}

// TestTranscriptSyncAhead: a checked Execute with its Sync right behind it
// goes out with the Sync (checkSyncAhead). Zero rows: the Sync's
// ReadyForQuery is withheld and the stale error follows as a simple query,
// whose ReadyForQuery takes its place. Inside a transaction block the Sync
// commits nothing; in an implicit one it commits a statement that changed
// nothing.
func TestTranscriptSyncAhead(t *testing.T) {
	sent := []step{
		client(parse("u", updParam), bind("", "u", "x", "7", "2"), execute(""), syncMsg),
		serverGets(parse("u", updParamSent), bind("", "u", "x", "7", "2"), execute(""), syncMsg),
	}
	detail := "expected version 2, current version 3 (id=7)"
	cases := map[string]transcript{}
	for _, tx := range []struct {
		name    string
		before  []step
		status  byte // before and after a statement that went well
		aborted byte // after an error
	}{
		{"in a transaction block", begin, 'T', 'E'},
		{"implicit transaction", nil, 'I', 'I'},
	} {
		cases["rows "+tx.name] = together(tx.before, sent, []step{
			server(parseComplete, bindComplete, cc("UPDATE 1"), ready(tx.status)),
			clientGets(parseComplete, bindComplete, cc("UPDATE 1"), ready(tx.status)),
		})
		cases["stale "+tx.name] = together(tx.before, sent, []step{
			server(parseComplete, bindComplete, cc("UPDATE 0"), ready(tx.status)),
			clientGets(parseComplete, bindComplete),
			serverGets(staleQuery("2", "7")),
			server(raised(staleError(detail)), ready(tx.aborted)),
			clientGets(relayed(staleError(detail)), ready(tx.aborted)),
		})
		cases["server error "+tx.name] = together(tx.before, sent, []step{
			server(parseComplete, bindComplete, checkViolation, ready(tx.aborted)),
			clientGets(parseComplete, bindComplete, checkViolation, ready(tx.aborted)),
		})
	}
	runTranscripts(t, cases)
}

// TestTranscriptHeld: a checked Execute without its Sync (checkHeld): the
// proxy flushes it and holds the client's later frames, its own Flush
// included, until the outcome. Zero rows: the stale error is raised through
// the proxy's own statement and portal, whose CloseComplete, ParseComplete
// and BindComplete never reach the client, and the server skips to the
// client's Sync.
func TestTranscriptHeld(t *testing.T) {
	sent := []step{
		client(parse("u", updParam), bind("p", "u", "x", "7", "2"), execute("p"), flushMsg),
		serverGets(parse("u", updParamSent), bind("p", "u", "x", "7", "2"), execute("p"), flushMsg),
	}
	end := func(status byte) []step {
		return []step{
			client(syncMsg),
			serverGets(syncMsg),
			server(ready(status)),
			clientGets(ready(status)),
		}
	}
	detail := "expected version 2, current version 3 (id=7)"
	runTranscripts(t, map[string]transcript{
		"rows": join(sent, []step{
			server(parseComplete, bindComplete, cc("UPDATE 1")),
			clientGets(parseComplete, bindComplete, cc("UPDATE 1")),
			serverGets(flushMsg), // the client's, held until now
		}, end('I')),
		"stale": join(sent, []step{
			server(parseComplete, bindComplete, cc("UPDATE 0")),
			clientGets(parseComplete, bindComplete),
			serverGets(
				&pgproto3.Close{ObjectType: 'S', Name: raiseName}, &pgproto3.Close{ObjectType: 'P', Name: raiseName},
				staleParse(raiseName, "2", "7"), bind(raiseName, raiseName), &pgproto3.Close{ObjectType: 'S', Name: raiseName}, execute(raiseName),
				flushMsg),
			server(closeComplete, closeComplete, parseComplete, bindComplete, closeComplete, raised(staleError(detail))),
			clientGets(relayed(staleError(detail))),
		}, end('I')),
		"stale in a transaction block": join(begin, sent, []step{
			server(parseComplete, bindComplete, cc("UPDATE 0")),
			clientGets(parseComplete, bindComplete),
			serverGets(
				&pgproto3.Close{ObjectType: 'S', Name: raiseName}, &pgproto3.Close{ObjectType: 'P', Name: raiseName},
				staleParse(raiseName, "2", "7"), bind(raiseName, raiseName), &pgproto3.Close{ObjectType: 'S', Name: raiseName}, execute(raiseName),
				flushMsg),
			server(closeComplete, closeComplete, parseComplete, bindComplete, closeComplete, raised(staleError(detail))),
			clientGets(relayed(staleError(detail))),
		}, end('E')),
		"server error": join(sent, []step{
			server(parseComplete, bindComplete, checkViolation),
			clientGets(parseComplete, bindComplete, checkViolation),
			serverGets(flushMsg),
		}, end('I')),
	})
}

// TestTranscriptSQLExecute: SQL-level PREPARE and EXECUTE. The prepared
// statement is rewritten; EXECUTE is checked with the plan PREPARE left,
// and the stale error names the EXECUTE's arguments.
func TestTranscriptSQLExecute(t *testing.T) {
	sent := []step{
		client(query("PREPARE u(int, int) AS UPDATE address SET state = 'x' WHERE id = $1 AND version = $2")),
		serverGets(query("PREPARE u(int, int) AS UPDATE address SET state = 'x', version = version + 1 WHERE id = $1 AND version = $2")),
		server(cc("PREPARE"), ready('I')),
		clientGets(cc("PREPARE"), ready('I')),
		client(query("EXECUTE u(7, 2)")),
		serverGets(query("EXECUTE u(7, 2)")),
	}
	detail := "expected version 2, current version 3 (id=7)"
	runTranscripts(t, map[string]transcript{
		"rows": join(sent, []step{
			server(cc("UPDATE 1"), ready('I')),
			clientGets(cc("UPDATE 1"), ready('I')),
		}),
		"stale": join(sent, []step{
			server(cc("UPDATE 0"), ready('I')),
			clientGets(),
			serverGets(staleQuery("2", "7")),
			server(raised(staleError(detail)), ready('I')),
			clientGets(relayed(staleError(detail)), ready('I')),
		}),
		"server error": join(sent, []step{
			server(checkViolation, ready('I')),
			clientGets(checkViolation, ready('I')),
		}),
		"server error in a transaction block": join(begin, sent, []step{
			server(checkViolation, ready('E')),
			clientGets(checkViolation, ready('E')),
		}),
	})
}

// TestTranscriptPipelineStale: an extended-protocol pipeline of three
// Parse/Bind/Execute and one Sync with a stale (or failing) statement in
// the middle. The messages after it are skipped exactly as the server
// skips them after any error: no answers to them reach the client, a
// checked statement among them never counts as run, and the Sync's
// ReadyForQuery ends the cycle.
func TestTranscriptPipelineStale(t *testing.T) {
	// Each statement is named, as a driver's statement cache names them;
	// the portal is the unnamed one.
	upd := func(id string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{parse("s"+id, updParam), bind("", "s"+id, "x", id, "1"), execute("")}
	}
	const del = "DELETE FROM address WHERE id = $1 AND version = $2" // checked, and sent as it is
	raise := []any{&pgproto3.Close{ObjectType: 'S', Name: raiseName}, &pgproto3.Close{ObjectType: 'P', Name: raiseName},
		staleParse(raiseName, "1", "2"), bind(raiseName, raiseName), &pgproto3.Close{ObjectType: 'S', Name: raiseName}, execute(raiseName)}
	detail := "expected version 1, current version 2 (id=2)"
	first := []step{
		serverGets(parse("s1", updParamSent), bind("", "s1", "x", "1", "1"), execute(""), flushMsg),
		server(parseComplete, bindComplete, cc("UPDATE 1")),
		clientGets(parseComplete, bindComplete, cc("UPDATE 1")),
		serverGets(parse("s2", updParamSent), bind("", "s2", "x", "2", "1"), execute(""), flushMsg),
	}
	checkedThird := []pgproto3.FrontendMessage{parse("s3", del), bind("", "s3", "3", "1"), execute("")}
	plainThird := []pgproto3.FrontendMessage{parse("s3", "SELECT 1"), bind("", "s3"), execute("")}
	runTranscripts(t, map[string]transcript{
		// The third Execute is checked too: it goes out held behind the
		// raise, and the server's skipping resolves it as never run.
		"stale, checked statement behind": join([]step{client(upd("1"), upd("2"), checkedThird, syncMsg)}, first, []step{
			server(parseComplete, bindComplete, cc("UPDATE 0")),
			clientGets(parseComplete, bindComplete),
			serverGets(raise, parse("s3", del), bind("", "s3", "3", "1"), execute(""), flushMsg),
			server(closeComplete, closeComplete, parseComplete, bindComplete, closeComplete, raised(staleError(detail))),
			clientGets(relayed(staleError(detail))),
			serverGets(syncMsg),
			server(ready('I')),
			clientGets(ready('I')),
		}),
		"stale, plain statement behind": join([]step{client(upd("1"), upd("2"), plainThird, syncMsg)}, first, []step{
			server(parseComplete, bindComplete, cc("UPDATE 0")),
			clientGets(parseComplete, bindComplete),
			serverGets(raise, parse("s3", "SELECT 1"), bind("", "s3"), execute(""), syncMsg),
			server(closeComplete, closeComplete, parseComplete, bindComplete, closeComplete, raised(staleError(detail)), ready('I')),
			clientGets(relayed(staleError(detail)), ready('I')),
		}),
		// The server's error arrives before the frames behind are read:
		// nothing is in flight any more, so the third Execute goes with
		// its Sync, and its check is over as soon as it is sent, since
		// the server skips it.
		"server error, checked statement behind": join([]step{client(upd("1"), upd("2"), checkedThird, syncMsg)}, first, []step{
			server(parseComplete, bindComplete, checkViolation),
			clientGets(parseComplete, bindComplete, checkViolation),
			serverGets(parse("s3", del), bind("", "s3", "3", "1"), execute(""), syncMsg),
			server(ready('I')),
			clientGets(ready('I')),
		}),
		// The client's frames behind arrive after the stale error: the
		// server skips them, and so does the relay's bookkeeping (the
		// check of the third Execute is over as soon as it is sent).
		"stale, frames behind arrive after the error": together([]step{client(upd("1"), upd("2"))}, first, []step{
			server(parseComplete, bindComplete, cc("UPDATE 0")),
			clientGets(parseComplete, bindComplete),
			serverGets(raise),
			server(closeComplete, closeComplete, parseComplete, bindComplete, closeComplete, raised(staleError(detail))),
			clientGets(relayed(staleError(detail))),
			client(checkedThird, syncMsg),
			serverGets(parse("s3", del), bind("", "s3", "3", "1"), execute(""), syncMsg),
			server(ready('I')),
			clientGets(ready('I')),
		}),
	})
}

// TestTranscriptRequired: a guarded statement without a version predicate
// on a table in required mode is refused with VL428, raised by the server
// in its place, in each protocol.
func TestTranscriptRequired(t *testing.T) {
	runTranscripts(t, map[string]transcript{
		"simple": {
			client(query("UPDATE strict SET a = 1 WHERE id = 1")),
			serverGets(requiredQuery()),
			server(raised(requiredError), ready('I')),
			clientGets(relayed(requiredError), ready('I')),
		},
		"multi-statement": {
			client(query("SELECT 1; UPDATE strict SET a = 1 WHERE id = 1")),
			serverGets(parse("", "SELECT 1"), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""),
				requiredParse(""), bind("", ""), execute(""), syncMsg),
			server(parseComplete, bindComplete, selectRows("1"), parseComplete, bindComplete, raised(requiredError), ready('I')),
			clientGets(selectRows("1"), relayed(requiredError), ready('I')),
		},
		// The refused Execute is replaced by the proxy's own statement and
		// portal; their CloseComplete, ParseComplete and BindComplete are
		// not the client's.
		"extended": {
			client(parse("", "UPDATE strict SET a = $1 WHERE id = $2"), bind("", "", "1", "1"), execute(""), syncMsg),
			serverGets(parse("", "UPDATE strict SET a = $1, version = version + 1 WHERE id = $2"), bind("", "", "1", "1"),
				&pgproto3.Close{ObjectType: 'S', Name: raiseName}, &pgproto3.Close{ObjectType: 'P', Name: raiseName},
				requiredParse(raiseName), bind(raiseName, raiseName), &pgproto3.Close{ObjectType: 'S', Name: raiseName}, execute(raiseName), syncMsg),
			server(parseComplete, bindComplete, closeComplete, closeComplete, parseComplete, bindComplete, closeComplete, raised(requiredError), ready('I')),
			clientGets(parseComplete, bindComplete, relayed(requiredError), ready('I')),
		},
	})
}

// TestTranscriptProxyAnswersDropped: the answers to the proxy's own
// requests (raiseInPipeline's Close, Parse and Bind) never reach the
// client, however the server's frames are cut, while the client's own
// ParseComplete and BindComplete, interleaved with them, do.
func TestTranscriptProxyAnswersDropped(t *testing.T) {
	runTranscripts(t, map[string]transcript{
		"one answer at a time": {
			client(parse("s", "UPDATE strict SET a = $1 WHERE id = $2"), bind("p", "s", "1", "1"), execute("p"), syncMsg),
			serverGets(parse("s", "UPDATE strict SET a = $1, version = version + 1 WHERE id = $2"), bind("p", "s", "1", "1"),
				&pgproto3.Close{ObjectType: 'S', Name: raiseName}, &pgproto3.Close{ObjectType: 'P', Name: raiseName},
				requiredParse(raiseName), bind(raiseName, raiseName), &pgproto3.Close{ObjectType: 'S', Name: raiseName}, execute(raiseName), syncMsg),
			server(parseComplete),
			clientGets(parseComplete),
			server(bindComplete),
			clientGets(bindComplete),
			server(closeComplete),
			clientGets(),
			server(closeComplete, parseComplete),
			clientGets(),
			server(bindComplete),
			clientGets(),
			server(closeComplete),
			clientGets(),
			server(raised(requiredError)),
			clientGets(relayed(requiredError)),
			server(ready('I')),
			clientGets(ready('I')),
		},
	})
}

// TestTranscriptDescribe: Describe of a guarded statement or of a portal
// bound to one is answered by the server, and the answers are relayed
// untouched, in front of a checked Execute's outcome.
func TestTranscriptDescribe(t *testing.T) {
	const ret, retSent = updParam + " RETURNING version", updParamSent + " RETURNING version"
	params := &pgproto3.ParameterDescription{ParameterOIDs: []uint32{25, 23, 23}}
	versionRow := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("version"), TableOID: 16386, TableAttributeNumber: 2, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	prepared := []step{
		client(parse("d", ret), &pgproto3.Describe{ObjectType: 'S', Name: "d"}, syncMsg),
		serverGets(parse("d", retSent), &pgproto3.Describe{ObjectType: 'S', Name: "d"}, syncMsg),
		server(parseComplete, params, versionRow, ready('I')),
		clientGets(parseComplete, params, versionRow, ready('I')),
		client(bind("p", "d", "x", "7", "2"), &pgproto3.Describe{ObjectType: 'P', Name: "p"}, execute("p"), syncMsg),
		serverGets(bind("p", "d", "x", "7", "2"), &pgproto3.Describe{ObjectType: 'P', Name: "p"}, execute("p"), syncMsg),
	}
	detail := "expected version 2, current version 3 (id=7)"
	runTranscripts(t, map[string]transcript{
		"statement without result": {
			client(parse("u", updParam), &pgproto3.Describe{ObjectType: 'S', Name: "u"}, syncMsg),
			serverGets(parse("u", updParamSent), &pgproto3.Describe{ObjectType: 'S', Name: "u"}, syncMsg),
			server(parseComplete, params, noData, ready('I')),
			clientGets(parseComplete, params, noData, ready('I')),
		},
		"statement and portal, rows": together(prepared, []step{
			server(bindComplete, versionRow, &pgproto3.DataRow{Values: [][]byte{[]byte("3")}}, cc("UPDATE 1"), ready('I')),
			clientGets(bindComplete, versionRow, &pgproto3.DataRow{Values: [][]byte{[]byte("3")}}, cc("UPDATE 1"), ready('I')),
		}),
		"statement and portal, stale": together(prepared, []step{
			server(bindComplete, versionRow, cc("UPDATE 0"), ready('I')),
			clientGets(bindComplete, versionRow),
			serverGets(staleQuery("2", "7")),
			server(raised(staleError(detail)), ready('I')),
			clientGets(relayed(staleError(detail)), ready('I')),
		}),
	})
}

// TestTranscriptHeldClient: from the moment a checked statement is sent
// until its outcome is known, the client's later frames, whether they came
// with it or after it, are not forwarded.
func TestTranscriptHeldClient(t *testing.T) {
	plain := []pgproto3.FrontendMessage{parse("", "SELECT 1"), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""), syncMsg}
	plainAnswer := []any{parseComplete, bindComplete, selectRows("1"), ready('I')}
	runTranscripts(t, map[string]transcript{
		// checkSimple: held until the ReadyForQuery, not just the
		// CommandComplete.
		"simple query behind a checked one": {
			client(query(updSQL)),
			serverGets(query(updSent)),
			client(query("SELECT 1")),
			serverGets(),
			server(cc("UPDATE 1")),
			clientGets(cc("UPDATE 1")),
			serverGets(),
			server(ready('I')),
			clientGets(ready('I')),
			serverGets(query("SELECT 1")),
			server(selectRows("1"), ready('I')),
			clientGets(selectRows("1"), ready('I')),
		},
		// checkHeld: held until the CommandComplete.
		"extended frames behind a held Execute": {
			client(parse("u", updParam), bind("p", "u", "x", "7", "2"), execute("p"), plain),
			serverGets(parse("u", updParamSent), bind("p", "u", "x", "7", "2"), execute("p"), flushMsg),
			server(parseComplete, bindComplete),
			clientGets(parseComplete, bindComplete),
			serverGets(),
			server(cc("UPDATE 1")),
			clientGets(cc("UPDATE 1")),
			serverGets(parse("", "SELECT 1"), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""), syncMsg),
			server(plainAnswer),
			clientGets(plainAnswer),
		},
		// checkPipeline: the client's next query waits for each checked
		// statement of the translated query in turn; once the last
		// outcome is known it follows the translation's Sync.
		"query behind a translated multi-statement query": {
			client(query(updSQL+"; "+strings.ReplaceAll(updSQL, "7", "8")), query("SELECT 2")),
			serverGets(parse("", updSent), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""), flushMsg),
			server(parseComplete, bindComplete, noData, cc("UPDATE 1")),
			clientGets(cc("UPDATE 1")),
			serverGets(parse("", strings.ReplaceAll(updSent, "7", "8")), bind("", ""), &pgproto3.Describe{ObjectType: 'P'}, execute(""), flushMsg),
			server(parseComplete, bindComplete, noData, cc("UPDATE 1")),
			clientGets(cc("UPDATE 1")),
			serverGets(syncMsg, query("SELECT 2")),
			server(ready('I'), selectRows("2"), ready('I')),
			clientGets(ready('I'), selectRows("2"), ready('I')),
		},
	})
}

// TestTranscriptRebindUnguarded: the unnamed statement, once a guarded
// UPDATE, is replaced by an unguarded statement and bound again to the
// unnamed portal, as a driver that does not cache statements does for
// every query (pgx's QueryExecModeExec, for one). The new portal runs
// nothing guarded: zero rows is its answer, not a conflict.
func TestTranscriptRebindUnguarded(t *testing.T) {
	runTranscripts(t, map[string]transcript{
		"unnamed statement and portal": together([]step{
			client(parse("", updParam), bind("", "", "x", "7", "2"), execute(""), syncMsg),
			serverGets(parse("", updParamSent), bind("", "", "x", "7", "2"), execute(""), syncMsg),
			server(parseComplete, bindComplete, cc("UPDATE 1"), ready('I')),
			clientGets(parseComplete, bindComplete, cc("UPDATE 1"), ready('I')),
			client(parse("", "DELETE FROM audit WHERE id = $1"), bind("", "", "7"), execute(""), syncMsg),
			serverGets(parse("", "DELETE FROM audit WHERE id = $1"), bind("", "", "7"), execute(""), syncMsg),
			server(parseComplete, bindComplete, cc("DELETE 0"), ready('I')),
			clientGets(parseComplete, bindComplete, cc("DELETE 0"), ready('I')),
		}),
		"named statement, named portal": together([]step{
			client(parse("u", updParam), bind("p", "u", "x", "7", "2"), execute("p"), syncMsg),
			serverGets(parse("u", updParamSent), bind("p", "u", "x", "7", "2"), execute("p"), syncMsg),
			server(parseComplete, bindComplete, cc("UPDATE 1"), ready('I')),
			clientGets(parseComplete, bindComplete, cc("UPDATE 1"), ready('I')),
			client(&pgproto3.Close{ObjectType: 'S', Name: "u"}, parse("a", "DELETE FROM audit WHERE id = $1"), bind("p", "a", "7"), execute("p"), syncMsg),
			serverGets(&pgproto3.Close{ObjectType: 'S', Name: "u"}, parse("a", "DELETE FROM audit WHERE id = $1"), bind("p", "a", "7"), execute("p"), syncMsg),
			server(closeComplete, parseComplete, bindComplete, cc("DELETE 0"), ready('I')),
			clientGets(closeComplete, parseComplete, bindComplete, cc("DELETE 0"), ready('I')),
		}),
	})
}
