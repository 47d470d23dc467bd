package config

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

const (
	// EnvPrefix starts the environment variable of every scalar key:
	// PGOPTIMIST_ and the key in upper case with dots as underscores.
	EnvPrefix = "PGOPTIMIST"
	// ConfigEnv names the configuration file when --config is not given.
	ConfigEnv = "PGOPTIMIST_CONFIG"
	// TablesEnv, when set and not blank, holds the whole tables list as YAML
	// or JSON text and replaces the file's tables.
	TablesEnv = "PGOPTIMIST_TABLES"
)

type kind int

const (
	kindString kind = iota
	kindInt
	kindSize
	kindDuration
)

// field is one scalar key: its path, how its value is parsed and where it goes.
type field struct {
	key  string
	kind kind
	ptr  func(*Config) any
}

var fields = []field{
	{"listen", kindString, func(c *Config) any { return &c.Listen }},
	{"upstream.address", kindString, func(c *Config) any { return &c.Upstream.Address }},
	{"upstream.tls", kindString, func(c *Config) any { return &c.Upstream.TLS }},
	{"upstream.ca_file", kindString, func(c *Config) any { return &c.Upstream.CAFile }},
	{"tls.mode", kindString, func(c *Config) any { return &c.TLS.Mode }},
	{"tls.cert_file", kindString, func(c *Config) any { return &c.TLS.CertFile }},
	{"tls.key_file", kindString, func(c *Config) any { return &c.TLS.KeyFile }},
	{"limits.max_connections", kindInt, func(c *Config) any { return &c.Limits.MaxConnections }},
	{"limits.max_message_bytes", kindSize, func(c *Config) any { return &c.Limits.MaxMessageBytes }},
	{"limits.max_sql_bytes", kindSize, func(c *Config) any { return &c.Limits.MaxSQLBytes }},
	{"limits.max_buffered_bytes", kindSize, func(c *Config) any { return &c.Limits.MaxBufferedBytes }},
	{"limits.max_startup_connections", kindInt, func(c *Config) any { return &c.Limits.MaxStartupConnections }},
	{"limits.startup_timeout", kindDuration, func(c *Config) any { return &c.Limits.StartupTimeout }},
	{"limits.login_timeout", kindDuration, func(c *Config) any { return &c.Limits.LoginTimeout }},
	{"shutdown_timeout", kindDuration, func(c *Config) any { return &c.ShutdownTimeout }},
	{"log.level", kindString, func(c *Config) any { return &c.Log.Level }},
	{"log.format", kindString, func(c *Config) any { return &c.Log.Format }},
	{"metrics.listen", kindString, func(c *Config) any { return &c.Metrics.Listen }},
	{"guard.stale_sqlstate", kindString, func(c *Config) any { return &c.Guard.StaleSQLState }},
	{"guard.required_sqlstate", kindString, func(c *Config) any { return &c.Guard.RequiredSQLState }},
	{"guard.on_parse_error", kindString, func(c *Config) any { return &c.Guard.OnParseError }},
	{"guard.tracked_rows_per_session", kindInt, func(c *Config) any { return &c.Guard.TrackedRowsPerSession }},
}

// tableFields are the keys of one entry of tables.
var tableFields = []string{"name", "column", "type", "key", "statements", "mode", "scope"}

// Keys returns every scalar key ("listen", "upstream.address", ...), in the
// order of the documented file. Each can be set by EnvName(key). "tables" is
// not among them.
func Keys() []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = f.key
	}
	return out
}

// EnvName returns the environment variable overriding key:
// EnvName("upstream.address") is "PGOPTIMIST_UPSTREAM_ADDRESS".
func EnvName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// flags maps command-line flags to the keys they set.
var flags = []struct{ name, key, usage string }{
	{"listen", "listen", "accept clients on `ADDR` (host:port)"},
	{"upstream", "upstream.address", "PostgreSQL server `ADDR` (host:port, or the absolute path of a Unix socket directory)"},
	{"log-level", "log.level", "log `LEVEL`: debug, info, warn or error"},
	{"metrics-listen", "metrics.listen", "serve /metrics, /healthz and /readyz on `ADDR` (host:port; empty: not at all)"},
}

