package proxy

import (
	"strings"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/rewrite"
)

// From configuration to the rewriter's policies.

// PolicyFromConfig builds the rewriter's policy for a configured table,
// completing it with what the catalog says: the version column's type
// (format_type; used when the configuration sets none) and the primary key
// (used when the configuration sets no key). ok is false when the type is
// not one a version can have.
func PolicyFromConfig(t config.Table, catalogType string, primaryKey []string) (rewrite.Policy, bool) {
	schema, table := t.SchemaTable()
	column := t.VersionColumn()
	p := rewrite.Policy{
		Schema: schema, Table: table, Column: column,
		Type: versionType(t.Type, column, catalogType),
		Key:  t.KeyColumns(), Mode: mode(t.Mode),
		Update: t.GuardsUpdate(), Delete: t.GuardsDelete(),
	}
	if len(p.Key) == 0 {
		p.Key = primaryKey
	}
	return p, p.Type != rewrite.TypeUnknown
}

func mode(m string) rewrite.Mode {
	switch m {
	case "tracked":
		return rewrite.ModeTracked
	case "required":
		return rewrite.ModeRequired
	case "observe":
		return rewrite.ModeObserve
	}
	return rewrite.ModeExplicit
}

// versionType maps a configured type, or else the catalog's, to the
// rewriter's version types.
func versionType(configured, column, catalog string) rewrite.VersionType {
	t := configured
	if t == "" {
		t = catalog
	}
	if column == "xmin" {
		return rewrite.TypeXmin
	}
	switch {
	case t == "integer" || t == "bigint" || t == "smallint":
		return rewrite.TypeInteger
	case t == "timestamp" || t == "timestamptz" || strings.HasPrefix(t, "timestamp"):
		return rewrite.TypeTimestamp
	case t == "uuid":
		return rewrite.TypeUUID
	case t == "xmin" || t == "xid":
		return rewrite.TypeXmin
	}
	return rewrite.TypeUnknown
}
