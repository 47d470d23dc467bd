package rewrite

import "strings"

// QuoteIdent writes an identifier (as PostgreSQL stores it) as SQL: bare
// when it is lower-case ASCII letters, digits, '_' and '$', does not start
// with a digit or '$', and is no keyword that would be read as such (the
// reserved, column-name and type-or-function-name keywords); otherwise in
// double quotes, with embedded quotes doubled.
func QuoteIdent(s string) string {
	plain := s != ""
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && (c >= '0' && c <= '9' || c == '$')) {
			plain = false
			break
		}
	}
	if plain && !keywords[s] {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// QuoteLiteral writes s as an SQL string literal that means s under either
// setting of standard_conforming_strings: a string with a backslash is
// written in the escape form E'...', where the backslash is doubled.
func QuoteLiteral(s string) string {
	if strings.IndexByte(s, '\\') >= 0 {
		return "E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// keywords are PostgreSQL's keywords that cannot be used bare as every kind
// of name (all but the unreserved ones), from PostgreSQL 16's kwlist.h.
var keywords = map[string]bool{
	"all":               true,
	"analyse":           true,
	"analyze":           true,
	"and":               true,
	"any":               true,
	"array":             true,
	"as":                true,
	"asc":               true,
	"asymmetric":        true,
	"authorization":     true,
	"between":           true,
	"bigint":            true,
	"binary":            true,
	"bit":               true,
	"boolean":           true,
	"both":              true,
	"case":              true,
	"cast":              true,
	"char":              true,
	"character":         true,
	"check":             true,
	"coalesce":          true,
	"collate":           true,
	"collation":         true,
	"column":            true,
	"concurrently":      true,
	"constraint":        true,
	"create":            true,
	"cross":             true,
	"current_catalog":   true,
	"current_date":      true,
	"current_role":      true,
	"current_schema":    true,
	"current_time":      true,
	"current_timestamp": true,
	"current_user":      true,
	"dec":               true,
	"decimal":           true,
	"default":           true,
	"deferrable":        true,
	"desc":              true,
	"distinct":          true,
	"do":                true,
	"else":              true,
	"end":               true,
	"except":            true,
	"exists":            true,
	"extract":           true,
	"false":             true,
	"fetch":             true,
	"float":             true,
	"for":               true,
	"foreign":           true,
	"freeze":            true,
	"from":              true,
	"full":              true,
	"grant":             true,
	"greatest":          true,
	"group":             true,
	"grouping":          true,
	"having":            true,
	"ilike":             true,
	"in":                true,
	"initially":         true,
	"inner":             true,
	"inout":             true,
	"int":               true,
	"integer":           true,
	"intersect":         true,
	"interval":          true,
	"into":              true,
	"is":                true,
	"isnull":            true,
	"join":              true,
	"json_array":        true,
	"json_arrayagg":     true,
	"json_object":       true,
	"json_objectagg":    true,
	"lateral":           true,
	"leading":           true,
	"least":             true,
	"left":              true,
	"like":              true,
	"limit":             true,
	"localtime":         true,
	"localtimestamp":    true,
	"national":          true,
	"natural":           true,
	"nchar":             true,
	"none":              true,
	"normalize":         true,
	"not":               true,
	"notnull":           true,
	"null":              true,
	"nullif":            true,
	"numeric":           true,
	"offset":            true,
	"on":                true,
	"only":              true,
	"or":                true,
	"order":             true,
	"out":               true,
	"outer":             true,
	"overlaps":          true,
	"overlay":           true,
	"placing":           true,
	"position":          true,
	"precision":         true,
	"primary":           true,
	"real":              true,
	"references":        true,
	"returning":         true,
	"right":             true,
	"row":               true,
	"select":            true,
	"session_user":      true,
	"setof":             true,
	"similar":           true,
	"smallint":          true,
	"some":              true,
	"substring":         true,
	"symmetric":         true,
	"system_user":       true,
	"table":             true,
	"tablesample":       true,
	"then":              true,
	"time":              true,
	"timestamp":         true,
	"to":                true,
	"trailing":          true,
	"treat":             true,
	"trim":              true,
	"true":              true,
	"union":             true,
	"unique":            true,
	"user":              true,
	"using":             true,
	"values":            true,
	"varchar":           true,
	"variadic":          true,
	"verbose":           true,
	"when":              true,
	"where":             true,
	"window":            true,
	"with":              true,
	"xmlattributes":     true,
	"xmlconcat":         true,
	"xmlelement":        true,
	"xmlexists":         true,
	"xmlforest":         true,
	"xmlnamespaces":     true,
	"xmlparse":          true,
	"xmlpi":             true,
	"xmlroot":           true,
	"xmlserialize":      true,
	"xmltable":          true,
}