// BindFlags registers --config, --listen, --upstream, --log-level and
// --metrics-listen on fs. A flag overrides the file and the environment only
// when it is given on the command line.
func BindFlags(fs *pflag.FlagSet) {
	d := Defaults()
	fs.String("config", "", "read the configuration from `FILE` (YAML; default $"+ConfigEnv+")")
	for _, f := range flags {
		def := ""
		for _, fl := range fields {
			if fl.key == f.key {
				def = *fl.ptr(&d).(*string)
			}
		}
		fs.String(f.name, def, f.usage)
	}
}

// Load builds the configuration from, in decreasing precedence, the flags of
// fs that were given on the command line, PGOPTIMIST_* environment variables,
// the YAML file named by --config (or $PGOPTIMIST_CONFIG; no file when
// neither is set) and Defaults. fs may be nil. The result is normalised and
// valid; otherwise the error is an *UnknownKeyError, a *ValidationError or
// an error reading or parsing the file.
//
// Calling Load again with the same fs (for example on SIGHUP) rereads the
// file and the environment and keeps the command line's overrides.
func Load(fs *pflag.FlagSet) (*Config, error) {
	path := ""
	if fs != nil {
		if f := fs.Lookup("config"); f != nil {
			path = f.Value.String()
		}
	}
	if path == "" {
		path = os.Getenv(ConfigEnv)
	}
	return load(path, fs)
}

// LoadFile is Load without flags: the file at path (none when path is
// empty), the environment and the defaults.
func LoadFile(path string) (*Config, error) {
	return load(path, nil)
}

func load(path string, fs *pflag.FlagSet) (*Config, error) {
	v := viper.New()
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AllowEmptyEnv(true) // PGOPTIMIST_METRICS_LISTEN= turns metrics off
	v.AutomaticEnv()
	// AutomaticEnv only answers for keys viper knows: register them all.
	d := Defaults()
	for _, f := range fields {
		v.SetDefault(f.key, reflect.ValueOf(f.ptr(&d)).Elem().Interface())
	}
	if fs != nil {
		for _, f := range flags {
			if fl := fs.Lookup(f.name); fl != nil {
				if err := v.BindPFlag(f.key, fl); err != nil {
					return nil, fmt.Errorf("config: flag --%s: %w", f.name, err)
				}
			}
		}
	}

	var decodeProblems problems
	var tablesRaw any
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		var raw any
		if err := yaml.Unmarshal(data, &raw); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
		top, ok := stringMap(raw)
		if raw != nil && !ok {
			return nil, fmt.Errorf("config: %s: the top level must be a mapping of keys", path)
		}
		if unknown := checkKeys(top, "", &decodeProblems); len(unknown) > 0 {
			return nil, &UnknownKeyError{Keys: unknown}
		}
		v.SetConfigType("yaml")
		if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
		for k, val := range top {
			if strings.ToLower(k) == "tables" {
				tablesRaw = val
			}
		}
	}

	tablesKey := "tables"
	if s, ok := os.LookupEnv(TablesEnv); ok && strings.TrimSpace(s) != "" {
		tablesKey = TablesEnv
		tablesRaw = nil
		if err := yaml.Unmarshal([]byte(s), &tablesRaw); err != nil {
			decodeProblems.add(TablesEnv, "not valid YAML or JSON: %v", err)
		} else if unknown := checkTableKeys(tablesRaw, "tables"); len(unknown) > 0 {
			return nil, &UnknownKeyError{Keys: unknown, Source: TablesEnv}
		}
	}

	var c Config
	for _, f := range fields {
		decodeScalar(f, v.Get(f.key), &c, &decodeProblems)
	}
	c.Tables = decodeTables(tablesRaw, tablesKey, &decodeProblems)

	c.Normalize()
	all := decodeProblems
	if err := c.Validate(); err != nil {
		// Skip what only repeats a decoding problem (a table entry that was
		// not a mapping has no name either).
		for _, p := range err.(*ValidationError).Problems {
			if !coveredBy(p.Key, decodeProblems) {
				all = append(all, p)
			}
		}
	}
	if err := all.err(); err != nil {
		return nil, err
	}
	return &c, nil
}

func coveredBy(key string, ps problems) bool {
	for _, p := range ps {
		if key == p.Key || strings.HasPrefix(key, p.Key+".") || strings.HasPrefix(key, p.Key+"[") {
			return true
		}
	}
	return false
}

