package rewrite

import "strings"

// SavepointOp is a savepoint command a simple query holds on its own.
type SavepointOp uint8

const (
	SavepointNone       SavepointOp = iota // not a savepoint command (or not one alone)
	SavepointSet                           // SAVEPOINT name
	SavepointRollbackTo                    // ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
	SavepointRelease                       // RELEASE [SAVEPOINT] name
)

// Savepoint reads a text that is one savepoint command and nothing else,
// with the savepoint's name as stored (unquoted names folded). It reads
// words only, without the parser: such commands never name a guarded
// table, so they do not reach it, and a session's tracked versions follow
// them. Anything else (several statements, comments) is SavepointNone.
func Savepoint(sql string) (SavepointOp, string) {
	sql = strings.TrimSpace(sql)
	if len(sql) < 8 {
		return SavepointNone, ""
	}
	switch sql[0] {
	case 's', 'S', 'r', 'R':
	default:
		return SavepointNone, ""
	}
	sql = strings.TrimSpace(strings.TrimSuffix(sql, ";"))
	if strings.ContainsAny(sql, ";-/") {
		return SavepointNone, ""
	}
	w := strings.Fields(sql)
	word := func(i int, s string) bool { return i < len(w) && strings.EqualFold(w[i], s) }
	name := func(i int) string {
		if i != len(w)-1 {
			return ""
		}
		// Copied: sql may be the caller's buffer, reused after this call.
		if n := w[i]; len(n) > 1 && n[0] == '"' && n[len(n)-1] == '"' {
			return strings.Clone(strings.ReplaceAll(n[1:len(n)-1], `""`, `"`))
		}
		return strings.Clone(strings.ToLower(w[i]))
	}
	switch {
	case word(0, "savepoint"):
		if n := name(1); n != "" {
			return SavepointSet, n
		}
	case word(0, "rollback"):
		i := 1
		if word(i, "work") || word(i, "transaction") {
			i++
		}
		if !word(i, "to") {
			return SavepointNone, ""
		}
		i++
		if word(i, "savepoint") {
			i++
		}
		return SavepointRollbackTo, name(i)
	case word(0, "release"):
		i := 1
		if word(i, "savepoint") {
			i++
		}
		if n := name(i); n != "" {
			return SavepointRelease, n
		}
	}
	return SavepointNone, ""
}
