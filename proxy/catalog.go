package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// Catalog discovery: what the server says about each configured table (its
// OID, its version column's type, its primary key, statement-level triggers
// and rules), asked once per database and configuration through the first
// session that needs it, and shared by every session of that database.
//
// Because the answer is shared, nothing of the asking session may shape it:
// every name in the query is schema-qualified (relations, functions, types,
// and operators through OPERATOR(pg_catalog.=)), so the session's
// search_path, a pg_temp relation or a user's own operator cannot stand in
// for the catalog's; types are reported as OIDs, not through format_type,
// whose spelling depends on the search_path; and the query runs in a
// read-only transaction with statement_timeout off, so a session's setting
// cannot make it fail half-way. If it fails anyway, the session is refused
// (catalogError), never run unguarded.

// catalogRow is what discovery learns of one configured table.
type catalogRow struct {
	found       bool
	oid         uint32
	colType     string // the version column's type (typeName); "" when it does not exist
	pkey        []string
	sideEffects bool // statement-level triggers or rules
}

// catalogSQL is the discovery query for the configured tables.
func catalogSQL(cfg *config.Config) string {
	var values []string
	for i, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		values = append(values, fmt.Sprintf("(%d, %s::pg_catalog.text, %s::pg_catalog.text, %s::pg_catalog.text)", i, quoteLiteral(schema), quoteLiteral(table), quoteLiteral(t.VersionColumn())))
	}
	return `BEGIN READ ONLY; SET LOCAL statement_timeout = 0; SET LOCAL search_path = pg_catalog, pg_temp;
SELECT p.i, c.oid IS NOT NULL, c.oid,
  CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'd' THEN ty.typbasetype ELSE a.atttypid END,
  COALESCE((SELECT pg_catalog.string_agg(att.attname::pg_catalog.text, pg_catalog.chr(31) ORDER BY k.n)
    FROM pg_catalog.pg_index ix CROSS JOIN LATERAL pg_catalog.unnest(ix.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_catalog.pg_attribute att ON att.attrelid OPERATOR(pg_catalog.=) ix.indrelid AND att.attnum OPERATOR(pg_catalog.=) k.attnum
    WHERE ix.indrelid OPERATOR(pg_catalog.=) c.oid AND ix.indisprimary), ''),
  COALESCE(c.relhasrules OR EXISTS (SELECT FROM pg_catalog.pg_trigger tg
    WHERE tg.tgrelid OPERATOR(pg_catalog.=) c.oid AND NOT tg.tgisinternal
      AND (tg.tgtype OPERATOR(pg_catalog.&) 1::pg_catalog.int2) OPERATOR(pg_catalog.=) 0::pg_catalog.int2), false)
FROM (VALUES ` + strings.Join(values, ", ") + `) AS p(i, s, t, col)
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) p.s::pg_catalog.name
LEFT JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid AND c.relname OPERATOR(pg_catalog.=) p.t::pg_catalog.name
  AND c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'p', 'v', 'f']::pg_catalog."char"[])
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attname OPERATOR(pg_catalog.=) p.col::pg_catalog.name AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid
ORDER BY p.i;
COMMIT`
}

// catalogCols is the number of columns of a catalogSQL row.
const catalogCols = 6

// parseCatalogRow decodes one DataRow of catalogSQL into rows.
func parseCatalogRow(values [][]byte, rows []catalogRow) error {
	if len(values) != catalogCols {
		return errors.New("unexpected catalog row")
	}
	i, err := strconv.Atoi(string(values[0]))
	if err != nil || i < 0 || i >= len(rows) {
		return errors.New("unexpected catalog row index")
	}
	r := catalogRow{found: string(values[1]) == "t"}
	if values[2] != nil {
		oid, err := strconv.ParseUint(string(values[2]), 10, 32)
		if err != nil {
			return errors.New("unexpected catalog table OID")
		}
		r.oid = uint32(oid)
	}
	if values[3] != nil {
		oid, err := strconv.ParseUint(string(values[3]), 10, 32)
		if err != nil {
			return errors.New("unexpected catalog type OID")
		}
		r.colType = typeName(uint32(oid))
	}
	if k := string(values[4]); k != "" {
		r.pkey = strings.Split(k, "\x1f")
	}
	r.sideEffects = string(values[5]) == "t"
	rows[i] = r
	return nil
}

// typeName names the built-in types a version column may have, as the
// configuration spells them; others by OID (not supported).
func typeName(oid uint32) string {
	switch oid {
	case pgtype.Int2OID:
		return "smallint"
	case pgtype.Int4OID:
		return "integer"
	case pgtype.Int8OID:
		return "bigint"
	case pgtype.TimestampOID:
		return "timestamp"
	case pgtype.TimestamptzOID:
		return "timestamptz"
	case pgtype.UUIDOID:
		return "uuid"
	case pgtype.XIDOID:
		return "xid"
	}
	return "type oid " + strconv.FormatUint(uint64(oid), 10)
}

