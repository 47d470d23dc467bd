package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/proxy"
	"github.com/pgoptimist/pgoptimist/rewrite"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func checkCmd() *cobra.Command {
	var dsn, format string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that the configured tables are ready to be guarded (reads the catalog, changes nothing)",
		Long: `check connects to the database (the configuration's upstream unless --dsn
is given; user, password and database come from the usual PGUSER,
PGPASSWORD, PGDATABASE... environment variables) and reports for every
configured table: whether it exists; whether its version column exists with
a supported type, NOT NULL and a default; whether its key is found (and
unique, for the modes that track rows); the triggers and rules that change
how a stale error can be raised; and how the proxy resolves its unqualified
name. It prints the DDL that would fix what is missing, and never runs it.

Exit status: 0 when every table is ready, 1 when one is not, 2 on a
configuration or connection problem.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return &exitError{code: 2, err: fmt.Errorf("--format must be text or json (got %q)", format)}
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if len(cfg.Tables) == 0 {
				return &exitError{code: 2, err: errors.New("the configuration guards no tables (tables is empty)")}
			}
			ctx, cancel := context.WithTimeout(cmdContext(cmd), timeout)
			defer cancel()
			rep, err := runCheck(ctx, cfg, dsn)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			out := cmd.OutOrStdout()
			if format == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				rep.writeText(out, useColour(out))
			}
			if n := rep.notReady(); n > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d tables not ready", n, len(rep.Tables))}
			}
			return nil
		},
	}
	cmd.Flags().String("config", "", "read the configuration from `FILE` (YAML; default $"+config.ConfigEnv+")")
	cmd.Flags().StringVar(&dsn, "dsn", "", "connect to this database `URL` instead of the configuration's upstream (postgres://user@host:port/db?sslmode=...)")
	cmd.Flags().StringVar(&format, "format", "text", "output `FORMAT`: text or json")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up connecting and checking after `DURATION`")
	return cmd
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// Finding statuses: ok, warn (ready, but worth knowing), fail (not ready).
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "fail"
)

// finding is one thing check found about a table (or the database).
type finding struct {
	Check   string `json:"check"`  // table, column, key, triggers, rules, search_path, language
	Status  string `json:"status"` // ok, warn, fail
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"` // DDL that would fix a failure; never run
}

type tableReport struct {
	Table    string    `json:"table"` // as configured, normalised: public.address
	Key      string    `json:"config_key"`
	Mode     string    `json:"mode"`
	Ready    bool      `json:"ready"`
	Findings []finding `json:"findings"`
}

type checkReport struct {
	Server   string        `json:"server"` // host:port or socket, database and user
	Version  string        `json:"server_version"`
	Ready    bool          `json:"ready"`
	Database []finding     `json:"database"`
	Tables   []tableReport `json:"tables"`
}

// notReady counts the tables that are not ready; a database-wide failure
// (no PL/pgSQL) makes every table not ready.
func (r *checkReport) notReady() int {
	if slices.ContainsFunc(r.Database, func(f finding) bool { return f.Status == statusFail }) {
		return len(r.Tables)
	}
	n := 0
	for _, t := range r.Tables {
		if !t.Ready {
			n++
		}
	}
	return n
}

// connConfig is how check reaches the database: --dsn, or the upstream of
// the configuration with its TLS mode, the rest from libpq's environment.
func connConfig(cfg *config.Config, dsn string) (*pgx.ConnConfig, error) {
	if dsn != "" {
		cc, err := pgx.ParseConfig(dsn)
		if err != nil {
			return nil, fmt.Errorf("--dsn: %w", err)
		}
		return cc, nil
	}
	addr := cfg.Upstream.Address
	var host, port string
	if strings.HasPrefix(addr, "/") {
		host, port = addr, "5432"
		if i := strings.LastIndexByte(addr, ':'); i > 0 {
			if _, err := strconv.Atoi(addr[i+1:]); err == nil {
				host, port = addr[:i], addr[i+1:]
			}
		}
	} else {
		var err error
		if host, port, err = net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("upstream.address: %w", err)
		}
	}
	kv := []string{"host=" + connValue(host), "port=" + connValue(port), "sslmode=" + connValue(cfg.Upstream.TLS)}
	if cfg.Upstream.CAFile != "" {
		kv = append(kv, "sslrootcert="+connValue(cfg.Upstream.CAFile))
	}
	cc, err := pgx.ParseConfig(strings.Join(kv, " "))
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	return cc, nil
}

