package config

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a configuration: the key path
// ("tables[1].mode", "limits.max_connections") and what is wrong with it.
type Problem struct {
	Key     string
	Message string
}

func (p Problem) String() string {
	if p.Key == "" {
		return p.Message
	}
	return p.Key + ": " + p.Message
}

// ValidationError lists every problem found in a configuration.
type ValidationError struct {
	Problems []Problem
}

// Error returns the problems, one "key: message" per line.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

type problems []Problem

func (ps *problems) add(key, format string, args ...any) {
	*ps = append(*ps, Problem{Key: key, Message: fmt.Sprintf(format, args...)})
}

func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	return &ValidationError{Problems: ps}
}

// Allowed values of the enumerated keys.
var (
	UpstreamTLSModes = []string{"disable", "prefer", "require", "verify-full"}
	ClientTLSModes   = []string{"disable", "allow", "require"}
	LogLevels        = []string{"debug", "info", "warn", "error"}
	LogFormats       = []string{"text", "json"}
	ParseErrorModes  = []string{"forward", "reject"}
	VersionTypes     = []string{"integer", "bigint", "smallint", "timestamp", "timestamptz", "uuid", "xmin"}
	StatementKinds   = []string{"update", "delete"}
	TableModes       = []string{"explicit", "tracked", "required", "observe"}
	TrackingScopes   = []string{"transaction", "session"}
)

func (ps *problems) oneOf(key, val string, allowed []string) {
	if !slices.Contains(allowed, val) {
		ps.add(key, "must be one of %s (got %q)", strings.Join(allowed, ", "), val)
	}
}

// Validate checks the configuration as it is (Load normalises it first; call
// Normalize before Validate on a Config built in code). It returns nil or a
// *ValidationError naming every problem. It does not touch the file system
// or the network.
func (c *Config) Validate() error {
	var ps problems

	if msg := checkHostPort(c.Listen, true); msg != "" {
		ps.add("listen", "%s", msg)
	}

	unixUpstream := strings.HasPrefix(c.Upstream.Address, "/")
	switch {
	case c.Upstream.Address == "":
		ps.add("upstream.address", "required")
	case unixUpstream:
		// An absolute path: the directory holding PostgreSQL's .s.PGSQL.<port> socket.
	default:
		if msg := checkHostPort(c.Upstream.Address, false); msg != "" {
			ps.add("upstream.address", "%s, or an absolute Unix socket directory", msg)
		}
	}
	ps.oneOf("upstream.tls", c.Upstream.TLS, UpstreamTLSModes)
	if unixUpstream && (c.Upstream.TLS == "require" || c.Upstream.TLS == "verify-full") {
		ps.add("upstream.tls", "%s is impossible over a Unix socket (PostgreSQL offers no TLS there); use disable or prefer", c.Upstream.TLS)
	}

	ps.oneOf("tls.mode", c.TLS.Mode, ClientTLSModes)
	if c.TLS.Mode == "allow" || c.TLS.Mode == "require" {
		if c.TLS.CertFile == "" {
			ps.add("tls.cert_file", "required when tls.mode is %s", c.TLS.Mode)
		}
		if c.TLS.KeyFile == "" {
			ps.add("tls.key_file", "required when tls.mode is %s", c.TLS.Mode)
		}
	}

	if c.Limits.MaxConnections <= 0 {
		ps.add("limits.max_connections", "must be positive (got %d)", c.Limits.MaxConnections)
	}
	if c.Limits.MaxMessageBytes < 1024 {
		ps.add("limits.max_message_bytes", "must be at least 1024 (got %d)", c.Limits.MaxMessageBytes)
	}
	if c.Limits.MaxSQLBytes <= 0 {
		ps.add("limits.max_sql_bytes", "must be positive (got %d)", c.Limits.MaxSQLBytes)
	}
	if c.Limits.MaxBufferedBytes < c.Limits.MaxSQLBytes {
		ps.add("limits.max_buffered_bytes", "must be at least limits.max_sql_bytes (%d; got %d)", c.Limits.MaxSQLBytes, c.Limits.MaxBufferedBytes)
	}
	if c.Limits.MaxStartupConnections <= 0 {
		ps.add("limits.max_startup_connections", "must be positive (got %d)", c.Limits.MaxStartupConnections)
	}
	if c.Limits.StartupTimeout <= 0 {
		ps.add("limits.startup_timeout", "must be positive (got %s)", c.Limits.StartupTimeout)
	}
	if c.Limits.LoginTimeout <= 0 {
		ps.add("limits.login_timeout", "must be positive (got %s)", c.Limits.LoginTimeout)
	}
	if c.ShutdownTimeout <= 0 {
		ps.add("shutdown_timeout", "must be positive (got %s)", c.ShutdownTimeout)
	}

	ps.oneOf("log.level", c.Log.Level, LogLevels)
	ps.oneOf("log.format", c.Log.Format, LogFormats)

	if c.Metrics.Listen != "" {
		if msg := checkHostPort(c.Metrics.Listen, true); msg != "" {
			ps.add("metrics.listen", "%s, or empty to serve no metrics", msg)
		} else if c.Metrics.Listen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
			ps.add("metrics.listen", "must differ from listen (both %q)", c.Listen)
		}
	}

	for _, s := range []struct{ key, val string }{
		{"guard.stale_sqlstate", c.Guard.StaleSQLState},
		{"guard.required_sqlstate", c.Guard.RequiredSQLState},
	} {
		if !validSQLState(s.val) {
			ps.add(s.key, "must be 5 characters of digits or upper-case letters (got %q)", s.val)
		}
	}
	if c.Guard.StaleSQLState == c.Guard.RequiredSQLState && validSQLState(c.Guard.StaleSQLState) {
		ps.add("guard.required_sqlstate", "must differ from guard.stale_sqlstate (both %q)", c.Guard.StaleSQLState)
	}
	ps.oneOf("guard.on_parse_error", c.Guard.OnParseError, ParseErrorModes)
	if c.Guard.TrackedRowsPerSession <= 0 {
		ps.add("guard.tracked_rows_per_session", "must be positive (got %d)", c.Guard.TrackedRowsPerSession)
	}

	seen := map[[2]string]int{}
	for i, t := range c.Tables {
		ps.validateTable(fmt.Sprintf("tables[%d]", i), t, i, seen)
	}
	return ps.err()
}