// UnknownKeyError reports keys the configuration does not have, which are
// most often typing mistakes.
type UnknownKeyError struct {
	Keys   []string // as written, with their path: "upstrem", "tables[1].colum"
	Source string   // "" for the file, else the environment variable
}

func (e *UnknownKeyError) Error() string {
	lines := make([]string, len(e.Keys))
	for i, k := range e.Keys {
		lines[i] = fmt.Sprintf("config: unknown key %q", k)
		if e.Source != "" {
			lines[i] += " in " + e.Source
		}
		if s := suggest(k); s != "" {
			lines[i] += fmt.Sprintf(" (did you mean %q?)", s)
		}
	}
	return strings.Join(lines, "\n")
}

// sections are the keys whose values are mappings of other keys.
func isSection(key string) bool {
	for _, f := range fields {
		if strings.HasPrefix(f.key, key+".") {
			return true
		}
	}
	return false
}

func isField(key string) bool {
	return slices.ContainsFunc(fields, func(f field) bool { return f.key == key })
}

// checkKeys returns the unknown keys of m (found under prefix), and adds a
// problem for a section that is not a mapping.
func checkKeys(m map[string]any, prefix string, ps *problems) []string {
	var unknown []string
	for _, k := range sortedKeys(m) {
		val := m[k]
		full := strings.ToLower(k)
		shown := k
		if prefix != "" {
			full = prefix + "." + full
			shown = prefix + "." + k
		}
		switch {
		case isField(full):
		case isSection(full):
			if val == nil {
				continue
			}
			sub, ok := stringMap(val)
			if !ok {
				ps.add(full, "must be a mapping of keys (got %s)", describe(val))
				continue
			}
			unknown = append(unknown, checkKeys(sub, full, ps)...)
		case full == "tables":
			unknown = append(unknown, checkTableKeys(val, "tables")...)
		default:
			unknown = append(unknown, shown)
		}
	}
	return unknown
}

func checkTableKeys(val any, prefix string) []string {
	list, _ := val.([]any)
	var unknown []string
	for i, el := range list {
		m, _ := stringMap(el)
		for _, k := range sortedKeys(m) {
			if !slices.Contains(tableFields, strings.ToLower(k)) {
				unknown = append(unknown, fmt.Sprintf("%s[%d].%s", prefix, i, k))
			}
		}
	}
	return unknown
}

func decodeScalar(f field, val any, c *Config, ps *problems) {
	switch p := f.ptr(c).(type) {
	case *string:
		switch s := val.(type) {
		case string:
			*p = s
		case nil:
		default:
			ps.add(f.key, "must be a string (got %s; quote it in YAML)", describe(val))
		}
	case *int:
		n, ok := toInt(val, f.kind == kindSize)
		if !ok {
			if f.kind == kindSize {
				ps.add(f.key, "must be a number of bytes, optionally with a unit kB, MB or GB (1024-based) (got %s)", describe(val))
			} else {
				ps.add(f.key, "must be an integer (got %s)", describe(val))
			}
			return
		}
		*p = n
	case *time.Duration:
		switch x := val.(type) {
		case time.Duration:
			*p = x
			return
		case string:
			if dur, err := time.ParseDuration(strings.TrimSpace(x)); err == nil {
				*p = dur
				return
			}
		}
		ps.add(f.key, `must be a Go duration such as "10s" or "1m30s" (got %s)`, describe(val))
	}
}

var sizeUnits = map[string]int64{
	"b": 1, "kb": 1 << 10, "kib": 1 << 10, "mb": 1 << 20, "mib": 1 << 20, "gb": 1 << 30, "gib": 1 << 30,
}