// connValue quotes a libpq keyword/value connection string value.
func connValue(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func runCheck(ctx context.Context, cfg *config.Config, dsn string) (*checkReport, error) {
	cc, err := connConfig(cfg, dsn)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", describeTarget(cc), err)
	}
	defer conn.Close(context.Background())
	// Every name below is pg_catalog-qualified; an empty search_path also
	// leaves the operators nothing to resolve to but pg_catalog's.
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.set_config('search_path', '', false)"); err != nil {
		return nil, fmt.Errorf("setting search_path: %w", err)
	}
	rep := &checkReport{Server: describeTarget(cc)}
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.current_setting('server_version')").Scan(&rep.Version); err != nil {
		return nil, fmt.Errorf("reading the server version: %w", err)
	}
	var plpgsql bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_catalog.pg_language WHERE lanname = 'plpgsql')").Scan(&plpgsql); err != nil {
		return nil, fmt.Errorf("reading pg_language: %w", err)
	}
	if plpgsql {
		rep.Database = append(rep.Database, finding{Check: "language", Status: statusOK, Message: "PL/pgSQL is installed (the stale error is raised by a DO block)"})
	} else {
		rep.Database = append(rep.Database, finding{Check: "language", Status: statusFail, Message: "PL/pgSQL is not installed: the proxy raises the stale error with a DO block", Fix: "CREATE EXTENSION plpgsql;"})
	}
	for i, t := range cfg.Tables {
		tr, err := checkTable(ctx, conn, t)
		if err != nil {
			return nil, fmt.Errorf("checking %s: %w", t.Name, err)
		}
		tr.Key = fmt.Sprintf("tables[%d]", i)
		rep.Tables = append(rep.Tables, tr)
	}
	rep.Ready = rep.notReady() == 0
	return rep, nil
}

func describeTarget(cc *pgx.ConnConfig) string {
	where := net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))
	if strings.HasPrefix(cc.Host, "/") {
		where = fmt.Sprintf("%s/.s.PGSQL.%d", cc.Host, cc.Port)
	}
	db := cc.Database
	if db == "" {
		db = cc.User // the server's default
	}
	return fmt.Sprintf("%s database %s as %s", where, db, cc.User)
}

// tracksRows reports whether a mode remembers row versions by key, and so
// needs a key that identifies one row.
func tracksRows(mode string) bool {
	return mode == "tracked" || mode == "required" || mode == "observe"
}

