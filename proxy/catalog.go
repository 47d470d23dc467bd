package proxy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Catalog discovery: what the server says about each configured table (its
// version column's type, its primary key, statement-level triggers and
// rules), asked once per database and configuration.

// catalogRow is what discovery learns of one configured table.
type catalogRow struct {
	found       bool
	colType     string // format_type of the version column; "" when it does not exist
	pkey        []string
	sideEffects bool // statement-level triggers or rules
}

// discover asks the server, through the session's connection and before the
// client has sent anything, for each configured table's version column type
// and primary key. It runs in the idle state right after authentication, so
// it cannot disturb the client's transaction state.
func (g *guardRegistry) discover(s *session, cfg *config.Config) (*rewrite.Rewriter, map[string]bool, bool, error) {
	var values []string
	for i, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		values = append(values, fmt.Sprintf("(%d, %s, %s, %s)", i, quoteLiteral(schema), quoteLiteral(table), quoteLiteral(t.VersionColumn())))
	}
	q := `SELECT p.i, c.oid IS NOT NULL, coalesce(format_type(a.atttypid, a.atttypmod), ''),
  coalesce((SELECT string_agg(att.attname, chr(31) ORDER BY k.n)
    FROM pg_index ix CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute att ON att.attrelid = ix.indrelid AND att.attnum = k.attnum
    WHERE ix.indrelid = c.oid AND ix.indisprimary), ''),
  coalesce(c.relhasrules OR EXISTS (SELECT FROM pg_trigger tg
    WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal AND tg.tgtype & 1 = 0), false)
FROM (VALUES ` + strings.Join(values, ", ") + `) AS p(i, s, t, col)
LEFT JOIN pg_namespace n ON n.nspname = p.s
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.t AND c.relkind IN ('r', 'p', 'v', 'f')
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = p.col AND NOT a.attisdropped
ORDER BY p.i`
	b, _ := (&pgproto3.Query{String: q}).Encode(nil)
	if _, err := s.sw.Write(b); err != nil {
		return nil, nil, false, err
	}
	if err := s.sw.Flush(); err != nil {
		return nil, nil, false, err
	}
	rows := make([]catalogRow, len(cfg.Tables))
	var qerr error
	for {
		msg, err := s.sr.next()
		if err != nil {
			return nil, nil, false, fmt.Errorf("reading catalog: %w", err)
		}
		switch serverMsg(msg[0]) {
		case msgDataRow:
			var dr pgproto3.DataRow
			if err := dr.Decode(frameBody(msg)); err != nil || len(dr.Values) != 5 {
				return nil, nil, false, errors.New("unexpected catalog row")
			}
			var i int
			if _, err := fmt.Sscan(string(dr.Values[0]), &i); err != nil || i < 0 || i >= len(rows) {
				return nil, nil, false, errors.New("unexpected catalog row index")
			}
			rows[i] = catalogRow{found: string(dr.Values[1]) == "t", colType: string(dr.Values[2])}
			if k := string(dr.Values[3]); k != "" {
				rows[i].pkey = strings.Split(k, "\x1f")
			}
			rows[i].sideEffects = string(dr.Values[4]) == "t"
		case msgErrorResponse:
			var er pgproto3.ErrorResponse
			_ = er.Decode(frameBody(msg))
			qerr = fmt.Errorf("catalog query: %s (SQLSTATE %s)", er.Message, er.Code)
		case msgReadyForQuery:
			if qerr != nil {
				return nil, nil, false, qerr
			}
			policies, complete := g.policies(cfg, rows, s.database)
			if len(policies) == 0 {
				return nil, nil, complete, nil
			}
			sideEffects := make(map[string]bool)
			for i, t := range cfg.Tables {
				if rows[i].sideEffects {
					schema, table := t.SchemaTable()
					sideEffects[schema+"."+table] = true
				}
			}
			return rewrite.New(policies, rewrite.Options{MaxSQLBytes: cfg.Limits.MaxSQLBytes}), sideEffects, complete, nil
		}
	}
}

// policies combines configured policies with what the catalog said. Tables
// or columns that do not exist are logged and left unguarded.
func (g *guardRegistry) policies(cfg *config.Config, rows []catalogRow, database string) ([]rewrite.Policy, bool) {
	var out []rewrite.Policy
	complete := true
	for i, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		r := rows[i]
		name := schema + "." + table
		if !r.found {
			g.log.Warn("guarded table does not exist: its statements are forwarded unguarded", "table", name, "database", database, "key", fmt.Sprintf("tables[%d].name", i))
			complete = false
			continue
		}
		column := t.VersionColumn()
		if r.colType == "" {
			g.log.Warn("version column does not exist: the table's statements are forwarded unguarded", "table", name, "column", column, "database", database, "key", fmt.Sprintf("tables[%d].column", i))
			complete = false
			continue
		}
		p, ok := PolicyFromConfig(t, r.colType, r.pkey)
		if !ok {
			g.log.Warn("version column type is not supported: the table's statements are forwarded unguarded", "table", name, "column", column, "type", r.colType, "database", database)
			continue
		}
		out = append(out, p)
	}
	return out, complete
}