// catalogError is a failed discovery: the server's error, or a broken answer.
type catalogError struct{ err error }

func (e *catalogError) Error() string { return "catalog discovery: " + e.err.Error() }
func (e *catalogError) Unwrap() error { return e.err }

// discoverBlocking runs catalogSQL through a session's connection during
// startup, right after authentication and before the client has sent
// anything: the session is idle, so the query cannot disturb it, and the
// transaction it opens is closed before the client's first ReadyForQuery.
func discoverBlocking(s *session, cfg *config.Config) ([]catalogRow, error) {
	rows := make([]catalogRow, len(cfg.Tables))
	err := queryBlocking(s, catalogSQL(cfg), func(values [][]byte) error { return parseCatalogRow(values, rows) })
	if err != nil {
		return nil, &catalogError{err}
	}
	return rows, nil
}

// sqlstateQueryCanceled is statement_timeout's (and a cancel's) SQLSTATE.
const sqlstateQueryCanceled = "57014"

// queryBlocking runs the proxy's own simple query during startup and hands
// each DataRow to onRow. The query must leave the session idle. A statement
// cancelled by the session's own statement_timeout (a 1 ms one from the
// startup options can strike even a BEGIN) is tried again, a few times,
// after rolling back what it left open.
func queryBlocking(s *session, sql string, onRow func([][]byte) error) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var code string
		var status txStatus
		code, status, err = queryBlockingOnce(s, sql, onRow)
		if status != txIdle && err == nil {
			err = fmt.Errorf("transaction status %q after the proxy's own query", byte(status))
		}
		if code != sqlstateQueryCanceled {
			return err
		}
		if status != txIdle {
			if _, st, rerr := queryBlockingOnce(s, "ROLLBACK", nil); rerr != nil || st != txIdle {
				return err
			}
		}
	}
	return err
}

func queryBlockingOnce(s *session, sql string, onRow func([][]byte) error) (code string, status txStatus, err error) {
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	if _, err := s.sw.Write(b); err != nil {
		return "", txIdle, err
	}
	if err := s.sw.Flush(); err != nil {
		return "", txIdle, err
	}
	var qerr error
	for {
		msg, err := s.sr.next()
		if err != nil {
			return "", txIdle, fmt.Errorf("reading the answer: %w", err)
		}
		switch serverMsg(msg[0]) {
		case msgDataRow:
			if onRow == nil {
				continue
			}
			var dr pgproto3.DataRow
			if err := dr.Decode(frameBody(msg)); err != nil {
				return "", txIdle, err
			}
			if err := onRow(dr.Values); err != nil && qerr == nil {
				qerr = err
			}
		case msgErrorResponse:
			var er pgproto3.ErrorResponse
			_ = er.Decode(frameBody(msg))
			if code == "" {
				code = er.Code
				qerr = fmt.Errorf("%s (SQLSTATE %s)", er.Message, er.Code)
			}
		case msgReadyForQuery:
			return code, readyStatus(msg), qerr
		}
	}
}

// catalogFacts is what a database's discovery makes of the configuration.
type catalogFacts struct {
	policies    []rewrite.Policy
	oids        map[uint32]*rewrite.Policy // table OID → its policy
	sideEffects map[string]bool            // schema.table → statement-level triggers or rules
}

// buildFacts combines configured policies with what the catalog said.
// Tables or columns that do not exist, and unsupported types, are logged
// (once per configuration and database: the caller keeps the result) and
// left unguarded.
func buildFacts(cfg *config.Config, rows []catalogRow, database string, log *slog.Logger) catalogFacts {
	f := catalogFacts{oids: make(map[uint32]*rewrite.Policy), sideEffects: make(map[string]bool)}
	oidOf := make(map[string]uint32)
	for i, t := range cfg.Tables {
		schema, table := t.SchemaTable()
		r := rows[i]
		name := schema + "." + table
		if !r.found {
			log.Warn("guarded table does not exist: its statements are forwarded unguarded until the next reload", "table", name, "database", database, "key", fmt.Sprintf("tables[%d].name", i))
			continue
		}
		column := t.VersionColumn()
		if r.colType == "" && column != "xmin" {
			log.Warn("version column does not exist: the table's statements are forwarded unguarded until the next reload", "table", name, "column", column, "database", database, "key", fmt.Sprintf("tables[%d].column", i))
			continue
		}
		p, ok := PolicyFromConfig(t, r.colType, r.pkey)
		if !ok {
			log.Warn("version column type is not supported: the table's statements are forwarded unguarded", "table", name, "column", column, "type", r.colType, "database", database, "key", fmt.Sprintf("tables[%d].type", i))
			continue
		}
		f.policies = append(f.policies, p)
		oidOf[name] = r.oid
		if r.sideEffects {
			f.sideEffects[name] = true
		}
	}
	for i := range f.policies {
		p := &f.policies[i]
		f.oids[oidOf[p.QualifiedName()]] = p
	}
	return f
}