func checkTable(ctx context.Context, conn *pgx.Conn, t config.Table) (tableReport, error) {
	tr := tableReport{Table: t.Name, Mode: t.Mode}
	add := func(f finding) { tr.Findings = append(tr.Findings, f) }
	schema, table := t.SchemaTable()
	column := t.VersionColumn()
	qcol := config.QuoteIdentifier(column)

	var (
		oid      uint32
		relkind  string
		hasRules bool
	)
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relkind::pg_catalog.text, c.relhasrules
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2`, schema, table).Scan(&oid, &relkind, &hasRules)
	if errors.Is(err, pgx.ErrNoRows) {
		add(finding{Check: "table", Status: statusFail, Message: fmt.Sprintf("table %s does not exist in this database (its statements would be forwarded unguarded)", t.Name)})
		return finish(tr), nil
	}
	if err != nil {
		return tr, err
	}
	kinds := map[string]string{"r": "table", "p": "partitioned table", "v": "view", "f": "foreign table"}
	kind, ok := kinds[relkind]
	if !ok {
		add(finding{Check: "table", Status: statusFail, Message: fmt.Sprintf("%s is not a table, view or foreign table (relkind %s)", t.Name, relkind)})
		return finish(tr), nil
	}
	add(finding{Check: "table", Status: statusOK, Message: fmt.Sprintf("%s exists (%s)", t.Name, kind)})

	if err := checkColumn(ctx, conn, t, oid, relkind, qcol, add); err != nil {
		return tr, err
	}
	if err := checkKey(ctx, conn, t, oid, add); err != nil {
		return tr, err
	}
	if err := checkTriggersAndRules(ctx, conn, t, oid, hasRules, add); err != nil {
		return tr, err
	}
	if err := checkSearchPath(ctx, conn, t, schema, table, add); err != nil {
		return tr, err
	}
	return finish(tr), nil
}

func finish(tr tableReport) tableReport {
	tr.Ready = !slices.ContainsFunc(tr.Findings, func(f finding) bool { return f.Status == statusFail })
	return tr
}

// versionDDL is the column type and default to propose for a version of
// the configured type.
func versionDDL(typ string) (sqlType, def string) {
	switch typ {
	case "bigint", "smallint":
		return typ, "1"
	case "timestamp", "timestamptz":
		return typ, "pg_catalog.clock_timestamp()"
	case "uuid":
		return "uuid", "pg_catalog.gen_random_uuid()"
	}
	return "integer", "1"
}

func checkColumn(ctx context.Context, conn *pgx.Conn, t config.Table, oid uint32, relkind, qcol string, add func(finding)) error {
	column := t.VersionColumn()
	if column == "xmin" {
		if relkind == "v" || relkind == "f" {
			add(finding{Check: "column", Status: statusFail, Message: "type xmin: views and foreign tables have no xmin; configure a version column"})
			return nil
		}
		add(finding{Check: "column", Status: statusOK, Message: "version is xmin, PostgreSQL's own row version: no column needed"})
		return nil
	}
	var (
		typ, def            string
		notNull, hasDef     bool
		generated, identity string
	)
	err := conn.QueryRow(ctx, `SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef,
  coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), ''), a.attgenerated::pg_catalog.text, a.attidentity::pg_catalog.text
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped`, oid, column).Scan(&typ, &notNull, &hasDef, &def, &generated, &identity)
	sqlType, sqlDef := versionDDL(t.Type)
	if errors.Is(err, pgx.ErrNoRows) {
		add(finding{Check: "column", Status: statusFail,
			Message: fmt.Sprintf("version column %s does not exist", qcol),
			Fix:     fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s NOT NULL DEFAULT %s;", t.Name, qcol, sqlType, sqlDef)})
		return nil
	}
	if err != nil {
		return err
	}
	// The type the proxy will use: the configured one, else the catalog's.
	discovered, _ := proxy.PolicyFromConfig(config.Table{Name: t.Name, Column: t.Column}, typ, nil)
	if discovered.Type == rewrite.TypeUnknown || discovered.Type == rewrite.TypeXmin {
		add(finding{Check: "column", Status: statusFail,
			Message: fmt.Sprintf("version column %s has type %s; a version must be integer, bigint, smallint, timestamp, timestamptz or uuid (or use type: xmin)", qcol, typ)})
		return nil
	}
	if t.Type != "" {
		configured, _ := proxy.PolicyFromConfig(t, typ, nil)
		if configured.Type != discovered.Type {
			add(finding{Check: "column", Status: statusFail,
				Message: fmt.Sprintf("type is configured as %s but column %s is %s: leave type out to use the column's", t.Type, qcol, typ)})
			return nil
		}
	}
	if generated != "" {
		add(finding{Check: "column", Status: statusFail, Message: fmt.Sprintf("version column %s is a generated column: it cannot be incremented", qcol)})
		return nil
	}
	if identity == "a" {
		add(finding{Check: "column", Status: statusFail, Message: fmt.Sprintf("version column %s is GENERATED ALWAYS AS IDENTITY: UPDATE cannot set it", qcol),
			Fix: fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s DROP IDENTITY, ALTER COLUMN %s SET DEFAULT 1;", t.Name, qcol, qcol)})
		return nil
	}
	desc := typ
	if notNull {
		desc += " NOT NULL"
	}
	if hasDef {
		desc += " DEFAULT " + def
	} else if identity == "d" {
		desc += " GENERATED BY DEFAULT AS IDENTITY"
	}
	_, sqlDef = versionDDL(discoveredName(discovered.Type, typ))
	ok := true
	if !notNull {
		ok = false
		add(finding{Check: "column", Status: statusFail,
			Message: fmt.Sprintf("version column %s (%s) allows NULL: a row whose version is NULL never matches a version predicate and is always reported stale", qcol, desc),
			Fix:     fmt.Sprintf("UPDATE %s SET %s = %s WHERE %s IS NULL; ALTER TABLE %s ALTER COLUMN %s SET NOT NULL;", t.Name, qcol, sqlDef, qcol, t.Name, qcol)})
	}
	if !hasDef && identity == "" {
		ok = false
		add(finding{Check: "column", Status: statusFail,
			Message: fmt.Sprintf("version column %s (%s) has no default: an INSERT that does not name it stores NULL", qcol, desc),
			Fix:     fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s;", t.Name, qcol, sqlDef)})
	}
	if ok {
		add(finding{Check: "column", Status: statusOK, Message: fmt.Sprintf("version column %s %s", qcol, desc)})
	}
	return nil
}

// discoveredName is the config type name for a version type, for the DDL
// proposed to fix a column of catalog type typ.
func discoveredName(vt rewrite.VersionType, typ string) string {
	switch vt {
	case rewrite.TypeTimestamp:
		if strings.Contains(typ, "with time zone") {
			return "timestamptz"
		}
		return "timestamp"
	case rewrite.TypeUUID:
		return "uuid"
	}
	return "integer"
}

func checkKey(ctx context.Context, conn *pgx.Conn, t config.Table, oid uint32, add func(finding)) error {
	rows, err := conn.Query(ctx, `SELECT i.indisprimary, ARRAY(
    SELECT a.attname::pg_catalog.text
    FROM pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    ORDER BY k.n)
