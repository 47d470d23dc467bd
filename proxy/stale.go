package proxy

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// staleDetail is what the proxy knows at run time about a checked statement:
// the expected version and the key values, as SQL literal text.
type staleDetail struct {
	expected      string
	expectedKnown bool // false: expected is an expression's text, not a value
	keys          []keyLiteral
}

type keyLiteral struct {
	column string
	value  string
}

// resolveDetail turns the plan's value sources into literal text, taking
// parameters from bound values (text or binary format).
func resolveDetail(st *rewrite.Statement, arg func(n int) (string, bool)) staleDetail {
	var d staleDetail
	switch v := st.Expected; v.Kind {
	case rewrite.ValueLiteral:
		d.expected, d.expectedKnown = v.Literal, true
	case rewrite.ValueParam:
		d.expected, d.expectedKnown = arg(v.Param)
		if !d.expectedKnown {
			d.expected = "$" + strconv.Itoa(v.Param)
		}
	case rewrite.ValueExpr:
		d.expected = v.Expr
	}
	for _, kv := range st.Keys {
		var s string
		ok := false
		switch kv.Value.Kind {
		case rewrite.ValueLiteral:
			s, ok = kv.Value.Literal, true
		case rewrite.ValueParam:
			s, ok = arg(kv.Value.Param)
		}
		if !ok {
			return staleDetail{expected: d.expected, expectedKnown: d.expectedKnown}
		}
		d.keys = append(d.keys, keyLiteral{column: kv.Column, value: s})
	}
	return d
}

// decodeParam renders a bound parameter as text. Binary values are decoded
// for the types a version or key is likely to have; others are unknown.
func decodeParam(val []byte, binaryFormat bool, oid uint32) (string, bool) {
	if val == nil {
		return "NULL", false
	}
	if !binaryFormat {
		return string(val), true
	}
	switch oid {
	case pgtype.BoolOID, pgtype.TextOID, pgtype.VarcharOID, pgtype.UnknownOID: // not a likely key, but text is text
		if oid != pgtype.BoolOID {
			return string(val), true
		}
	case pgtype.UUIDOID:
		if len(val) == 16 {
			h := hex.EncodeToString(val)
			return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], true
		}
	case pgtype.TimestampOID, pgtype.TimestamptzOID: // microseconds since 2000-01-01
		if len(val) == 8 {
			us := int64(binary.BigEndian.Uint64(val))
			t := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(us) * time.Microsecond)
			return t.Format("2006-01-02 15:04:05.999999Z07:00"), true
		}
	case pgtype.XIDOID:
		if len(val) == 4 {
			return strconv.FormatUint(uint64(binary.BigEndian.Uint32(val)), 10), true
		}
	}
	switch len(val) { // integer family, by width
	case 2:
		return strconv.Itoa(int(int16(binary.BigEndian.Uint16(val)))), true
	case 4:
		return strconv.Itoa(int(int32(binary.BigEndian.Uint32(val)))), true
	case 8:
		return strconv.FormatInt(int64(binary.BigEndian.Uint64(val)), 10), true
	}
	return "", false
}

// quoteLiteral and quoteIdent are the rewriter's quoters (one for the
// whole program).
var (
	quoteLiteral = rewrite.QuoteLiteral
	quoteIdent   = rewrite.QuoteIdent
)

// doBlock wraps a PL/pgSQL body in a DO statement with a dollar-quote tag
// that does not occur in the body.
func doBlock(body string) string {
	tag := "$pgoptimist$"
	for i := 1; strings.Contains(body, tag); i++ {
		tag = "$pgoptimist" + strconv.Itoa(i) + "$"
	}
	return "DO " + tag + body + tag
}

