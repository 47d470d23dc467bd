package rewrite

import pg "github.com/pganalyze/pg_query_go/v5"

// DiscardsAll reports whether sql holds a DISCARD ALL, which deallocates
// every prepared statement of the session. It parses only texts that
// mention the word: forgetting a guarded prepared statement that still
// exists would let its later executions go unchecked, so a guess will not
// do.
func DiscardsAll(sql string) bool {
	if !hasWordAnywhere(sql, "discard") {
		return false
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return false // the server refuses it too: nothing is discarded
	}
	for _, raw := range tree.Stmts {
		if d := raw.Stmt.GetDiscardStmt(); d != nil && d.Target == pg.DiscardMode_DISCARD_ALL {
			return true
		}
	}
	return false
}

// hasWordAnywhere reports whether the lower-case word w starts an
// identifier-like word of sql, ignoring ASCII case.
func hasWordAnywhere(sql, w string) bool {
	for i := 0; i < len(sql); {
		if !isIdentStart(sql[i]) {
			i++
			continue
		}
		if hasWordFold(sql, i, w) {
			return true
		}
		for i++; i < len(sql) && isIdentCont(sql[i]); i++ {
		}
	}
	return false
}