FROM pg_catalog.pg_index i
WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid
ORDER BY i.indisprimary DESC, i.indexrelid`, oid)
	if err != nil {
		return err
	}
	var primary []string
	var unique [][]string
	for rows.Next() {
		var isPrimary bool
		var cols []string
		if err := rows.Scan(&isPrimary, &cols); err != nil {
			return err
		}
		if isPrimary {
			primary = cols
		}
		unique = append(unique, cols)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	needUnique := tracksRows(t.Mode)
	key := t.KeyColumns()
	quoted := func(cols []string) string {
		q := make([]string, len(cols))
		for i, c := range cols {
			q[i] = config.QuoteIdentifier(c)
		}
		return strings.Join(q, ", ")
	}
	if len(key) == 0 {
		if primary == nil {
			st := statusWarn
			msg := "no key configured and no primary key: the stale error cannot name the row"
			if needUnique {
				st = statusFail
				msg = fmt.Sprintf("no key configured and no primary key: mode %s remembers versions by key", t.Mode)
			}
			add(finding{Check: "key", Status: st, Message: msg + " (set key: in the configuration, or add a primary key)"})
			return nil
		}
		add(finding{Check: "key", Status: statusOK, Message: fmt.Sprintf("key (%s): the primary key", quoted(primary))})
		return nil
	}
	var missing []string
	for _, k := range key {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped)`, oid, k).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		add(finding{Check: "key", Status: statusFail, Message: fmt.Sprintf("key column(s) %s do not exist", quoted(missing))})
		return nil
	}
	// A unique index on some of the key's columns makes the key unique.
	isUnique := slices.ContainsFunc(unique, func(cols []string) bool {
		return !slices.ContainsFunc(cols, func(c string) bool { return !slices.Contains(key, c) })
	})
	switch {
	case isUnique:
		add(finding{Check: "key", Status: statusOK, Message: fmt.Sprintf("key (%s), unique", quoted(key))})
	case needUnique:
		add(finding{Check: "key", Status: statusFail,
			Message: fmt.Sprintf("key (%s) is not unique (no unique index on it): mode %s remembers one version per key", quoted(key), t.Mode),
			Fix:     fmt.Sprintf("CREATE UNIQUE INDEX CONCURRENTLY ON %s (%s);", t.Name, quoted(key))})
	default:
		add(finding{Check: "key", Status: statusWarn, Message: fmt.Sprintf("key (%s) is not unique: the stale error's detail may name another row with the same key", quoted(key))})
	}
	return nil
}