// systemColumns other than xmin, which cannot serve as a version.
var systemColumns = []string{"ctid", "cmin", "cmax", "xmax", "tableoid"}

func (ps *problems) validateTable(prefix string, t Table, idx int, seen map[[2]string]int) {
	key := func(k string) string { return prefix + "." + k }

	switch name := strings.TrimSpace(t.Name); {
	case name == "":
		ps.add(key("name"), "required")
	default:
		parts, err := parseIdentifiers(name)
		switch {
		case err != nil:
			ps.add(key("name"), "%v", err)
		case len(parts) > 2:
			ps.add(key("name"), "must be table or schema.table (got %q)", t.Name)
		default:
			schema, table := t.SchemaTable()
			st := [2]string{schema, table}
			if j, dup := seen[st]; dup {
				ps.add(key("name"), "duplicate of tables[%d]", j)
			} else {
				seen[st] = idx
			}
		}
	}

	var column string
	if strings.TrimSpace(t.Column) == "" {
		ps.add(key("column"), "required")
	} else if col, err := parseIdentifier(strings.TrimSpace(t.Column)); err != nil {
		ps.add(key("column"), "%v", err)
	} else {
		column = col
		if slices.Contains(systemColumns, col) {
			ps.add(key("column"), "%s is a system column; of the system columns only xmin can serve as a version", col)
		}
	}

	if t.Type != "" {
		ps.oneOf(key("type"), t.Type, VersionTypes)
	}
	if column != "" && (t.Type == "xmin") != (column == "xmin") {
		if t.Type == "xmin" {
			ps.add(key("column"), "must be xmin when type is xmin (got %q)", t.Column)
		} else {
			ps.add(key("type"), "must be xmin (or left out) when column is xmin (got %q)", t.Type)
		}
	}

	if t.Key != nil && len(t.Key) == 0 {
		ps.add(key("key"), "must list at least one column, or be left out to use the primary key")
	}
	var keys []string
	for j, k := range t.Key {
		kk := fmt.Sprintf("%s.key[%d]", prefix, j)
		col, err := parseIdentifier(strings.TrimSpace(k))
		switch {
		case strings.TrimSpace(k) == "":
			ps.add(kk, "empty column name")
		case err != nil:
			ps.add(kk, "%v", err)
		case slices.Contains(keys, col):
			ps.add(kk, "duplicate column %q", col)
		case col == column && column != "":
			ps.add(kk, "must not be the version column")
		case slices.Contains(systemColumns, col) || col == "xmin":
			ps.add(kk, "%s is a system column, not a key", col)
		}
		keys = append(keys, col)
	}

	if len(t.Statements) == 0 {
		ps.add(key("statements"), "must list at least one of %s", strings.Join(StatementKinds, ", "))
	}
	for j, s := range t.Statements {
		sk := fmt.Sprintf("%s.statements[%d]", prefix, j)
		switch {
		case !slices.Contains(StatementKinds, s):
			ps.add(sk, "must be one of %s (got %q)", strings.Join(StatementKinds, ", "), s)
		case slices.Contains(t.Statements[:j], s):
			ps.add(sk, "duplicate %q", s)
		}
	}

	ps.oneOf(key("mode"), t.Mode, TableModes)
	ps.oneOf(key("scope"), t.Scope, TrackingScopes)
}

func validSQLState(s string) bool {
	if len(s) != 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// checkHostPort returns "" when addr is host:port with a numeric port (0 is
// allowed when listening, meaning any free port) and, unless listening, a
// non-empty host; otherwise what is wrong.
func checkHostPort(addr string, listening bool) string {
	if addr == "" {
		return "required (host:port)"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("must be host:port (got %q)", addr)
	}
	if !listening && host == "" {
		return fmt.Sprintf("must be host:port with a host (got %q)", addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		return fmt.Sprintf("must be host:port with a numeric port (got %q)", addr)
	case n == 0 && !listening:
		return fmt.Sprintf("must be host:port with a port from 1 to 65535 (got %q)", addr)
	}
	return ""
}
