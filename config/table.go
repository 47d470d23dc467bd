package config

import (
	"slices"
	"strings"
)

// Normalize fills in per-table defaults and writes values in one canonical
// form. Load calls it before Validate; call it yourself on a Config built in
// code. It is idempotent and never fails: values it cannot make sense of are
// left for Validate to report.
//
//   - Enumerated values (upstream.tls, tls.mode, log.level, log.format,
//     guard.on_parse_error and the table type, mode, scope and statements) are
//     trimmed and lower-cased; type aliases int, int4, int8, int2, "timestamp
//     with[out] time zone" become integer, bigint, smallint, timestamptz,
//     timestamp.
//   - Table names become `schema.table` in SQL spelling: "public." is added
//     to unqualified names, unquoted parts are folded to lower case, parts
//     that need it are double-quoted (`Address` -> public.address,
//     `"MyTable"` -> public."MyTable"). Column and key names likewise.
//   - Table defaults: column "version" ("xmin" for type xmin), statements
//     [update, delete], mode explicit, scope transaction; a column named xmin
//     with no type gets type xmin. Duplicate statements are dropped; an empty
//     key list means "the primary key", like no key at all.
func (c *Config) Normalize() {
	lower := func(s *string) { *s = strings.ToLower(strings.TrimSpace(*s)) }
	lower(&c.Upstream.TLS)
	lower(&c.TLS.Mode)
	lower(&c.Log.Level)
	lower(&c.Log.Format)
	lower(&c.Guard.OnParseError)
	c.Listen = strings.TrimSpace(c.Listen)
	c.Upstream.Address = strings.TrimSpace(c.Upstream.Address)
	c.Metrics.Listen = strings.TrimSpace(c.Metrics.Listen)
	for i := range c.Tables {
		c.Tables[i].normalize()
	}
}

var typeAliases = map[string]string{
	"int":                         "integer",
	"int4":                        "integer",
	"int8":                        "bigint",
	"int2":                        "smallint",
	"timestamp without time zone": "timestamp",
	"timestamp with time zone":    "timestamptz",
}

func (t *Table) normalize() {
	t.Type = strings.Join(strings.Fields(strings.ToLower(t.Type)), " ")
	if a, ok := typeAliases[t.Type]; ok {
		t.Type = a
	}
	t.Mode = strings.ToLower(strings.TrimSpace(t.Mode))
	t.Scope = strings.ToLower(strings.TrimSpace(t.Scope))

	t.Name = strings.TrimSpace(t.Name)
	if t.Name != "" {
		if parts, err := parseIdentifiers(t.Name); err == nil {
			switch len(parts) {
			case 1:
				t.Name = DefaultSchema + "." + QuoteIdentifier(parts[0])
			case 2:
				t.Name = QuoteIdentifier(parts[0]) + "." + QuoteIdentifier(parts[1])
			}
		}
	}

	t.Column = strings.TrimSpace(t.Column)
	if t.Column == "" {
		if t.Type == "xmin" {
			t.Column = "xmin"
		} else {
			t.Column = DefaultColumn
		}
	} else if col, err := parseIdentifier(t.Column); err == nil {
		t.Column = QuoteIdentifier(col)
	}
	if t.Type == "" && t.Column == "xmin" {
		t.Type = "xmin"
	}

	if len(t.Key) == 0 {
		t.Key = nil
	}
	for i, k := range t.Key {
		k = strings.TrimSpace(k)
		if col, err := parseIdentifier(k); err == nil {
			k = QuoteIdentifier(col)
		}
		t.Key[i] = k
	}

	if t.Statements == nil {
		t.Statements = DefaultStatements()
	} else {
		out := make([]string, 0, len(t.Statements))
		for _, s := range t.Statements {
			s = strings.ToLower(strings.TrimSpace(s))
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
		t.Statements = out
	}
	if t.Mode == "" {
		t.Mode = DefaultMode
	}
	if t.Scope == "" {
		t.Scope = DefaultScope
	}
}

// SchemaTable returns the table's schema and name as PostgreSQL stores them
// (unquoted, case as in the catalog): `public."MyTable"` gives ("public",
// "MyTable"), `Address` gives ("public", "address"). Both are empty when the
// name is not valid (Validate reports it).
func (t Table) SchemaTable() (schema, table string) {
	parts, err := parseIdentifiers(strings.TrimSpace(t.Name))
	if err != nil {
		return "", ""
	}
	switch len(parts) {
	case 1:
		return DefaultSchema, parts[0]
	case 2:
		return parts[0], parts[1]
	}
	return "", ""
}

// VersionColumn returns the version column as PostgreSQL stores it: the
// default ("version", or "xmin" for type xmin) when Column is empty, ""
// when Column is not a valid identifier.
func (t Table) VersionColumn() string {
	c := strings.TrimSpace(t.Column)
	if c == "" {
		if strings.EqualFold(strings.TrimSpace(t.Type), "xmin") {
			return "xmin"
		}
		return DefaultColumn
	}
	col, err := parseIdentifier(c)
	if err != nil {
		return ""
	}
	return col
}

// KeyColumns returns the configured key columns as PostgreSQL stores them;
// nil means "discover the primary key". Invalid names come back as "".
func (t Table) KeyColumns() []string {
	if len(t.Key) == 0 {
		return nil
	}
	out := make([]string, len(t.Key))
	for i, k := range t.Key {
		out[i], _ = parseIdentifier(strings.TrimSpace(k))
	}
	return out
}

// GuardsUpdate reports whether UPDATE (and the DO UPDATE arm of INSERT ... ON
// CONFLICT) is guarded; a nil Statements means the default, both.
func (t Table) GuardsUpdate() bool { return t.guards("update") }

// GuardsDelete reports whether DELETE is guarded; a nil Statements means the
// default, both.
func (t Table) GuardsDelete() bool { return t.guards("delete") }

func (t Table) guards(stmt string) bool {
	if t.Statements == nil {
		return true
	}
	for _, s := range t.Statements {
		if strings.EqualFold(strings.TrimSpace(s), stmt) {
			return true
		}
	}
	return false
}