// toInt converts an integer from YAML, the environment or a flag; with size,
// strings may carry a unit (kB, MB, GB, also KiB, MiB, GiB: all 1024-based,
// as PostgreSQL's own settings).
func toInt(val any, size bool) (int, bool) {
	rv := reflect.ValueOf(val)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if rv.Type() == reflect.TypeOf(time.Duration(0)) {
			return 0, false
		}
		return int(rv.Int()), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if rv.Uint() > math.MaxInt {
			return 0, false
		}
		return int(rv.Uint()), true
	case reflect.Float32, reflect.Float64:
		x := rv.Float()
		if x != math.Trunc(x) || math.Abs(x) > 1<<53 {
			return 0, false
		}
		return int(x), true
	case reflect.String:
		s := strings.TrimSpace(rv.String())
		if n, err := strconv.Atoi(s); err == nil {
			return n, true
		}
		if !size {
			return 0, false
		}
		i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '-' })
		if i <= 0 {
			return 0, false
		}
		mult, ok := sizeUnits[strings.ToLower(strings.TrimSpace(s[i:]))]
		if !ok {
			return 0, false
		}
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n > math.MaxInt/mult || n < math.MinInt/mult {
			return 0, false
		}
		return int(n * mult), true
	}
	return 0, false
}

func decodeTables(raw any, key string, ps *problems) []Table {
	if raw == nil {
		return nil
	}
	list, ok := raw.([]any)
	if !ok {
		ps.add(key, "must be a list of table policies (got %s)", describe(raw))
		return nil
	}
	out := make([]Table, len(list))
	for i, el := range list {
		prefix := fmt.Sprintf("tables[%d]", i)
		m, ok := stringMap(el)
		if !ok {
			ps.add(prefix, "must be a mapping with keys %s (got %s)", strings.Join(tableFields, ", "), describe(el))
			continue
		}
		t := &out[i]
		for k, val := range m {
			k = strings.ToLower(k)
			fk := prefix + "." + k
			switch k {
			case "name":
				t.Name = tableString(fk, val, ps)
			case "column":
				t.Column = tableString(fk, val, ps)
			case "type":
				t.Type = tableString(fk, val, ps)
			case "mode":
				t.Mode = tableString(fk, val, ps)
			case "scope":
				t.Scope = tableString(fk, val, ps)
			case "key":
				t.Key = tableList(fk, val, ps)
			case "statements":
				t.Statements = tableList(fk, val, ps)
			}
		}
	}
	return out
}

func tableString(key string, val any, ps *problems) string {
	switch s := val.(type) {
	case string:
		return s
	case nil:
		return ""
	}
	ps.add(key, "must be a string (got %s)", describe(val))
	return ""
}

// tableList accepts a list of strings or one string of comma-separated
// items; null means "not given" (nil).
func tableList(key string, val any, ps *problems) []string {
	switch x := val.(type) {
	case nil:
		return nil
	case string:
		out := []string{}
		for _, s := range strings.Split(x, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out
	case []any:
		out := make([]string, 0, len(x))
		for j, el := range x {
			s, ok := el.(string)
			if !ok {
				ps.add(fmt.Sprintf("%s[%d]", key, j), "must be a string (got %s)", describe(el))
				continue
			}
			out = append(out, s)
		}
		return out
	}
	ps.add(key, "must be a list of strings (got %s)", describe(val))
	return nil
}

func stringMap(val any) (map[string]any, bool) {
	switch m := val.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, v := range m {
			out[fmt.Sprint(k)] = v
		}
		return out, true
	}
	return nil, false
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func describe(val any) string {
	switch val.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("%q", val)
	case []any:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	}
	return fmt.Sprint(val)
}

// suggest returns the known key closest to an unknown one, or "".
func suggest(unknown string) string {
	lower := strings.ToLower(unknown)
	if i := strings.LastIndex(lower, "]."); i >= 0 && strings.HasPrefix(lower, "tables[") {
		prefix, name := unknown[:i+2], lower[i+2:]
		if best := closest(name, tableFields); best != "" {
			return prefix + best
		}
		return ""
	}
	var candidates []string
	for _, f := range fields {
		candidates = append(candidates, f.key)
		if i := strings.IndexByte(f.key, '.'); i > 0 && !slices.Contains(candidates, f.key[:i]) {
			candidates = append(candidates, f.key[:i])
		}
	}
	candidates = append(candidates, "tables")
	if best := closest(lower, candidates); best != "" {
		return best
	}
	// A key written at the wrong level: max_connections for limits.max_connections.
	last := lower[strings.LastIndexByte(lower, '.')+1:]
	for _, f := range fields {
		if f.key[strings.LastIndexByte(f.key, '.')+1:] == last {
			return f.key
		}
	}
	return ""
}

func closest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := levenshtein(s, c); d < bestD && d < len(c)/2 {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