// raiseUsing renders the USING clause of a RAISE for an error of the proxy
// about a policy's table; detail is an SQL expression.
func raiseUsing(p *rewrite.Policy, code, message, detailExpr, hint string) string {
	var b strings.Builder
	b.WriteString("RAISE EXCEPTION USING ERRCODE = ")
	b.WriteString(quoteLiteral(code))
	b.WriteString(", MESSAGE = ")
	b.WriteString(quoteLiteral(message))
	if detailExpr != "" {
		b.WriteString(", DETAIL = ")
		b.WriteString(detailExpr)
	}
	if hint != "" {
		b.WriteString(", HINT = ")
		b.WriteString(quoteLiteral(hint))
	}
	b.WriteString(", SCHEMA = ")
	b.WriteString(quoteLiteral(p.Schema))
	b.WriteString(", TABLE = ")
	b.WriteString(quoteLiteral(p.Table))
	b.WriteString(", COLUMN = ")
	b.WriteString(quoteLiteral(p.Column))
	b.WriteString(";")
	return b.String()
}

// staleSQL is the statement that makes the server itself raise the stale
// record error, so the server's own state machine fails the transaction,
// skips the rest of a pipeline and reports the right ReadyForQuery status.
// When every key value is known it looks the row up to report its current
// version (or that it is gone).
func staleSQL(p *rewrite.Policy, d staleDetail, code string) string {
	msg := fmt.Sprintf("stale record: %s was changed by another transaction", p.QualifiedName())
	// Values from binary parameters may not be valid text; the error must
	// still be raised, so they are shown repaired and not looked up.
	d.expected = strings.ToValidUTF8(d.expected, "\uFFFD")
	for _, k := range d.keys {
		if !utf8.ValidString(k.value) {
			d.keys = nil
			break
		}
	}
	const hint = "re-read the row and retry"
	expected := "expected version " + d.expected
	if len(d.keys) == 0 {
		return doBlock("BEGIN " + raiseUsing(p, code, msg, quoteLiteral(expected), hint) + " END")
	}
	keyText := make([]string, len(d.keys))
	where := make([]string, len(d.keys))
	for i, k := range d.keys {
		keyText[i] = k.column + "=" + k.value
		where[i] = quoteIdent(k.column) + " = " + quoteLiteral(k.value)
	}
	keys := " (" + strings.Join(keyText, ", ") + ")"
	var b strings.Builder
	b.WriteString("DECLARE cur text; lookup int := 0; BEGIN BEGIN SELECT ")
	b.WriteString(quoteIdent(p.Column))
	b.WriteString("::text INTO cur FROM ")
	b.WriteString(quoteIdent(p.Schema) + "." + quoteIdent(p.Table))
	b.WriteString(" WHERE ")
	b.WriteString(strings.Join(where, " AND "))
	// A lookup that fails (permissions, a key value of the wrong type) must
	// not replace the stale error with its own: lookup stays 0.
	b.WriteString("; lookup := CASE WHEN FOUND THEN 1 ELSE 2 END; EXCEPTION WHEN OTHERS THEN lookup := 0; END; IF lookup = 0 THEN ")
	b.WriteString(raiseUsing(p, code, msg, quoteLiteral(expected+keys), hint))
	b.WriteString(" ELSIF lookup = 2 THEN ")
	b.WriteString(raiseUsing(p, code, msg, quoteLiteral(expected+", row no longer exists"+keys), hint))
	b.WriteString(" END IF; ")
	b.WriteString(raiseUsing(p, code, msg, quoteLiteral(expected+", current version ")+" || coalesce(cur, 'NULL') || "+quoteLiteral(keys), hint))
	b.WriteString(" END")
	return doBlock(b.String())
}

// requiredSQL raises the "version required" refusal of ModeRequired.
func requiredSQL(p *rewrite.Policy, code string) string {
	msg := fmt.Sprintf("version required: %s is guarded in required mode and this statement carries no version predicate", p.QualifiedName())
	detail := quoteLiteral(fmt.Sprintf("add \"AND %s = <the version you read>\" to the statement, or read the row first", p.Column))
	return doBlock("BEGIN " + raiseUsing(p, code, msg, detail, "") + " END")
}

// rejectSQL raises the refusal of a guarded statement the parser could not
// handle (guard.on_parse_error: reject).
func rejectSQL(code, message string) string {
	return doBlock("BEGIN RAISE EXCEPTION USING ERRCODE = " + quoteLiteral(code) + ", MESSAGE = " + quoteLiteral(message) + "; END")
}
