package proxy

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestRowsAffected(t *testing.T) {
	for tag, want := range map[string]int64{
		"UPDATE 0": 0, "UPDATE 12": 12, "DELETE 1": 1, "INSERT 0 3": 3,
		"SELECT 5": 5, "BEGIN": -1, "": -1, "UPDATE": -1, "X1": -1,
	} {
		msg := frames(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
		if got := rowsAffected(msg); got != want {
			t.Errorf("rowsAffected(%q) = %d, want %d", tag, got, want)
		}
	}
}

func TestValidBind(t *testing.T) {
	good := frames(&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s", ParameterFormatCodes: []int16{1},
		Parameters: [][]byte{{0, 0, 0, 1}, nil, []byte("x")}, ResultFormatCodes: []int16{0, 1}})
	rest := good[5+2+2:] // after "p\0s\0"
	if !validBind(rest) {
		t.Fatal("a well-formed Bind was refused")
	}
	for name, b := range map[string][]byte{
		"negative length":   {0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfb, 0, 0},
		"length past end":   {0, 0, 0, 1, 0, 0, 0, 9, 1, 0, 0},
		"trailing garbage":  {0, 0, 0, 0, 0, 0, 7},
		"short":             {0},
		"negative formats":  {0xff, 0xff},
		"missing results":   {0, 0, 0, 0},
		"formats past end":  {0, 3, 0, 0},
		"no parameter list": {0, 0},
	} {
		if validBind(b) {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCleanError(t *testing.T) {
	in := frames(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "VL409", Message: "stale", Where: "PL/pgSQL function inline_code_block line 1 at RAISE", File: "pl_exec.c", Line: 3, Routine: "exec_stmt_raise", TableName: "address"})
	out := cleanError(in)
	var e pgproto3.ErrorResponse
	if err := e.Decode(out[5:]); err != nil {
		t.Fatal(err)
	}
	if e.Where != "" || e.File != "" || e.Line != 0 || e.Routine != "" {
		t.Errorf("context kept: %+v", e)
	}
	if e.Code != "VL409" || e.Message != "stale" || e.TableName != "address" {
		t.Errorf("fields lost: %+v", e)
	}
}

func TestStripChannelBinding(t *testing.T) {
	in := frames(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}})
	var a pgproto3.AuthenticationSASL
	if err := a.Decode(stripChannelBinding(in)[5:]); err != nil {
		t.Fatal(err)
	}
	if len(a.AuthMechanisms) != 1 || a.AuthMechanisms[0] != "SCRAM-SHA-256" {
		t.Fatalf("mechanisms = %v", a.AuthMechanisms)
	}
}

// TestStaleSimpleQuery runs the state machine through a stale single
// statement: the CommandComplete and ReadyForQuery of the zero-row update
// are withheld and the DO block is sent instead.
func TestStaleSimpleQuery(t *testing.T) {
	s := testSession(t)
	s.cin.append(frames(&pgproto3.Query{String: "UPDATE address SET state = 'x' WHERE id = 7 AND version = 2"}, &pgproto3.Query{String: "SELECT 1"})...)
	s.processClient()
	if !s.checks.holding() {
		t.Fatal("checked statement does not hold the client")
	}
	if bytes.Contains(s.sout.data(), []byte("SELECT 1")) {
		t.Fatal("a later query went out before the checked one finished")
	}
	if !bytes.Contains(s.sout.data(), []byte("version = version + 1")) {
		t.Fatalf("statement not rewritten: %q", s.sout.data())
	}
	s.sout.consume(s.sout.len())
	s.sin.append(frames(&pgproto3.CommandComplete{CommandTag: []byte("UPDATE 0")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	s.processServer()
	if s.cout.len() != 0 {
		t.Fatalf("zero-row result relayed: %q", s.cout.data())
	}
	sent := string(s.sout.data())
	if !bytes.HasPrefix(s.sout.data(), []byte{'Q'}) || !bytes.Contains(s.sout.data(), []byte("RAISE EXCEPTION USING ERRCODE = 'VL409'")) || !bytes.Contains(s.sout.data(), []byte(`WHERE id = '7'`)) {
		t.Fatalf("stale statement not sent: %q", sent)
	}
	if s.checks.holding() {
		t.Fatal("client still held")
	}
	s.processClient()
	if !bytes.Contains(s.sout.data(), []byte("SELECT 1")) {
		t.Fatal("held query not released")
	}
}