// Trigger type bits (pg_trigger.tgtype).
const (
	tgRow     = 1 << 0
	tgBefore  = 1 << 1
	tgDelete  = 1 << 3
	tgUpdate  = 1 << 4
	tgInstead = 1 << 6
)

func checkTriggersAndRules(ctx context.Context, conn *pgx.Conn, t config.Table, oid uint32, hasRules bool, add func(finding)) error {
	events := 0
	if t.GuardsUpdate() {
		events |= tgUpdate
	}
	if t.GuardsDelete() {
		events |= tgDelete
	}
	rows, err := conn.Query(ctx, `SELECT tgname::pg_catalog.text, tgtype::pg_catalog.int4 FROM pg_catalog.pg_trigger
WHERE tgrelid = $1 AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname`, oid)
	if err != nil {
		return err
	}
	var before, statement, instead []string
	rulesAffect := false
	for rows.Next() {
		var name string
		var typ int32
		if err := rows.Scan(&name, &typ); err != nil {
			return err
		}
		if int(typ)&events == 0 {
			continue
		}
		switch {
		case typ&tgInstead != 0:
			instead = append(instead, name)
		case typ&tgRow != 0 && typ&tgBefore != 0:
			before = append(before, name)
		case typ&tgRow == 0:
			statement = append(statement, name)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(before) > 0 {
		add(finding{Check: "triggers", Status: statusWarn, Message: fmt.Sprintf("BEFORE ROW trigger(s) %s: a trigger that returns NULL skips its row, so a checked statement affects zero rows and is reported stale although the version matched", strings.Join(before, ", "))})
	}
	if len(instead) > 0 {
		add(finding{Check: "triggers", Status: statusWarn, Message: fmt.Sprintf("INSTEAD OF trigger(s) %s: the rows affected are those the trigger function reports; one that does not write the row makes a checked statement stale", strings.Join(instead, ", "))})
	}
	if len(statement) > 0 {
		add(finding{Check: "triggers", Status: statusWarn, Message: fmt.Sprintf("statement-level trigger(s) %s run even when a checked statement matches no row: the proxy raises the stale error in the same transaction (so their effects roll back) and cannot send a checked Execute together with its Sync (one more round trip)", strings.Join(statement, ", "))})
	}
	if hasRules {
		rrows, err := conn.Query(ctx, `SELECT rulename::pg_catalog.text, ev_type::pg_catalog.text, is_instead FROM pg_catalog.pg_rewrite
WHERE ev_class = $1 AND rulename <> '_RETURN' AND ev_enabled <> 'D' ORDER BY rulename`, oid)
		if err != nil {
			return err
		}
		var affecting []string
		for rrows.Next() {
			var name, ev string
			var isInstead bool
			if err := rrows.Scan(&name, &ev, &isInstead); err != nil {
				return err
			}
			if ev == "2" && t.GuardsUpdate() || ev == "4" && t.GuardsDelete() {
				what := "ALSO"
				if isInstead {
					what = "INSTEAD"
				}
				affecting = append(affecting, fmt.Sprintf("%s (DO %s)", name, what))
			}
		}
		if err := rrows.Err(); err != nil {
			return err
		}
		if len(affecting) > 0 {
			rulesAffect = true
			add(finding{Check: "rules", Status: statusWarn, Message: fmt.Sprintf("rule(s) %s: the command tag reports what the rule's statements did, so the rows a checked statement affected may be miscounted (DO INSTEAD: often zero, reported stale)", strings.Join(affecting, ", "))})
		}
	}
	if len(before)+len(instead)+len(statement) == 0 && !rulesAffect {
		add(finding{Check: "triggers", Status: statusOK, Message: "no trigger or rule changes how a stale error is raised"})
	}
	return nil
}

// checkSearchPath explains how the table's unqualified name is resolved:
// per session, as the server resolves it (the proxy asks it), so what an
// operator needs to know is which other tables of the same name a session
// may reach first, unguarded, and which role or database settings put
// another schema first.
func checkSearchPath(ctx context.Context, conn *pgx.Conn, t config.Table, schema, table string, add func(finding)) error {
	qtable := config.QuoteIdentifier(table)
	rows, err := conn.Query(ctx, `SELECT n.nspname::pg_catalog.text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND n.nspname <> $2 AND c.relkind IN ('r', 'p', 'v', 'f')
  AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'
ORDER BY 1`, table, schema)
	if err != nil {
		return err
	}
	others, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	rows, err = conn.Query(ctx, `SELECT coalesce(r.rolname::pg_catalog.text, 'every role') || coalesce(' in database ' || d.datname::pg_catalog.text, '') || ': ' || cfg
FROM pg_catalog.pg_db_role_setting s CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) AS cfg
LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
WHERE cfg LIKE 'search\_path=%' ORDER BY 1`)
	if err != nil {
		return err
	}
	settings, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("unqualified %s is resolved in each session as the server resolves it (search_path, role, temporary tables): guarded wherever it reaches %s", qtable, t.Name)
	if len(settings) > 0 {
		msg += "; search_path set by ALTER ROLE/DATABASE: " + strings.Join(settings, "; ")
	}
	add(finding{Check: "search_path", Status: statusOK, Message: msg})
	if len(others) > 0 {
		add(finding{Check: "search_path", Status: statusWarn, Message: fmt.Sprintf("other tables named %s exist in schema(s) %s: sessions whose search_path reaches one of them first write it, unguarded (as the server does); qualify %s where that is not meant", qtable, strings.Join(others, ", "), t.Name)})
	}
	return nil
}

// useColour reports whether w is a terminal and NO_COLOR is not set.
func useColour(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (r *checkReport) writeText(w io.Writer, colour bool) {
	paint := func(code, s string) string {
		if !colour {
			return s
		}
		return "\x1b[" + code + "m" + s + "\x1b[0m"
	}
	mark := map[string]string{statusOK: paint("32", "ok  "), statusWarn: paint("33", "warn"), statusFail: paint("31", "FAIL")}
	fmt.Fprintf(w, "pgoptimist check: PostgreSQL %s at %s\n", r.Version, r.Server)
	for _, f := range r.Database {
		fmt.Fprintf(w, "  %s  %-11s %s\n", mark[f.Status], f.Check, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "        %-11s %s\n", "fix:", f.Fix)
		}
	}
	nameWidth := 0
	for _, t := range r.Tables {
		nameWidth = max(nameWidth, len(t.Table))
	}
	var fixes []string
	for _, t := range r.Tables {
		state := paint("32", "ready")
		if !t.Ready {
			state = paint("31", "NOT READY")
		}
		fmt.Fprintf(w, "\n%-*s  mode %-8s  %s\n", nameWidth, t.Table, t.Mode, state)
		for _, f := range t.Findings {
			fmt.Fprintf(w, "  %s  %-11s %s\n", mark[f.Status], f.Check, f.Message)
			if f.Fix != "" {
				fmt.Fprintf(w, "        %-11s %s\n", "fix:", f.Fix)
				fixes = append(fixes, f.Fix)
			}
		}
	}
	ready := len(r.Tables) - r.notReady()
	fmt.Fprintf(w, "\n%d of %d tables ready.\n", ready, len(r.Tables))
	if len(fixes) > 0 {
		fmt.Fprintln(w, "\n-- DDL that would fix what is missing (review it; check never runs it):")
		for _, f := range fixes {
			fmt.Fprintln(w, f)
		}
	}
}
