package rewrite

import (
	"slices"
	"strings"
)

// Name resolution as the server does it. A session's search_path is not
// enough to say which table an unqualified name means: an earlier schema may
// hold a table of the same name that is not guarded, a temporary table may
// shadow it, "$user" depends on the role. So the proxy asks the server what
// each guarded table's unqualified name resolves to in the session
// (pg_catalog.to_regclass) and hands the answer to Plan as an exact path.

// exactMark starts a search path made by ExactPath. Identifiers cannot hold
// a NUL byte, so no real search_path looks like it.
const exactMark = "\x00"

// ExactPath encodes, as Plan's searchPath, what the server resolves each
// unqualified guarded table name to in a session: names maps a table name
// (as stored: unquoted names folded) to the schema of the guarded table it
// reaches, or to "" when it reaches another relation or none. A name absent
// from names resolves to nothing. The encoding is canonical, so sessions that
// resolve alike share cached plans.
func ExactPath(names map[string]string) string {
	keys := make([]string, 0, len(names))
	for k := range names {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(exactMark)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0x01)
		b.WriteString(names[k])
		b.WriteByte(0)
	}
	return b.String()
}

// exactEntries splits an ExactPath into the planner's path: exactMark,
// then one "name\x01schema" entry per name. ok is false for an ordinary
// search_path.
func exactEntries(sp string) ([]string, bool) {
	if !strings.HasPrefix(sp, exactMark) {
		return nil, false
	}
	out := []string{exactMark}
	for _, e := range strings.Split(sp[len(exactMark):], "\x00") {
		if e != "" {
			out = append(out, e)
		}
	}
	return out, true
}

// resolveExact resolves an unqualified name under an exact path.
func resolveExact(path []string, relname string, cands []*Policy) *Policy {
	for _, e := range path[1:] {
		name, schema, _ := strings.Cut(e, "\x01")
		if name != relname {
			continue
		}
		for _, p := range cands {
			if p.Schema == schema {
				return p
			}
		}
		return nil
	}
	return nil
}

// MayChangeResolution reports whether running sql could change what the
// session's unqualified table names resolve to: it may set or reset
// search_path (SET, SET LOCAL, SET SCHEMA, RESET, RESET ALL, set_config),
// change the role behind "$user" (SET ROLE, SET SESSION AUTHORIZATION),
// discard session state, undo such a change (ROLLBACK, ROLLBACK TO
// SAVEPOINT, ABORT), or create, drop, rename or move a relation or schema
// (CREATE, DROP, ALTER, IMPORT FOREIGN SCHEMA). It looks at
// words only, without parsing: a false positive costs one question to the
// server, a false negative would let the guard plan under a stale
// resolution, so it errs towards true. Words inside string literals and
// comments count too. Not seen: SELECT ... INTO a new table that shadows a
// guarded one ("into" is in every INSERT), and functions that change
// search_path with set_config from inside (a function's own SET clause is
// undone when it returns, so that one does not matter).
func MayChangeResolution(sql string) bool {
	for i := 0; i < len(sql); {
		c := sql[i]
		if !isIdentStart(c) {
			i++
			continue
		}
		if lc := c | 0x20; lc >= 'a' && lc <= 'z' {
			for _, w := range resolutionWords[lc-'a'] {
				if hasWordFold(sql, i, w) {
					return true
				}
			}
		}
		for i++; i < len(sql) && isIdentCont(sql[i]); i++ {
		}
	}
	return false
}

// resolutionWords are the words of MayChangeResolution, lower case, by
// first letter. A word matches at the start of an identifier (set_config
// matches in pg_catalog.set_config, and search_path in any spelling of
// the GUC).
var resolutionWords = func() (t [26][]string) {
	for _, w := range []string{
		"search_path", "set_config", "schema", "role", "authorization",
		"reset", "discard", "rollback", "abort",
		"create", "drop", "alter", "import",
	} {
		t[w[0]-'a'] = append(t[w[0]-'a'], w)
	}
	return t
}()

// hasWordFold reports whether sql has the lower-case word w at i, ignoring
// ASCII case, not followed by more of an identifier (for words that are
// whole keywords) — search_path and set_config are matched as prefixes so
// that quoted and qualified spellings count.
func hasWordFold(sql string, i int, w string) bool {
	if i+len(w) > len(sql) {
		return false
	}
	for j := 0; j < len(w); j++ {
		c := sql[i+j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[j] {
			return false
		}
	}
	if w == "search_path" || w == "set_config" {
		return true
	}
	return i+len(w) == len(sql) || !isIdentCont(sql[i+len(w)])
}
